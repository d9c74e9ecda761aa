//! The published metadata's rows (`meshanics_metadata`, migration 3): publishing them in one
//! transaction with the audit row, and reading back only the rows that changed.

use std::collections::BTreeMap;

use deadpool_postgres::Pool;

use super::{AuditEntry, CHANNEL, ConnectionError, Database};

/// The advisory lock a publish holds for its transaction, so replicas publish one at a time
/// and each checks against the rows as they are ("meshpub" in ASCII).
const PUBLISH_LOCK: i64 = 0x006d_6573_6870_7562;

/// What a reload read: every row's sha256 (hex), and the bytes of the rows this replica did
/// not have as they are.
#[derive(Debug, Default)]
pub(crate) struct PublishedRows {
    /// Every published file's sha256 (hex), by name.
    pub(crate) digests: BTreeMap<String, String>,
    /// The bytes of the files that changed, by name.
    pub(crate) fetched: BTreeMap<String, bytes::Bytes>,
}

/// What `decide` returns to a publish: its result, the files to store, the audit entry
/// (none: nothing to store).
pub(crate) type Decided<T> = (T, Writes, Option<AuditEntry>);

/// Files to store (or stored), by name, in order.
pub(crate) type Writes = Vec<(String, Vec<u8>)>;

// === impl Database ===

impl Database {
    /// The published files, fetching the bytes of those whose sha256 is not `known`'s.
    pub(in crate::connections) fn load_published(
        &self,
        known: BTreeMap<String, String>,
    ) -> Result<PublishedRows, ConnectionError> {
        let pool = self.pool.clone();
        self.call("loading published metadata from", async move {
            load(&pool, &known).await
        })
    }

    /// A publish: under the publish lock, `decide` gets the published files and returns its
    /// result, the files to store and the audit entry; those are written in the same
    /// transaction, with a notification. `decide` refusing rolls everything back.
    pub(in crate::connections) fn publish<T: Send + 'static, E: Send + 'static>(
        &self,
        decide: impl FnOnce(&BTreeMap<String, Vec<u8>>) -> Result<Decided<T>, E> + Send + 'static,
    ) -> Result<Result<(T, Writes), E>, ConnectionError> {
        let pool = self.pool.clone();
        self.call("publishing to", async move {
            let failed = |e: tokio_postgres::Error| e.to_string();
            let mut client = pool.get().await.map_err(|e| e.to_string())?;
            let tx = client.transaction().await.map_err(failed)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PUBLISH_LOCK])
                .await
                .map_err(failed)?;
            let rows = tx
                .query("SELECT name, bytes FROM meshanics_metadata", &[])
                .await
                .map_err(failed)?;
            let current = rows
                .iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .collect::<Result<BTreeMap<String, Vec<u8>>, tokio_postgres::Error>>()
                .map_err(failed)?;
            let (result, writes, audit) = match decide(&current) {
                Ok(decided) => decided,
                // Dropping the transaction rolls it back (nothing was written).
                Err(refused) => return Ok(Err(refused)),
            };
            let Some(audit) = audit else {
                return Ok(Ok((result, writes)));
            };
            for (name, bytes) in &writes {
                tx.execute(
                    "INSERT INTO meshanics_metadata (name, bytes, published_by) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET bytes = EXCLUDED.bytes, \
                     published_by = EXCLUDED.published_by, published_at = now()",
                    &[name, bytes, &audit.operator],
                )
                .await
                .map_err(failed)?;
            }
            tx.execute(
                "INSERT INTO meshanics_audit (operator, action, subject) VALUES ($1, $2, $3)",
                &[&audit.operator, &audit.action, &audit.subject],
            )
            .await
            .map_err(failed)?;
            tx.execute("SELECT pg_notify($1, 'metadata')", &[&CHANNEL])
                .await
                .map_err(failed)?;
            tx.commit().await.map_err(failed)?;
            Ok(Ok((result, writes)))
        })
    }
}

/// Reads every row's sha256, then the bytes of the rows `known` does not have as they are.
pub(super) async fn load(
    pool: &Pool,
    known: &BTreeMap<String, String>,
) -> Result<PublishedRows, String> {
    let failed = |e: tokio_postgres::Error| e.to_string();
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(
            "SELECT name, encode(sha256(bytes), 'hex') FROM meshanics_metadata",
            &[],
        )
        .await
        .map_err(failed)?;
    let digests = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<BTreeMap<String, String>, tokio_postgres::Error>>()
        .map_err(failed)?;
    let wanted: Vec<&String> = digests
        .iter()
        .filter(|(name, sha256)| known.get(*name) != Some(*sha256))
        .map(|(name, _)| name)
        .collect();
    let mut fetched = BTreeMap::new();
    if !wanted.is_empty() {
        let rows = client
            .query(
                "SELECT name, bytes, encode(sha256(bytes), 'hex') FROM meshanics_metadata \
                 WHERE name = ANY($1)",
                &[&wanted],
            )
            .await
            .map_err(failed)?;
        for row in rows {
            let name: String = row.try_get(0).map_err(failed)?;
            let bytes: Vec<u8> = row.try_get(1).map_err(failed)?;
            let sha256: String = row.try_get(2).map_err(failed)?;
            // Republished between the two reads: keep only a pair that belongs together.
            if digests.get(&name) == Some(&sha256) {
                fetched.insert(name, bytes::Bytes::from(bytes));
            }
        }
    }
    Ok(PublishedRows { digests, fetched })
}
