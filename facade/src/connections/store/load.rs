//! Loading the store at start: every record opened, records of the first format migrated
//! once.
//!
//! The first format sealed a record's secret with only its host as associated data, and
//! anonymous records not at all. At the first start of a facade that knows the current format,
//! each such record is opened the old way, sealed again with all its public fields as
//! associated data, and written back atomically (logged); then a marker file says the store is
//! migrated. From then on a record of the first format (an old backup restored over a migrated
//! record, say) is refused instead of being trusted once more.

use zeroize::Zeroizing;

use super::{
    BTreeMap, ConnectionCredentials, ConnectionError, Entry, Path, ProviderKind, Registry, Store,
    StoredRecord, fs_error, io, write_atomic_with_mode,
};
use crate::seal;

/// The marker that the store holds only records of the current format, and its content.
const MIGRATED_MARKER: &str = "format";
const MIGRATED_CONTENT: &[u8] = b"2\n";

// === impl Store ===

impl Store {
    /// Opens every record in the store's folder; migrates the first format unless the marker
    /// says that was done, then writes the marker.
    pub(super) fn load(&self) -> Result<BTreeMap<Registry, Entry>, ConnectionError> {
        let marker = self.dir.join(MIGRATED_MARKER);
        let migrated = match std::fs::symlink_metadata(&marker) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io("reading", &marker)(e)),
        };
        let mut records = BTreeMap::new();
        let listing = std::fs::read_dir(&self.dir).map_err(io("listing", &self.dir))?;
        for item in listing {
            let path = item.map_err(io("listing", &self.dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let (registry, entry) = self.load_one(&path, migrated)?;
            if records.insert(registry, entry).is_some() {
                return Err(ConnectionError::Corrupt {
                    path,
                    reason: "another record names the same registry".into(),
                });
            }
        }
        if !migrated {
            write_atomic_with_mode(&marker, MIGRATED_CONTENT, 0o600).map_err(fs_error)?;
        }
        Ok(records)
    }

    fn load_one(&self, path: &Path, migrated: bool) -> Result<(Registry, Entry), ConnectionError> {
        let corrupt = |reason: String| ConnectionError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(io("reading", path))?;
        let record: StoredRecord =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let (registry, entry, first_format) = self.open_record(record, path, migrated)?;
        if first_format {
            // Sealed again by open_record with all its public fields: written back.
            self.write_to(path, &entry.record)?;
            tracing::info!(
                host = %entry.record.host,
                path = %path.display(),
                "connection record migrated: all its public fields are now authenticated"
            );
        }
        Ok((registry, entry))
    }

    /// Opens a record read from `path` (a file, or a database row named as one); whether it
    /// was of the first format (accepted only while `migrated` is false).
    pub(super) fn open_record(
        &self,
        mut record: StoredRecord,
        path: &Path,
        migrated: bool,
    ) -> Result<(Registry, Entry, bool), ConnectionError> {
        let corrupt = |reason: String| ConnectionError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let unopenable = |source| ConnectionError::Unopenable {
            path: path.to_owned(),
            source,
        };
        let registry = Registry::parse(&record.host).map_err(|e| corrupt(e.to_string()))?;
        let first_format = record.sealed.as_deref().is_none_or(seal::is_v1);
        if first_format && migrated {
            return Err(ConnectionError::Legacy {
                path: path.to_owned(),
                host: record.host,
            });
        }
        let secret = match &record.sealed {
            Some(sealed) if first_format => {
                self.key.open_v1(&record.host, sealed).map_err(unopenable)?
            }
            Some(sealed) => self
                .key
                .open(&record.host, &record.associated_data(), sealed)
                .map_err(unopenable)?,
            None if record.provider == ProviderKind::Anonymous => Zeroizing::new(Vec::new()),
            None => return Err(corrupt("the record holds no sealed secret".into())),
        };
        let credentials = ConnectionCredentials::from_secret(
            record.provider,
            record.username.as_deref(),
            &secret,
        )
        .map_err(|reason| ConnectionError::InvalidCredentials {
            host: record.host.clone(),
            reason,
        })?;
        if first_format {
            self.seal(&mut record, &credentials)?;
        }
        Ok((
            registry,
            Entry {
                record,
                credentials: credentials.into(),
                generation: self.next_generation(),
            },
            first_format,
        ))
    }
}
