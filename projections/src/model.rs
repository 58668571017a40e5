use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};

/// Model keys are stored under `m`, the checkpoint under `c`: one tree holds both, so one
/// `apply_batch` writes a read-model update and its checkpoint atomically.
const MODEL: u8 = b'm';
const CHECKPOINT: &[u8] = b"c";

pub(crate) fn model_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(MODEL);
    k.extend_from_slice(key);
    k
}

pub(crate) fn read_checkpoint(tree: &sled::Tree) -> Result<u64> {
    Ok(tree
        .get(CHECKPOINT)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// The pending writes of one batch of events over a projector's tree. Reads see the
/// batch's own earlier writes, so a projector can read-modify-write across events.
pub struct ModelWrite<'a> {
    tree: &'a sled::Tree,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> ModelWrite<'a> {
    pub(crate) fn new(tree: &'a sled::Tree) -> Self {
        ModelWrite {
            tree,
            pending: BTreeMap::new(),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        let k = model_key(key);
        match self.pending.get(&k) {
            Some(Some(v)) => decode(v).map(Some),
            Some(None) => Ok(None),
            None => match self.tree.get(&k)? {
                Some(v) => decode(&v).map(Some),
                None => Ok(None),
            },
        }
    }

    pub fn put<T: Serialize>(&mut self, key: &[u8], value: &T) -> Result<()> {
        self.pending.insert(model_key(key), Some(encode(value)?));
        Ok(())
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.pending.insert(model_key(key), None);
    }

    /// Writes the batch and the checkpoint in one atomic sled batch.
    pub(crate) fn commit(self, checkpoint: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (k, v) in self.pending {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch.insert(CHECKPOINT, &checkpoint.to_be_bytes());
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

/// Read access to a projector's model, for queries.
#[derive(Clone)]
pub struct ModelRead {
    tree: sled::Tree,
}

impl ModelRead {
    pub(crate) fn new(tree: sled::Tree) -> Self {
        ModelRead { tree }
    }

    pub fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.tree.get(model_key(key))? {
            Some(v) => decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Values under `prefix`, in key order, starting after `after` (a full key, exclusive).
    pub fn scan<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, T)>> {
        let p = model_key(prefix);
        let iter = match after {
            Some(a) => {
                let mut start = model_key(a);
                start.push(0);
                self.tree.range(start..)
            }
            None => self.tree.range(p.clone()..),
        };
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&p) || out.len() >= max {
                break;
            }
            out.push((k[1..].to_vec(), decode(&v)?));
        }
        Ok(out)
    }

    pub fn checkpoint(&self) -> Result<u64> {
        read_checkpoint(&self.tree)
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| Error::Corrupt(e.to_string()))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| Error::Corrupt(e.to_string()))
}
