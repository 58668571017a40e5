//! AES-256-GCM sealing of the secrets that events carry (relay passwords, callback signing
//! secrets) under the master key from configuration.
//!
//! Every seal binds a *context* as associated data: the tenant (and the relay) the secret
//! belongs to. A sealed value copied into another tenant's or another relay's event then
//! fails to open instead of quietly lending its secret to someone else.
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use domain::mail_settings::Sealed;
use uuid::Uuid;

use crate::error::{Error, Result};

const NONCE_LEN: usize = 12;

/// The context of the key that signs one-click unsubscribe tokens
/// (`inbound::unsubscribe::token`): the dispatcher makes them, the API verifies them, both
/// with `master_key.derive(UNSUBSCRIBE_KEY_CONTEXT)`.
pub const UNSUBSCRIBE_KEY_CONTEXT: &str = "postledger unsubscribe token v1";

/// The master key. Cloning shares nothing mutable; `Debug` never shows the key.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
}

impl MasterKey {
    pub fn from_bytes(key: [u8; 32]) -> MasterKey {
        MasterKey { key }
    }

    /// A key for one purpose, derived from the master key with blake3's key derivation
    /// (`context` should be a hard-coded, unique, versioned string). A derived key reveals
    /// nothing about the master key or about keys derived for other contexts, so a key
    /// handed to another part of the system (the unsubscribe token signer) cannot open
    /// sealed secrets.
    pub fn derive(&self, context: &str) -> [u8; 32] {
        blake3::derive_key(context, &self.key)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.key.into())
    }

    /// Seals `plaintext` with a fresh random 96-bit nonce and `context` as associated data.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Sealed> {
        let mut nonce = [0u8; NONCE_LEN];
        // A random nonce per seal: the key seals few secrets, far below the 2^32 seals after
        // which random 96-bit nonces start to risk a collision.
        getrandom::fill(&mut nonce).map_err(|e| Error::Crypto(e.to_string()))?;
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .map_err(|_| Error::Crypto("AES-GCM encryption failed".into()))?;
        Ok(Sealed {
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ciphertext),
        })
    }

    /// Opens what [`MasterKey::seal`] produced. [`Error::Unseal`] when the key, the context
    /// or any byte differs (malformed hex included: it is an altered value too).
    pub fn open(&self, sealed: &Sealed, context: &[u8]) -> Result<Vec<u8>> {
        let nonce = hex::decode(&sealed.nonce).map_err(|_| Error::Unseal)?;
        if nonce.len() != NONCE_LEN {
            return Err(Error::Unseal);
        }
        let ciphertext = hex::decode(&sealed.ciphertext).map_err(|_| Error::Unseal)?;
        self.cipher()
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| Error::Unseal)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// The context of a relay's SMTP password.
pub fn relay_password_context(tenant: Uuid, relay: Uuid) -> Vec<u8> {
    let mut c = b"postledger relay password\0".to_vec();
    c.extend_from_slice(tenant.as_bytes());
    c.extend_from_slice(relay.as_bytes());
    c
}

/// The context of a tenant's delivery-callback signing secret.
pub fn callback_secret_context(tenant: Uuid) -> Vec<u8> {
    let mut c = b"postledger callback secret\0".to_vec();
    c.extend_from_slice(tenant.as_bytes());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MasterKey {
        MasterKey::from_bytes([b; 32])
    }

    #[test]
    fn round_trip() {
        let ctx = relay_password_context(Uuid::from_u128(1), Uuid::from_u128(2));
        let sealed = key(1).seal(b"hunter2", &ctx).unwrap();
        assert_eq!(sealed.nonce.len(), 24);
        assert!(!sealed.ciphertext.contains(&hex::encode(b"hunter2")));
        assert_eq!(key(1).open(&sealed, &ctx).unwrap(), b"hunter2");
        let empty = key(1).seal(b"", &ctx).unwrap();
        assert_eq!(key(1).open(&empty, &ctx).unwrap(), b"");
    }

    #[test]
    fn wrong_key_context_or_bytes_do_not_open() {
        let tenant = Uuid::from_u128(1);
        let ctx = callback_secret_context(tenant);
        let sealed = key(1).seal(b"secret", &ctx).unwrap();
        assert!(matches!(key(2).open(&sealed, &ctx), Err(Error::Unseal)));
        assert!(matches!(
            key(1).open(&sealed, &callback_secret_context(Uuid::from_u128(9))),
            Err(Error::Unseal)
        ));
        assert!(matches!(
            key(1).open(&sealed, &relay_password_context(tenant, Uuid::nil())),
            Err(Error::Unseal)
        ));
        let mut bytes = hex::decode(&sealed.ciphertext).unwrap();
        bytes[0] ^= 1;
        let flipped = Sealed {
            nonce: sealed.nonce.clone(),
            ciphertext: hex::encode(bytes),
        };
        assert!(matches!(key(1).open(&flipped, &ctx), Err(Error::Unseal)));
        let bad_nonce = Sealed {
            nonce: "00".into(),
            ciphertext: sealed.ciphertext.clone(),
        };
        assert!(matches!(key(1).open(&bad_nonce, &ctx), Err(Error::Unseal)));
        let not_hex = Sealed {
            nonce: sealed.nonce.clone(),
            ciphertext: "zz".into(),
        };
        assert!(matches!(key(1).open(&not_hex, &ctx), Err(Error::Unseal)));
    }

    #[test]
    fn two_seals_of_the_same_plaintext_differ() {
        let ctx = callback_secret_context(Uuid::from_u128(1));
        let a = key(1).seal(b"same", &ctx).unwrap();
        let b = key(1).seal(b"same", &ctx).unwrap();
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn debug_hides_the_key() {
        let s = format!("{:?}", MasterKey::from_bytes([0xab; 32]));
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
    }

    #[test]
    fn derived_keys_depend_on_the_master_key_and_the_context() {
        let a = key(1).derive(UNSUBSCRIBE_KEY_CONTEXT);
        assert_eq!(a, key(1).derive(UNSUBSCRIBE_KEY_CONTEXT));
        assert_ne!(a, key(2).derive(UNSUBSCRIBE_KEY_CONTEXT));
        assert_ne!(a, key(1).derive("another purpose"));
        assert_ne!(a, [1u8; 32]);
        assert_eq!(a, blake3::derive_key(UNSUBSCRIBE_KEY_CONTEXT, &[1u8; 32]));
    }

    #[test]
    fn contexts_are_distinct() {
        let t = Uuid::from_u128(1);
        assert_ne!(
            relay_password_context(t, Uuid::nil()),
            callback_secret_context(t)
        );
        assert!(relay_password_context(t, Uuid::nil()).starts_with(b"postledger relay password\0"));
    }
}
