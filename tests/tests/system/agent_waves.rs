//! Signed rollout waves end to end: registry -> facade -> the agent's update cycle with its
//! signed-metadata source. A release whose waves have not reached this device yet is pulled
//! ahead (when configured) but not applied; it is applied once the device's effective clock
//! reaches its wave, or once a re-signed release starts earlier. A rollout altered by the
//! facade is refused before anything is pulled.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a setup that fails is a failing test"
)]

use meshanics_agent::rollout::{device_spki, position};
use meshanics_agent::service::CycleOutcome;
use meshanics_agent::status;
use meshanics_shared::metadata::rollout::{Rollout, WHOLE, Wave};
use meshanics_shared::metadata::{TargetName, UnixTime};
use meshanics_tests::agent_device::AgentDevice;
use meshanics_tests::oci_layout::BuiltImage;
use meshanics_tests::update_chain::UpdateChain;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// A device of the chain, downloading ahead of its wave or not.
fn device(s: &UpdateChain, download_ahead: bool) -> AgentDevice {
    // The extra lines end the `[agent]` table and open `[rollout]`.
    let extra = format!("\n[rollout]\ndownload_ahead = {download_ahead}\n");
    AgentDevice::with_settings(
        &s.facade,
        s.release.anchor(),
        "gateway",
        "linux/amd64",
        &extra,
        2,
    )
    .unwrap()
}

/// Two waves starting at `start`: the first ends just below `device`'s position in the
/// rollout of "app" and opens at once, the second (everyone) a day later. So the device
/// is in the second wave, whatever key its certificate has.
fn waves_after(device: &AgentDevice, start: UnixTime) -> Rollout {
    let spki = device_spki(&device.config.device.certificate).unwrap();
    let place = position(&spki, &TargetName::parse("app").unwrap());
    // The largest share the position is not below: floor(position * 10^6).
    let share = u32::try_from((u128::from(place.bits()) * u128::from(WHOLE)) >> 64).unwrap();
    assert!(
        share > 0,
        "this device's key sits in the first millionth: no wave comes before it"
    );
    Rollout {
        start,
        waves: vec![
            Wave { share, delay: 0 },
            Wave {
                share: WHOLE,
                delay: DAY,
            },
        ],
    }
}

fn publish(s: &mut UpdateChain, built: &BuiltImage, rollout: Rollout) {
    let mut entry = s.entry("app", built, None).unwrap();
    entry.rollout = Some(rollout);
    s.release.publish(vec![entry]).unwrap();
}

fn cached_blobs(device: &AgentDevice) -> usize {
    std::fs::read_dir(device.state_dir().join("cache/blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_device_after_the_open_wave_downloads_ahead_and_applies_when_its_clock_reaches_its_wave() {
    let mut s = UpdateChain::start().unwrap();
    let v1 = s.push("v1", &["linux/amd64"], 32 * 1024, 8 * 1024).unwrap();
    let device = device(&s, true);
    let start = UnixTime::from_secs(UnixTime::now().as_secs() - HOUR);
    publish(&mut s, &v1, waves_after(&device, start));

    let outcome = s.sync(&device).unwrap();

    let total: u64 = v1.all_blobs.values().sum();
    let opens = UnixTime::from_secs(start.as_secs() + DAY);
    assert_eq!(
        outcome,
        CycleOutcome::Waiting {
            target: "app".into(),
            opens,
            received_bytes: total,
        }
    );
    assert!(!device.current().exists(), "applied before its wave opened");
    let status = status::read(&device.config).unwrap();
    let wave = &status.metadata.as_ref().unwrap().rollouts[0];
    assert_eq!((wave.wave, wave.waves, wave.open), (2, 2, false));
    assert_eq!(wave.opens_unix, opens.as_secs());
    assert!(
        status.last_result.unwrap().message.contains("rollout wave"),
        "status says why nothing was applied"
    );

    // A timestamp issued after the wave opened raises the device's effective clock past it
    // (a device without a real-time clock learns the time this way).
    let later = UnixTime::from_secs(opens.as_secs() + 60);
    s.release
        .timestamp(later, UnixTime::from_secs(later.as_secs() + DAY))
        .unwrap();
    let outcome = s.sync(&device).unwrap();

    assert!(
        matches!(&outcome, CycleOutcome::Applied { target, received_bytes: 0, .. } if target == "app"),
        "applied from what was downloaded ahead: {outcome:?}"
    );
    assert!(device.current().exists());
    let status = status::read(&device.config).unwrap();
    assert!(status.metadata.unwrap().rollouts[0].open);
}

#[test]
fn without_download_ahead_nothing_is_pulled_before_the_wave_and_an_earlier_start_applies() {
    let mut s = UpdateChain::start().unwrap();
    let v1 = s.push("v1", &["linux/amd64"], 32 * 1024, 8 * 1024).unwrap();
    let device = device(&s, false);
    let now = UnixTime::now().as_secs();
    publish(
        &mut s,
        &v1,
        waves_after(&device, UnixTime::from_secs(now - HOUR)),
    );

    let outcome = s.sync(&device).unwrap();

    assert!(
        matches!(
            outcome,
            CycleOutcome::Waiting {
                received_bytes: 0,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(cached_blobs(&device), 0, "pulled before its wave");
    assert!(!device.current().exists());

    // The operator re-signs the release with the rollout started two days ago: every wave
    // has opened.
    publish(
        &mut s,
        &v1,
        waves_after(&device, UnixTime::from_secs(now - 2 * DAY)),
    );
    let outcome = s.sync(&device).unwrap();

    let total: u64 = v1.all_blobs.values().sum();
    assert!(
        matches!(&outcome, CycleOutcome::Applied { received_bytes, .. } if *received_bytes == total),
        "{outcome:?}"
    );
    assert!(device.current().exists());
}

#[test]
fn a_rollout_altered_by_the_facade_is_refused_and_nothing_is_pulled() {
    let mut s = UpdateChain::start().unwrap();
    let v1 = s.push("v1", &["linux/amd64"], 32 * 1024, 8 * 1024).unwrap();
    let device = device(&s, true);
    let start = UnixTime::from_secs(UnixTime::now().as_secs() - HOUR);
    publish(&mut s, &v1, waves_after(&device, start));

    // Whoever serves the metadata moves the start two days back, so that every wave would
    // be open: the same length, one integer changed inside the signed payload.
    let file = s.facade.metadata_dir().join("1.targets.cose");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.windows(6).position(|w| w == b"\x65start").unwrap() + 6;
    assert_eq!(bytes[at], 0x1a, "start is a 4-byte unsigned integer");
    let old = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap());
    let moved = old - u32::try_from(2 * DAY).unwrap();
    bytes[at + 1..at + 5].copy_from_slice(&moved.to_be_bytes());
    std::fs::write(&file, &bytes).unwrap();

    let err = s.sync(&device).unwrap_err();

    assert!(err.to_string().contains("1.targets.cose"), "{err}");
    assert!(!device.current().exists());
    assert_eq!(
        cached_blobs(&device),
        0,
        "pulled on the strength of altered metadata"
    );
    let status = status::read(&device.config).unwrap();
    assert!(status.metadata.unwrap().targets.is_none());
    assert!(!status.last_result.unwrap().ok);
}
