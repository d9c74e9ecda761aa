//! The published metadata in the PostgreSQL backend: held in memory by every replica for
//! `/meta/` (a device request never waits for the database), replaced whole by each reload
//! so a device sees one publish or the next, never half of one. The files backend keeps
//! its published metadata in `metadata_dir` (see [`crate::publish`]) and has nothing here.

use std::collections::BTreeMap;

use bytes::Bytes;
use meshanics_shared::Digest;

use super::super::postgres::{Decided, PublishedRows};
use super::{ConnectionError, Store};

/// A published file in memory, with its sha256 (hex) to tell a changed row.
#[derive(Debug, Clone)]
pub(super) struct PublishedFile {
    bytes: Bytes,
    sha256: String,
}

// === impl Store ===

impl Store {
    /// Whether the state (and the published metadata) lives in a database.
    pub fn uses_database(&self) -> bool {
        self.database.is_some()
    }

    /// A published file, from memory (the PostgreSQL backend; `None` when not published).
    pub fn published_file(&self, name: &str) -> Option<Bytes> {
        let published = self.published.read().unwrap_or_else(|p| p.into_inner());
        published.get(name).map(|file| file.bytes.clone())
    }

    /// The sha256 (hex) of every published file in memory, by name.
    pub(crate) fn published_digests(&self) -> BTreeMap<String, String> {
        let published = self.published.read().unwrap_or_else(|p| p.into_inner());
        published
            .iter()
            .map(|(name, file)| (name.clone(), file.sha256.clone()))
            .collect()
    }

    /// Replaces the published files in memory with the database's: the rows listed, with the
    /// bytes fetched for those that changed and the bytes in memory for the others.
    pub(crate) fn apply_published(&self, rows: PublishedRows) {
        let mut published = self.published.write().unwrap_or_else(|p| p.into_inner());
        let mut next = BTreeMap::new();
        let mut changed = 0;
        for (name, sha256) in rows.digests {
            let file = match rows.fetched.get(&name) {
                Some(bytes) => {
                    changed += 1;
                    PublishedFile::new(bytes.clone())
                }
                // Unchanged; or republished between the reload's two reads, when the version
                // in memory is served until the next reload (its digest differs, so that
                // reload fetches it) rather than nothing.
                None => match published.get(&name) {
                    Some(file) => {
                        if file.sha256 != sha256 {
                            tracing::debug!(%name, "published file changed during the reload");
                        }
                        file.clone()
                    }
                    None => continue,
                },
            };
            next.insert(name, file);
        }
        if changed > 0 || next.len() != published.len() {
            tracing::info!(files = next.len(), changed, "published metadata reloaded");
        }
        *published = next;
    }

    /// Runs a publish in the database: `decide` gets what is published (read under the
    /// publish lock, in the transaction) and returns its result, the files to store and the
    /// audit entry; they are stored with it in the same transaction (nothing when `decide`
    /// refuses), and kept in memory at once.
    pub(crate) fn publish_in_database<T: Send + 'static, E: Send + 'static>(
        &self,
        decide: impl FnOnce(&BTreeMap<String, Vec<u8>>) -> Result<Decided<T>, E> + Send + 'static,
    ) -> Result<Result<T, E>, ConnectionError> {
        let Some(database) = &self.database else {
            return Err(ConnectionError::Database {
                action: "publishing to",
                database: "none configured".into(),
                reason: "the files backend keeps metadata in metadata_dir".into(),
            });
        };
        let (result, written) = match database.publish(decide)? {
            Ok((result, written)) => (result, written),
            Err(refused) => return Ok(Err(refused)),
        };
        let mut published = self.published.write().unwrap_or_else(|p| p.into_inner());
        for (name, bytes) in written {
            published.insert(name, PublishedFile::new(Bytes::from(bytes)));
        }
        Ok(Ok(result))
    }
}

// === impl PublishedFile ===

impl PublishedFile {
    fn new(bytes: Bytes) -> Self {
        PublishedFile {
            sha256: Digest::sha256_of(&bytes).hex().to_owned(),
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::MasterKey;

    fn sha256(bytes: &[u8]) -> String {
        Digest::sha256_of(bytes).hex().to_owned()
    }

    #[test]
    fn a_reload_keeps_unchanged_files_takes_fetched_ones_and_drops_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), MasterKey::from_bytes(&[4u8; 32]).unwrap()).unwrap();
        let rows = |digests: &[(&str, &[u8])], fetched: &[(&str, &[u8])]| PublishedRows {
            digests: digests
                .iter()
                .map(|(name, bytes)| ((*name).to_owned(), sha256(bytes)))
                .collect(),
            fetched: fetched
                .iter()
                .map(|(name, bytes)| ((*name).to_owned(), Bytes::copy_from_slice(bytes)))
                .collect(),
        };
        store.apply_published(rows(
            &[("1.root.cose", b"root"), ("timestamp.cose", b"ts1")],
            &[("1.root.cose", b"root"), ("timestamp.cose", b"ts1")],
        ));
        assert_eq!(store.published_digests()["timestamp.cose"], sha256(b"ts1"));

        // Only the changed row's bytes come; the unchanged one is kept from memory.
        store.apply_published(rows(
            &[("1.root.cose", b"root"), ("timestamp.cose", b"ts2")],
            &[("timestamp.cose", b"ts2")],
        ));
        assert_eq!(store.published_file("1.root.cose").unwrap(), &b"root"[..]);
        assert_eq!(store.published_file("timestamp.cose").unwrap(), &b"ts2"[..]);

        // A row changed again since its digest was read, without bytes: the version in
        // memory is served until the next reload fetches it; a row gone is dropped.
        store.apply_published(rows(&[("timestamp.cose", b"ts3")], &[]));
        assert_eq!(store.published_file("timestamp.cose").unwrap(), &b"ts2"[..]);
        assert_eq!(store.published_digests()["timestamp.cose"], sha256(b"ts2"));
        assert_eq!(store.published_file("1.root.cose"), None);
    }
}
