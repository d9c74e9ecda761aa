//! Ed25519 keys as metadata names them: the [`KeyId`] (sha256 of the raw 32-byte public
//! key), the [`PublicKey`] a root lists, and the [`SigningKey`] `meshctl` signs with offline.
//!
//! On disk (docs/metadata.md, "Key files"): a private key is PEM `PRIVATE KEY` (PKCS#8 v1,
//! RFC 8410), a public key PEM `PUBLIC KEY` (SubjectPublicKeyInfo, RFC 8410). Both are what
//! OpenSSL and Python's `cryptography` read and write for Ed25519.

use std::fmt;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use super::error::MetadataError;

/// A key id: the sha256 of the raw 32-byte Ed25519 public key. On the wire, a 32-byte CBOR
/// byte string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId([u8; 32]);

/// An Ed25519 public key that verifies with `verify_strict` (no small-order keys, no
/// malleable signatures).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

/// An Ed25519 private key, for signing metadata offline. Never travels to the facade or a
/// device.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

/// 32 bytes that serialize as a CBOR byte string (not an array of integers, which is what
/// serde does with `[u8; 32]`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bytes32(pub(crate) [u8; 32]);

// === impl KeyId ===

impl KeyId {
    /// The id of a raw 32-byte public key.
    pub fn of(public: &[u8; 32]) -> Self {
        KeyId(Sha256::digest(public).into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key id from raw bytes, if there are exactly 32 of them.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(KeyId)
    }
}

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

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Bytes32(self.0).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Bytes32::deserialize(deserializer).map(|b| KeyId(b.0))
    }
}

// === impl PublicKey ===

impl PublicKey {
    /// A public key from its raw 32 bytes; refuses points that are not valid or are weak
    /// (small order), which `verify_strict` would refuse anyway.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, MetadataError> {
        let key =
            ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|e| MetadataError::Key {
                what: hex::encode(bytes),
                reason: format!("not an Ed25519 public key: {e}"),
            })?;
        if key.is_weak() {
            return Err(MetadataError::Key {
                what: hex::encode(bytes),
                reason: "a weak (small-order) Ed25519 public key".to_owned(),
            });
        }
        Ok(PublicKey(key))
    }

    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) document.
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, MetadataError> {
        let key = ed25519_dalek::VerifyingKey::from_public_key_pem(pem).map_err(|e| {
            MetadataError::Key {
                what: what.to_owned(),
                reason: format!("not a PEM Ed25519 public key: {e}"),
            }
        })?;
        Self::from_bytes(key.as_bytes())
    }

    /// The PEM `PUBLIC KEY` (SubjectPublicKeyInfo) form.
    pub fn to_pem(&self) -> Result<String, MetadataError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| MetadataError::Key {
                what: self.id().to_string(),
                reason: format!("encoding as PEM: {e}"),
            })
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The key id.
    pub fn id(&self) -> KeyId {
        KeyId::of(self.0.as_bytes())
    }

    /// Whether `signature` is this key's strict Ed25519 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        self.0.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

// === impl SigningKey ===

impl SigningKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, MetadataError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| MetadataError::Key {
            what: "generation".to_owned(),
            reason: format!("no randomness from the operating system: {e}"),
        })?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// A key from its raw 32-byte seed (RFC 8032's private key).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// Reads a PEM `PRIVATE KEY` (PKCS#8 v1 or v2, RFC 8410) document; `what` names it in
    /// errors (usually the file).
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, MetadataError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(SigningKey)
            .map_err(|e| MetadataError::Key {
                what: what.to_owned(),
                reason: format!("not a PEM PKCS#8 Ed25519 private key: {e}"),
            })
    }

    /// The PEM `PRIVATE KEY` form: PKCS#8 v1 (seed only), the form OpenSSL writes.
    pub fn to_pem(&self) -> Result<String, MetadataError> {
        let bytes = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        };
        bytes
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.as_str().to_owned())
            .map_err(|e| MetadataError::Key {
                what: self.public().id().to_string(),
                reason: format!("encoding as PEM: {e}"),
            })
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The key id of the public half.
    pub fn id(&self) -> KeyId {
        self.public().id()
    }

    /// The Ed25519 signature of `message` (64 bytes).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer as _;
        self.0.sign(message).to_bytes().to_vec()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.id())
    }
}

// === impl Bytes32 ===

impl Serialize for Bytes32 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes32 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes32Visitor;

        impl Visitor<'_> for Bytes32Visitor {
            type Value = Bytes32;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string of 32 bytes")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes32, E> {
                v.try_into()
                    .map(Bytes32)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }

        deserializer.deserialize_bytes(Bytes32Visitor)
    }
}

impl fmt::Debug for Bytes32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
