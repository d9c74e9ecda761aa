use meshanics_shared::metadata::rollout::{WHOLE, Wave, certificate_spki};
use meshanics_shared::metadata::{SigningKey, TargetName};

use super::*;

const HOUR: u64 = 3600;
const START: u64 = 1_800_000_000;

/// 1 % at once, 10 % after 2 h, 100 % after 24 h.
fn standard() -> Rollout {
    meshanics_shared::metadata::rollout::example(UnixTime::from_secs(START))
}

fn at(secs: u64) -> UnixTime {
    UnixTime::from_secs(secs)
}

/// Positions inside each wave: the very first, the last of wave 1, the first of wave 2, the
/// last of wave 2, the first of wave 3, the very last.
const IN_WAVE_1: [u64; 2] = [0, 184_467_440_737_095_516];
const IN_WAVE_2: [u64; 2] = [184_467_440_737_095_517, 1_844_674_407_370_955_161];
const IN_WAVE_3: [u64; 2] = [1_844_674_407_370_955_162, u64::MAX];

#[test]
fn without_a_rollout_every_device_applies_at_once() {
    for bits in [0, u64::MAX] {
        assert_eq!(
            decide(None, Position::from_bits(bits), UnixTime::EPOCH, false),
            Decision::Apply
        );
    }
}

#[test]
fn each_wave_waits_until_its_opening_second_and_applies_from_it_on() {
    let r = standard();
    let rows: [(&[u64; 2], u64); 3] = [
        (&IN_WAVE_1, START),
        (&IN_WAVE_2, START + 2 * HOUR),
        (&IN_WAVE_3, START + 24 * HOUR),
    ];
    for (positions, opens) in rows {
        for &bits in positions {
            let p = Position::from_bits(bits);
            assert_eq!(
                decide(Some(&r), p, at(opens - 1), false),
                Decision::Wait {
                    opens: at(opens),
                    download: false
                },
                "{bits} one second before"
            );
            assert_eq!(
                decide(Some(&r), p, at(opens), false),
                Decision::Apply,
                "{bits} at"
            );
            assert_eq!(
                decide(Some(&r), p, at(opens + 1), false),
                Decision::Apply,
                "{bits} after"
            );
        }
    }
    // Before the start nobody applies, not even the first wave.
    assert!(matches!(
        decide(Some(&r), Position::from_bits(0), at(START - 1), false),
        Decision::Wait { .. }
    ));
}

#[test]
fn downloading_ahead_pulls_a_waiting_target_but_does_not_apply_it() {
    let r = standard();
    let p = Position::from_bits(IN_WAVE_3[0]);
    let waiting = decide(Some(&r), p, at(START), true);
    assert_eq!(
        waiting,
        Decision::Wait {
            opens: at(START + 24 * HOUR),
            download: true
        }
    );
    assert!(waiting.pulls());
    assert!(!decide(Some(&r), p, at(START), false).pulls());
    assert!(decide(Some(&r), p, at(START + 24 * HOUR), true).pulls());
}

#[test]
fn with_no_clock_the_device_goes_by_the_time_its_metadata_proves() {
    // A device that booted in 1970: its effective clock is the latest time its trusted
    // metadata proves (here: the targets were issued at the rollout's start).
    let r = standard();
    let now = UnixTime::effective(UnixTime::EPOCH, at(START));
    assert_eq!(
        decide(Some(&r), Position::from_bits(IN_WAVE_1[1]), now, false),
        Decision::Apply
    );
    assert_eq!(
        decide(Some(&r), Position::from_bits(IN_WAVE_2[0]), now, false),
        Decision::Wait {
            opens: at(START + 2 * HOUR),
            download: false
        }
    );
    // A later timestamp (issued 3 h in) moves its clock on, and opens the second wave.
    let now = UnixTime::effective(UnixTime::EPOCH, at(START + 3 * HOUR));
    assert_eq!(
        decide(Some(&r), Position::from_bits(IN_WAVE_2[0]), now, false),
        Decision::Apply
    );
    assert!(matches!(
        decide(Some(&r), Position::from_bits(IN_WAVE_3[0]), now, false),
        Decision::Wait { .. }
    ));
}

#[test]
fn a_rollout_the_verifier_would_refuse_never_applies() {
    let short = Rollout {
        start: at(START),
        waves: vec![Wave {
            share: 10_000,
            delay: 0,
        }],
    };
    assert!(matches!(
        decide(
            Some(&short),
            Position::from_bits(u64::MAX),
            at(u64::MAX),
            true
        ),
        Decision::Wait {
            download: false,
            ..
        }
    ));
}

#[test]
fn a_thousand_simulated_devices_apply_close_to_each_declared_share() {
    // 1,000 device identities, deterministic: Ed25519 keys from seeds 0..1000, each as the
    // SubjectPublicKeyInfo its certificate would carry. Positions are independent and
    // uniform, so the share applying at a boundary is binomial: for 1,000 devices its
    // standard deviation is sqrt(p(1-p)/1000), 0.31 points at 1 %, 0.95 at 10 %. The bound
    // is three of them (never wider than 1 point at 1 %, exact at 100 %); the 1-point bound
    // for every share needs a larger fleet (the next test).
    let name = TargetName::parse("app").unwrap();
    let spkis: Vec<Vec<u8>> = (0u32..1000)
        .map(|i| ed25519_spki(SigningKey::from_seed(&seed(i)).public().as_bytes()))
        .collect();
    let shares = check_shares(&standard(), &spkis, &name);
    let bound = |p: f64| 3.0 * (p * (1.0 - p) / 1000.0).sqrt();
    for (declared, applying) in shares {
        assert!(
            (applying - declared).abs() <= bound(declared),
            "{applying} apply, {declared} declared"
        );
        if declared <= 0.01 {
            assert!((applying - declared).abs() <= 0.01);
        }
    }
}

#[test]
fn a_hundred_thousand_simulated_devices_apply_within_one_point_of_each_declared_share() {
    // SubjectPublicKeyInfos of 100,000 distinct 32-byte keys (placement reads only the
    // bytes, so they need not be curve points here).
    let name = TargetName::parse("model").unwrap();
    let spkis: Vec<Vec<u8>> = (0u32..100_000).map(|i| ed25519_spki(&seed(i))).collect();
    let mut r = standard();
    r.waves.insert(
        2,
        Wave {
            share: WHOLE / 2,
            delay: 12 * HOUR,
        },
    );
    for (declared, applying) in check_shares(&r, &spkis, &name) {
        assert!(
            (applying - declared).abs() <= 0.01,
            "{applying} apply, {declared} declared"
        );
    }
}

/// For each wave of `r`: the declared share and the share of `spkis` that applies at its
/// opening second. Also checks that one second earlier only the earlier waves applied.
fn check_shares(r: &Rollout, spkis: &[Vec<u8>], name: &TargetName) -> Vec<(f64, f64)> {
    let positions: Vec<Position> = spkis.iter().map(|s| position(s, name)).collect();
    let applying = |now| {
        positions
            .iter()
            .filter(|p| decide(Some(r), **p, now, false) == Decision::Apply)
            .count() as f64
            / positions.len() as f64
    };
    let mut previous = 0.0;
    let mut shares = Vec::new();
    for wave in &r.waves {
        let share = applying(at(START + wave.delay));
        let declared = f64::from(wave.share) / f64::from(WHOLE);
        println!(
            "{} devices, wave at +{}s: {share:.4} apply, {declared:.4} declared",
            positions.len(),
            wave.delay
        );
        let before = applying(at(START + wave.delay - 1));
        assert!(
            (before - previous).abs() < f64::EPSILON,
            "{before} {previous}"
        );
        previous = share;
        shares.push((declared, share));
    }
    shares
}

#[test]
fn a_device_certificate_places_the_device_by_its_public_key() {
    let mut ca = meshanics_shared::devpki::DevCa::new("rollout test CA").unwrap();
    let device = ca.issue_device("device-1").unwrap();
    let again = ca.issue_device("device-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.pem");
    fs_err::write(&path, &device.cert_pem).unwrap();
    let spki = device_spki(&path).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(device.cert_pem.as_bytes());
    let der: rustls_pki_types::CertificateDer<'_> = der.unwrap();
    assert_eq!(spki, certificate_spki(der.as_ref()).unwrap());
    let name = TargetName::parse("app").unwrap();
    // Same key, same place; another device's key, another place.
    assert_eq!(position(&spki, &name), position(&spki, &name));
    fs_err::write(&path, &again.cert_pem).unwrap();
    assert_ne!(
        position(&device_spki(&path).unwrap(), &name),
        position(&spki, &name)
    );
    // Not a certificate: the error names the file.
    fs_err::write(&path, "not a certificate").unwrap();
    let err = device_spki(&path).unwrap_err().to_string();
    assert!(err.contains("device.pem"), "{err}");
}

/// The SubjectPublicKeyInfo of an Ed25519 public key (RFC 8410 section 4).
fn ed25519_spki(public: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(public);
    der
}

/// A 32-byte key seed from a counter (the key derivation hashes it).
fn seed(i: u32) -> [u8; 32] {
    let mut seed = [0x5e; 32];
    seed[..4].copy_from_slice(&i.to_be_bytes());
    seed
}
