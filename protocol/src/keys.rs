//! Ed25519 keys for signing modules, and the ids that name them.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a key file: expected one line `agad-{kind}-key <hex>`")]
    Format { kind: &'static str },
    #[error("key bytes are invalid: {0}")]
    Invalid(String),
}

/// First 8 bytes of the SHA-256 of a public key; names the key in manifests.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A publisher's signing key. Its file form is `agad-secret-key <hex>`.
pub struct SecretKey(SigningKey);

/// A key a node trusts. Its file form is `agad-public-key <hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl SecretKey {
    pub fn generate() -> SecretKey {
        SecretKey(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    pub fn to_text(&self) -> String {
        format!("agad-secret-key {}\n", hex::encode(self.0.to_bytes()))
    }

    pub fn from_text(text: &str) -> Result<SecretKey, KeyError> {
        let bytes: [u8; 32] = parse_key_line(text, "secret")?;
        Ok(SecretKey(SigningKey::from_bytes(&bytes)))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(id {})", self.public().id())
    }
}

impl PublicKey {
    pub fn id(&self) -> KeyId {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// Strict verification: refuses non-canonical and small-order encodings.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.0
            .verify_strict(message, &Signature::from_bytes(signature))
            .is_ok()
    }

    pub fn to_text(&self) -> String {
        format!("agad-public-key {}\n", hex::encode(self.0.as_bytes()))
    }

    pub fn from_text(text: &str) -> Result<PublicKey, KeyError> {
        let bytes: [u8; 32] = parse_key_line(text, "public")?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| KeyError::Invalid(e.to_string()))
    }
}

fn parse_key_line(text: &str, kind: &'static str) -> Result<[u8; 32], KeyError> {
    let mut words = text.split_whitespace();
    let (Some(tag), Some(hex_key), None) = (words.next(), words.next(), words.next()) else {
        return Err(KeyError::Format { kind });
    };
    if tag != format!("agad-{kind}-key") {
        return Err(KeyError::Format { kind });
    }
    let bytes = hex::decode(hex_key).map_err(|e| KeyError::Invalid(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|_| KeyError::Invalid("expected 32 bytes".into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_text() {
        let secret = SecretKey::generate();
        let again = SecretKey::from_text(&secret.to_text()).unwrap();
        assert_eq!(again.public(), secret.public());
        let public = PublicKey::from_text(&secret.public().to_text()).unwrap();
        assert_eq!(public.id(), secret.public().id());
    }

    #[test]
    fn a_secret_key_is_not_a_public_key() {
        let secret = SecretKey::generate();
        assert!(PublicKey::from_text(&secret.to_text()).is_err());
    }

    #[test]
    fn signatures_verify_only_for_their_message() {
        let secret = SecretKey::generate();
        let sig = secret.sign(b"hello");
        assert!(secret.public().verify(b"hello", &sig));
        assert!(!secret.public().verify(b"hellp", &sig));
        assert!(!SecretKey::generate().public().verify(b"hello", &sig));
    }
}
