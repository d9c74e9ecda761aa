//! The update cycle and the service loop around it.
//!
//! A cycle first finishes any apply a stop interrupted before its checks passed
//! ([`apply::recover`]: it needs neither the facade nor the metadata), then asks a
//! [`TargetSource`] what this device must run. Each target has its own slot: it is pulled,
//! laid out and applied (unless it is current already and its layout intact, or its digest
//! failed a health check under the same signed metadata), each on its own, so one target
//! failing never blocks another. A slot whose target is no longer listed is retired. The
//! source is where trust comes from: the signed metadata workflow implements it, and nothing
//! here decides what a device runs. [`run`] repeats cycles every poll interval with jitter,
//! backs off after failures, keeps systemd informed (`READY`, `STATUS` listing every slot,
//! `WATCHDOG`), and returns as soon as `shutdown` fires, even mid-download: dropping a
//! download leaves its ingest file, which the next start resumes.
//!
//! A target with a signed rollout is pulled and applied only once this device's wave has
//! opened (pulled before with `[rollout] download_ahead`): [`rollout::decide_target`], called
//! once per slot, is the one place that decides it.
//!
//! Two limits keep a cycle from holding the agent for good: a cycle that runs past
//! [`Schedule::cycle_deadline`] is abandoned (its downloads resume next cycle), and the
//! watchdog is fed during a cycle only while it shows progress, so systemd restarts an agent
//! whose cycle is stuck (a hook or a health check announces its timeout, so a long one is
//! progress).

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use meshanics_shared::Platform;
use meshanics_shared::metadata::{TargetName, UnixTime};
use tracing::{error, info, warn};

use crate::apply::{self, Applied, Checks};
use crate::client::Client;
use crate::config::{Config, HealthCheck, Hook};
use crate::error::{Error, Result};
use crate::notify::Notifier;
use crate::progress::Progress;
use crate::pull::{PullTarget, Puller};
use crate::rollout::{self, Decision};
use crate::store::index::now;
use crate::store::{LastResult, OpenReport, Store, StoreOptions};

/// Where a cycle's targets come from: the verified, device-filtered list of what to run.
/// An empty list means there is nothing to run (and every slot is retired).
pub trait TargetSource {
    /// The targets now. Errors (unreachable facade, expired or invalid metadata) end the
    /// cycle before anything is pulled or retired.
    fn targets(&mut self, client: &Client) -> impl Future<Output = Result<Vec<PullTarget>>>;

    /// The version of the signed metadata the last [`TargetSource::targets`] came from: a
    /// release that failed its health check is retried only once this (or its digest)
    /// changes. `None` for a source without versions.
    fn targets_version(&self) -> Option<u64> {
        None
    }
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
    /// The health check after the hook.
    pub health: Option<HealthCheck>,
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

/// What a cycle did: one outcome per target, in the source's order, and the slots retired.
#[derive(Debug, Default)]
pub struct CycleOutcome {
    /// Each target's slot.
    pub slots: Vec<SlotOutcome>,
    /// Slots retired because their target is no longer listed.
    pub retired: Vec<String>,
}

/// What a cycle did for one target.
#[derive(Debug)]
pub struct SlotOutcome {
    /// The target's name (the slot's).
    pub target: String,
    /// What happened, or why it failed (a hook or health check failure rolled it back).
    pub result: Result<SlotAction>,
}

/// What a cycle did for one target that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAction {
    /// Its release was current already.
    UpToDate,
    /// A new release is current.
    Applied {
        /// The new layout's id.
        layout: String,
        /// Bytes received for its pull.
        received_bytes: u64,
    },
    /// The listed release failed its health check under the same signed metadata: it is
    /// not tried again until the metadata changes.
    HeldBack {
        /// Why it failed then.
        reason: String,
    },
    /// The listed release waits for this device's rollout wave.
    Waiting {
        /// When this device's wave opens.
        opens: UnixTime,
        /// Bytes received for its pull ahead of the wave (`[rollout] download_ahead`).
        received_bytes: u64,
    },
}

// === impl CycleOutcome ===

impl CycleOutcome {
    /// Whether every slot succeeded (a held-back release counts as settled, not failed).
    pub fn is_ok(&self) -> bool {
        self.slots.iter().all(|s| s.result.is_ok())
    }

    /// The outcome for `target`.
    pub fn slot(&self, target: &str) -> Option<&SlotOutcome> {
        self.slots.iter().find(|s| s.target == target)
    }

    /// What the cycle did for `target`, if it did not fail.
    pub fn action(&self, target: &str) -> Option<&SlotAction> {
        self.slot(target).and_then(|s| s.result.as_ref().ok())
    }

    /// Bytes received for the cycle's pulls.
    pub fn received_bytes(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| match &s.result {
                Ok(
                    SlotAction::Applied { received_bytes, .. }
                    | SlotAction::Waiting { received_bytes, .. },
                ) => *received_bytes,
                _ => 0,
            })
            .sum()
    }

    /// One line for logs, `STATUS=` and the last result, naming every slot.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.slots.iter().map(SlotOutcome::describe).collect();
        parts.extend(self.retired.iter().map(|t| format!("{t} retired")));
        if self.slots.is_empty() {
            parts.insert(0, "no target for this device".to_owned());
        }
        let busy = self.slots.iter().any(|s| {
            !matches!(
                s.result,
                Ok(SlotAction::UpToDate | SlotAction::HeldBack { .. } | SlotAction::Waiting { .. })
            )
        });
        let text = parts.join("; ");
        if !self.is_ok() {
            format!("last update failed: {text}")
        } else if busy || !self.retired.is_empty() {
            text
        } else {
            format!("idle: {text}")
        }
    }
}

// === impl SlotOutcome ===

impl SlotOutcome {
    fn describe(&self) -> String {
        let target = &self.target;
        match &self.result {
            Ok(SlotAction::UpToDate) => format!("{target} is up to date"),
            Ok(SlotAction::Applied { received_bytes, .. }) => {
                format!("applied {target} ({received_bytes} bytes downloaded)")
            }
            Ok(SlotAction::HeldBack { .. }) => {
                format!("{target} held back: its release failed its health check")
            }
            Ok(SlotAction::Waiting { opens, .. }) => {
                format!("{target} waits for this device's rollout wave (opens {opens})")
            }
            Err(err) => format!("{target} failed: {err}"),
        }
    }
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
                health: config.health.clone(),
            },
            report,
        ))
    }

    /// The hook and health check, announcing their bounds to the client's activity (what
    /// the watchdog goes by).
    pub fn checks(&self, targets_version: Option<u64>) -> Checks<'_> {
        Checks {
            hook: self.hook.as_ref(),
            health: self.health.as_ref(),
            activity: Some(self.client.activity()),
            targets_version,
        }
    }

    /// One update cycle. Its result, success or failure, is recorded for `status` (each
    /// slot's in its own state too).
    pub async fn cycle<S: TargetSource>(
        &self,
        source: &mut S,
        progress: &dyn Progress,
    ) -> Result<CycleOutcome> {
        let result = self.cycle_inner(source, progress).await;
        let (ok, message, target) = match &result {
            Ok(outcome) => (
                outcome.is_ok(),
                outcome.describe(),
                match outcome.slots.as_slice() {
                    [one] => Some(one.target.clone()),
                    _ => None,
                },
            ),
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
        // Boot-time safety first: an apply a stop interrupted is finished or rolled back
        // before anything else, even when the facade cannot be reached.
        for (slot, result) in apply::recover(&self.store, &self.checks(None)).await? {
            if let Err(err) = result {
                warn!(target = %slot, error = %err, "the interrupted apply was rolled back");
            }
        }
        let targets = source.targets(&self.client).await?;
        let checks = self.checks(source.targets_version());
        let mut outcome = CycleOutcome::default();
        let listed: BTreeSet<&str> = targets.iter().map(|t| t.name.as_str()).collect();
        for slot in self.store.slot_names()? {
            if !listed.contains(slot.as_str()) {
                apply::retire(&self.store, &slot, &checks).await?;
                outcome.retired.push(slot.to_string());
            }
        }
        let primary = targets
            .first()
            .and_then(|t| TargetName::parse(&t.name).ok());
        self.store.set_primary(primary.as_ref())?;
        let puller = Puller {
            client: &self.client,
            store: &self.store,
            platform: &self.platform,
            concurrency: self.concurrency,
            progress,
        };
        for target in &targets {
            let result = self.slot_cycle(target, &puller, &checks).await;
            if let Err(err) = &result {
                self.record_failure(target, err)?;
            }
            outcome.slots.push(SlotOutcome {
                target: target.name.clone(),
                result,
            });
        }
        Ok(outcome)
    }

    /// One target's slot: held back, up to date, or pulled and applied.
    async fn slot_cycle(
        &self,
        target: &PullTarget,
        puller: &Puller<'_>,
        checks: &Checks<'_>,
    ) -> Result<SlotAction> {
        let slot = TargetName::parse(&target.name).map_err(|e| Error::InvalidName {
            what: "target",
            name: target.name.clone(),
            reason: e.to_string(),
        })?;
        let mut state = self.store.slot_state(&slot)?;
        if let Some(bad) = &state.bad {
            if bad.holds_back(&target.digest, checks.targets_version) {
                return Ok(SlotAction::HeldBack {
                    reason: bad.reason.clone(),
                });
            }
            // The signed metadata changed since: the release may be tried again.
            info!(target = %slot, digest = %bad.target_digest, "the signed metadata changed; no release is held back any more");
            state.bad = None;
            self.store.set_slot_state(&slot, &state)?;
        }
        // Signed rollout waves: the one place the agent decides whether a target is applied
        // (and whether it is downloaded before its wave opens).
        let decision = rollout::decide_target(target);
        let wave_opens = match decision {
            Decision::Wait { opens, .. } => Some(opens.as_secs()),
            Decision::Apply => None,
        };
        if state.wave_opens != wave_opens {
            state.wave_opens = wave_opens;
            self.store.set_slot_state(&slot, &state)?;
        }
        if state.pending.is_none() && self.holds(&slot, target)? {
            return Ok(SlotAction::UpToDate);
        }
        if let Decision::Wait { opens, download } = decision {
            let received_bytes = match download {
                true => puller.pull(target).await?.received_bytes,
                false => 0,
            };
            info!(target = %slot, %opens, downloaded = download, "waiting for this device's rollout wave");
            return Ok(SlotAction::Waiting {
                opens,
                received_bytes,
            });
        }
        let pulled = puller.pull(target).await?;
        let record = apply::materialize(&self.store, &pulled)?;
        match apply::apply(&self.store, &record.id, checks).await? {
            Applied::AlreadyCurrent => Ok(SlotAction::UpToDate),
            Applied::Switched { current, .. } => Ok(SlotAction::Applied {
                layout: current,
                received_bytes: pulled.received_bytes,
            }),
        }
    }

    /// Records a slot's failure in its state, unless `apply` did (hook and health check
    /// failures, with their rollback).
    fn record_failure(&self, target: &PullTarget, err: &Error) -> Result<()> {
        if matches!(
            err,
            Error::HookFailed { .. } | Error::HookSpawn { .. } | Error::HealthCheckFailed { .. }
        ) {
            return Ok(());
        }
        let Ok(slot) = TargetName::parse(&target.name) else {
            return Ok(());
        };
        let mut state = self.store.slot_state(&slot)?;
        state.last_result = Some(LastResult {
            time: now(),
            target: Some(target.name.clone()),
            ok: false,
            message: err.to_string(),
        });
        self.store.set_slot_state(&slot, &state)
    }

    /// Whether the slot's `current` holds `target` with every blob of its layout in place.
    fn holds(&self, slot: &TargetName, target: &PullTarget) -> Result<bool> {
        let Some(id) = self.store.slot_pointers(slot)?.current else {
            return Ok(false);
        };
        let Some(record) = self.store.index().artifact(&id)? else {
            return Ok(false);
        };
        Ok(record.target_digest == target.digest
            && record.repository == target.repository.as_str()
            && record
                .blobs
                .iter()
                .all(|d| self.store.layout_blob_path(&id, d).exists()))
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
            Ok(outcome) if outcome.is_ok() => {
                failures = 0;
                let text = outcome.describe();
                info!("{text}");
                notifier.status(&text);
                jitter(poll_interval)
            }
            // A slot failed (the others went on): retry sooner, as after a failed cycle.
            Ok(outcome) => {
                failures = failures.saturating_add(1);
                let text = outcome.describe();
                error!(failures, "{text}");
                notifier.status(&text);
                backoff(failures, poll_interval)
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
