//! The fleet through two facade replicas (issue 16): replicas on one PostgreSQL (the upstream
//! connected once through the operator API), behind Debian's HAProxy in TCP mode or in the
//! devices' own URL list, and what the devices' clients saw when one replica is SIGKILLed.
//!
//! Every device's failed requests are counted from the agent client's own log events
//! (`retrying` and `facade replica failed; failing over`, the two events of a failed attempt
//! that is tried again), tied to the device by a task-local. Bytes are the client's own
//! counter ([`Client::downloaded_bytes`]), watched every 5 ms.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use meshanics_agent::client::Client;
use meshanics_operator_api::{OperatorClient, ProviderKind};
use meshanics_tests::facade::plain_http_connection;
use meshanics_tests::facade_process::FacadeProcess;
use meshanics_tests::haproxy::Haproxy;
use meshanics_tests::postgres::PostgresServer;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Layer};

use super::BoxError;

/// How the devices reach the replicas in a cluster run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Two replicas behind HAProxy (one URL), none killed.
    Haproxy,
    /// Behind HAProxy, replica 0 SIGKILLed once a third of the devices are done.
    HaproxyKill,
    /// Both replicas in each device's URL list (no load balancer), the first one killed.
    UrlsKill,
}

impl Mode {
    /// `FLEET_CLUSTER`'s names: `haproxy`, `haproxy-kill`, `urls-kill`.
    pub(crate) fn parse_list(text: &str) -> Vec<Mode> {
        text.split(',')
            .filter_map(|name| match name.trim() {
                "haproxy" => Some(Mode::Haproxy),
                "haproxy-kill" => Some(Mode::HaproxyKill),
                "urls-kill" => Some(Mode::UrlsKill),
                _ => None,
            })
            .collect()
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Haproxy => "two replicas behind HAProxy",
            Mode::HaproxyKill => "two replicas behind HAProxy, replica 0 SIGKILLed",
            Mode::UrlsKill => "two replicas in the devices' URL list, the first SIGKILLed",
        }
    }
}

/// The shared state the replicas run on: PostgreSQL and the master key.
pub(crate) struct State {
    database: PostgresServer,
    master_key: PathBuf,
}

// === impl State ===

impl State {
    /// Starts PostgreSQL, writes a master key, and connects `upstream` (plain HTTP,
    /// anonymous) through the operator API of a facade started on the database for that
    /// alone (`config` makes its config from the state), approves it, and publishes the
    /// signed metadata in `metadata_dir` there with `meshctl publish` (the replicas serve
    /// `/meta/` from the database).
    pub(crate) fn start(
        work: &Path,
        upstream: &str,
        facade_bin: &Path,
        metadata_dir: &Path,
        config: impl Fn(&State, &str) -> Result<PathBuf, BoxError>,
    ) -> Result<State, BoxError> {
        use std::os::unix::fs::PermissionsExt as _;
        let database = PostgresServer::start()?;
        let master_key = work.join("master-key");
        fs_err::write(
            &master_key,
            meshanics_facade::seal::MasterKey::generate_hex()?,
        )?;
        fs_err::set_permissions(&master_key, std::fs::Permissions::from_mode(0o600))?;
        let state = State {
            database,
            master_key,
        };
        let config = config(&state, "cluster-setup")?;
        let facade = FacadeProcess::start_binary(facade_bin, &config, "warn")?;
        let socket = work
            .join("cluster-setup-state")
            .join(meshanics_facade::connections::ADMIN_SOCKET);
        let operator = OperatorClient::new(&socket);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            operator
                .add(&plain_http_connection(
                    upstream.to_owned(),
                    ProviderKind::Anonymous,
                    None,
                    Vec::new(),
                ))
                .await?;
            operator.approve(upstream).await?;
            Ok::<_, BoxError>(())
        })?;
        let meshctl = meshanics_tests::binaries::workspace_binary("meshctl", "meshctl")?;
        let published = std::process::Command::new(meshctl)
            .arg("--socket")
            .arg(&socket)
            .arg("publish")
            .arg(metadata_dir)
            .output()?;
        if !published.status.success() {
            return Err(format!(
                "meshctl publish {}: {}",
                metadata_dir.display(),
                String::from_utf8_lossy(&published.stderr)
            )
            .into());
        }
        drop(facade);
        Ok(state)
    }

    /// The lines of a facade config that put it on this state: the top-level master key
    /// line, and the `[state]` table.
    pub(crate) fn config_lines(&self) -> (String, String) {
        (
            format!("master_key_file = \"{}\"\n", self.master_key.display()),
            format!(
                "\n[state]\nbackend = \"postgres\"\nurl = \"{}\"\nsslmode = \"disable\"\n",
                self.database.url()
            ),
        )
    }
}

/// Two replicas for one run, and how the devices reach them.
pub(crate) struct Cluster {
    pub(crate) mode: Mode,
    pub(crate) replicas: Vec<Arc<FacadeProcess>>,
    haproxy: Option<Haproxy>,
}

// === impl Cluster ===

impl Cluster {
    /// Starts the replicas on the configs `configs` and, for the HAProxy modes, HAProxy.
    pub(crate) fn start(
        mode: Mode,
        facade_bin: &Path,
        configs: &[PathBuf],
    ) -> Result<Cluster, BoxError> {
        let replicas = configs
            .iter()
            .map(|config| FacadeProcess::start_binary(facade_bin, config, "warn").map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let haproxy = match mode {
            Mode::Haproxy | Mode::HaproxyKill => {
                let servers: Vec<_> = replicas.iter().map(|r| r.device_addr()).collect();
                Some(Haproxy::start(&servers)?)
            }
            Mode::UrlsKill => None,
        };
        Ok(Cluster {
            mode,
            replicas,
            haproxy,
        })
    }

    /// What the run prints as its name.
    pub(crate) fn label(&self) -> &'static str {
        self.mode.label()
    }

    /// The facade URLs each device's client is made with.
    pub(crate) fn urls(&self) -> Vec<String> {
        match &self.haproxy {
            Some(haproxy) => vec![haproxy.url()],
            None => self.replicas.iter().map(|r| r.url("")).collect(),
        }
    }

    /// Whether replica 0 is killed during the run.
    pub(crate) fn kills(&self) -> bool {
        self.mode != Mode::Haproxy
    }
}

tokio::task_local! {
    /// The device the running task is, and the run's tracker.
    static DEVICE: (usize, Arc<Tracker>);
}

/// Runs `device` as device `index` of `tracker`'s run: its client's failed attempts are
/// counted for it, and its end is recorded.
pub(crate) async fn tracked<T>(
    index: usize,
    tracker: Arc<Tracker>,
    device: impl Future<Output = T>,
) -> T {
    if let Some(track) = tracker.devices.get(index) {
        track.started.store(true, Ordering::SeqCst);
    }
    let out = DEVICE.scope((index, tracker.clone()), device).await;
    if let Some(track) = tracker.devices.get(index) {
        track.ended.store(true, Ordering::SeqCst);
    }
    tracker.done.fetch_add(1, Ordering::SeqCst);
    out
}

/// Registers the running device's client, so its bytes can be watched.
pub(crate) fn register(client: &Arc<Client>) {
    let _ = DEVICE.try_with(|(index, tracker)| {
        if let Some(track) = tracker.devices.get(*index) {
            let _ = track.client.set(client.clone());
        }
    });
}

/// One run's per-device record of failed attempts, a kill, and when bytes came again.
pub(crate) struct Tracker {
    start: Instant,
    /// Nanoseconds from `start` to the kill, plus one; 0 while there was none.
    kill_at: AtomicU64,
    done: AtomicUsize,
    devices: Vec<Track>,
}

#[derive(Default)]
struct Track {
    client: OnceLock<Arc<Client>>,
    started: AtomicBool,
    ended: AtomicBool,
    /// Failed attempts tried again (before and after the kill).
    failures: AtomicU64,
    failures_before_kill: AtomicU64,
    /// Bytes the client had at its first failure after the kill.
    bytes_at_cut: AtomicU64,
    /// Nanoseconds from `start` (plus one) of its first failure after the kill; 0: none.
    cut_at: AtomicU64,
    /// Nanoseconds from `start` (plus one) of its first bytes after `cut_at`; 0: none yet.
    resumed_at: AtomicU64,
    /// Whether it was between its start and its end when the kill came.
    busy_at_kill: AtomicBool,
}

/// What a kill run's devices saw, in seconds from the kill.
pub(crate) struct KillFigures {
    /// When the kill came, from the run's start.
    pub(crate) at: Duration,
    pub(crate) done_before: usize,
    pub(crate) busy: usize,
    /// Per cut device (pulling at the kill, a failed attempt after it), from the kill to its
    /// first bytes again (`None`: never).
    pub(crate) resumed: Vec<Option<f64>>,
    pub(crate) failures_before: u64,
    /// Devices that started after the kill and had a failed attempt.
    pub(crate) late_failed: usize,
}

// === impl Tracker ===

impl Tracker {
    /// A tracker for `devices` devices, its clock starting now.
    pub(crate) fn new(devices: usize) -> Arc<Tracker> {
        Arc::new(Tracker {
            start: Instant::now(),
            kill_at: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            devices: (0..devices).map(|_| Track::default()).collect(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Devices done (finished or failed).
    pub(crate) fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Records the kill now, and which devices were busy.
    pub(crate) fn killed(&self) {
        for track in &self.devices {
            let busy = track.started.load(Ordering::SeqCst) && !track.ended.load(Ordering::SeqCst);
            track.busy_at_kill.store(busy, Ordering::SeqCst);
        }
        self.kill_at.store(self.now(), Ordering::SeqCst);
    }

    /// A failed attempt of device `index`, to be tried again.
    fn failed(&self, index: usize) {
        let Some(track) = self.devices.get(index) else {
            return;
        };
        track.failures.fetch_add(1, Ordering::SeqCst);
        if self.kill_at.load(Ordering::SeqCst) == 0 {
            track.failures_before_kill.fetch_add(1, Ordering::SeqCst);
            return;
        }
        // A device that started after the kill was not cut: its first tries may still meet
        // the dead replica (HAProxy's check has not marked it down, or it is first in the
        // URL list), which the retry counts show.
        if track.busy_at_kill.load(Ordering::SeqCst) && track.cut_at.load(Ordering::SeqCst) == 0 {
            let bytes = track.client.get().map_or(0, |c| c.downloaded_bytes());
            track.bytes_at_cut.store(bytes, Ordering::SeqCst);
            track.cut_at.store(self.now(), Ordering::SeqCst);
        }
    }

    /// One look at every cut device's bytes: the first that grew since its cut resumed now.
    pub(crate) fn watch(&self) {
        for track in &self.devices {
            if track.cut_at.load(Ordering::SeqCst) == 0
                || track.resumed_at.load(Ordering::SeqCst) != 0
            {
                continue;
            }
            let bytes = track.client.get().map_or(0, |c| c.downloaded_bytes());
            if bytes > track.bytes_at_cut.load(Ordering::SeqCst) {
                track.resumed_at.store(self.now(), Ordering::SeqCst);
            }
        }
    }

    /// Devices with at least one failed attempt, and all their failed attempts.
    pub(crate) fn retries(&self) -> (usize, u64) {
        let counts: Vec<u64> = self
            .devices
            .iter()
            .map(|t| t.failures.load(Ordering::SeqCst))
            .collect();
        (
            counts.iter().filter(|&&n| n > 0).count(),
            counts.iter().sum(),
        )
    }

    /// The kill's figures, if there was one; `done_before` as counted when it came.
    pub(crate) fn kill_figures(&self, done_before: usize) -> Option<KillFigures> {
        let kill = self.kill_at.load(Ordering::SeqCst).checked_sub(1)?;
        let seconds = |at: u64| at.saturating_sub(1).saturating_sub(kill) as f64 / 1e9;
        Some(KillFigures {
            at: Duration::from_nanos(kill),
            done_before,
            busy: self
                .devices
                .iter()
                .filter(|t| t.busy_at_kill.load(Ordering::SeqCst))
                .count(),
            resumed: self
                .devices
                .iter()
                .filter(|t| t.cut_at.load(Ordering::SeqCst) != 0)
                .map(|t| match t.resumed_at.load(Ordering::SeqCst) {
                    0 => None,
                    at => Some(seconds(at)),
                })
                .collect(),
            failures_before: self
                .devices
                .iter()
                .map(|t| t.failures_before_kill.load(Ordering::SeqCst))
                .sum(),
            late_failed: self
                .devices
                .iter()
                .filter(|t| {
                    !t.busy_at_kill.load(Ordering::SeqCst)
                        && t.failures.load(Ordering::SeqCst)
                            > t.failures_before_kill.load(Ordering::SeqCst)
                })
                .count(),
        })
    }
}

/// The layer that hands the agent client's failed-attempt events to the running device's
/// tracker; installed once for the bench process.
pub(crate) fn install_retry_counter() -> Result<(), BoxError> {
    use tracing_subscriber::layer::SubscriberExt as _;
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(RetryEvents))?;
    Ok(())
}

struct RetryEvents;

impl RetryEvents {
    fn wanted(metadata: &Metadata<'_>) -> bool {
        metadata.is_event()
            && metadata.target().starts_with("meshanics_agent::client")
            && *metadata.level() <= Level::DEBUG
    }
}

impl<S: tracing::Subscriber> Layer<S> for RetryEvents {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if Self::wanted(metadata) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        Self::wanted(metadata)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0 == "retrying" || message.0.starts_with("facade replica failed") {
            let _ = DEVICE.try_with(|(index, tracker)| tracker.failed(*index));
        }
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
