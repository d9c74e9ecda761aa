//! The OCI image layout writer: a pulled artifact becomes `artifacts/<id>/`, what
//! `skopeo copy oci:...`, podman and containerd take as input.
//!
//! A layout holds `oci-layout`, `index.json` naming the image manifest for this device, and
//! `blobs/` with hard links into the cache (copies where a link cannot be made, such as
//! across file systems). It is built under a temporary name and renamed into place, so a
//! layout folder is complete or absent. The format itself (and reading it back) is
//! [`crate::store::artifacts`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use meshanics_shared::fs::sync_dir;
use meshanics_shared::media_type::OCI_INDEX;

use crate::error::{Error, Result};
use crate::failpoint;
use crate::pull::Pulled;
use crate::store::artifacts::{
    BUILDING_PREFIX, LayoutIndex, REF_NAME, REPOSITORY, TARGET_DIGEST, TARGET_NAME,
};
use crate::store::index::now;
use crate::store::{ArtifactRecord, ArtifactState, Store};

/// Lays a pulled artifact out under `artifacts/` and records it (state `Pulled`). The blobs
/// must be in the cache.
pub fn lay_out(store: &Store, pulled: &Pulled) -> Result<ArtifactRecord> {
    lay_out_with(store, pulled, |_| Ok(()))
}

/// [`lay_out`], with `fill` adding to the folder being built before it is made durable and
/// renamed into place (files mode adds `files/`). A failure removes the folder.
pub(crate) fn lay_out_with(
    store: &Store,
    pulled: &Pulled,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<ArtifactRecord> {
    let hex = pulled.manifest.digest.hex();
    let id = format!(
        "{}-{}",
        hex.get(..16).unwrap_or(hex),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let final_dir = store.layout_dir(&id);
    let tmp = store.artifacts_dir().join(format!("{BUILDING_PREFIX}{id}"));

    let mut digests = vec![pulled.manifest.digest.clone()];
    if pulled.target.digest != pulled.manifest.digest {
        digests.push(pulled.target.digest.clone());
    }
    for blob in &pulled.blobs {
        if !digests.contains(&blob.digest) {
            digests.push(blob.digest.clone());
        }
    }
    // `blobs/<algorithm>/<hex>`, as the OCI image layout names blobs: a folder for each
    // algorithm the artifact's digests use.
    let mut blob_dirs = BTreeSet::new();
    for digest in &digests {
        let blobs_dir = tmp.join("blobs").join(digest.algorithm().name());
        if blob_dirs.insert(blobs_dir.clone()) {
            fs_err::create_dir_all(&blobs_dir).map_err(Error::io("creating", &blobs_dir))?;
        }
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
    if let Err(err) = fill(&tmp) {
        if let Err(cleanup) = fs_err::remove_dir_all(&tmp) {
            tracing::warn!(error = %cleanup, "removing a layout that failed to build");
        }
        return Err(err);
    }
    for blobs_dir in &blob_dirs {
        sync_dir(blobs_dir)?;
    }
    if let Some(blobs) = blob_dirs.first().and_then(|dir| dir.parent()) {
        sync_dir(blobs)?;
    }
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

/// Writes a file of the layout being built and fsyncs it. Not an atomic write: the whole
/// folder is renamed into place once every file in it is durable.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = fs_err::File::create(path).map_err(Error::io("creating", path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(Error::io("writing", path))
}

/// Whether `name` may be an OCI layout reference name (`oci:DIR:NAME`).
fn is_ref_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'/' | b'+' | b'@')
        })
}
