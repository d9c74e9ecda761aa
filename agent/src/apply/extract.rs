//! Tar extraction for files mode: hostile input, written entry by entry into a folder the
//! agent made, never with `tar::Archive::unpack`.
//!
//! The archive is a verified layer, but verified only means "what the release named": the
//! bytes inside may still try to write outside the folder. So each entry is checked before
//! anything is written:
//!
//! - names: not empty, no NUL, not absolute, no `..`; `.` and empty components are dropped
//!   (`./a//b` is `a/b`). With a prefix (an ORAS directory layer), every entry must lie
//!   under it.
//! - parents: walked component by component from the folder with `symlink_metadata`: a
//!   symlink in a parent path is refused (no writing through a link), a file where a folder
//!   is needed is refused; missing folders are created.
//! - the entry itself: never overwritten. A regular file is created with `O_CREAT|O_EXCL`
//!   (which does not follow a symlink left at its place); an existing directory may be named
//!   again by a directory entry, nothing else may exist already (so a file never replaces a
//!   folder, nor a link a file).
//! - symlinks: the target must be relative, with every `..` before the first name
//!   (`../../lib/x`, never `a/../..`: a name before `..` may itself be a link, and the
//!   kernel then climbs from wherever it points), and must land inside the folder (inside
//!   the prefix, when there is one). Because no entry is ever written through a link and
//!   every link's parent is a real folder, following any chain of such links stays inside
//!   (GHSA-m37j-52j7-pjw7 was such a chain).
//! - hard links: the target is an archive path, checked like a name and resolved against
//!   the folder, never against the working directory (GHSA-fxhp-mv3v-67qp); it must be a
//!   regular file already extracted, reached without a symlink.
//! - modes: `mode & 0o777` (no setuid, setgid or sticky bit); folders get `u+rwx` on top, so
//!   the agent can always remove what it extracted. Owners are not kept.
//! - types: regular files, folders, symlinks and hard links. Device files, FIFOs, sparse
//!   files and anything else are refused.
//! - sizes: the bytes written and the bytes read from the (decompressed) stream are capped
//!   ([`Limits`]), and so is the number of entries, so a decompression bomb or a flood of
//!   empty entries stops early.
//!
//! Every file and folder written is fsynced; the caller renames the whole artifact folder
//! into place afterwards, so a crash leaves it complete or absent.

use std::cell::Cell;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The longest entry name or link target shown in an error.
const SHOWN_MAX: usize = 200;

/// How much an extraction may write and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of file content written.
    pub max_bytes: u64,
    /// The most entries (of any type).
    pub max_entries: u64,
}

/// What an extraction wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Entries written (files, folders, links).
    pub entries: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Why an archive (or a layer's file name) was refused. Each variant names the entry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    /// A name that is empty, has a NUL, is absolute or has a `..` component.
    #[error("entry {name:?}: {reason}")]
    Name {
        /// The name as the archive gives it (shortened if long).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An entry outside the prefix an ORAS directory layer must keep to.
    #[error("entry {name:?} is outside {prefix:?}")]
    OutsidePrefix {
        /// The entry.
        name: String,
        /// The prefix (the layer's title).
        prefix: String,
    },
    /// A symlink or hard link whose target leaves the folder (or the prefix).
    #[error("{kind} {name:?} points outside the folder ({target:?}): {reason}")]
    LinkOutside {
        /// `symlink` or `hard link`.
        kind: &'static str,
        /// The link.
        name: String,
        /// Its target.
        target: String,
        /// Why.
        reason: &'static str,
    },
    /// A path whose parent is a symlink: writing there would write through the link.
    #[error("entry {name:?}: {component:?} on its path is a symlink")]
    ThroughSymlink {
        /// The entry.
        name: String,
        /// The component that is a link.
        component: String,
    },
    /// A path whose parent is a file.
    #[error("entry {name:?}: {component:?} on its path is not a folder")]
    NotAFolder {
        /// The entry.
        name: String,
        /// The component that is not a folder.
        component: String,
    },
    /// An entry whose path is taken already (by an earlier entry or layer).
    #[error("entry {name:?} exists already (an archive may not replace what it wrote)")]
    Exists {
        /// The entry.
        name: String,
    },
    /// A hard link whose target is not a regular file extracted before it.
    #[error("hard link {name:?}: target {target:?} is not a regular file in the folder")]
    HardLinkTarget {
        /// The link.
        name: String,
        /// Its target.
        target: String,
    },
    /// An entry type files mode does not write (device, FIFO, sparse file...).
    #[error("entry {name:?}: {kind} entries are not extracted")]
    Unsupported {
        /// The entry.
        name: String,
        /// Its type, as the tar crate names it.
        kind: String,
    },
    /// More bytes than [`Limits::max_bytes`] (written, or read from the stream).
    #[error("the archive expands past {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// More entries than [`Limits::max_entries`].
    #[error("the archive has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: u64,
    },
    /// The archive (or its compression) is corrupt.
    #[error("reading the archive: {source}")]
    Read {
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Writing into the folder failed.
    #[error("{action} {path}: {source}")]
    Write {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A relative path inside the folder: its components, none empty, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelPath<'a> {
    shown: String,
    parts: Vec<&'a [u8]>,
}

/// Folders the extraction created or named, with the mode to give them at the end.
#[derive(Default)]
struct Folders {
    modes: Vec<(PathBuf, u32)>,
    created: Vec<PathBuf>,
}

// === impl RelPath ===

impl<'a> RelPath<'a> {
    /// Parses an archive path or a layer's file name. `allow_root` accepts a name that is
    /// only `.` or `/`-separated dots (the folder itself, as `./` in many archives).
    pub(crate) fn parse(raw: &'a [u8], allow_root: bool) -> Result<RelPath<'a>, ExtractError> {
        let shown = show(raw);
        let refuse = |reason| ExtractError::Name {
            name: shown.clone(),
            reason,
        };
        if raw.is_empty() {
            return Err(refuse("the name is empty"));
        }
        if raw.contains(&0) {
            return Err(refuse("the name contains NUL"));
        }
        if raw.first() == Some(&b'/') {
            return Err(refuse("the name is absolute"));
        }
        let mut parts = Vec::new();
        for part in raw.split(|&b| b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(refuse("the name has a `..` component")),
                part => parts.push(part),
            }
        }
        if parts.is_empty() && !allow_root {
            return Err(refuse("the name names no file"));
        }
        Ok(RelPath { shown, parts })
    }

    /// The name as shown in errors.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether it is the folder itself.
    fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    fn starts_with(&self, prefix: &RelPath<'_>) -> bool {
        self.parts.len() >= prefix.parts.len()
            && self.parts.iter().zip(&prefix.parts).all(|(a, b)| a == b)
    }
}

/// Where the file `path` goes under `root`: its parent folders are made (and fsynced),
/// refusing a symlink or a file on the way. The file itself is not created.
pub(crate) fn place(root: &Path, path: &RelPath<'_>) -> Result<PathBuf, ExtractError> {
    let mut folders = Folders::default();
    let dir = walk(root, path, false, true, &mut folders)?;
    for created in folders.created.iter().rev() {
        sync(created)?;
    }
    Ok(dir.join(last(path)))
}

/// Creates `to` (which must not exist) as a hard link to `from`, or a copy of it where a
/// link cannot be made (across file systems). The copy is fsynced.
pub(crate) fn link_or_copy(from: &Path, to: &Path, name: &str) -> Result<(), ExtractError> {
    match std::fs::hard_link(from, to) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(ExtractError::Exists {
                name: name.to_owned(),
            });
        }
        Err(_) => {}
    }
    let mut source = std::fs::File::open(from).map_err(write_err("opening", from))?;
    let mut file = create_new(to, name)?;
    io::copy(&mut source, &mut file).map_err(write_err("copying into", to))?;
    file.sync_all().map_err(write_err("syncing", to))
}

/// Extracts a tar stream into `root` (an existing folder the caller made), entry by entry
/// with the checks this module describes. With `prefix`, every entry must lie under it.
pub fn extract(
    archive: impl Read,
    root: &Path,
    prefix: Option<&str>,
    limits: Limits,
) -> Result<Extracted, ExtractError> {
    let prefix = prefix
        .map(|p| RelPath::parse(p.as_bytes(), false))
        .transpose()?;
    let over = Rc::new(Cell::new(false));
    // Bytes read from the stream: file content plus a header block for each entry, and
    // some slack for padding and extended headers. A stream longer than this is refused
    // even when its entries are skipped data (a folder entry claiming gigabytes).
    let read_cap = limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(3 * 512))
        .saturating_add(1024 * 1024);
    let capped = Capped {
        inner: archive,
        left: read_cap,
        over: Rc::clone(&over),
    };
    let mut tar = tar::Archive::new(capped);
    let read_err = |source: io::Error| {
        if over.get() {
            ExtractError::TooLarge {
                limit: limits.max_bytes,
            }
        } else {
            ExtractError::Read { source }
        }
    };
    let mut done = Extracted::default();
    let mut folders = Folders::default();
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(ExtractError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let raw_name = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        let path = RelPath::parse(&raw_name, kind.is_dir())?;
        if let Some(prefix) = &prefix
            && !path.starts_with(prefix)
        {
            return Err(ExtractError::OutsidePrefix {
                name: path.shown,
                prefix: prefix.shown.clone(),
            });
        }
        let mode = entry.header().mode().map_err(read_err)? & 0o777;
        match kind {
            tar::EntryType::Directory => {
                if path.is_root() {
                    continue;
                }
                let dir = walk(root, &path, true, true, &mut folders)?;
                folders.modes.push((dir, mode | 0o700));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().map_err(read_err)?;
                if size > limits.max_bytes.saturating_sub(done.bytes) {
                    return Err(ExtractError::TooLarge {
                        limit: limits.max_bytes,
                    });
                }
                let file_path = walk(root, &path, false, true, &mut folders)?.join(last(&path));
                let mut file = create_new(&file_path, &path.shown)?;
                let written = io::copy(&mut (&mut entry).take(size), &mut file).map_err(|e| {
                    if e.kind() == io::ErrorKind::Other && over.get() {
                        ExtractError::TooLarge {
                            limit: limits.max_bytes,
                        }
                    } else {
                        ExtractError::Read { source: e }
                    }
                })?;
                if written != size {
                    return Err(ExtractError::Read {
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{}: {written} of {size} bytes", path.shown),
                        ),
                    });
                }
                done.bytes += written;
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .and_then(|()| file.sync_all())
                    .map_err(write_err("writing", &file_path))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                check_symlink(&path, &target, prefix.as_ref())?;
                let link = walk(root, &path, false, true, &mut folders)?.join(last(&path));
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &link).map_err(|e| {
                    exists_or(e, &path.shown, write_err("creating the link", &link))
                })?;
            }
            tar::EntryType::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target =
                    RelPath::parse(&raw_target, false).map_err(|_| ExtractError::LinkOutside {
                        kind: "hard link",
                        name: path.shown.clone(),
                        target: show(&raw_target),
                        reason: "the target is not a relative archive path",
                    })?;
                if let Some(prefix) = &prefix
                    && !target.starts_with(prefix)
                {
                    return Err(ExtractError::LinkOutside {
                        kind: "hard link",
                        name: path.shown.clone(),
                        target: target.shown,
                        reason: "the target is outside the prefix",
                    });
                }
                // Resolved against the folder, never the working directory, and reached
                // without a symlink: an existing regular file only.
                let target_path = walk(root, &target, false, false, &mut folders)
                    .map_err(|_| ExtractError::HardLinkTarget {
                        name: path.shown.clone(),
                        target: target.shown.clone(),
                    })?
                    .join(last(&target));
                match std::fs::symlink_metadata(&target_path) {
                    Ok(meta) if meta.file_type().is_file() => {}
                    _ => {
                        return Err(ExtractError::HardLinkTarget {
                            name: path.shown.clone(),
                            target: target.shown,
                        });
                    }
                }
                let link = walk(root, &path, false, true, &mut folders)?.join(last(&path));
                std::fs::hard_link(&target_path, &link).map_err(|e| {
                    exists_or(e, &path.shown, write_err("creating the hard link", &link))
                })?;
            }
            other => {
                return Err(ExtractError::Unsupported {
                    name: path.shown,
                    kind: format!("{other:?}"),
                });
            }
        }
    }
    // Modes last (a read-only folder must not stop later entries), deepest first; then
    // every folder made is fsynced, so the names in it are durable.
    for (dir, mode) in folders.modes.iter().rev() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode))
            .map_err(write_err("setting the mode of", dir))?;
    }
    for dir in folders.created.iter().rev() {
        sync(dir)?;
    }
    sync(root)?;
    Ok(done)
}

/// Walks `path` (all of it with `whole`, else its parent) from `root`: each component must
/// be a real folder; a missing one is created when `create` is set. Returns where it ended.
fn walk(
    root: &Path,
    path: &RelPath<'_>,
    whole: bool,
    create: bool,
    folders: &mut Folders,
) -> Result<PathBuf, ExtractError> {
    let count = if whole {
        path.parts.len()
    } else {
        path.parts.len().saturating_sub(1)
    };
    let mut dir = root.to_owned();
    for (i, part) in path.parts.iter().take(count).enumerate() {
        dir.push(OsStr::from_bytes(part));
        let component = || show(&path.parts.get(..=i).unwrap_or_default().join(&b'/'));
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ExtractError::ThroughSymlink {
                    name: path.shown.clone(),
                    component: component(),
                });
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(ExtractError::NotAFolder {
                    name: path.shown.clone(),
                    component: component(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&dir).map_err(write_err("creating", &dir))?;
                folders.created.push(dir.clone());
            }
            Err(e) => return Err(write_err("reading", &dir)(e)),
        }
    }
    Ok(dir)
}

/// A symlink's target must be relative, climb only at its start, and land inside the
/// folder (and the prefix).
fn check_symlink(
    link: &RelPath<'_>,
    target: &[u8],
    prefix: Option<&RelPath<'_>>,
) -> Result<(), ExtractError> {
    let refuse = |reason| ExtractError::LinkOutside {
        kind: "symlink",
        name: link.shown.clone(),
        target: show(target),
        reason,
    };
    if target.is_empty() || target.contains(&0) {
        return Err(refuse("the target is empty or has a NUL"));
    }
    if target.first() == Some(&b'/') {
        return Err(refuse("the target is absolute"));
    }
    let mut ups = 0;
    let mut names: Vec<&[u8]> = Vec::new();
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if names.is_empty() => ups += 1,
            b".." => return Err(refuse("`..` after a name (that name may be a link)")),
            part => names.push(part),
        }
    }
    // The link's folder, then up `ups` times: it must not climb past the folder's root.
    let parent = link.parts.len().saturating_sub(1);
    let Some(base) = parent.checked_sub(ups) else {
        return Err(refuse("the target climbs out of the folder"));
    };
    if let Some(prefix) = prefix {
        let mut landed: Vec<&[u8]> = link.parts.get(..base).unwrap_or_default().to_vec();
        landed.extend(names);
        let inside = landed.len() >= prefix.parts.len()
            && landed.iter().zip(&prefix.parts).all(|(a, b)| a == b);
        if !inside {
            return Err(refuse("the target is outside the prefix"));
        }
    }
    Ok(())
}

fn last<'p>(path: &'p RelPath<'_>) -> &'p OsStr {
    OsStr::from_bytes(path.parts.last().copied().unwrap_or(b"."))
}

fn create_new(path: &Path, name: &str) -> Result<std::fs::File, ExtractError> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| exists_or(e, name, write_err("creating", path)))
}

fn exists_or(
    e: io::Error,
    name: &str,
    other: impl FnOnce(io::Error) -> ExtractError,
) -> ExtractError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        ExtractError::Exists {
            name: name.to_owned(),
        }
    } else {
        other(e)
    }
}

fn sync(dir: &Path) -> Result<(), ExtractError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(write_err("syncing", dir))
}

fn write_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExtractError {
    let path = path.to_owned();
    move |source| ExtractError::Write {
        action,
        path,
        source,
    }
}

/// A name for errors: lossy UTF-8, shortened.
fn show(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if text.chars().count() > SHOWN_MAX {
        let short: String = text.chars().take(SHOWN_MAX).collect();
        format!("{short}...")
    } else {
        text.into_owned()
    }
}

/// A reader that fails once more than `left` bytes were read, and says so in `over`.
struct Capped<R> {
    inner: R,
    left: u64,
    over: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte more tells a stream that ends exactly at the cap from a longer one.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.over.set(true);
                    Err(io::Error::other("the stream passes its cap"))
                }
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let Some(window) = buf.get_mut(..max) else {
            return Ok(0);
        };
        let n = self.inner.read(window)?;
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
