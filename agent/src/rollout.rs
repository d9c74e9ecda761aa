//! Signed rollout waves on the device: where this device stands in a target's rollout and
//! whether it may apply the target now.
//!
//! The waves come with the signed target entry ([`Rollout`], docs/metadata.md section 4.4),
//! so nothing between the release and the device can change them. The device places itself
//! from its identity: [`position`] hashes the SubjectPublicKeyInfo of its certificate with
//! the target's name ([`Position::of`]), so a device keeps its place for as long as it keeps
//! its key, and its place in one target's rollout says nothing about another's.
//!
//! Whether the wave has opened is judged by the effective clock the metadata workflow uses
//! for expiry (docs/metadata.md section 5): the system clock, never below the offline- and
//! online-known times. A device that boots in 1970 therefore still knows the release was
//! signed (the targets' `issued` raised its clock), so a first wave that starts with the
//! release opens for it, and later waves open as fresh timestamps tell it that time has
//! passed. A device whose clock runs ahead opens its wave early: the same trust the expiry
//! checks put in the system clock.
//!
//! [`decide`] is the one place the agent decides whether to apply a target; the service
//! calls it for every target of a cycle ([`Gate::decide`]).

use std::path::Path;

use meshanics_shared::metadata::rollout::certificate_spki;
use meshanics_shared::metadata::{Placement, Position, Rollout, TargetName, Targets, UnixTime};
use meshanics_shared::tls;
use serde::Serialize;

use crate::config::Config;

use crate::error::{Error, Result};
use crate::pull::PullTarget;

/// What the agent does with a target this cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Apply it: no rollout, or this device's wave has opened.
    Apply,
    /// Not yet: this device's wave opens later.
    Wait {
        /// When it opens.
        opens: UnixTime,
        /// Whether to download it now anyway (`[rollout] download_ahead`), so that it is
        /// applied without a download once the wave opens.
        download: bool,
    },
}

/// A target's rollout as one device sees it in one cycle: what the metadata source hands
/// the service next to each pull target that has a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// The signed rollout.
    pub rollout: Rollout,
    /// This device's position in it.
    pub position: Position,
    /// The effective clock when the metadata was verified.
    pub now: UnixTime,
    /// `[rollout] download_ahead`.
    pub download_ahead: bool,
}

// === impl Decision ===

impl Decision {
    /// Whether the target is downloaded this cycle: to apply it, or ahead of its wave.
    pub fn pulls(self) -> bool {
        match self {
            Decision::Apply => true,
            Decision::Wait { download, .. } => download,
        }
    }
}

// === impl Gate ===

impl Gate {
    /// [`decide`] for this target.
    pub fn decide(&self) -> Decision {
        decide(
            Some(&self.rollout),
            self.position,
            self.now,
            self.download_ahead,
        )
    }
}

/// The decision for a pull target: [`Decision::Apply`] without a rollout.
pub fn decide_target(target: &PullTarget) -> Decision {
    target
        .rollout
        .as_ref()
        .map_or(Decision::Apply, Gate::decide)
}

/// Whether a device at `position` applies a target with `rollout` at the effective time
/// `now`: always without a rollout; otherwise once its wave's opening time has come
/// (`opens <= now`). Before that it waits, downloading ahead if `download_ahead`.
pub fn decide(
    rollout: Option<&Rollout>,
    position: Position,
    now: UnixTime,
    download_ahead: bool,
) -> Decision {
    let Some(rollout) = rollout else {
        return Decision::Apply;
    };
    match rollout.place(position) {
        Some(Placement { opens, .. }) if opens > now => Decision::Wait {
            opens,
            download: download_ahead,
        },
        Some(_) => Decision::Apply,
        // A rollout the verifier would have refused (it checks every entry): keep waiting
        // rather than apply to a share nobody signed for. Never reached with verified
        // metadata.
        None => Decision::Wait {
            opens: UnixTime::from_secs(u64::MAX),
            download: false,
        },
    }
}

/// The SubjectPublicKeyInfo of the device certificate at `path` (the first certificate of
/// the PEM chain): the identity a device places itself with.
pub fn device_spki(path: &Path) -> Result<Vec<u8>> {
    let chain = tls::load_certificates(path).map_err(|e| Error::Rollout {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let first = chain.first().ok_or_else(|| Error::Rollout {
        path: path.to_owned(),
        reason: "no certificate in the file".to_owned(),
    })?;
    certificate_spki(first.as_ref()).map_err(|e| Error::Rollout {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Where this device stands in a target's signed rollout (for `status`).
#[derive(Debug, Clone, Serialize)]
pub struct WaveView {
    /// The target.
    pub target: String,
    /// This device's position in [0, 1).
    pub position: f64,
    /// Its wave, from 1.
    pub wave: usize,
    /// How many waves there are.
    pub waves: usize,
    /// The share of the fleet that applies once that wave opens, in millionths.
    pub share: u32,
    /// When it opens (RFC 3339).
    pub opens: String,
    /// The same, in Unix seconds.
    pub opens_unix: u64,
    /// Whether it has opened by the effective time `now`.
    pub open: bool,
}

/// This device's wave in each of `targets` for it that has a rollout, judged at the
/// effective time `now`.
pub fn waves(config: &Config, targets: &Targets, now: UnixTime) -> Result<Vec<WaveView>> {
    let spki = device_spki(&config.device.certificate)?;
    let mut views = Vec::new();
    for entry in targets.matching(&config.device.class, &config.device.platform) {
        let Some(rollout) = &entry.rollout else {
            continue;
        };
        let position = position(&spki, &entry.name);
        if let Some(placed) = rollout.place(position) {
            views.push(WaveView {
                target: entry.name.to_string(),
                position: position.fraction(),
                wave: placed.wave + 1,
                waves: rollout.waves.len(),
                share: placed.share,
                opens: placed.opens.to_string(),
                opens_unix: placed.opens.as_secs(),
                open: placed.opens <= now,
            });
        }
    }
    Ok(views)
}

/// This device's position in the rollout of `target`, from its certificate's
/// SubjectPublicKeyInfo.
pub fn position(spki: &[u8], target: &TargetName) -> Position {
    Position::of(spki, target)
}

#[cfg(test)]
mod tests;
