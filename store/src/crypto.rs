//! Encryption at rest of provider-key values: AES-256-GCM, a fresh random
//! 96-bit nonce per value, stored as `nonce || ciphertext+tag`, with the
//! provider key's id as associated data (a value cannot be moved to another id).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};

const NONCE_LEN: usize = 12;

#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the master key must be 64 hex characters (32 bytes)")]
    BadKey,
    #[error("encryption failed")]
    Encrypt,
    #[error("decryption failed (wrong master key or corrupted value)")]
    Decrypt,
    #[error("random source: {0}")]
    Random(#[from] std::io::Error),
}

/// The 32 bytes of a 64-hex-character master key.
pub fn parse_key(hex_key: &str) -> Result<[u8; 32], CryptoError> {
    let bytes = hex::decode(hex_key.trim()).map_err(|_| CryptoError::BadKey)?;
    bytes.try_into().map_err(|_| CryptoError::BadKey)
}

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Self {
        Cipher { aead: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)) }
    }

    /// Parses a 64-hex-character key.
    pub fn from_hex(hex_key: &str) -> Result<Self, CryptoError> {
        Ok(Cipher::new(&parse_key(hex_key)?))
    }

    pub fn encrypt(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        crate::ids::fill_random(&mut nonce)?;
        let ct = self
            .aead
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: aad.as_bytes() })
            .map_err(|_| CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn decrypt(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.aead
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: aad.as_bytes() })
            .map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_aad_binding() {
        let c = Cipher::new(&[9u8; 32]);
        let a = c.encrypt("pk_1", b"sk-secret").unwrap();
        let b = c.encrypt("pk_1", b"sk-secret").unwrap();
        assert_ne!(a, b, "fresh nonce each time");
        assert_eq!(c.decrypt("pk_1", &a).unwrap(), b"sk-secret");
        assert!(c.decrypt("pk_2", &a).is_err());
        assert!(Cipher::new(&[8u8; 32]).decrypt("pk_1", &a).is_err());
        assert!(Cipher::from_hex("abcd").is_err());
        assert!(Cipher::from_hex(&"ab".repeat(32)).is_ok());
    }
}
