//! `meshctl publish DIR`: sends the metadata of a `meshctl release` folder to the facade
//! (`POST /v1/metadata`), which checks that devices trusting what it serves now would
//! accept it, and stores it (in `metadata_dir`, or in the state database for every
//! replica). What is sent: every `N.root.cose` of the folder (the facade compares those it
//! has), the `N.targets.cose` that `timestamp.cose` names, and `timestamp.cose`. Signing
//! keys are not involved: the folder is already signed.
//!
//! Exit codes as for the other facade commands: 1 the facade refused (the message names
//! the file and why), 64 the folder is incomplete or unreadable, 69 the facade is not
//! reachable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, anyhow};
use clap::Args;
use meshanics_operator_api::{FileBytes, OperatorClient, PublishRequest, PublishResponse};
use meshanics_shared::metadata::{TIMESTAMP_FILE, UnixTime, root_file, targets_file};
use serde_json::json;

use crate::registry::{EX_CONFIG, Failure, SocketArgs, api, finish, runtime};
use crate::signing::repo::Repo;

/// `meshctl publish`.
#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    /// The metadata folder (`meshctl release` output).
    dir: PathBuf,
}

/// Runs `meshctl publish`.
pub(crate) fn publish(
    args: &PublishArgs,
    socket: &SocketArgs,
    out: &crate::output::Output,
) -> ExitCode {
    let client = OperatorClient::new(socket.path());
    let result = read_release(&args.dir)
        .map_err(|e| (EX_CONFIG, e))
        .and_then(|request| {
            let names: Vec<String> = request.files.keys().cloned().collect();
            let served = runtime()?.block_on(client.publish(&request)).map_err(api)?;
            out.result(&text(&served, &names), &json!(served));
            Ok::<(), Failure>(())
        });
    finish(result, out)
}

/// The files to publish from `dir`: every root, the targets the timestamp names, the
/// timestamp.
fn read_release(dir: &Path) -> anyhow::Result<PublishRequest> {
    let repo = Repo::new(dir);
    let read = |name: &str| -> anyhow::Result<FileBytes> {
        let path = repo.path(name);
        fs_err::read(&path)
            .map(FileBytes)
            .with_context(|| format!("reading {}", path.display()))
    };
    let mut files = BTreeMap::new();
    let listing = fs_err::read_dir(dir)?;
    for entry in listing {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_root = name
            .strip_suffix(".root.cose")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|v| root_file(v) == name);
        if is_root {
            files.insert(name.to_owned(), read(name)?);
        }
    }
    if files.is_empty() {
        return Err(anyhow!(
            "{}: no N.root.cose file: not a metadata folder (meshctl root init, meshctl release)",
            dir.display()
        ));
    }
    let Some(timestamp) = repo.current_timestamp()? else {
        return Err(anyhow!(
            "{}: missing (meshctl release writes it)",
            repo.path(TIMESTAMP_FILE).display()
        ));
    };
    let targets = targets_file(timestamp.targets().version());
    if !repo.path(&targets).exists() {
        return Err(anyhow!(
            "{}: missing, and {} names it",
            repo.path(&targets).display(),
            repo.path(TIMESTAMP_FILE).display()
        ));
    }
    files.insert(targets.clone(), read(&targets)?);
    files.insert(TIMESTAMP_FILE.to_owned(), read(TIMESTAMP_FILE)?);
    Ok(PublishRequest { files })
}

fn text(served: &PublishResponse, sent: &[String]) -> String {
    let stored = if served.written.is_empty() {
        format!(
            "already published ({} files sent): nothing stored\n",
            sent.len()
        )
    } else {
        format!("stored {}\n", served.written.join(", "))
    };
    format!(
        "{stored}serving root version {}, targets version {}, timestamp version {} (expires {})\n",
        served.root_version,
        served.targets_version,
        served.timestamp_version,
        UnixTime::from_secs(served.timestamp_expires)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incomplete_folder_is_refused_naming_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = read_release(dir.path()).unwrap_err().to_string();
        assert!(empty.contains("no N.root.cose"), "{empty}");
        std::fs::write(dir.path().join("1.root.cose"), b"root").unwrap();
        let no_timestamp = read_release(dir.path()).unwrap_err().to_string();
        assert!(
            no_timestamp.contains("timestamp.cose: missing"),
            "{no_timestamp}"
        );
    }

    #[test]
    fn the_text_says_what_was_stored_and_what_is_served() {
        let served = PublishResponse {
            root_version: 2,
            targets_version: 7,
            timestamp_version: 12,
            timestamp_expires: 0,
            written: vec!["7.targets.cose".into(), "timestamp.cose".into()],
        };
        let text = text(&served, &[]);
        assert!(
            text.starts_with("stored 7.targets.cose, timestamp.cose\n"),
            "{text}"
        );
        assert!(text.contains("root version 2, targets version 7, timestamp version 12"));
    }
}
