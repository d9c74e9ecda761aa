//! Sealing secrets at rest: ChaCha20-Poly1305 under the operator's master key, with the
//! registry host as associated data.
//!
//! The host is bound into every sealed record, so a record copied into another connection's
//! file (or renamed to another host) fails to open instead of lending its credential to a
//! host the operator never gave it to. A fresh random nonce per seal; the sealed form is
//! `v1:` + base64(nonce || ciphertext || tag).
//!
//! The master key is 32 random bytes, read from a file the operator provides (mode 0600 or
//! stricter, refused otherwise) or from systemd's `$CREDENTIALS_DIRECTORY/master-key`. Raw
//! bytes or 64 hex characters are both accepted.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The file name of the master key in a systemd credentials directory.
pub const CREDENTIAL_NAME: &str = "master-key";
const PREFIX: &str = "v1:";

/// The key that seals stored credentials.
pub struct MasterKey {
    key: LessSafeKey,
}

/// Why a master key could not be loaded, or a secret sealed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The key file could not be read.
    #[error("reading the master key {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file is readable by others than its owner.
    #[error(
        "the master key {path} has mode {mode:o}; it must not be readable by group or others (chmod 600)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The key file holds neither 32 raw bytes nor 64 hex characters.
    #[error("the master key {path} must hold 32 random bytes (raw, or as 64 hex characters)")]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// No key file was configured and systemd passed no credential.
    #[error("no master key: set `master_key_file` or pass the systemd credential `master-key`")]
    Missing,
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A sealed record is malformed, was sealed for another host or under another key, or
    /// was altered.
    #[error(
        "the stored secret for {host} cannot be opened (altered, moved from another host, or sealed under another master key)"
    )]
    Open {
        /// The host the record was opened for.
        host: String,
    },
}

// === impl MasterKey ===

impl MasterKey {
    /// Loads the key from `path`, or, when `path` is `None`, from
    /// `$CREDENTIALS_DIRECTORY/master-key` (`credentials_dir` is that variable's value, read
    /// once by the caller).
    pub fn load(path: Option<&Path>, credentials_dir: Option<&Path>) -> Result<Self, SealError> {
        let path = match (path, credentials_dir) {
            (Some(path), _) => path.to_owned(),
            (None, Some(dir)) => dir.join(CREDENTIAL_NAME),
            (None, None) => return Err(SealError::Missing),
        };
        let read = |source| SealError::Read {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(&path).map_err(read)?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SealError::Permissions { path, mode });
            }
        }
        let bytes = std::fs::read(&path).map_err(read)?;
        let raw = match bytes.len() {
            32 => bytes,
            _ => {
                let text = String::from_utf8_lossy(&bytes);
                hex_decode(text.trim()).ok_or_else(|| SealError::Format { path: path.clone() })?
            }
        };
        Self::from_bytes(&raw).ok_or(SealError::Format { path })
    }

    /// A key from 32 bytes.
    pub fn from_bytes(raw: &[u8]) -> Option<Self> {
        if raw.len() != 32 {
            return None;
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, raw).ok()?;
        Some(MasterKey {
            key: LessSafeKey::new(key),
        })
    }

    /// 32 fresh random bytes, hex-encoded: what `meshctl` writes for a new master key.
    pub fn generate_hex() -> Result<String, SealError> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| SealError::Random)?;
        Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Seals `secret` for `host`.
    pub fn seal(&self, host: &str, secret: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut buf = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(host.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    /// Opens a record sealed for `host`.
    pub fn open(&self, host: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let fail = || SealError::Open {
            host: host.to_owned(),
        };
        let body = sealed.strip_prefix(PREFIX).ok_or_else(fail)?;
        let bytes = STANDARD.decode(body).map_err(|_| fail())?;
        let (nonce, ciphertext) = bytes.split_at_checked(NONCE_LEN).ok_or_else(fail)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
        let mut buf = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(host.as_bytes()), &mut buf)
            .map_err(|_| fail())?;
        Ok(plain.to_vec())
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_bytes(&[7u8; 32]).unwrap()
    }

    #[test]
    fn opens_what_it_sealed_for_the_same_host() {
        let sealed = key().seal("ghcr.io", b"ghp_token").unwrap();
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("ghp_token"));
        assert_eq!(key().open("ghcr.io", &sealed).unwrap(), b"ghp_token");
    }

    #[test]
    fn refuses_a_record_moved_to_another_host() {
        let sealed = key().seal("ghcr.io", b"ghp_token").unwrap();
        let err = key().open("quay.io", &sealed).unwrap_err();
        assert!(matches!(err, SealError::Open { ref host } if host == "quay.io"));
    }

    #[test]
    fn refuses_a_record_sealed_under_another_key() {
        let sealed = key().seal("ghcr.io", b"x").unwrap();
        let other = MasterKey::from_bytes(&[8u8; 32]).unwrap();
        assert!(other.open("ghcr.io", &sealed).is_err());
    }

    #[test]
    fn refuses_an_altered_record() {
        let sealed = key().seal("ghcr.io", b"secret").unwrap();
        let mut bytes = STANDARD.decode(&sealed[3..]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let altered = format!("v1:{}", STANDARD.encode(bytes));
        assert!(key().open("ghcr.io", &altered).is_err());
        assert!(key().open("ghcr.io", "v1:AAAA").is_err());
        assert!(key().open("ghcr.io", "plain text").is_err());
    }

    #[test]
    fn uses_a_fresh_nonce_for_every_seal() {
        assert_ne!(
            key().seal("h", b"same").unwrap(),
            key().seal("h", b"same").unwrap()
        );
    }

    #[test]
    fn loads_hex_or_raw_keys_from_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let hex_path = dir.path().join("hex");
        std::fs::write(
            &hex_path,
            format!("{}\n", MasterKey::generate_hex().unwrap()),
        )
        .unwrap();
        std::fs::set_permissions(&hex_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        MasterKey::load(Some(&hex_path), None).unwrap();
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        let raw_path = creds.join(CREDENTIAL_NAME);
        std::fs::write(&raw_path, [1u8; 32]).unwrap();
        std::fs::set_permissions(&raw_path, std::fs::Permissions::from_mode(0o400)).unwrap();
        MasterKey::load(None, Some(&creds)).unwrap();
    }

    #[test]
    fn refuses_a_key_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, [1u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = MasterKey::load(Some(&path), None).unwrap_err();
        assert!(
            matches!(err, SealError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn refuses_a_key_of_the_wrong_size_and_a_missing_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, b"short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            MasterKey::load(Some(&path), None),
            Err(SealError::Format { .. })
        ));
        assert!(matches!(
            MasterKey::load(None, None),
            Err(SealError::Missing)
        ));
    }
}
