//! A metadata folder as `meshctl` keeps it: `N.root.cose` for every root version,
//! `N.targets.cose` for every targets version, and `timestamp.cose`. The same folder is
//! what the facade serves under `/meta/` and what `meshctl verify` checks.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use meshanics_shared::fs::write_atomic;
use meshanics_shared::metadata::envelope::Envelope;
use meshanics_shared::metadata::{
    Role, Root, TIMESTAMP_FILE, Timestamp, UnixTime, open_root, root_file,
};

/// A metadata folder.
#[derive(Debug)]
pub(crate) struct Repo {
    dir: PathBuf,
}

impl Repo {
    pub(crate) fn new(dir: &Path) -> Self {
        Repo {
            dir: dir.to_owned(),
        }
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The highest `N` among files named `N.<role>.cose`.
    pub(crate) fn latest_version(&self, role: &str) -> anyhow::Result<Option<u64>> {
        let suffix = format!(".{role}.cose");
        let mut latest = None;
        let entries = match fs_err::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let name = entry?.file_name();
            let Some(version) = name
                .to_str()
                .and_then(|n| n.strip_suffix(&suffix))
                .and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            latest = latest.max(Some(version));
        }
        Ok(latest)
    }

    /// The newest root, which must be signed by a threshold of its own root keys.
    pub(crate) fn latest_root(&self) -> anyhow::Result<Root> {
        let Some(version) = self.latest_version("root")? else {
            bail!(
                "{}: no N.root.cose file; run `meshctl root init` first",
                self.dir.display()
            );
        };
        let file = root_file(version);
        let bytes = fs_err::read(self.path(&file))?;
        let root = open_root(&file, &bytes, None)?;
        if root.version() != version {
            bail!(
                "{}: holds root version {}, not {version}",
                self.path(&file).display(),
                root.version()
            );
        }
        Ok(root)
    }

    /// The current timestamp as written (its signatures are not checked: it may have been
    /// signed with keys rotated away since).
    pub(crate) fn current_timestamp(&self) -> anyhow::Result<Option<Timestamp>> {
        let path = self.path(TIMESTAMP_FILE);
        let bytes = match fs_err::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let envelope = Envelope::decode(TIMESTAMP_FILE, &bytes)?;
        Ok(Some(envelope.decode_payload().with_context(|| {
            format!("reading the current timestamp {}", path.display())
        })?))
    }

    /// Writes a file atomically, creating the folder if needed.
    pub(crate) fn write(&self, file: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
        fs_err::create_dir_all(&self.dir)?;
        let path = self.path(file);
        write_atomic(&path, bytes)?;
        Ok(path)
    }
}

/// Now, as metadata records time.
pub(crate) fn now() -> UnixTime {
    UnixTime::now()
}
