//! Applying a pulled artifact: lay it out as an OCI image layout ([`layout`]), with its
//! files beside it for a model or file artifact ([`kind`], [`files`]; [`materialize`] chooses),
//! switch `current` to it atomically, keep `previous`, and run the operator's hook.
//!
//! `current` and `previous` are symlinks in the state directory (their format is
//! [`crate::store::artifacts`]), switched with rename(2) over the old link: at every instant
//! `current` names a complete layout. When the hook fails, both links are put back as they
//! were and the failure is recorded for `status`.

pub mod extract;
pub mod files;
pub mod kind;
pub mod layout;

use std::path::Path;
use std::time::Duration;

use meshanics_shared::fs::sync_dir;
use tracing::{info, warn};

use crate::config::Hook;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::pull::Pulled;
use crate::store::artifacts::{Pointers, write_pointer};
use crate::store::index::now;
use crate::store::{ArtifactRecord, ArtifactState, LastResult, Store};

pub use kind::ArtifactKind;
pub use layout::lay_out;

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
    /// `current` now points at the artifact.
    Switched {
        /// The layout now current.
        current: String,
        /// The layout now previous.
        previous: Option<String>,
    },
    /// The artifact was current already; nothing changed.
    AlreadyCurrent,
}

/// Makes the laid-out artifact `id` current, keeping the old current as `previous`, then
/// runs the hook. A failing hook puts both pointers back and returns [`Error::HookFailed`].
/// Either way the outcome is recorded as the last result.
///
/// An apply that a crash interrupted after the switch (`current` is `id`, but `id` was never
/// recorded as current: the hook may not have run to its end) is finished: the hook runs
/// again, and a failure rolls back to `previous`.
pub async fn apply(store: &Store, id: &str, hook: Option<&Hook>) -> Result<Applied> {
    let record = store
        .index()
        .artifact(id)?
        .map_or_else(|| store.scan_layout(id, ArtifactState::Pulled), Ok)?;
    let mut before = Pointers::read(store)?;
    let after = if before.current.as_deref() == Some(id) {
        if record.state == ArtifactState::Current {
            return Ok(Applied::AlreadyCurrent);
        }
        warn!(target = %record.name, id, "finishing an apply a crash interrupted");
        let after = before.clone();
        before = Pointers {
            current: before.previous.clone(),
            previous: None,
        };
        after
    } else {
        Pointers {
            current: Some(id.to_owned()),
            previous: before.current.clone(),
        }
    };
    switch(store, &after)?;
    let layout = store.layout_dir(id);
    if let Some(hook) = hook
        && let Err(err) = run_hook(hook, &layout, &record).await
    {
        switch(store, &before)?;
        set_state(store, id, ArtifactState::HookFailed)?;
        warn!(error = %err, target = %record.name, "apply hook failed; rolled back");
        store.set_last_result(&LastResult {
            time: now(),
            target: Some(record.name.clone()),
            ok: false,
            message: err.to_string(),
        })?;
        return Err(err);
    }
    if let Some(old) = &before.previous
        && Some(old) != after.current.as_ref()
    {
        set_state(store, old, ArtifactState::Retired)?;
    }
    failpoint::hit("apply.before-state", &layout.display());
    if let Some(previous) = &after.previous {
        set_state(store, previous, ArtifactState::Previous)?;
    }
    set_state(store, id, ArtifactState::Current)?;
    store.set_last_result(&LastResult {
        time: now(),
        target: Some(record.name.clone()),
        ok: true,
        message: format!("applied {} ({})", record.name, record.manifest_digest),
    })?;
    info!(target = %record.name, manifest = %record.manifest_digest, layout = %layout.display(), "applied");
    Ok(Applied::Switched {
        current: id.to_owned(),
        previous: after.previous,
    })
}

/// Points `previous`, then `current`, where `to` says (each link switched by a rename), then
/// fsyncs the state directory once.
fn switch(store: &Store, to: &Pointers) -> Result<()> {
    write_pointer(store, "previous", to.previous.as_deref())?;
    failpoint::hit("apply.between-pointers", &store.root().display());
    write_pointer(store, "current", to.current.as_deref())?;
    failpoint::hit("apply.before-dir-fsync", &store.root().display());
    Ok(sync_dir(store.root())?)
}

fn set_state(store: &Store, id: &str, state: ArtifactState) -> Result<()> {
    if let Some(mut record) = store.index().artifact(id)? {
        record.state = state;
        record.updated = now();
        store.index().put_artifact(&record)?;
    }
    store.index().flush()
}

async fn run_hook(hook: &Hook, layout: &Path, record: &ArtifactRecord) -> Result<()> {
    let mut child = tokio::process::Command::new(&hook.path)
        .env("MESHANICS_LAYOUT", layout)
        .env("MESHANICS_TARGET", &record.name)
        .env("MESHANICS_REPOSITORY", &record.repository)
        .env("MESHANICS_TARGET_DIGEST", record.target_digest.as_str())
        .env("MESHANICS_MANIFEST_DIGEST", record.manifest_digest.as_str())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::HookSpawn {
            path: hook.path.clone(),
            source,
        })?;
    let status = match tokio::time::timeout(hook.timeout, child.wait()).await {
        Ok(status) => status.map_err(|source| Error::HookSpawn {
            path: hook.path.clone(),
            source,
        })?,
        Err(_) => {
            let _ = child.kill().await;
            return Err(Error::HookFailed {
                path: hook.path.clone(),
                status: format!("timed out after {}", human(hook.timeout)),
            });
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(Error::HookFailed {
            path: hook.path.clone(),
            status: status.to_string(),
        })
    }
}

fn human(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests;
