//! The COSE envelope: a role payload signed as a tagged COSE_Sign (RFC 9052, tag 98) with
//! one COSE_Signature per key, and the opposite direction, which refuses anything that is not
//! exactly that before it looks at a signature.
//!
//! The envelope is strict on purpose: the body headers are empty, each signature's protected
//! header is exactly `{1: -8}` (EdDSA), its unprotected header exactly `{4: kid}`. A header
//! we do not expect is a header some verifier might interpret differently.

use std::collections::HashSet;

use coset::iana;
use coset::{
    CoseSign, CoseSignBuilder, CoseSignatureBuilder, HeaderBuilder, RegisteredLabelWithPrivate,
    TaggedCborSerializable as _,
};

use super::error::MetadataError;
use super::key::{KeyId, SigningKey};
use super::role::{Peek, Role, RoleType};
use super::root::Root;

/// The one signature algorithm: COSE EdDSA (-8) with Ed25519 keys. Signers write it and
/// verifiers refuse any other value, including the newer fully-specified Ed25519 (-19).
pub const ALGORITHM: iana::Algorithm = iana::Algorithm::EdDSA;

/// The most signatures a file may carry; more is refused before any is checked, so a file
/// cannot make a device verify without end.
pub const MAX_SIGNATURES: usize = 64;

/// A decoded envelope whose structure (not yet whose signatures) is as required.
#[derive(Debug)]
pub struct Envelope {
    file: String,
    sign: CoseSign,
    payload: Vec<u8>,
}

/// Encodes a role payload to CBOR and signs it with every key given (one COSE_Signature
/// each, in order): the bytes of a metadata file.
pub fn sign<R: Role>(payload: &R, keys: &[&SigningKey]) -> Result<Vec<u8>, MetadataError> {
    let encode_error = |reason: String| MetadataError::Encode {
        role: R::TYPE,
        reason,
    };
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(payload, &mut bytes).map_err(|e| encode_error(e.to_string()))?;
    sign_payload(bytes, keys).map_err(|e| encode_error(e.to_string()))
}

/// Signs raw payload bytes as they are. [`sign`] is what callers want; this exists so tests
/// can sign payloads that are wrong on purpose.
pub fn sign_payload(payload: Vec<u8>, keys: &[&SigningKey]) -> Result<Vec<u8>, coset::CoseError> {
    let mut builder = CoseSignBuilder::new().payload(payload);
    for key in keys {
        let signature = CoseSignatureBuilder::new()
            .protected(HeaderBuilder::new().algorithm(ALGORITHM).build())
            .unprotected(
                HeaderBuilder::new()
                    .key_id(key.id().as_bytes().to_vec())
                    .build(),
            )
            .build();
        builder = builder.add_created_signature(signature, &[], |data| key.sign(data));
    }
    builder.build().to_tagged_vec()
}

// === impl Envelope ===

impl Envelope {
    /// Decodes a file into an envelope, refusing anything but a tagged COSE_Sign with empty
    /// body headers, a payload, and 1 to [`MAX_SIGNATURES`] EdDSA signatures each with a
    /// 32-byte key id.
    pub fn decode(file: &str, bytes: &[u8]) -> Result<Self, MetadataError> {
        let malformed = |reason: String| MetadataError::Envelope {
            file: file.to_owned(),
            reason,
        };
        let sign = CoseSign::from_tagged_slice(bytes)
            .map_err(|e| malformed(format!("not a tagged (98) COSE_Sign: {e}")))?;
        if !sign.protected.header.is_empty() || !sign.unprotected.is_empty() {
            return Err(malformed("the body headers must be empty".to_owned()));
        }
        let Some(payload) = sign.payload.clone() else {
            return Err(malformed("the payload is missing (detached)".to_owned()));
        };
        if sign.signatures.is_empty() || sign.signatures.len() > MAX_SIGNATURES {
            return Err(malformed(format!(
                "{} signatures, where 1 to {MAX_SIGNATURES} are allowed",
                sign.signatures.len()
            )));
        }
        for signature in &sign.signatures {
            let mut protected = signature.protected.header.clone();
            match protected.alg.take() {
                Some(RegisteredLabelWithPrivate::Assigned(alg)) if alg == ALGORITHM => {}
                other => {
                    return Err(MetadataError::Algorithm {
                        file: file.to_owned(),
                        found: other.map_or_else(|| "none".to_owned(), |a| format!("{a:?}")),
                    });
                }
            }
            if !protected.is_empty() {
                return Err(malformed(
                    "a signature's protected header holds more than the algorithm".to_owned(),
                ));
            }
            let mut unprotected = signature.unprotected.clone();
            let kid = std::mem::take(&mut unprotected.key_id);
            if KeyId::from_slice(&kid).is_none() {
                return Err(malformed(format!(
                    "a signature's key id has {} bytes, not 32",
                    kid.len()
                )));
            }
            if !unprotected.is_empty() {
                return Err(malformed(
                    "a signature's unprotected header holds more than the key id".to_owned(),
                ));
            }
        }
        Ok(Envelope {
            file: file.to_owned(),
            sign,
            payload,
        })
    }

    /// The signed payload bytes (not yet verified).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Refuses a payload whose `type` is not `expected`.
    pub fn check_role(&self, expected: RoleType) -> Result<(), MetadataError> {
        let peek: Peek = decode_exact(&self.payload).map_err(|reason| MetadataError::Payload {
            file: self.file.clone(),
            role: expected,
            reason,
        })?;
        match peek.role.as_text() {
            Some(found) if found == expected.as_str() => Ok(()),
            found => Err(MetadataError::WrongRole {
                file: self.file.clone(),
                expected,
                found: found.map_or_else(|| format!("{:?}", peek.role), str::to_owned),
            }),
        }
    }

    /// How many distinct keys authorized for `role` by `root` made a valid signature. A key
    /// id outside the role is ignored, and so is a second signature by a key already counted.
    pub fn valid_signatures(&self, root: &Root, role: RoleType) -> usize {
        let authorized = root.role_keys(role);
        let mut counted = HashSet::new();
        for signature in &self.sign.signatures {
            let Some(id) = KeyId::from_slice(&signature.unprotected.key_id) else {
                continue;
            };
            if !authorized.authorizes(&id) || counted.contains(&id) {
                continue;
            }
            let Some(key) = root.key(&id) else {
                continue;
            };
            let tbs = self.sign.tbs_data(&[], signature);
            if key.verify(&tbs, &signature.signature) {
                counted.insert(id);
            }
        }
        counted.len()
    }

    /// Refuses the file unless a threshold of `role`'s keys in `root` signed it.
    pub fn check_threshold(&self, root: &Root, role: RoleType) -> Result<(), MetadataError> {
        let valid = self.valid_signatures(root, role);
        let threshold = root.role_keys(role).threshold();
        if valid < usize::try_from(threshold).unwrap_or(usize::MAX) {
            return Err(MetadataError::BelowThreshold {
                file: self.file.clone(),
                role,
                root_version: super::role::Role::version(root),
                valid,
                threshold,
            });
        }
        Ok(())
    }

    /// Decodes and checks the payload as role `R`, refusing a payload of another role as
    /// [`MetadataError::WrongRole`].
    pub fn decode_payload<R: Role>(&self) -> Result<R, MetadataError> {
        let role: R = match decode_exact(&self.payload) {
            Ok(role) => role,
            Err(reason) => {
                // Most often another role's payload: say so rather than "unknown field".
                self.check_role(R::TYPE)?;
                return Err(MetadataError::Payload {
                    file: self.file.clone(),
                    role: R::TYPE,
                    reason,
                });
            }
        };
        if role.declared_type() != R::TYPE {
            return Err(MetadataError::WrongRole {
                file: self.file.clone(),
                expected: R::TYPE,
                found: role.declared_type().as_str().to_owned(),
            });
        }
        role.check(&self.file)?;
        Ok(role)
    }

    /// The key ids of the signatures, in file order (for display).
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.sign
            .signatures
            .iter()
            .filter_map(|s| KeyId::from_slice(&s.unprotected.key_id))
            .collect()
    }
}

/// Opens a targets or timestamp file: envelope, a threshold of the role's keys under
/// `root`, then the payload (of this role) and its format rules. Expiry and versions are the
/// workflow's business. The payload is decoded once, after the signatures: a second pass
/// just to read `type` first would cost a third of the time on a large targets file.
pub fn open<R: Role>(file: &str, bytes: &[u8], root: &Root) -> Result<R, MetadataError> {
    let envelope = Envelope::decode(file, bytes)?;
    envelope.check_threshold(root, R::TYPE)?;
    envelope.decode_payload()
}

/// Opens a root file: envelope, a threshold of the `trusted` root's root keys (if there is
/// one), the payload (a root), and a threshold of its own root keys.
pub fn open_root(file: &str, bytes: &[u8], trusted: Option<&Root>) -> Result<Root, MetadataError> {
    let envelope = Envelope::decode(file, bytes)?;
    if let Some(trusted) = trusted {
        envelope.check_threshold(trusted, RoleType::Root)?;
    }
    let root: Root = envelope.decode_payload()?;
    envelope.check_threshold(&root, RoleType::Root)?;
    Ok(root)
}

/// Decodes exactly one CBOR item of type `T` from `bytes`, refusing trailing bytes.
fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut rest = bytes;
    let value = ciborium::de::from_reader(&mut rest).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the CBOR item", rest.len()));
    }
    Ok(value)
}
