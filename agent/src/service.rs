//! The update cycle and the service loop around it.
//!
//! A cycle asks a [`TargetSource`] what this device must run, pulls every target into the
//! cache, and applies the first one (unless it is current already and its layout intact).
//! A target with a signed rollout is pulled and applied only once this device's wave has
//! opened (pulled before with `[rollout] download_ahead`): [`rollout::decide_target`].
//! The source is where trust comes from: the signed metadata workflow implements it, and
//! nothing here decides what a device runs. [`run`] repeats cycles every poll interval with
//! jitter, backs off after failures, keeps systemd informed (`READY`, `STATUS`, `WATCHDOG`),
//! and returns as soon as `shutdown` fires, even mid-download: dropping a download leaves
//! its ingest file, which the next start resumes.
//!
//! Two limits keep a cycle from holding the agent for good: a cycle that runs past
//! [`Schedule::cycle_deadline`] is abandoned (its downloads resume next cycle), and the
//! watchdog is fed during a cycle only while it shows progress, so systemd restarts an agent
//! whose cycle is stuck.

use std::future::Future;
use std::time::Duration;

use meshanics_shared::Platform;
use tracing::{error, info, warn};

use crate::apply::{self, Applied};
use crate::client::Client;
use crate::config::{Config, Hook};
use crate::error::{Error, Result};
use crate::notify::Notifier;
use crate::progress::Progress;
use crate::pull::{PullTarget, Puller};
use crate::rollout::{self, Decision};
use crate::store::index::now;
use crate::store::{ArtifactState, LastResult, OpenReport, Pointers, Store, StoreOptions};

/// Where a cycle's targets come from: the verified, device-filtered list of what to run,
/// the one to apply first. An empty list means there is nothing to run.
pub trait TargetSource {
    /// The targets now. Errors (unreachable facade, expired or invalid metadata) end the
    /// cycle before anything is pulled.
    fn targets(&mut self, client: &Client) -> impl Future<Output = Result<Vec<PullTarget>>>;
}

/// Everything a cycle works with.
#[derive(Debug)]
pub struct Agent {
    /// The state directory and cache.
    pub store: Store,
    /// The facade client.
    pub client: Client,
    /// The device's platform.
    pub platform: Platform,
    /// Blobs downloaded at once.
    pub concurrency: usize,
    /// The apply hook.
    pub hook: Option<Hook>,
}

/// How the service loop paces cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// How often to look for updates (±10 % jitter).
    pub poll_interval: Duration,
    /// How long one cycle may run before it is abandoned (`agent.cycle_deadline`).
    pub cycle_deadline: Duration,
}

/// The cycle deadline when the configuration sets none (`agent.cycle_deadline`'s default).
pub const DEFAULT_CYCLE_DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// What a cycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CycleOutcome {
    /// The source listed no target.
    NothingToDo,
    /// The target to apply was current already.
    UpToDate {
        /// The target's name.
        target: String,
    },
    /// The target to apply waits for this device's rollout wave.
    Waiting {
        /// The target's name.
        target: String,
        /// When this device's wave opens.
        opens: meshanics_shared::metadata::UnixTime,
        /// Bytes received for the cycle's pulls (downloads ahead of the wave).
        received_bytes: u64,
    },
    /// A new artifact is current.
    Applied {
        /// The target's name.
        target: String,
        /// The new layout's id.
        layout: String,
        /// Bytes received for the cycle's pulls.
        received_bytes: u64,
    },
}

// === impl Schedule ===

impl Schedule {
    /// The schedule the configuration asks for.
    pub fn from_config(config: &Config) -> Self {
        Schedule {
            poll_interval: config.poll_interval,
            cycle_deadline: config.cycle_deadline,
        }
    }
}

impl From<Duration> for Schedule {
    /// A poll interval with the default cycle deadline.
    fn from(poll_interval: Duration) -> Self {
        Schedule {
            poll_interval,
            cycle_deadline: DEFAULT_CYCLE_DEADLINE,
        }
    }
}

// === impl Agent ===

impl Agent {
    /// Opens the state directory and builds the client from the configuration.
    pub fn from_config(config: &Config, options: StoreOptions) -> Result<(Agent, OpenReport)> {
        let (store, report) = Store::open(&config.state_dir, options)?;
        let client = Client::from_config(config)?;
        Ok((
            Agent {
                store,
                client,
                platform: config.device.platform.clone(),
                concurrency: config.concurrency,
                hook: config.hook.clone(),
            },
            report,
        ))
    }

    /// One update cycle. Its result, success or failure, is recorded for `status`.
    pub async fn cycle<S: TargetSource>(
        &self,
        source: &mut S,
        progress: &dyn Progress,
    ) -> Result<CycleOutcome> {
        let result = self.cycle_inner(source, progress).await;
        let (ok, message, target) = match &result {
            Ok(CycleOutcome::NothingToDo) => (true, "no target for this device".to_owned(), None),
            Ok(CycleOutcome::UpToDate { target }) => (
                true,
                format!("{target} is up to date"),
                Some(target.clone()),
            ),
            Ok(CycleOutcome::Applied { target, .. }) => {
                (true, format!("applied {target}"), Some(target.clone()))
            }
            Ok(CycleOutcome::Waiting { target, opens, .. }) => (
                true,
                format!("{target} waits for this device's rollout wave, which opens at {opens}"),
                Some(target.clone()),
            ),
            // `apply` records its own failures with the hook's details.
            Err(Error::HookFailed { .. }) => return result,
            Err(err) => (false, err.to_string(), None),
        };
        self.store.set_last_result(&LastResult {
            time: now(),
            target,
            ok,
            message,
        })?;
        result
    }

    async fn cycle_inner<S: TargetSource>(
        &self,
        source: &mut S,
        progress: &dyn Progress,
    ) -> Result<CycleOutcome> {
        let targets = source.targets(&self.client).await?;
        let Some(first) = targets.first() else {
            return Ok(CycleOutcome::NothingToDo);
        };
        if targets.len() > 1 {
            warn!(
                count = targets.len(),
                applied = %first.name,
                "several targets match this device: all are cached, the first is applied"
            );
        }
        let puller = Puller {
            client: &self.client,
            store: &self.store,
            platform: &self.platform,
            concurrency: self.concurrency,
            progress,
        };
        match self.current_state(first)? {
            Some(ArtifactState::Current) => {
                return Ok(CycleOutcome::UpToDate {
                    target: first.name.clone(),
                });
            }
            // `current` holds this target but its apply never finished (a crash during the
            // hook): finish that apply rather than lay the same artifact out again, which
            // would make it its own `previous`.
            Some(_) => {
                if let Some(id) = Pointers::read(&self.store)?.current {
                    self.expect_hook();
                    apply::apply(&self.store, &id, self.hook.as_ref()).await?;
                    return Ok(CycleOutcome::Applied {
                        target: first.name.clone(),
                        layout: id,
                        received_bytes: 0,
                    });
                }
            }
            None => {}
        }
        // Signed rollout waves: the one place the agent decides whether a target is applied
        // (and whether it is downloaded before its wave opens).
        let decisions: Vec<Decision> = targets.iter().map(rollout::decide_target).collect();
        let mut received = 0;
        let mut pulled = Vec::new();
        for (target, decision) in targets.iter().zip(&decisions) {
            if !decision.pulls() {
                continue;
            }
            let p = puller.pull(target).await?;
            received += p.received_bytes;
            pulled.push(p);
        }
        if let Some(&Decision::Wait { opens, download }) = decisions.first() {
            info!(target = %first.name, %opens, downloaded = download, "waiting for this device's rollout wave");
            return Ok(CycleOutcome::Waiting {
                target: first.name.clone(),
                opens,
                received_bytes: received,
            });
        }
        let Some(main) = pulled.first() else {
            return Ok(CycleOutcome::NothingToDo);
        };
        let record = apply::materialize(&self.store, main)?;
        self.expect_hook();
        match apply::apply(&self.store, &record.id, self.hook.as_ref()).await? {
            Applied::AlreadyCurrent => Ok(CycleOutcome::UpToDate {
                target: main.target.name.clone(),
            }),
            Applied::Switched { current, .. } => Ok(CycleOutcome::Applied {
                target: main.target.name.clone(),
                layout: current,
                received_bytes: received,
            }),
        }
    }

    /// The apply hook runs next: no sign of life comes from it, but its own timeout bounds
    /// it (plus a little for killing it and rolling back), so the watchdog waits that long.
    fn expect_hook(&self) {
        if let Some(hook) = &self.hook {
            self.client
                .activity()
                .expect_within(hook.timeout.saturating_add(Duration::from_secs(30)));
        }
    }

    /// The recorded state of `current` when it holds `target` with every blob of its layout
    /// in place (`Current` once its apply finished), `None` when it holds something else.
    fn current_state(&self, target: &PullTarget) -> Result<Option<ArtifactState>> {
        let Some(id) = Pointers::read(&self.store)?.current else {
            return Ok(None);
        };
        let Some(record) = self.store.index().artifact(&id)? else {
            return Ok(None);
        };
        let holds = record.target_digest == target.digest
            && record.repository == target.repository.as_str()
            && record
                .blobs
                .iter()
                .all(|d| self.store.layout_blob_path(&id, d).exists());
        Ok(holds.then_some(record.state))
    }
}

/// Runs cycles until `shutdown` completes: every poll interval (±10 % jitter, so a fleet
/// does not poll in step), sooner with exponential backoff after a failure. A cycle that
/// runs past the schedule's deadline is abandoned and counts as a failure; a cycle that
/// shows no progress stops the watchdog pings. A bare [`Duration`] is a poll interval with
/// the default deadline.
pub async fn run<S: TargetSource>(
    agent: &Agent,
    source: &mut S,
    notifier: &Notifier,
    schedule: impl Into<Schedule>,
    progress: &dyn Progress,
    shutdown: impl Future<Output = ()>,
) {
    let Schedule {
        poll_interval,
        cycle_deadline,
    } = schedule.into();
    let mut shutdown = std::pin::pin!(shutdown);
    // Pings are sent from this task's own select loops, so they stop if the loop wedges (a
    // separate pinger task would keep a stuck agent looking alive). One interval for the
    // whole run: a timer made afresh in each select would restart whenever a cycle or a
    // backoff ends first, and fast failures (a facade that refuses connections) would then
    // starve the watchdog until systemd kills a healthy agent.
    //
    // During a cycle a tick pings only while the cycle shows signs of life (see
    // `client::Activity`): every wait in a cycle is bounded and announces its bound, so a
    // cycle whose next sign of life is overdue by more than a ping interval is stuck where
    // nothing bounds it. Pings then stop and systemd restarts the agent a watchdog timeout
    // later; the restart resumes the downloads. Between cycles the loop itself is the
    // progress, and every tick pings.
    let watchdog = notifier.watchdog_interval();
    let mut pings = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let grace = watchdog.unwrap_or(Duration::from_secs(3600));
    let activity = agent.client.activity();
    notifier.ready("started");
    let mut failures = 0u32;
    loop {
        notifier.status("checking for updates");
        activity.reset();
        // Boxed: a cycle's future holds a whole pull's state, too big to keep inline.
        let mut cycle = Box::pin(agent.cycle(source, progress));
        let mut deadline = std::pin::pin!(tokio::time::sleep(cycle_deadline));
        let mut stuck = false;
        let outcome = loop {
            tokio::select! {
                outcome = &mut cycle => break Some(outcome),
                () = &mut deadline => break Some(Err(Error::CycleDeadline {
                    after: cycle_deadline,
                })),
                () = &mut shutdown => break None,
                _ = pings.tick(), if watchdog.is_some() => {
                    let overdue = activity.overdue();
                    if overdue <= grace {
                        if stuck {
                            stuck = false;
                            info!("the update cycle shows progress again; watchdog pings resume");
                        }
                        notifier.watchdog();
                    } else if !stuck {
                        stuck = true;
                        error!(
                            ?overdue,
                            "the update cycle shows no progress; withholding watchdog pings so that systemd restarts the agent"
                        );
                        notifier.status("stuck: the update cycle shows no progress");
                    }
                }
            }
        };
        // Dropping an abandoned cycle leaves its ingest files (resumed with Range) and ends
        // a running hook (`kill_on_drop`); an apply it interrupted is finished next cycle.
        drop(cycle);
        let Some(outcome) = outcome else {
            info!("stopping mid-cycle; an interrupted download resumes at the next start");
            break;
        };
        if let Err(err @ Error::CycleDeadline { .. }) = &outcome {
            error!(
                deadline = ?cycle_deadline,
                "update cycle abandoned: it ran past agent.cycle_deadline; interrupted downloads resume at the next cycle"
            );
            let recorded = agent.store.set_last_result(&LastResult {
                time: now(),
                target: None,
                ok: false,
                message: err.to_string(),
            });
            if let Err(err) = recorded {
                warn!(error = %err, "recording the abandoned cycle for status failed");
            }
        }
        let wait = match outcome {
            Ok(outcome) => {
                failures = 0;
                let text = describe(&outcome);
                info!("{text}");
                notifier.status(&text);
                jitter(poll_interval)
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                error!(error = %err, failures, "update cycle failed");
                notifier.status(&format!("last update failed: {err}"));
                backoff(failures, poll_interval)
            }
        };
        let mut sleep = std::pin::pin!(tokio::time::sleep(wait));
        let stop = loop {
            tokio::select! {
                () = &mut sleep => break false,
                () = &mut shutdown => break true,
                _ = pings.tick(), if watchdog.is_some() => notifier.watchdog(),
            }
        };
        if stop {
            break;
        }
    }
    notifier.stopping("stopping");
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the service cannot stop cleanly; never completing keeps it
        // running, and systemd's SIGKILL after the stop timeout still ends it.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: stopping"),
        _ = int.recv() => info!("SIGINT: stopping"),
    }
}

fn describe(outcome: &CycleOutcome) -> String {
    match outcome {
        CycleOutcome::NothingToDo => "idle: no target for this device".to_owned(),
        CycleOutcome::UpToDate { target } => format!("idle: {target} is up to date"),
        CycleOutcome::Waiting { target, opens, .. } => {
            format!("idle: {target} waits for this device's rollout wave (opens {opens})")
        }
        CycleOutcome::Applied {
            target,
            received_bytes,
            ..
        } => format!("applied {target} ({received_bytes} bytes downloaded)"),
    }
}

/// `interval` ±10 %.
fn jitter(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// After `failures` failures in a row: a random wait up to 5 s·2^(failures-1), never more
/// than the poll interval, never under a second.
fn backoff(failures: u32, poll_interval: Duration) -> Duration {
    let ceiling = Duration::from_secs(5)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(poll_interval);
    ceiling
        .mul_f64(fastrand::f64())
        .max(Duration::from_secs(1).min(poll_interval))
}

#[cfg(test)]
mod tests;
