//! `meshctl verify DIR --root FILE`: runs the device's workflow (root chain, timestamp,
//! targets, every check and cap) against a metadata folder, starting from a pinned root,
//! and prints what a device would accept.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use meshanics_shared::metadata::rollout::certificate_spki;
use meshanics_shared::metadata::{DirectoryFetch, Position, Role, TrustedSet, UnixTime, Updater};
use meshanics_shared::{Platform, tls};
use serde_json::json;

use crate::output::Output;

/// `meshctl verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The metadata folder.
    dir: PathBuf,
    /// The root a device pins (its trust anchor), e.g. DIR/1.root.cose.
    #[arg(long, value_name = "FILE")]
    root: PathBuf,
    /// Only list targets for this hardware class.
    #[arg(long)]
    hardware_class: Option<String>,
    /// Only list targets for this platform (with --hardware-class).
    #[arg(long, requires = "hardware_class")]
    platform: Option<Platform>,
    /// Check expiry at this time (seconds since the epoch) instead of now.
    #[arg(long, value_name = "SECONDS")]
    at: Option<u64>,
    /// A device certificate (PEM): show where that device stands in each listed target's
    /// rollout (its position, its wave, when the wave opens).
    #[arg(long, value_name = "FILE")]
    certificate: Option<PathBuf>,
}

pub(crate) fn verify(args: &VerifyArgs, out: &Output) -> anyhow::Result<()> {
    let anchor = fs_err::read(&args.root)?;
    let trusted = TrustedSet::from_anchor(&anchor)
        .with_context(|| format!("{}: not a usable trust anchor", args.root.display()))?;
    let mut updater = Updater::new(trusted);
    let mut fetch = DirectoryFetch::new(&args.dir);
    let now = args.at.map_or_else(UnixTime::now, UnixTime::from_secs);
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let report = runtime
        .block_on(updater.update(&mut fetch, now))
        .with_context(|| {
            format!(
                "{}: a device would refuse this metadata",
                args.dir.display()
            )
        })?;

    let trusted = updater.trusted();
    let root = trusted.root();
    let (timestamp_version, timestamp_expires) = trusted
        .timestamp()
        .map_or((0, UnixTime::EPOCH), |t| (t.version(), t.expires()));
    let Some(targets) = trusted.targets() else {
        anyhow::bail!("{}: no targets were accepted", args.dir.display());
    };
    let entries: Vec<_> = match (&args.hardware_class, &args.platform) {
        (Some(class), Some(platform)) => targets.matching(class, platform).collect(),
        (Some(class), None) => targets
            .entries()
            .iter()
            .filter(|e| {
                e.selectors
                    .hardware_class
                    .as_ref()
                    .is_none_or(|c| c == class)
            })
            .collect(),
        _ => targets.entries().iter().collect(),
    };

    let mut text = format!(
        "OK: a device pinned to {} accepts this metadata (checked at {})\n  root       version {:<6} expires {}\n  timestamp  version {:<6} expires {}\n  targets    version {:<6} expires {}\n",
        args.root.display(),
        report.effective_time,
        root.version(),
        root.expires(),
        timestamp_version,
        timestamp_expires,
        targets.version(),
        targets.expires(),
    );
    let spki = match &args.certificate {
        Some(path) => {
            let chain = tls::load_certificates(path)?;
            let first = chain
                .first()
                .with_context(|| format!("{}: no certificate", path.display()))?;
            Some(certificate_spki(first.as_ref()).with_context(|| format!("{}", path.display()))?)
        }
        None => None,
    };
    let mut placements = Vec::new();
    text.push_str(&format!("{} target(s):\n", entries.len()));
    for entry in &entries {
        text.push_str(&format!(
            "  {}  {}@{}  {} bytes\n",
            entry.name, entry.repository, entry.digest, entry.size
        ));
        if let Some(rollout) = &entry.rollout {
            let waves: Vec<String> = rollout
                .waves
                .iter()
                .map(|w| format!("{} %@+{}s", f64::from(w.share) / 10_000.0, w.delay))
                .collect();
            text.push_str(&format!(
                "    rollout from {}: {}\n",
                rollout.start,
                waves.join(", ")
            ));
        }
        if let Some(spki) = &spki {
            let position = Position::of(spki, &entry.name);
            let placed = entry.rollout.as_ref().and_then(|r| r.place(position));
            if let Some(placed) = placed {
                text.push_str(&format!(
                    "    this device: position {:.6}, wave {}, opens {}{}\n",
                    position.fraction(),
                    placed.wave + 1,
                    placed.opens,
                    if placed.opens <= report.effective_time {
                        " (open)"
                    } else {
                        ""
                    }
                ));
            }
            placements.push(json!({
                "target": entry.name,
                "position": position.fraction(),
                "position_bits": position.bits(),
                "wave": placed.map(|p| p.wave + 1),
                "opens": placed.map(|p| p.opens.to_string()),
                "opens_unix": placed.map(|p| p.opens.as_secs()),
            }));
        }
    }
    out.result(
        &text,
        &json!({
            "effective_time": report.effective_time.to_string(),
            "root": { "version": root.version(), "expires": root.expires().to_string() },
            "timestamp": { "version": timestamp_version, "expires": timestamp_expires.to_string() },
            "targets": {
                "version": targets.version(),
                "expires": targets.expires().to_string(),
                "entries": entries,
            },
            "device": spki.is_some().then_some(placements),
        }),
    );
    Ok(())
}
