//! Artifact layouts and the `current`/`previous` pointers as they lie in the state directory,
//! read back for the index rebuild, `fsck`, `gc` and `status`.
//!
//! ```text
//! artifacts/<id>/oci-layout          {"imageLayoutVersion":"1.0.0"}
//! artifacts/<id>/index.json          one manifest descriptor, annotated (see the constants)
//! artifacts/<id>/blobs/<alg>/<hex>   hard links into the cache (or copies); <alg> is
//!                                    sha256 or sha512, as the blob's digest names it
//! artifacts/.tmp-<id>/               a layout being built (complete layouts are renamed)
//! ```
//!
//! Which layouts are applied is said by the slots' links (see [`super::slots`]).
//!
//! This module knows the format only: what to lay out and when to switch the pointers is
//! the applier's business (the `apply` module), as a content store knows its blobs and not
//! what they are for.

use std::path::{Path, PathBuf};

use meshanics_shared::{Algorithm, Descriptor, Digest};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::index::now;
use super::{ArtifactRecord, ArtifactState, Store};
use crate::error::{Error, Result};

/// The annotation naming an image in a layout's `index.json` (`oci:DIR:NAME`).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation carrying the target's own digest (an index, when it was multi-platform).
pub const TARGET_DIGEST: &str = "io.meshanics.target.digest";
/// The annotation carrying the repository the artifact came from.
pub const REPOSITORY: &str = "io.meshanics.repository";
/// The annotation carrying the target's name.
pub const TARGET_NAME: &str = "io.meshanics.target.name";

/// The prefix of a layout folder still being built.
pub(crate) const BUILDING_PREFIX: &str = ".tmp-";

/// Which layouts a slot's `current` and `previous` point at (or the state directory's
/// `current` and `previous`, which follow the primary slot).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointers {
    /// The applied layout's id.
    pub current: Option<String>,
    /// The previously applied layout's id.
    pub previous: Option<String>,
}

/// A layout's `index.json`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LayoutIndex {
    pub(crate) schema_version: u32,
    #[serde(default)]
    pub(crate) media_type: Option<String>,
    pub(crate) manifests: Vec<Descriptor>,
}

// === impl Pointers ===

impl Pointers {
    /// Reads the state directory's `current` and `previous` links: the primary slot's (see
    /// [`super::slots`]), or a layout's directly in a state directory not yet migrated.
    pub fn read(store: &Store) -> Result<Pointers> {
        Pointers::read_in(store.root())
    }

    /// [`Pointers::read`] in a state directory without opening it (no lock needed: a rename
    /// switches each link, so each read sees a whole link).
    pub fn read_in(state_dir: &Path) -> Result<Pointers> {
        Pointers::read_links(state_dir)
    }

    /// Reads the `current` and `previous` links in `dir` (a slot's folder, or the state
    /// directory), following a link to a slot's link.
    pub(crate) fn read_links(dir: &Path) -> Result<Pointers> {
        Ok(Pointers {
            current: read_pointer(&dir.join("current"))?,
            previous: read_pointer(&dir.join("previous"))?,
        })
    }

    /// The ids pointed at.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.current
            .iter()
            .chain(&self.previous)
            .map(String::as_str)
    }
}

// === impl Store ===

impl Store {
    /// The folder of the layout `id` (whether or not it is there).
    pub fn layout_dir(&self, id: &str) -> PathBuf {
        self.artifacts_dir().join(id)
    }

    /// Where the layout `id` keeps a blob.
    pub fn layout_blob_path(&self, id: &str, digest: &Digest) -> PathBuf {
        self.layout_dir(id)
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// The ids of every layout folder under `artifacts/` (folders being built excluded).
    pub fn layout_ids(&self) -> Result<Vec<String>> {
        let dir = self.artifacts_dir();
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
    pub fn scan_layout(&self, id: &str, state: ArtifactState) -> Result<ArtifactRecord> {
        scan_layout_in(&self.artifacts_dir(), id, state)
    }

    /// Every layout's record, read from the layouts, with states from every slot's pointers.
    pub fn scan_layouts(&self) -> Result<Vec<ArtifactRecord>> {
        let mut pointers = vec![Pointers::read(self)?];
        for slot in self.slot_names()? {
            pointers.push(self.slot_pointers(&slot)?);
        }
        let mut out = Vec::new();
        for id in self.layout_ids()? {
            let state = if pointers.iter().any(|p| p.current.as_deref() == Some(&id)) {
                ArtifactState::Current
            } else if pointers.iter().any(|p| p.previous.as_deref() == Some(&id)) {
                ArtifactState::Previous
            } else {
                ArtifactState::Retired
            };
            match self.scan_layout(&id, state) {
                Ok(record) => out.push(record),
                Err(err) => warn!(error = %err, id, "skipping an unreadable layout"),
            }
        }
        Ok(out)
    }
}

/// [`Store::scan_layout`] by path, without opening the store.
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
    let mut blobs = Vec::new();
    for algorithm in Algorithm::ALL {
        // A layout has a folder only for the algorithms its blobs use.
        let blobs_dir = dir.join("blobs").join(algorithm.name());
        match fs_err::metadata(&blobs_dir) {
            Ok(_) => blobs.extend(super::digests_in(&blobs_dir, algorithm)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("reading", blobs_dir)(e)),
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

/// Points the link `dir/name` at `target`, or removes it, in one step: a new link renamed
/// over the old. The folder is not fsynced here: the caller switches both links of a pair,
/// then fsyncs once.
pub(crate) fn write_link(dir: &Path, name: &str, target: Option<&Path>) -> Result<()> {
    let link = dir.join(name);
    let Some(target) = target else {
        return match fs_err::remove_file(&link) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing", link)(e)),
        };
    };
    let tmp = dir.join(format!(".{name}.new"));
    let _ = fs_err::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(Error::io("creating the link", &tmp))?;
    fs_err::rename(&tmp, &link).map_err(Error::io("switching", &link))
}

/// The layout id a `current` or `previous` link names, following one link to a slot's link
/// (`current -> slots/app/current -> ../../artifacts/<id>`).
pub(crate) fn read_pointer(link: &Path) -> Result<Option<String>> {
    let Some(target) = read_link(link)? else {
        return Ok(None);
    };
    if target.starts_with(super::slots::SLOTS_DIR) {
        let next = link.parent().unwrap_or(Path::new(".")).join(&target);
        return Ok(read_link(&next)?.as_deref().and_then(link_id));
    }
    Ok(link_id(&target))
}

/// Where a link points, `None` if there is no link.
pub(crate) fn read_link(link: &Path) -> Result<Option<PathBuf>> {
    match fs_err::read_link(link) {
        Ok(target) => Ok(Some(target)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading the link", link)(e)),
    }
}

/// The layout id at the end of a link's target (`../../artifacts/<id>`).
fn link_id(target: &Path) -> Option<String> {
    target
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
}
