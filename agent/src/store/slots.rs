//! Slots: one per target this device runs, keyed by the target's name, each with its own
//! `current` and `previous` and its own state, as they lie in the state directory.
//!
//! ```text
//! slots/<name>/current       symlink to ../../artifacts/<id>: the slot's applied release
//! slots/<name>/previous      symlink to ../../artifacts/<id>: what a rollback returns to
//! slots/<name>/state.json    the slot's last result, an apply waiting for its health check,
//!                            the release held back as bad (see [`SlotState`])
//! slots/.retiring-<name>/    a slot being removed (a crash there leaves it for `open`)
//! current, previous          symlinks to slots/<primary>/current and .../previous
//! ```
//!
//! A target name is a safe path component (`TargetName`: 1 to 128 of `[A-Za-z0-9._-]`,
//! starting with a letter or digit, so never `.`, `..` or a dot file), so it names its
//! folder as it is.
//!
//! The state directory's own `current` and `previous` follow the primary slot: the first
//! target the signed metadata lists for this device. A device with one target keeps the
//! paths its hooks and tools used before slots; a state directory from before slots (its
//! `current` pointing at a layout directly) is migrated when the store opens
//! (`Store::migrate_to_slots`).
//!
//! This module knows the format only; when to switch, roll back or retire is `apply`'s.

use std::path::{Path, PathBuf};

use meshanics_shared::Digest;
use meshanics_shared::fs::{sync_dir, write_atomic};
use meshanics_shared::metadata::TargetName;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::artifacts::{Pointers, read_link, write_link};
use super::{ArtifactState, LastResult, Store};
use crate::error::{Error, Result};

/// The folder of slots in the state directory.
pub const SLOTS_DIR: &str = "slots";
/// A slot's state file.
pub const STATE_FILE: &str = "state.json";
/// The slot a migrated `current` goes to when its layout names no usable target.
pub const FALLBACK_SLOT: &str = "default";
/// The prefix of a slot folder being removed.
const RETIRING_PREFIX: &str = ".retiring-";

/// What a slot remembers besides its links: written atomically, read by `status` without
/// a lock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    /// The slot's last apply, rollback or failure.
    #[serde(default)]
    pub last_result: Option<LastResult>,
    /// An apply whose health check has not passed yet: if the agent stops before it does,
    /// the next start finishes the check or rolls back.
    #[serde(default)]
    pub pending: Option<Pending>,
    /// The release that failed its health check, held back until the signed metadata
    /// changes.
    #[serde(default)]
    pub bad: Option<BadRelease>,
    /// When this device's rollout wave for the target opens (Unix seconds), while the
    /// listed release waits for it; `None` when it does not wait.
    #[serde(default)]
    pub wave_opens: Option<u64>,
}

/// An apply in progress: `current` was (or is about to be) switched to `id`, and the hook
/// or the health check has not passed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The layout being applied.
    pub id: String,
    /// The links to put back if it fails.
    pub restore: Pointers,
    /// The targets metadata version the release came with (recorded with it if it is bad).
    pub targets_version: Option<u64>,
    /// When the apply started (Unix seconds).
    pub since: u64,
}

/// A release that failed its health check and was rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRelease {
    /// The target digest that failed.
    pub target_digest: Digest,
    /// The targets metadata version that listed it: a new version retries it.
    pub targets_version: Option<u64>,
    /// Why it failed.
    pub reason: String,
    /// When (Unix seconds).
    pub time: u64,
}

// === impl BadRelease ===

impl BadRelease {
    /// Whether this bad release is what the metadata lists now (so it is not tried again).
    pub fn holds_back(&self, digest: &Digest, targets_version: Option<u64>) -> bool {
        &self.target_digest == digest && self.targets_version == targets_version
    }
}

// === impl Store ===

impl Store {
    /// The folder of slots.
    pub fn slots_dir(&self) -> PathBuf {
        self.root().join(SLOTS_DIR)
    }

    /// A slot's folder (whether or not it is there).
    pub fn slot_dir(&self, slot: &TargetName) -> PathBuf {
        self.slots_dir().join(slot.as_str())
    }

    /// Every slot, by name.
    pub fn slot_names(&self) -> Result<Vec<TargetName>> {
        slot_names_in(self.root())
    }

    /// A slot's links.
    pub fn slot_pointers(&self, slot: &TargetName) -> Result<Pointers> {
        Pointers::read_links(&self.slot_dir(slot))
    }

    /// A slot's state (the default for a slot without a state file).
    pub fn slot_state(&self, slot: &TargetName) -> Result<SlotState> {
        read_state(&self.slot_dir(slot))
    }

    /// Replaces a slot's state file atomically (creating the slot).
    pub fn set_slot_state(&self, slot: &TargetName, state: &SlotState) -> Result<()> {
        let dir = self.ensure_slot(slot)?;
        let path = dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(state).map_err(|source| Error::IndexRecord {
            key: path.display().to_string(),
            source,
        })?;
        Ok(write_atomic(&path, &bytes)?)
    }

    /// Points a slot's link (`current` or `previous`) at the layout `id`, or removes it; the
    /// caller fsyncs the slot's folder once both links are switched.
    pub(crate) fn write_slot_link(
        &self,
        slot: &TargetName,
        name: &str,
        id: Option<&str>,
    ) -> Result<()> {
        let dir = self.ensure_slot(slot)?;
        let target = id.map(|id| Path::new("../../artifacts").join(id));
        write_link(&dir, name, target.as_deref())
    }

    /// The slot the state directory's `current` and `previous` follow, if any.
    pub fn primary_slot(&self) -> Result<Option<TargetName>> {
        for name in ["current", "previous"] {
            let Some(target) = read_link(&self.root().join(name))? else {
                continue;
            };
            let mut parts = target.components();
            return Ok(match (parts.next(), parts.next()) {
                (Some(first), Some(slot)) if first.as_os_str() == SLOTS_DIR => slot
                    .as_os_str()
                    .to_str()
                    .and_then(|s| TargetName::parse(s).ok()),
                _ => None,
            });
        }
        Ok(None)
    }

    /// Makes the state directory's `current` and `previous` follow `slot` (or removes them).
    /// A top-level link exists only while the slot's own link does, so it never dangles
    /// (`previous` appears with the slot's first `previous`: see [`Store::after_switch`]).
    pub fn set_primary(&self, slot: Option<&TargetName>) -> Result<()> {
        let mut changed = false;
        for name in ["previous", "current"] {
            let want = match slot {
                Some(slot) if read_link(&self.slot_dir(slot).join(name))?.is_some() => {
                    Some(Path::new(SLOTS_DIR).join(slot.as_str()).join(name))
                }
                _ => None,
            };
            if read_link(&self.root().join(name))? != want {
                write_link(self.root(), name, want.as_deref())?;
                changed = true;
            }
        }
        if changed {
            sync_dir(self.root())?;
        }
        Ok(())
    }

    /// Before the primary slot's links switch to `to`: removes the top-level links whose
    /// slot link is about to go, so that none dangles. Returns whether `slot` is the primary
    /// one (for [`Store::after_switch`]).
    pub(crate) fn before_switch(&self, slot: &TargetName, to: &Pointers) -> Result<bool> {
        let primary = self.primary_slot()?.as_ref() == Some(slot);
        if primary && (to.current.is_none() || to.previous.is_none()) {
            for (name, id) in [("previous", &to.previous), ("current", &to.current)] {
                if id.is_none() {
                    write_link(self.root(), name, None)?;
                }
            }
            sync_dir(self.root())?;
        }
        Ok(primary)
    }

    /// After a slot's links switched: the top-level links follow the primary slot's links
    /// that now exist; a slot becomes primary when there is none.
    pub(crate) fn after_switch(&self, slot: &TargetName, was_primary: bool) -> Result<()> {
        if was_primary || self.primary_slot()?.is_none() {
            self.set_primary(Some(slot))?;
        }
        Ok(())
    }

    /// Removes a slot: its links, its state and its folder (the layouts stay, for `gc`). The
    /// folder is renamed aside first, so a crash leaves either the whole slot or a folder
    /// [`Store::open`] finishes removing.
    pub fn remove_slot(&self, slot: &TargetName) -> Result<()> {
        if self.primary_slot()?.as_ref() == Some(slot) {
            self.set_primary(None)?;
        }
        let dir = self.slot_dir(slot);
        if !dir.exists() {
            return Ok(());
        }
        let aside = self
            .slots_dir()
            .join(format!("{RETIRING_PREFIX}{}", slot.as_str()));
        let _ = fs_err::remove_dir_all(&aside);
        fs_err::rename(&dir, &aside).map_err(Error::io("renaming", &dir))?;
        sync_dir(&self.slots_dir())?;
        fs_err::remove_dir_all(&aside).map_err(Error::io("removing", &aside))?;
        Ok(sync_dir(&self.slots_dir())?)
    }

    /// Moves a state directory from before slots onto them: its `current` and `previous`
    /// (links straight to layouts) become the links of the slot named by the current
    /// layout's target ([`FALLBACK_SLOT`] if that is not a target name), and the top-level
    /// links then follow that slot. Returns the slot, if there was anything to migrate.
    ///
    /// Safe to repeat: a crash before the top-level links are replaced leaves them in the
    /// old form, and the next open migrates again to the same result.
    pub(crate) fn migrate_to_slots(&self) -> Result<Option<TargetName>> {
        let current = read_link(&self.root().join("current"))?;
        let previous = read_link(&self.root().join("previous"))?;
        let old = |link: &Option<PathBuf>| {
            link.as_ref()
                .filter(|t| t.starts_with("artifacts"))
                .and_then(|t| t.file_name())
                .and_then(|n| n.to_str())
                .map(str::to_owned)
        };
        let (old_current, old_previous) = (old(&current), old(&previous));
        let Some(named_by) = old_current.as_ref().or(old_previous.as_ref()) else {
            return Ok(None);
        };
        let name = match self.index().artifact(named_by)? {
            Some(record) => record.name,
            None => self
                .scan_layout(named_by, ArtifactState::Current)
                .map(|r| r.name)
                .unwrap_or_default(),
        };
        let slot = TargetName::parse(&name).or_else(|_| {
            warn!(name, "the applied layout names no usable target; migrating it to the slot {FALLBACK_SLOT:?}");
            TargetName::parse(FALLBACK_SLOT)
        });
        let slot = slot.map_err(|e| Error::InvalidName {
            what: "slot",
            name: FALLBACK_SLOT.to_owned(),
            reason: e.to_string(),
        })?;
        self.write_slot_link(&slot, "previous", old_previous.as_deref())?;
        self.write_slot_link(&slot, "current", old_current.as_deref())?;
        sync_dir(&self.slot_dir(&slot))?;
        self.set_primary(Some(&slot))?;
        info!(slot = %slot, "moved current and previous into their slot");
        Ok(Some(slot))
    }

    /// Finishes removing slots a crash left renamed aside.
    pub(crate) fn finish_slot_removals(&self) -> Result<()> {
        let dir = self.slots_dir();
        for entry in fs_err::read_dir(&dir).map_err(Error::io("listing", &dir))? {
            let entry = entry.map_err(Error::io("listing", &dir))?;
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(RETIRING_PREFIX))
            {
                let path = entry.path();
                fs_err::remove_dir_all(&path).map_err(Error::io("removing", &path))?;
            }
        }
        Ok(())
    }

    /// Creates a slot's folder if it is not there (and makes its entry durable).
    fn ensure_slot(&self, slot: &TargetName) -> Result<PathBuf> {
        let dir = self.slot_dir(slot);
        if !dir.is_dir() {
            fs_err::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
            sync_dir(&self.slots_dir())?;
        }
        Ok(dir)
    }
}

/// Every slot in the state directory `root`, by name (folders that are not target names,
/// such as one being removed, are skipped).
pub fn slot_names_in(root: &Path) -> Result<Vec<TargetName>> {
    let dir = root.join(SLOTS_DIR);
    let entries = match fs_err::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("listing", &dir))?;
        if let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| TargetName::parse(n).ok())
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// A slot's links in the state directory `root`, without opening the store.
pub fn slot_pointers_in(root: &Path, slot: &TargetName) -> Result<Pointers> {
    Pointers::read_links(&root.join(SLOTS_DIR).join(slot.as_str()))
}

/// A slot's state in the state directory `root`, without opening the store.
pub fn slot_state_in(root: &Path, slot: &TargetName) -> Result<SlotState> {
    read_state(&root.join(SLOTS_DIR).join(slot.as_str()))
}

fn read_state(slot_dir: &Path) -> Result<SlotState> {
    let path = slot_dir.join(STATE_FILE);
    match fs_err::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::IndexRecord {
            key: path.display().to_string(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SlotState::default()),
        Err(e) => Err(Error::io("reading", path)(e)),
    }
}
