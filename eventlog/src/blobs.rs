//! Content-addressed storage beside the log for bytes too big for an event (attachment
//! content). An event names a blob by its blake3 digest; the bytes are stored once however
//! many messages carry them.
//!
//! Durability follows the log's rule: `put` returns only after the file and its folder
//! entry are on disk, so an event that names a digest never outlives its bytes.
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct BlobStore {
    dir: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn valid_digest(digest: &str) -> bool {
    digest.len() == 64
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

impl BlobStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<BlobStore> {
        fs::create_dir_all(dir.join("tmp"))?;
        Ok(BlobStore {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(&digest[..2]).join(digest)
    }

    /// Hex blake3 of `bytes`: the name `put` stores them under.
    pub fn digest(bytes: &[u8]) -> String {
        blake3::hash(bytes).to_hex().to_string()
    }

    /// Stores `bytes` durably and returns their digest; storing the same bytes again is free.
    pub fn put(&self, bytes: &[u8]) -> Result<String> {
        let digest = Self::digest(bytes);
        let path = self.path(&digest);
        if path.exists() {
            return Ok(digest);
        }
        let shard = self.dir.join(&digest[..2]);
        fs::create_dir_all(&shard)?;
        let tmp = self.dir.join("tmp").join(format!(
            "{}-{}-{}",
            &digest[..16],
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        // rename is atomic: a reader sees the whole blob or none, and two writers of the same
        // bytes both end with the same file.
        fs::rename(&tmp, &path)?;
        sync_dir(&shard)?;
        Ok(digest)
    }

    /// The bytes stored under `digest`, checked against it.
    pub fn get(&self, digest: &str) -> Result<Vec<u8>> {
        if !valid_digest(digest) {
            return Err(Error::InvalidInput(format!(
                "not a blob digest: {digest:?}"
            )));
        }
        let bytes = fs::read(self.path(digest))?;
        if Self::digest(&bytes) != digest {
            return Err(Error::Corrupt {
                position: 0,
                reason: format!("blob {digest} does not match its digest"),
            });
        }
        Ok(bytes)
    }

    pub fn contains(&self, digest: &str) -> bool {
        valid_digest(digest) && self.path(digest).exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_dedupe_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d1 = store.put(b"hello").unwrap();
        let d2 = store.put(b"hello").unwrap();
        assert_eq!(d1, d2);
        assert_eq!(store.get(&d1).unwrap(), b"hello");
        assert!(store.contains(&d1));
        assert!(store.get("../etc/passwd").is_err());
        fs::write(store.path(&d1), b"changed").unwrap();
        assert!(matches!(store.get(&d1), Err(Error::Corrupt { .. })));
    }
}
