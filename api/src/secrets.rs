//! Secrets: the server pepper, API key and operator token hashing.
//!
//! API keys are stored only as a blake3 hash keyed with a key derived from the pepper, so a
//! copy of the data folder without the pepper cannot confirm a guessed key.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

#[derive(Clone)]
pub struct Secrets {
    pepper: [u8; 32],
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

const PEPPER_FILE: &str = "pepper";
const OPERATOR_TOKEN_FILE: &str = "operator-token";

fn secrets_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets")
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

pub fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(b)
}

impl Secrets {
    pub fn from_hex(hex_pepper: &str) -> anyhow::Result<Secrets> {
        let bytes = hex::decode(hex_pepper.trim())?;
        let pepper: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("wrong length"))?;
        Ok(Secrets { pepper })
    }

    /// The development default: a pepper generated on first start and kept in the data
    /// folder. Production mode refuses it.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Secrets> {
        let dir = secrets_dir(data_dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(PEPPER_FILE);
        if !path.exists() {
            write_private(&path, &hex::encode(random_bytes::<32>()?))?;
        }
        let text = std::fs::read_to_string(&path)?;
        Secrets::from_hex(&text).with_context(|| format!("corrupt pepper in {}", path.display()))
    }

    /// Hex of the keyed blake3 hash of an API key or operator token.
    pub fn token_hash(&self, token: &str) -> String {
        let key = blake3::derive_key("postledger api key hash v1", &self.pepper);
        blake3::keyed_hash(&key, token.as_bytes())
            .to_hex()
            .to_string()
    }

    /// The key of the event log's payload digests.
    pub fn payload_key(&self) -> [u8; 32] {
        blake3::derive_key("postledger payload digest v1", &self.pepper)
    }
}

const MASTER_KEY_FILE: &str = "master-key";

pub fn master_key_from_hex(text: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(text.trim())?
        .try_into()
        .map_err(|_| anyhow::anyhow!("wrong length"))
}

/// The development default master key: generated on first start beside the pepper.
/// Production mode refuses it, because a copy of the folder would then hold the key to the
/// relay passwords it seals.
pub fn load_or_create_master_key(data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let dir = secrets_dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join(MASTER_KEY_FILE);
    if !path.exists() {
        write_private(&path, &hex::encode(random_bytes::<32>()?))?;
    }
    let text = std::fs::read_to_string(&path)?;
    master_key_from_hex(&text).with_context(|| format!("corrupt master key in {}", path.display()))
}

/// A new API key secret: `pl_` and 64 hex characters (256 bits).
pub fn new_api_key() -> anyhow::Result<String> {
    Ok(format!("pl_{}", hex::encode(random_bytes::<32>()?)))
}

/// The operator token: created on first start, kept in a private file whose path is printed.
pub fn operator_token(data_dir: &Path) -> anyhow::Result<(String, PathBuf, bool)> {
    let dir = secrets_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(OPERATOR_TOKEN_FILE);
    let created = if path.exists() {
        false
    } else {
        write_private(
            &path,
            &format!("plop_{}", hex::encode(random_bytes::<32>()?)),
        )?;
        true
    };
    let token = std::fs::read_to_string(&path)?.trim().to_string();
    if !token.starts_with("plop_") {
        bail!("{} does not hold an operator token", path.display());
    }
    Ok((token, path, created))
}

/// Reads the operator token without creating it (for the CLI talking to a server).
pub fn read_operator_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = secrets_dir(data_dir).join(OPERATOR_TOKEN_FILE);
    Ok(std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the operator token at {}", path.display()))?
        .trim()
        .to_string())
}
