//! `meshctl release` (new targets from a pins file, and a timestamp naming them) and
//! `meshctl timestamp refresh` (a fresh timestamp naming the same targets). Versions
//! increase automatically from what the folder holds, and every file is checked as a device
//! would check it before it is written. Targets are written before the timestamp that names
//! them, so the folder never names a file it does not have.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use meshanics_shared::metadata::{
    ApplyMode, Role, SigningKey, TIMESTAMP_FILE, TargetEntry, Targets, TargetsMeta, Timestamp,
    open, sign, targets_file,
};
use serde_json::json;

use super::repo::{Repo, now};
use super::{keys, waves};
use crate::durations;
use crate::output::Output;

/// `meshctl release`.
#[derive(Debug, Args)]
pub(crate) struct ReleaseArgs {
    /// The metadata folder.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The pins file (JSON, as `meshctl import` writes it; see docs/metadata.md).
    #[arg(long, value_name = "FILE")]
    pins: PathBuf,
    /// A targets private key (repeat until the targets threshold is met).
    #[arg(long = "targets-key", required = true, value_name = "FILE")]
    targets_keys: Vec<PathBuf>,
    /// A timestamp private key (repeat until the timestamp threshold is met).
    #[arg(long = "timestamp-key", required = true, value_name = "FILE")]
    timestamp_keys: Vec<PathBuf>,
    /// How long the targets are valid.
    #[arg(long, default_value = "30d", value_parser = durations::parse)]
    expires: Duration,
    /// How long the timestamp is valid.
    #[arg(long, default_value = "1d", value_parser = durations::parse)]
    timestamp_expires: Duration,
    /// Roll every target of the release out in waves, signed with it: SHARE%@DELAY,...
    /// (`1%@0,10%@2h,100%@24h`: 1 % of the fleet at once, 10 % after 2 h, everyone after
    /// 24 h). Replaces any rollout in the pins file.
    #[arg(long, value_name = "WAVES")]
    waves: Option<String>,
    /// When the waves' delays start counting: `now` (the default) or an RFC 3339 time.
    #[arg(long, value_name = "TIME", requires = "waves")]
    rollout_start: Option<String>,
    /// How devices apply a target, overriding what its artifact says: `NAME=layout` (an OCI
    /// image layout) or `NAME=files` (a folder of files). Repeat for several targets.
    #[arg(long = "apply", value_name = "NAME=layout|files", value_parser = parse_apply)]
    apply: Vec<(String, ApplyMode)>,
}

/// `meshctl timestamp refresh`.
#[derive(Debug, Args)]
pub(crate) struct RefreshArgs {
    /// The metadata folder.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// A timestamp private key (repeat until the timestamp threshold is met).
    #[arg(long = "timestamp-key", required = true, value_name = "FILE")]
    timestamp_keys: Vec<PathBuf>,
    /// How long the timestamp is valid.
    #[arg(long, default_value = "1d", value_parser = durations::parse)]
    expires: Duration,
}

pub(crate) fn release(args: &ReleaseArgs, out: &Output) -> anyhow::Result<()> {
    let repo = Repo::new(&args.dir);
    let root = repo.latest_root()?;
    let mut entries = read_pins(&args.pins)?;
    for (name, mode) in &args.apply {
        let Some(entry) = entries.iter_mut().find(|e| e.name.as_str() == name) else {
            bail!(
                "--apply {name}={}: {} has no target {name}",
                mode.as_str(),
                args.pins.display()
            );
        };
        entry.apply = Some(*mode);
    }
    let issued = now();
    if let Some(text) = &args.waves {
        let start = waves::parse_start(args.rollout_start.as_deref().unwrap_or("now"), issued)
            .map_err(anyhow::Error::msg)?;
        let rollout = waves::parse(text, start).map_err(anyhow::Error::msg)?;
        for entry in &mut entries {
            entry.rollout = Some(rollout.clone());
        }
    }
    let targets_keys = keys::load_signing(&args.targets_keys)?;
    let timestamp_keys = keys::load_signing(&args.timestamp_keys)?;

    let version = repo
        .latest_version("targets")?
        .unwrap_or(0)
        .saturating_add(1);
    let count = entries.len();
    let targets = Targets::new(
        version,
        issued,
        issued.saturating_add(args.expires),
        entries,
    );
    let targets_bytes = sign(&targets, &signers(&targets_keys))?;
    let file = targets_file(version);
    open::<Targets>(&file, &targets_bytes, &root)
        .with_context(|| format!("the new {file} would not be accepted by devices"))?;

    let timestamp = next_timestamp(
        &repo,
        TargetsMeta::new(version, &targets_bytes),
        args.timestamp_expires,
    )?;
    let timestamp_bytes = sign(&timestamp, &signers(&timestamp_keys))?;
    open::<Timestamp>(TIMESTAMP_FILE, &timestamp_bytes, &root)
        .context("the new timestamp would not be accepted by devices")?;

    let targets_path = repo.write(&file, &targets_bytes)?;
    let timestamp_path = repo.write(TIMESTAMP_FILE, &timestamp_bytes)?;
    out.result(
        &format!(
            "wrote {} (targets version {version}, {count} target(s), expires {})\nwrote {} (timestamp version {}, expires {})\n",
            targets_path.display(),
            targets.expires(),
            timestamp_path.display(),
            timestamp.version(),
            timestamp.expires()
        ),
        &json!({
            "targets": {
                "file": targets_path,
                "version": version,
                "entries": count,
                "length": targets_bytes.len(),
                "expires": targets.expires().to_string(),
            },
            "timestamp": timestamp_json(&timestamp_path, &timestamp),
        }),
    );
    Ok(())
}

pub(crate) fn refresh(args: &RefreshArgs, out: &Output) -> anyhow::Result<()> {
    let repo = Repo::new(&args.dir);
    let root = repo.latest_root()?;
    let Some(current) = repo.current_timestamp()? else {
        bail!(
            "{}: no {TIMESTAMP_FILE}; run `meshctl release` first",
            args.dir.display()
        );
    };
    let timestamp_keys = keys::load_signing(&args.timestamp_keys)?;
    let timestamp = next_timestamp(&repo, current.targets().clone(), args.expires)?;
    let bytes = sign(&timestamp, &signers(&timestamp_keys))?;
    open::<Timestamp>(TIMESTAMP_FILE, &bytes, &root)
        .context("the new timestamp would not be accepted by devices")?;
    let path = repo.write(TIMESTAMP_FILE, &bytes)?;
    out.result(
        &format!(
            "wrote {} (timestamp version {}, targets version {}, expires {})\n",
            path.display(),
            timestamp.version(),
            timestamp.targets().version(),
            timestamp.expires()
        ),
        &timestamp_json(&path, &timestamp),
    );
    Ok(())
}

/// `NAME=layout` or `NAME=files`.
fn parse_apply(text: &str) -> Result<(String, ApplyMode), String> {
    let (name, mode) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=layout or NAME=files"))?;
    Ok((name.to_owned(), mode.parse()?))
}

/// Reads a pins file: a JSON array of target entries (docs/metadata.md, "Pins file").
fn read_pins(path: &Path) -> anyhow::Result<Vec<TargetEntry>> {
    let text = fs_err::read_to_string(path)?;
    let entries: Vec<TargetEntry> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a pins file", path.display()))?;
    for entry in &entries {
        if let Err(reason) = entry.check() {
            bail!("{}: target {}: {reason}", path.display(), entry.name);
        }
    }
    Ok(entries)
}

fn next_timestamp(
    repo: &Repo,
    targets: TargetsMeta,
    lifetime: Duration,
) -> anyhow::Result<Timestamp> {
    let version = repo
        .current_timestamp()?
        .map_or(0, |t| t.version())
        .saturating_add(1);
    let issued = now();
    Ok(Timestamp::new(
        version,
        issued,
        issued.saturating_add(lifetime),
        targets,
    ))
}

fn signers(keys: &[SigningKey]) -> Vec<&SigningKey> {
    keys.iter().collect()
}

fn timestamp_json(path: &Path, timestamp: &Timestamp) -> serde_json::Value {
    json!({
        "file": path,
        "version": timestamp.version(),
        "targets_version": timestamp.targets().version(),
        "expires": timestamp.expires().to_string(),
    })
}
