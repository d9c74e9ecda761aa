//! Sealing secrets at rest: ChaCha20-Poly1305 under the operator's master key, with
//! associated data the caller chooses.
//!
//! The connection store passes every public field of a record (host, provider, username,
//! plain HTTP, CA bundle, approval, who and when) in one canonical encoding, so a record
//! copied into another connection's file, renamed to another host, or with a single public
//! field edited fails to open instead of lending its credential to a host, a transport or a
//! CA the operator never chose. A fresh random nonce per seal; the sealed form is `v2:` +
//! base64(nonce || ciphertext || tag). The first format, `v1:`, bound only the host; it is
//! read once, to migrate ([`MasterKey::open_v1`]).
//!
//! The master key is 32 random bytes, read from a file the operator provides (mode 0600 or
//! stricter, refused otherwise) or from systemd's `$CREDENTIALS_DIRECTORY/master-key`. Raw
//! bytes or 64 hex characters are both accepted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// The file name of the master key in a systemd credentials directory.
pub const CREDENTIAL_NAME: &str = "master-key";
/// The current sealed form: the caller's associated data.
const PREFIX: &str = "v2:";
/// The first sealed form: the host alone as associated data.
const PREFIX_V1: &str = "v1:";

/// The key that seals stored credentials.
pub struct MasterKey {
    key: LessSafeKey,
    /// How many records were opened (tests check that secrets are opened once, not per use).
    opens: AtomicU64,
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
    /// was altered (its secret, or any field of its associated data).
    #[error(
        "the stored record for {host} cannot be opened: altered (a field changed without the master key), moved from another host, or sealed under another master key"
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
            opens: AtomicU64::new(0),
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

    /// Seals `secret` with `aad` as associated data.
    pub fn seal(&self, aad: &[u8], secret: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut buf = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    /// Opens a `v2:` record sealed with `aad`; `host` names it in errors.
    pub fn open(
        &self,
        host: &str,
        aad: &[u8],
        sealed: &str,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.open_as(PREFIX, host, aad, sealed)
    }

    /// Opens a record of the first format (`v1:`, the host alone as associated data): only to
    /// migrate it.
    pub fn open_v1(&self, host: &str, sealed: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.open_as(PREFIX_V1, host, host.as_bytes(), sealed)
    }

    fn open_as(
        &self,
        prefix: &str,
        host: &str,
        aad: &[u8],
        sealed: &str,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        self.opens.fetch_add(1, Ordering::Relaxed);
        let fail = || SealError::Open {
            host: host.to_owned(),
        };
        let body = sealed.strip_prefix(prefix).ok_or_else(fail)?;
        let bytes = STANDARD.decode(body).map_err(|_| fail())?;
        let (nonce, ciphertext) = bytes.split_at_checked(NONCE_LEN).ok_or_else(fail)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| fail())?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

/// Whether `sealed` is in the first format (`v1:`), which bound only the host.
pub fn is_v1(sealed: &str) -> bool {
    sealed.starts_with(PREFIX_V1)
}

impl MasterKey {
    /// How many times a record was opened with this key.
    #[cfg(test)]
    pub(crate) fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
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
    fn opens_what_it_sealed_with_the_same_associated_data() {
        let sealed = key().seal(b"ghcr.io|static", b"ghp_token").unwrap();
        assert!(sealed.starts_with("v2:"));
        assert!(!sealed.contains("ghp_token"));
        let opened = key().open("ghcr.io", b"ghcr.io|static", &sealed).unwrap();
        assert_eq!(opened.as_slice(), b"ghp_token");
    }

    #[test]
    fn refuses_a_record_whose_associated_data_changed() {
        let sealed = key().seal(b"ghcr.io|https", b"ghp_token").unwrap();
        let err = key().open("ghcr.io", b"ghcr.io|http", &sealed).unwrap_err();
        assert!(matches!(err, SealError::Open { ref host } if host == "ghcr.io"));
    }

    #[test]
    fn refuses_a_record_sealed_under_another_key() {
        let sealed = key().seal(b"a", b"x").unwrap();
        let other = MasterKey::from_bytes(&[8u8; 32]).unwrap();
        assert!(other.open("ghcr.io", b"a", &sealed).is_err());
    }

    #[test]
    fn refuses_an_altered_record() {
        let sealed = key().seal(b"a", b"secret").unwrap();
        let mut bytes = STANDARD.decode(&sealed[3..]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let altered = format!("v2:{}", STANDARD.encode(bytes));
        assert!(key().open("ghcr.io", b"a", &altered).is_err());
        assert!(key().open("ghcr.io", b"a", "v2:AAAA").is_err());
        assert!(key().open("ghcr.io", b"a", "plain text").is_err());
    }

    #[test]
    fn opens_the_first_format_only_where_asked_to() {
        // Sealed by the first format under [42; 32] for ghcr.io: "ghp_SuperSecretToken123".
        let v1 = "v1:zVoFAL6mNISVwHCq7x9YHrdc2bnPV+FkBy3E592vqUy3WTa6Z1KBsO1N7m8rS2uYkMof";
        let key = MasterKey::from_bytes(&[42u8; 32]).unwrap();
        assert!(is_v1(v1));
        let opened = key.open_v1("ghcr.io", v1).unwrap();
        assert_eq!(opened.as_slice(), b"ghp_SuperSecretToken123");
        assert!(key.open_v1("quay.io", v1).is_err());
        assert!(key.open("ghcr.io", b"ghcr.io", v1).is_err());
    }

    #[test]
    fn uses_a_fresh_nonce_for_every_seal() {
        assert_ne!(
            key().seal(b"a", b"same").unwrap(),
            key().seal(b"a", b"same").unwrap()
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
