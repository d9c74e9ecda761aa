//! The PostgreSQL backend's records in memory: opened at start, replaced by each reload.
//!
//! A reload keeps a connection's opened entry (its generation, so its client and cloud
//! tokens) while its row is unchanged, opens a changed or new row, and drops (with the
//! removal hooks) a connection whose row is gone. A row that does not open under this
//! replica's master key stops the facade at start (exit 64, as a file would); at a reload it
//! is left out and logged, since stopping a serving replica would not make it open.

use std::path::PathBuf;

use super::{BTreeMap, ConnectionError, Entry, Registry, Store, StoredRecord};

// === impl Store ===

impl Store {
    /// Opens the record of a database row.
    pub(super) fn open_row(
        &self,
        host: &str,
        json: &str,
    ) -> Result<(Registry, Entry), ConnectionError> {
        let origin = row_origin(host);
        let record: StoredRecord =
            serde_json::from_str(json).map_err(|e| ConnectionError::Corrupt {
                path: origin.clone(),
                reason: e.to_string(),
            })?;
        if record.host != host {
            return Err(ConnectionError::Corrupt {
                path: origin,
                reason: format!("the record names {}", record.host),
            });
        }
        // Rows are only ever written in the current format: one of the first is refused.
        let (registry, entry, _) = self.open_record(record, &origin, true)?;
        Ok((registry, entry))
    }

    /// Replaces the records in memory with the database's `rows` (host, record JSON).
    pub(crate) fn apply(&self, rows: Vec<(String, String)>) {
        let removed: Vec<Registry> = {
            let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
            let mut next = BTreeMap::new();
            for (host, json) in rows {
                let unchanged = Registry::parse(&host).ok().and_then(|registry| {
                    let entry = records.remove(&registry)?;
                    let same = serde_json::from_str::<StoredRecord>(&json)
                        .is_ok_and(|record| record == entry.record);
                    if same {
                        Some((registry, entry))
                    } else {
                        records.insert(registry, entry);
                        None
                    }
                });
                if let Some((registry, entry)) = unchanged {
                    next.insert(registry, entry);
                    continue;
                }
                match self.open_row(&host, &json) {
                    Ok((registry, entry)) => {
                        records.remove(&registry);
                        next.insert(registry, entry);
                    }
                    Err(error) => {
                        tracing::error!(%host, %error, "connection record in the state database left out");
                    }
                }
            }
            let removed = records.keys().cloned().collect();
            *records = next;
            removed
        };
        if removed.is_empty() {
            return;
        }
        let hooks = self.on_remove.read().unwrap_or_else(|p| p.into_inner());
        for registry in &removed {
            tracing::info!(host = %registry, "connection removed on another replica");
            for hook in hooks.iter() {
                hook(registry);
            }
        }
    }
}

/// How errors name a row: the table and its key.
fn row_origin(host: &str) -> PathBuf {
    PathBuf::from(format!("meshanics_connections row {host}"))
}
