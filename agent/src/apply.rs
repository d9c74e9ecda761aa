//! Applying a pulled artifact to its target's slot: materialize it ([`materialize`]: today an
//! OCI image layout, [`layout`]), switch the slot's `current` to it atomically, keep
//! `previous`, run the operator's hook, then the health check; roll the slot back when either
//! fails; retire a slot whose target no longer matches.
//!
//! Each target has its own slot (`slots/<target>/`, see [`crate::store::slots`]) whose links
//! are switched with rename(2) over the old link: at every instant a slot's `current` names
//! a complete layout. Before the switch the slot records the apply as pending (with the links
//! to put back); the record is cleared only once the hook and the health check passed or the
//! slot was rolled back. An agent that stops in between (a crash, a power cut) finds the
//! record at its next start and [`recover`] finishes the check or rolls back.
//!
//! The hook and the health check get the slot's details in their environment:
//!
//! | variable | value |
//! |---|---|
//! | `MESHANICS_EVENT` | `apply`, `rollback` or `retire` for the hook; `health` for the check |
//! | `MESHANICS_TARGET` | the target's name (the slot's) |
//! | `MESHANICS_KIND` | how the artifact is materialized: `image` (an OCI image layout) or `files` (a model or file artifact, [`files`]) |
//! | `MESHANICS_PATH` | the release's folder: the layout for an image, its `files/` for files; on `rollback` the one now current again (empty when the slot had none) |
//! | `MESHANICS_LAYOUT` | the release's OCI image layout (which a files artifact has too), as hooks were told before slots |
//! | `MESHANICS_SLOT` | the slot's folder, whose `current` and `previous` links follow it |
//! | `MESHANICS_REPOSITORY`, `MESHANICS_TARGET_DIGEST`, `MESHANICS_MANIFEST_DIGEST` | where the release came from |

pub mod extract;
pub mod files;
pub mod kind;
pub mod layout;

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshanics_shared::fs::sync_dir;
use meshanics_shared::metadata::TargetName;
use tracing::{info, warn};

use crate::client::Activity;
use crate::config::{HealthCheck, Hook};
use crate::error::{Error, Result};
use crate::failpoint;
use crate::pull::Pulled;
use crate::store::artifacts::Pointers;
use crate::store::index::now;
use crate::store::{ArtifactRecord, ArtifactState, BadRelease, LastResult, Pending, Store};

pub use kind::ArtifactKind;
pub use layout::lay_out;

/// Extra time allowed beyond a command's own timeout for killing it and rolling back.
const SLACK: Duration = Duration::from_secs(30);

/// What runs around an apply, and what it is told.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checks<'a> {
    /// The operator's hook.
    pub hook: Option<&'a Hook>,
    /// The health check run after the hook.
    pub health: Option<&'a HealthCheck>,
    /// Where to announce the bound of each wait, so the service keeps feeding the watchdog
    /// while a hook or a health check runs (see `client::activity`).
    pub activity: Option<&'a Activity>,
    /// The version of the signed targets metadata the release came with: a release that
    /// fails its health check is held back until this changes.
    pub targets_version: Option<u64>,
}

/// Lays a pulled artifact out as what it is ([`kind`]): an image as an OCI image layout, a
/// model or file artifact as that layout with its files in `files/` ([`files`]). The signed
/// entry's `apply` overrides the manifest. The record is in state `Pulled`.
pub fn materialize(store: &Store, pulled: &Pulled) -> Result<ArtifactRecord> {
    let manifest = files::read_manifest(store, pulled)?;
    match ArtifactKind::of(&manifest, pulled.target.apply) {
        ArtifactKind::Image => lay_out(store, pulled),
        ArtifactKind::Files => files::lay_out_files(store, pulled, &manifest),
    }
}

/// What applying did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The slot's `current` now points at the artifact.
    Switched {
        /// The layout now current.
        current: String,
        /// The layout now previous.
        previous: Option<String>,
    },
    /// The artifact was current already; nothing changed.
    AlreadyCurrent,
}

/// What the hook is told happened to its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A new release is current.
    Apply,
    /// The release failed (hook or health check); the previous one is current again.
    Rollback,
    /// The target no longer matches this device; its slot is gone.
    Retire,
    /// (The health check's event.) The release just applied is to be checked.
    Health,
}

/// Makes the laid-out artifact `id` its slot's `current` (the slot is its target's name),
/// keeping the old current as `previous`, then runs the hook and the health check. A
/// failing hook or health check puts both links back, tells the hook (`rollback`) and
/// returns [`Error::HookFailed`] or [`Error::HealthCheckFailed`]; a failed health check also
/// holds the release back. Either way the outcome is recorded as the slot's and the last
/// result.
///
/// An apply that a crash interrupted after the switch (the slot's `current` is `id`, but its
/// checks never passed) is finished: the hook runs again, then the health check, and a
/// failure rolls back to what was current before.
pub async fn apply(store: &Store, id: &str, checks: &Checks<'_>) -> Result<Applied> {
    let record = store
        .index()
        .artifact(id)?
        .map_or_else(|| store.scan_layout(id, ArtifactState::Pulled), Ok)?;
    let slot = slot_of(&record)?;
    let before = store.slot_pointers(&slot)?;
    let mut state = store.slot_state(&slot)?;
    let pending = state.pending.take().filter(|p| p.id == id);
    let (restore, after, targets_version) = if before.current.as_deref() == Some(id) {
        if pending.is_none() && record.state == ArtifactState::Current {
            return Ok(Applied::AlreadyCurrent);
        }
        warn!(target = %slot, id, "finishing an apply a crash interrupted");
        match pending {
            Some(p) => (p.restore, before, p.targets_version),
            None => (
                Pointers {
                    current: before.previous.clone(),
                    previous: None,
                },
                before,
                checks.targets_version,
            ),
        }
    } else {
        let after = Pointers {
            current: Some(id.to_owned()),
            previous: before.current.clone(),
        };
        (before, after, checks.targets_version)
    };
    state.pending = Some(Pending {
        id: id.to_owned(),
        restore: restore.clone(),
        targets_version,
        since: now(),
    });
    store.set_slot_state(&slot, &state)?;
    switch(store, &slot, &after)?;
    let path = store.layout_dir(id);
    let env = Env {
        slot: &slot,
        slot_dir: store.slot_dir(&slot),
        path: Some(&path),
        record: Some(&record),
    };
    if let Some(hook) = checks.hook
        && let Err(err) = run_hook(hook, Event::Apply, &env, checks.activity).await
    {
        return Err(rollback(store, &record, &restore, checks, err, None).await?);
    }
    failpoint::hit("apply.before-health", &path.display());
    if let Some(health) = checks.health
        && let Err(status) = run_health(health, &env, checks.activity).await
    {
        let err = Error::HealthCheckFailed {
            target: slot.to_string(),
            digest: record.target_digest.clone(),
            program: health.program.clone(),
            status,
        };
        return Err(rollback(store, &record, &restore, checks, err, Some(targets_version)).await?);
    }
    if let Some(old) = &restore.previous
        && Some(old) != after.current.as_ref()
        && Some(old) != after.previous.as_ref()
    {
        set_state(store, old, ArtifactState::Retired)?;
    }
    failpoint::hit("apply.before-state", &path.display());
    if let Some(previous) = &after.previous {
        set_state(store, previous, ArtifactState::Previous)?;
    }
    set_state(store, id, ArtifactState::Current)?;
    let result = LastResult {
        time: now(),
        target: Some(record.name.clone()),
        ok: true,
        message: format!("applied {} ({})", record.name, record.manifest_digest),
    };
    let mut state = store.slot_state(&slot)?;
    state.pending = None;
    state.last_result = Some(result.clone());
    store.set_slot_state(&slot, &state)?;
    store.set_last_result(&result)?;
    info!(target = %record.name, manifest = %record.manifest_digest, layout = %path.display(), "applied");
    Ok(Applied::Switched {
        current: id.to_owned(),
        previous: after.previous,
    })
}

/// Boot-time safety: finishes every apply a stop interrupted before its checks passed (the
/// hook again, then the health check; a failure rolls back), and forgets pending applies
/// whose switch never happened. Returns each finished slot with its outcome.
pub async fn recover(
    store: &Store,
    checks: &Checks<'_>,
) -> Result<Vec<(TargetName, Result<Applied>)>> {
    let mut out = Vec::new();
    for slot in store.slot_names()? {
        let mut state = store.slot_state(&slot)?;
        let Some(pending) = &state.pending else {
            continue;
        };
        if store.slot_pointers(&slot)?.current.as_deref() == Some(pending.id.as_str()) {
            warn!(target = %slot, id = pending.id, "an apply was interrupted before its checks passed; finishing it");
            let id = pending.id.clone();
            out.push((slot, apply(store, &id, checks).await));
        } else {
            // The switch never happened (or did not survive a power cut): the slot holds
            // what it held before, which passed its checks.
            info!(target = %slot, id = pending.id, "an apply was interrupted before its switch; nothing to undo");
            state.pending = None;
            store.set_slot_state(&slot, &state)?;
        }
    }
    Ok(out)
}

/// Retires a slot whose target no longer matches this device: the hook is told (`retire`,
/// with the release that was current), then the slot's links and state go. Its layouts
/// stay until `gc`, which now collects them and their blobs. A failing hook is logged and
/// returned as the message; the slot goes anyway (the signed metadata no longer lists it).
pub async fn retire(
    store: &Store,
    slot: &TargetName,
    checks: &Checks<'_>,
) -> Result<Option<String>> {
    let pointers = store.slot_pointers(slot)?;
    let mut problem = None;
    if let Some(hook) = checks.hook {
        let path = pointers.current.as_deref().map(|id| store.layout_dir(id));
        let record = match &pointers.current {
            Some(id) => store.index().artifact(id)?,
            None => None,
        };
        let env = Env {
            slot,
            slot_dir: store.slot_dir(slot),
            path: path.as_deref(),
            record: record.as_ref(),
        };
        if let Err(err) = run_hook(hook, Event::Retire, &env, checks.activity).await {
            warn!(error = %err, target = %slot, "the hook failed on retire; the slot is retired anyway");
            problem = Some(err.to_string());
        }
    }
    store.remove_slot(slot)?;
    for id in pointers.ids() {
        set_state(store, id, ArtifactState::Retired)?;
    }
    info!(target = %slot, "retired: the target no longer matches this device");
    Ok(problem)
}

/// The slot an artifact belongs to: its target's name.
pub fn slot_of(record: &ArtifactRecord) -> Result<TargetName> {
    TargetName::parse(&record.name).map_err(|e| Error::InvalidName {
        what: "target",
        name: record.name.clone(),
        reason: e.to_string(),
    })
}

/// Puts the slot back as `restore` says after `failure`, tells the hook (`rollback`), and
/// records it; with `bad` (the targets version it came with) the release is held back.
/// Returns the failure, for the caller to return.
async fn rollback(
    store: &Store,
    record: &ArtifactRecord,
    restore: &Pointers,
    checks: &Checks<'_>,
    failure: Error,
    bad: Option<Option<u64>>,
) -> Result<Error> {
    let slot = slot_of(record)?;
    switch(store, &slot, restore)?;
    set_state(
        store,
        &record.id,
        if bad.is_some() {
            ArtifactState::HealthFailed
        } else {
            ArtifactState::HookFailed
        },
    )?;
    warn!(error = %failure, target = %slot, "rolled back");
    let mut message = failure.to_string();
    if let Some(hook) = checks.hook {
        let back = match &restore.current {
            Some(id) => store.index().artifact(id)?,
            None => None,
        };
        let path = restore.current.as_deref().map(|id| store.layout_dir(id));
        let env = Env {
            slot: &slot,
            slot_dir: store.slot_dir(&slot),
            path: path.as_deref(),
            record: back.as_ref(),
        };
        if let Err(err) = run_hook(hook, Event::Rollback, &env, checks.activity).await {
            warn!(error = %err, target = %slot, "the hook failed on rollback");
            message.push_str(&format!("; the rollback hook failed too: {err}"));
        }
    }
    let result = LastResult {
        time: now(),
        target: Some(record.name.clone()),
        ok: false,
        message,
    };
    let mut state = store.slot_state(&slot)?;
    state.pending = None;
    state.last_result = Some(result.clone());
    if let Some(targets_version) = bad {
        state.bad = Some(BadRelease {
            target_digest: record.target_digest.clone(),
            targets_version,
            reason: failure.to_string(),
            time: now(),
        });
    }
    store.set_slot_state(&slot, &state)?;
    store.set_last_result(&result)?;
    Ok(failure)
}

/// Points the slot's `previous`, then `current`, where `to` says (each link switched by a
/// rename), then fsyncs the slot's folder once.
/// The state directory's own links follow when this is the primary slot (or the first).
fn switch(store: &Store, slot: &TargetName, to: &Pointers) -> Result<()> {
    let primary = store.before_switch(slot, to)?;
    store.write_slot_link(slot, "previous", to.previous.as_deref())?;
    failpoint::hit("apply.between-pointers", &store.slot_dir(slot).display());
    store.write_slot_link(slot, "current", to.current.as_deref())?;
    failpoint::hit("apply.before-dir-fsync", &store.slot_dir(slot).display());
    sync_dir(&store.slot_dir(slot))?;
    store.after_switch(slot, primary)
}

fn set_state(store: &Store, id: &str, state: ArtifactState) -> Result<()> {
    if let Some(mut record) = store.index().artifact(id)? {
        record.state = state;
        record.updated = now();
        store.index().put_artifact(&record)?;
    }
    store.index().flush()
}

/// What a hook or a health check is told about its slot.
struct Env<'a> {
    slot: &'a TargetName,
    slot_dir: PathBuf,
    /// The release's folder, if there is one.
    path: Option<&'a Path>,
    /// The release's record, if there is one.
    record: Option<&'a ArtifactRecord>,
}

/// Why a bounded command failed.
enum Failure {
    Spawn(std::io::Error),
    Status(String),
}

// === impl Event ===

impl Event {
    /// The value of `MESHANICS_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Apply => "apply",
            Event::Rollback => "rollback",
            Event::Retire => "retire",
            Event::Health => "health",
        }
    }
}

// === impl Env ===

impl Env<'_> {
    /// `program args...` with the slot's variables, stdin closed, killed when dropped.
    fn command(&self, program: &Path, args: &[String], event: Event) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        let layout = self.path.map(Path::as_os_str).unwrap_or_default();
        // A slot with no release (a rollback to nothing) is told the image kind and no path.
        let kind = self
            .path
            .map_or(ArtifactKind::Image, ArtifactKind::of_layout);
        let path = self.path.map(|dir| kind.folder(dir)).unwrap_or_default();
        let record = |f: fn(&ArtifactRecord) -> String| self.record.map(f).unwrap_or_default();
        command
            .args(args)
            .env("MESHANICS_EVENT", event.as_str())
            .env("MESHANICS_TARGET", self.slot.as_str())
            .env("MESHANICS_SLOT", &self.slot_dir)
            .env("MESHANICS_PATH", path)
            .env("MESHANICS_LAYOUT", layout)
            .env("MESHANICS_KIND", kind.as_str())
            .env("MESHANICS_REPOSITORY", record(|r| r.repository.clone()))
            .env(
                "MESHANICS_TARGET_DIGEST",
                record(|r| r.target_digest.to_string()),
            )
            .env(
                "MESHANICS_MANIFEST_DIGEST",
                record(|r| r.manifest_digest.to_string()),
            )
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }
}

async fn run_hook(
    hook: &Hook,
    event: Event,
    env: &Env<'_>,
    activity: Option<&Activity>,
) -> Result<()> {
    announce(activity, hook.timeout);
    let outcome = run_bounded(env.command(&hook.path, &[], event), hook.timeout).await;
    announce(activity, SLACK);
    match outcome {
        Ok(()) => Ok(()),
        Err(Failure::Spawn(source)) => Err(Error::HookSpawn {
            path: hook.path.clone(),
            source,
        }),
        Err(Failure::Status(status)) => Err(Error::HookFailed {
            path: hook.path.clone(),
            status,
        }),
    }
}

/// Waits the settle time, then runs the health check; `Err` says why it failed.
async fn run_health(
    health: &HealthCheck,
    env: &Env<'_>,
    activity: Option<&Activity>,
) -> std::result::Result<(), String> {
    announce(activity, health.settle.saturating_add(health.timeout));
    tokio::time::sleep(health.settle).await;
    let command = env.command(&health.program, &health.args, Event::Health);
    let outcome = run_bounded(command, health.timeout).await;
    announce(activity, SLACK);
    match outcome {
        Ok(()) => {
            info!(target = %env.slot, "health check passed");
            Ok(())
        }
        Err(Failure::Spawn(err)) => Err(format!("could not be started: {err}")),
        Err(Failure::Status(status)) => Err(status),
    }
}

/// Runs `command` to its end or until `timeout` (then kills it).
async fn run_bounded(
    mut command: tokio::process::Command,
    timeout: Duration,
) -> std::result::Result<(), Failure> {
    let mut child = command.spawn().map_err(Failure::Spawn)?;
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => status.map_err(Failure::Spawn)?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(Failure::Status(format!(
                "timed out after {}",
                human(timeout)
            )));
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(Failure::Status(status.to_string()))
    }
}

/// The next sign of life comes within `bound` plus the slack for killing and rolling back.
fn announce(activity: Option<&Activity>, bound: Duration) {
    if let Some(activity) = activity {
        activity.expect_within(bound.saturating_add(SLACK));
    }
}

fn human(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests;
