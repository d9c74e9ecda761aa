//! The PostgreSQL state backend (`[state] backend = "postgres"`): the connection records of
//! every replica of a facade cluster, their approvals, the published signed metadata
//! ([`crate::publish`]) and the operator audit log, in one database.
//!
//! Rows hold records exactly as the files backend writes them (the JSON of a sealed record):
//! the database never sees a plaintext secret, and the master key stays on the replicas, so a
//! row altered in the database does not open. Each replica keeps every record opened in memory
//! (a device request never waits for the database) and reloads them all when another replica
//! changes one (LISTEN/NOTIFY on [`CHANNEL`], within a second) and every `resync_interval`
//! (a lost notification costs that much at most). While the database is unreachable a replica
//! keeps serving the last state it loaded, for as long as that lasts (`facade_state_stale` is
//! 1, and a warning is logged: at once when the server closes the sessions, else when a reload
//! or connect gets no answer in 10 s), operator writes fail naming the database,
//! and the first reload after it is back brings the replica up to date. Pooled connections are
//! checked before reuse, so one that died silently is replaced instead of hanging each call.
//!
//! The database work runs on a thread of its own (a small tokio runtime): the store's
//! synchronous API waits for it with a timeout, from any thread or runtime.
//!
//! The schema is versioned ([`MIGRATIONS`]); a facade applies the ones the database lacks at
//! start, under an advisory lock so replicas starting together apply each once.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt as _;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, Client};
use tokio_postgres_rustls::MakeRustlsConnect;
use zeroize::Zeroizing;

use meshanics_operator_api::AuditRecord;

use super::{ConnectionError, Store};
use crate::config::PostgresConfig;

mod metadata;

pub(crate) use metadata::{Decided, PublishedRows};

/// The notification channel every write signals on (the payload is the registry host, or
/// `metadata` for a publish; replicas reload everything either way).
pub const CHANNEL: &str = "meshanics_state";
/// The systemd credential holding the database password.
pub const PASSWORD_CREDENTIAL: &str = "postgres-password";
/// The advisory lock key migrations run under ("meshanic" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d65_7368_616e_6963;
/// How long a store call waits for the database before failing.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before the listener connects again after losing the database.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The schema, one migration per version (version = index + 1). Never edit one that shipped:
/// add the next.
pub const MIGRATIONS: [&str; 3] = [
    // 1: connection records, as sealed by the replicas.
    "CREATE TABLE meshanics_connections (
        host text PRIMARY KEY,
        record text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );",
    // 2: who approved a connection and when; the operator audit log.
    "ALTER TABLE meshanics_connections
        ADD COLUMN approved_by text,
        ADD COLUMN approved_at timestamptz;
    CREATE TABLE meshanics_audit (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT now(),
        operator text NOT NULL,
        action text NOT NULL,
        subject text NOT NULL
    );",
    // 3: the published signed metadata files (`meshctl publish`), served by every replica.
    "CREATE TABLE meshanics_metadata (
        name text PRIMARY KEY,
        bytes bytea NOT NULL,
        published_by text NOT NULL,
        published_at timestamptz NOT NULL DEFAULT now()
    );",
];

/// How many stores of this process serve a state they could not refresh from their database
/// (the `facade_state_stale` gauge is 1 while any does; a facade has one store).
static STALE_STORES: AtomicUsize = AtomicUsize::new(0);

/// Whether the state served is stale: the database was unreachable at the last reload.
pub fn state_stale() -> bool {
    STALE_STORES.load(Ordering::Relaxed) > 0
}

/// Who did an operator action: the Unix peer credentials of the operator socket's client
/// (none: the facade itself, or a caller of the library).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// The client's user id, if known.
    pub uid: Option<u32>,
    /// The client's process id, if known.
    pub pid: Option<i32>,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.uid, self.pid) {
            (Some(uid), Some(pid)) => write!(f, "uid {uid} pid {pid}"),
            (Some(uid), None) => write!(f, "uid {uid}"),
            _ => f.write_str("the facade itself"),
        }
    }
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Who (see [`Actor`]), and the name they gave, if any.
    pub operator: String,
    /// What: `connect`, `approve`, `unapprove`, `remove`, `publish`.
    pub action: &'static str,
    /// On what: the registry host, or what a publish published (`targets 7, timestamp 12`).
    pub subject: String,
}

/// A change written to the database.
#[derive(Debug)]
pub(super) enum Write {
    /// A new connection; fails if the host exists.
    Insert { host: String, record: String },
    /// An approval given (`approved`, recording who and when) or withdrawn (clearing them):
    /// the record re-sealed, replacing `old` (fails if it changed meanwhile).
    Approval {
        host: String,
        old: String,
        record: String,
        approved: bool,
    },
    /// A removal.
    Delete { host: String },
}

/// The database, as the store uses it.
pub(super) struct Database {
    name: String,
    stale: Arc<AtomicBool>,
    pool: Pool,
    runtime: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A store that goes away stale no longer counts.
impl Drop for Database {
    fn drop(&mut self) {
        if self.stale.swap(false, Ordering::Relaxed) {
            STALE_STORES.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What the listener needs to connect on its own.
struct Connect {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

// === impl Database ===

impl Database {
    /// Connects (on a thread of its own), applies the migrations the database lacks, and
    /// returns the database and the records in it (host, record JSON).
    pub(super) fn open(
        settings: &PostgresConfig,
    ) -> Result<(Self, Vec<(String, String)>), ConnectionError> {
        let name = display_name(&settings.url);
        let failed = |action: &'static str, reason: String| ConnectionError::Database {
            action,
            database: name.clone(),
            reason,
        };
        let connect = connect_settings(settings).map_err(|reason| failed("configuring", reason))?;
        let manager = Manager::from_config(
            connect.config,
            connect.tls,
            ManagerConfig {
                // A pooled connection is checked with a round trip before reuse (bounded by
                // the recycle timeout), so one that died silently is replaced, not reused.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(4)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| failed("configuring", e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed("starting its client", e.to_string()))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("facade-postgres".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| failed("starting its client", e.to_string()))?;
        let database = Database {
            name,
            stale: Arc::default(),
            pool,
            runtime: handle,
            _stop: stop,
        };
        let pool = database.pool.clone();
        database.call("migrating", async move {
            let mut client = pool.get().await.map_err(|e| e.to_string())?;
            migrate(&mut client, MIGRATIONS.len()).await
        })?;
        let records = database.load()?;
        Ok((database, records))
    }

    /// Starts following changes for `store`: notifications and the periodic resync.
    pub(super) fn follow(
        &self,
        settings: &PostgresConfig,
        store: &Arc<Store>,
    ) -> Result<(), ConnectionError> {
        let connect = connect_settings(settings).map_err(|reason| ConnectionError::Database {
            action: "configuring",
            database: self.name.clone(),
            reason,
        })?;
        let listener = Listener {
            connect,
            pool: self.pool.clone(),
            name: self.name.clone(),
            resync: settings.resync_interval,
            stale: self.stale.clone(),
        };
        self.runtime.spawn(listener.run(Arc::downgrade(store)));
        Ok(())
    }

    /// Whether the last reload failed (the records in memory may be behind the database).
    pub(super) fn stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Every record (host, record JSON).
    pub(super) fn load(&self) -> Result<Vec<(String, String)>, ConnectionError> {
        let pool = self.pool.clone();
        self.call("loading connections from", async move { load(&pool).await })
    }

    /// The newest `limit` audit log entries, oldest first.
    pub(super) fn audit(&self, limit: usize) -> Result<Vec<AuditRecord>, ConnectionError> {
        let pool = self.pool.clone();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call("reading the audit log from", async move {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            let rows = client
                .query(
                    "SELECT extract(epoch FROM at)::bigint, operator, action, subject \
                     FROM meshanics_audit ORDER BY id DESC LIMIT $1",
                    &[&limit],
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut entries = rows
                .iter()
                .map(|row| {
                    let at: i64 = row.try_get(0).map_err(|e| e.to_string())?;
                    Ok(AuditRecord {
                        at: u64::try_from(at).unwrap_or(0),
                        operator: row.try_get(1).map_err(|e| e.to_string())?,
                        action: row.try_get(2).map_err(|e| e.to_string())?,
                        subject: row.try_get(3).map_err(|e| e.to_string())?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            entries.reverse();
            Ok(entries)
        })
    }

    /// Writes `change` and its audit entry in one transaction, and notifies the replicas.
    /// `Ok(false)` when the row was not as expected (exists for an insert, missing or changed
    /// for the others).
    pub(super) fn write(&self, change: Write, audit: AuditEntry) -> Result<bool, ConnectionError> {
        let pool = self.pool.clone();
        self.call("writing to", async move {
            let mut client = pool.get().await.map_err(|e| e.to_string())?;
            let tx = client.transaction().await.map_err(|e| e.to_string())?;
            let (rows, host) = match &change {
                Write::Insert { host, record } => (
                    tx.execute(
                        "INSERT INTO meshanics_connections (host, record) VALUES ($1, $2) ON CONFLICT (host) DO NOTHING",
                        &[host, record],
                    )
                    .await,
                    host,
                ),
                Write::Approval {
                    host,
                    old,
                    record,
                    approved,
                } => (
                    tx.execute(
                        "UPDATE meshanics_connections SET record = $3, \
                         approved_by = CASE WHEN $5::boolean THEN $4::text END, \
                         approved_at = CASE WHEN $5::boolean THEN now() END, \
                         updated_at = now() WHERE host = $1 AND record = $2",
                        &[host, old, record, &audit.operator, approved],
                    )
                    .await,
                    host,
                ),
                Write::Delete { host } => (
                    tx.execute("DELETE FROM meshanics_connections WHERE host = $1", &[host])
                        .await,
                    host,
                ),
            };
            let rows = rows.map_err(|e| e.to_string())?;
            if rows == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO meshanics_audit (operator, action, subject) VALUES ($1, $2, $3)",
                &[&audit.operator, &audit.action, &audit.subject],
            )
            .await
            .map_err(|e| e.to_string())?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, host])
                .await
                .map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())?;
            Ok(true)
        })
    }

    /// Runs `work` on the database's thread and waits for it (at most [`CALL_TIMEOUT`] more
    /// than the pool's own timeouts).
    fn call<T: Send + 'static>(
        &self,
        action: &'static str,
        work: impl Future<Output = Result<T, String>> + Send + 'static,
    ) -> Result<T, ConnectionError> {
        let (send, receive) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let _ = send.send(work.await);
        });
        let result = match receive.recv_timeout(CALL_TIMEOUT + CONNECT_TIMEOUT) {
            Ok(result) => result,
            Err(_) => Err("no answer in time".to_owned()),
        };
        result.map_err(|reason| ConnectionError::Database {
            action,
            database: self.name.clone(),
            reason,
        })
    }
}

/// Follows the database for one store: LISTEN on [`CHANNEL`] on a connection of its own,
/// reloading at every notification, every `resync`, and on every reconnect.
struct Listener {
    connect: Connect,
    pool: Pool,
    name: String,
    resync: Duration,
    stale: Arc<AtomicBool>,
}

impl Listener {
    async fn run(self, store: Weak<Store>) {
        loop {
            if let Err(reason) = self.listen(&store).await {
                if store.strong_count() == 0 {
                    return;
                }
                if !self.stale.swap(true, Ordering::Relaxed) {
                    STALE_STORES.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(database = %self.name, %reason, "state database unreachable: serving the last state loaded until it is back");
                }
            }
            if store.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }

    /// One connection's life: LISTEN, reload, then reload on each notification and tick.
    /// Returns when the store is gone (`Ok`) or the connection failed.
    async fn listen(&self, store: &Weak<Store>) -> Result<(), String> {
        // The client's connect timeout bounds the TCP connect alone: a server that accepts
        // and then says nothing must not hold the listener either.
        let connecting = self.connect.config.connect(self.connect.tls.clone());
        let (client, mut connection) = tokio::time::timeout(CALL_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no answer to a connect in {} s", CALL_TIMEOUT.as_secs()))?
            .map_err(|e| e.to_string())?;
        let (notify, mut notified) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<String>();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            let reason = loop {
                match messages.next().await {
                    Some(Ok(AsyncMessage::Notification(_))) => {
                        let _ = notify.send(());
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e.to_string(),
                    None => break "the connection closed".to_owned(),
                }
            };
            let _ = closed_tx.send(reason);
        });
        let result = self
            .follow(&client, store, &mut notified, &mut closed)
            .await;
        driver.abort();
        result
    }

    async fn follow(
        &self,
        client: &Client,
        store: &Weak<Store>,
        notified: &mut tokio::sync::mpsc::UnboundedReceiver<()>,
        closed: &mut tokio::sync::oneshot::Receiver<String>,
    ) -> Result<(), String> {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| e.to_string())?;
        let mut tick = tokio::time::interval(self.resync);
        loop {
            // Reload first: at start, after a reconnect (changes made meanwhile), then on
            // each notification or tick.
            // Bounded: a database host gone without closing its connections (a partition, a
            // powered-off host) would otherwise hold the reload, and hide the outage, until TCP
            // gives up minutes later.
            let rows = tokio::time::timeout(CALL_TIMEOUT, load(&self.pool))
                .await
                .map_err(|_| format!("no answer to a reload in {} s", CALL_TIMEOUT.as_secs()))??;
            let Some(strong) = store.upgrade() else {
                return Ok(());
            };
            strong.apply(rows);
            let known = strong.published_digests();
            drop(strong);
            let published = tokio::time::timeout(CALL_TIMEOUT, metadata::load(&self.pool, &known))
                .await
                .map_err(|_| format!("no answer to a reload in {} s", CALL_TIMEOUT.as_secs()))??;
            let Some(strong) = store.upgrade() else {
                return Ok(());
            };
            strong.apply_published(published);
            drop(strong);
            if self.stale.swap(false, Ordering::Relaxed) {
                STALE_STORES.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(database = %self.name, "state database back: state reloaded");
            }
            tokio::select! {
                _ = tick.tick() => {}
                got = notified.recv() => {
                    if got.is_none() {
                        return Err("the listening connection ended".into());
                    }
                    // Notifications that came together need one reload.
                    while notified.try_recv().is_ok() {}
                }
                reason = &mut *closed => {
                    return Err(reason.unwrap_or_else(|_| "the listening connection ended".into()));
                }
            }
        }
    }
}

async fn load(pool: &Pool) -> Result<Vec<(String, String)>, String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(
            "SELECT host, record FROM meshanics_connections ORDER BY host",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get(0).map_err(|e| e.to_string())?,
                row.try_get(1).map_err(|e| e.to_string())?,
            ))
        })
        .collect()
}

/// Applies the migrations up to version `target` that the database lacks, under an advisory
/// lock, each in its own transaction; returns the version it is at. A database at a version
/// newer than this facade knows is refused.
pub async fn migrate(client: &mut Client, target: usize) -> Result<usize, String> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| format!("taking the migration lock: {e}"))?;
    let result = migrate_locked(client, target).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| format!("releasing the migration lock: {e}"));
    let version = result?;
    unlocked?;
    Ok(version)
}

async fn migrate_locked(client: &mut Client, target: usize) -> Result<usize, String> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS meshanics_schema (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(|e| format!("creating the schema table: {e}"))?;
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM meshanics_schema",
            &[],
        )
        .await
        .map_err(|e| format!("reading the schema version: {e}"))?;
    let current: i32 = row.try_get(0).map_err(|e| e.to_string())?;
    let current =
        usize::try_from(current).map_err(|_| format!("schema version {current} is invalid"))?;
    if current > MIGRATIONS.len() {
        return Err(format!(
            "the schema is at version {current}, newer than this facade knows ({}): upgrade the facade",
            MIGRATIONS.len()
        ));
    }
    let target = target.min(MIGRATIONS.len());
    for (index, sql) in MIGRATIONS.iter().enumerate().take(target).skip(current) {
        let version = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let tx = client.transaction().await.map_err(|e| e.to_string())?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| format!("applying schema migration {version}: {e}"))?;
        tx.execute(
            "INSERT INTO meshanics_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(|e| format!("recording schema migration {version}: {e}"))?;
        tx.commit()
            .await
            .map_err(|e| format!("applying schema migration {version}: {e}"))?;
        tracing::info!(version, "state database schema migrated");
    }
    Ok(current.max(target))
}

/// The client settings: the URL, the password (file or systemd credential), TLS.
fn connect_settings(settings: &PostgresConfig) -> Result<Connect, String> {
    let mut config = tokio_postgres::Config::from_str(&settings.url)
        .map_err(|e| format!("the URL does not parse: {e}"))?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.application_name("meshanics-facade");
    if let Some(password) = password(settings.password_file.as_deref())? {
        config.password(password.as_bytes());
    }
    let roots = match &settings.ca_file {
        Some(ca) => {
            config.ssl_mode(SslMode::Require);
            meshanics_shared::tls::load_ca_bundle(ca).map_err(|e| e.to_string())?
        }
        None => {
            config.ssl_mode(SslMode::Disable);
            rustls::RootCertStore::empty()
        }
    };
    let tls = meshanics_shared::tls::client_config_from(roots, None).map_err(|e| e.to_string())?;
    Ok(Connect {
        config,
        tls: MakeRustlsConnect::new(tls),
    })
}

/// The password: from `file`, else from `$CREDENTIALS_DIRECTORY/postgres-password`, else none.
fn password(file: Option<&Path>) -> Result<Option<Zeroizing<String>>, String> {
    let path: PathBuf = match file {
        Some(file) => file.to_owned(),
        None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => {
                let path = Path::new(&dir).join(PASSWORD_CREDENTIAL);
                if !path.exists() {
                    return Ok(None);
                }
                path
            }
            None => return Ok(None),
        },
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("reading the password file {}: {e}", path.display()))?;
    Ok(Some(Zeroizing::new(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    )))
}

/// The URL as logs and errors name it: user, host, port and database (no password is ever
/// in it: the config refuses one).
fn display_name(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_password(None);
            parsed.set_query(None);
            format!("PostgreSQL {parsed}")
        }
        Err(_) => "PostgreSQL (unparsable URL)".to_owned(),
    }
}
