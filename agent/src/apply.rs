//! Applying a pulled artifact: lay it out as an OCI image layout, switch `current` to it
//! atomically, keep `previous`, and run the operator's hook.
//!
//! A layout is what `skopeo copy oci:...`, podman and containerd take as input:
//! `oci-layout`, `index.json` naming the image manifest for this device, and `blobs/` with
//! hard links into the cache (copies where a link cannot be made, such as across file
//! systems). Each layout gets a folder of its own under `artifacts/`, built under a temporary
//! name and renamed into place, so a layout folder is complete or absent.
//!
//! `current` and `previous` are symlinks in the state directory, switched with
//! rename(2) over the old link: at every instant `current` names a complete layout. When the
//! hook fails, both links are put back as they were and the failure is recorded for `status`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshanics_shared::media_type::OCI_INDEX;
use meshanics_shared::{Descriptor, Digest};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::Hook;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::pull::Pulled;
use crate::store::index::now;
use crate::store::{ArtifactRecord, ArtifactState, LastResult, Store, sync_dir};

/// The annotation naming an image in a layout's `index.json` (`oci:DIR:NAME`).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation carrying the target's own digest (an index, when it was multi-platform).
pub const TARGET_DIGEST: &str = "io.meshanics.target.digest";
/// The annotation carrying the repository the artifact came from.
pub const REPOSITORY: &str = "io.meshanics.repository";
/// The annotation carrying the target's name.
pub const TARGET_NAME: &str = "io.meshanics.target.name";

/// Which layouts `current` and `previous` point at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pointers {
    /// The applied layout's id.
    pub current: Option<String>,
    /// The previously applied layout's id.
    pub previous: Option<String>,
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

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutIndex {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

// === impl Pointers ===

impl Pointers {
    /// Reads the `current` and `previous` links.
    pub fn read(store: &Store) -> Result<Pointers> {
        Pointers::read_in(store.root())
    }

    /// Reads the links in a state directory without opening it (no lock needed: a rename
    /// switches them, so each read sees a whole link).
    pub fn read_in(state_dir: &Path) -> Result<Pointers> {
        Ok(Pointers {
            current: read_pointer(&state_dir.join("current"))?,
            previous: read_pointer(&state_dir.join("previous"))?,
        })
    }

    /// The ids pointed at.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.current
            .iter()
            .chain(&self.previous)
            .map(String::as_str)
    }

    fn write(&self, store: &Store) -> Result<()> {
        write_pointer(store, "previous", self.previous.as_deref())?;
        failpoint::hit("apply.between-pointers", &store.root().display());
        write_pointer(store, "current", self.current.as_deref())?;
        failpoint::hit("apply.before-dir-fsync", &store.root().display());
        sync_dir(store.root())
    }
}

/// Lays a pulled artifact out under `artifacts/` and records it (state `Pulled`). The blobs
/// must be in the cache.
pub fn lay_out(store: &Store, pulled: &Pulled) -> Result<ArtifactRecord> {
    let hex = pulled.manifest.digest.hex();
    let id = format!(
        "{}-{}",
        hex.get(..16).unwrap_or(hex),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let final_dir = store.artifacts_dir().join(&id);
    let tmp = store.artifacts_dir().join(format!(".tmp-{id}"));
    let blobs_dir = tmp.join("blobs/sha256");
    fs_err::create_dir_all(&blobs_dir).map_err(Error::io("creating", &blobs_dir))?;

    let mut digests = vec![pulled.manifest.digest.clone()];
    if pulled.target.digest != pulled.manifest.digest {
        digests.push(pulled.target.digest.clone());
    }
    for blob in &pulled.blobs {
        if !digests.contains(&blob.digest) {
            digests.push(blob.digest.clone());
        }
    }
    for digest in &digests {
        link_or_copy(&store.blob_path(digest), &blobs_dir.join(digest.hex()))?;
    }

    let mut annotations = BTreeMap::new();
    if is_ref_name(&pulled.target.name) {
        annotations.insert(REF_NAME.to_owned(), pulled.target.name.clone());
    }
    annotations.insert(TARGET_NAME.to_owned(), pulled.target.name.clone());
    annotations.insert(TARGET_DIGEST.to_owned(), pulled.target.digest.to_string());
    annotations.insert(
        REPOSITORY.to_owned(),
        pulled.target.repository.as_str().to_owned(),
    );
    let mut manifest = pulled.manifest.clone();
    manifest.annotations = Some(annotations);
    let index = LayoutIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.to_owned()),
        manifests: vec![manifest],
    };
    let index_bytes = serde_json::to_vec(&index).map_err(|source| Error::IndexRecord {
        key: format!("{id}/index.json"),
        source,
    })?;
    write_synced(
        &tmp.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    write_synced(&tmp.join("index.json"), &index_bytes)?;
    sync_dir(&blobs_dir)?;
    sync_dir(&tmp)?;
    failpoint::hit("layout.before-rename", &tmp.display());
    fs_err::rename(&tmp, &final_dir).map_err(Error::io("renaming", &final_dir))?;
    sync_dir(&store.artifacts_dir())?;

    let record = ArtifactRecord {
        id,
        name: pulled.target.name.clone(),
        repository: pulled.target.repository.as_str().to_owned(),
        target_digest: pulled.target.digest.clone(),
        manifest_digest: pulled.manifest.digest.clone(),
        blobs: digests,
        state: ArtifactState::Pulled,
        updated: now(),
    };
    store.index().put_artifact(&record)?;
    store.index().flush()?;
    Ok(record)
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
        .map_or_else(|| scan_layout(store, id, ArtifactState::Pulled), Ok)?;
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
    after.write(store)?;
    let layout = store.artifacts_dir().join(id);
    if let Some(hook) = hook
        && let Err(err) = run_hook(hook, &layout, &record).await
    {
        before.write(store)?;
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

/// The ids of every layout folder under `artifacts/` (temporary folders excluded).
pub fn layout_ids(store: &Store) -> Result<Vec<String>> {
    let dir = store.artifacts_dir();
    let mut ids = Vec::new();
    for entry in fs_err::read_dir(&dir).map_err(Error::io("listing", &dir))? {
        let entry = entry.map_err(Error::io("listing", &dir))?;
        if let Some(name) = entry.file_name().to_str()
            && !name.starts_with('.')
        {
            ids.push(name.to_owned());
        }
    }
    ids.sort();
    Ok(ids)
}

/// Reads an artifact record back from its layout (for rebuilding the index).
pub fn scan_layout(store: &Store, id: &str, state: ArtifactState) -> Result<ArtifactRecord> {
    scan_layout_in(&store.artifacts_dir(), id, state)
}

/// [`scan_layout`] by path, without opening the store.
pub fn scan_layout_in(
    artifacts_dir: &Path,
    id: &str,
    state: ArtifactState,
) -> Result<ArtifactRecord> {
    let dir = artifacts_dir.join(id);
    let index_path = dir.join("index.json");
    let bytes = fs_err::read(&index_path).map_err(Error::io("reading", &index_path))?;
    let index: LayoutIndex =
        serde_json::from_slice(&bytes).map_err(|source| Error::IndexRecord {
            key: index_path.display().to_string(),
            source,
        })?;
    let manifest = index
        .manifests
        .into_iter()
        .next()
        .ok_or_else(|| Error::InvalidName {
            what: "layout",
            name: id.to_owned(),
            reason: "index.json lists no manifest".into(),
        })?;
    let annotations = manifest.annotations.clone().unwrap_or_default();
    let blobs_dir = dir.join("blobs/sha256");
    let mut blobs = Vec::new();
    for entry in fs_err::read_dir(&blobs_dir).map_err(Error::io("listing", &blobs_dir))? {
        let entry = entry.map_err(Error::io("listing", &blobs_dir))?;
        if let Some(digest) = entry
            .file_name()
            .to_str()
            .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
        {
            blobs.push(digest);
        }
    }
    Ok(ArtifactRecord {
        id: id.to_owned(),
        name: annotations.get(TARGET_NAME).cloned().unwrap_or_default(),
        repository: annotations.get(REPOSITORY).cloned().unwrap_or_default(),
        target_digest: annotations
            .get(TARGET_DIGEST)
            .and_then(|d| Digest::parse(d).ok())
            .unwrap_or_else(|| manifest.digest.clone()),
        manifest_digest: manifest.digest,
        blobs,
        state,
        updated: now(),
    })
}

/// Every layout's record, read from the layouts, with states from the pointers.
pub fn scan_layouts(store: &Store) -> Result<Vec<ArtifactRecord>> {
    let pointers = Pointers::read(store)?;
    let mut out = Vec::new();
    for id in layout_ids(store)? {
        let state = if pointers.current.as_deref() == Some(&id) {
            ArtifactState::Current
        } else if pointers.previous.as_deref() == Some(&id) {
            ArtifactState::Previous
        } else {
            ArtifactState::Retired
        };
        match scan_layout(store, &id, state) {
            Ok(record) => out.push(record),
            Err(err) => warn!(error = %err, id, "skipping an unreadable layout"),
        }
    }
    Ok(out)
}

/// Where a layout keeps a blob.
pub fn layout_blob_path(store: &Store, id: &str, digest: &Digest) -> PathBuf {
    store
        .artifacts_dir()
        .join(id)
        .join("blobs")
        .join(digest.algorithm().name())
        .join(digest.hex())
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

/// Hard-links `from` to `to`, or copies it where a link cannot be made.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    fs_err::copy(from, to).map_err(Error::io("copying into the layout", to))?;
    fs_err::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("syncing", to))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = fs_err::File::create(path).map_err(Error::io("creating", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(Error::io("writing", path))
}

fn read_pointer(link: &Path) -> Result<Option<String>> {
    match fs_err::read_link(link) {
        Ok(target) => Ok(target
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading the link", link)(e)),
    }
}

/// Points `name` at `artifacts/<id>` (or removes it) atomically: a new link, renamed over.
fn write_pointer(store: &Store, name: &str, id: Option<&str>) -> Result<()> {
    let link = store.root().join(name);
    let Some(id) = id else {
        return match fs_err::remove_file(&link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", link)(e)),
        };
    };
    let tmp = store.root().join(format!(".{name}.new"));
    let _ = fs_err::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new("artifacts").join(id), &tmp)
        .map_err(Error::io("creating the link", &tmp))?;
    fs_err::rename(&tmp, &link).map_err(Error::io("switching", &link))
}

/// Whether `name` may be an OCI layout reference name (`oci:DIR:NAME`).
fn is_ref_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'/' | b'+' | b'@')
        })
}

#[cfg(test)]
mod tests;
