//! Decoding and verifying a targets file of 10,000 entries: what a device does when a new
//! release lands (envelope, signature, payload decode and checks, sha256 against the
//! timestamp). Prints the time per run and the file's size, next to the size of the same
//! payload as JSON. Run with `cargo bench -p meshanics-shared --bench metadata`.

use std::time::{Duration, Instant};

use meshanics_shared::Platform;
use meshanics_shared::digest::Digest;
use meshanics_shared::media_type::{OCI_INDEX, OCI_MANIFEST};
use meshanics_shared::metadata::envelope::Envelope;
use meshanics_shared::metadata::{
    RoleKeys, RoleType, Roles, Root, Selectors, SigningKey, TargetEntry, TargetName, Targets,
    UnixTime, UpstreamRepository, open, sign,
};

const ENTRIES: usize = 10_000;
const RUNS: usize = 30;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = SigningKey::from_seed(&[7; 32]);
    let ids = vec![key.id()];
    let now = UnixTime::from_secs(1_795_000_000);
    let expires = UnixTime::from_secs(1_800_000_000);
    let root = Root::new(
        1,
        now,
        expires,
        &[key.public()],
        Roles {
            root: RoleKeys::new(ids.clone(), 1),
            targets: RoleKeys::new(ids.clone(), 1),
            timestamp: RoleKeys::new(ids, 1),
        },
    );
    let arm64 = Platform::parse("linux/arm64")?;
    let mut entries = Vec::with_capacity(ENTRIES);
    for i in 0..ENTRIES {
        let selectors = if i % 2 == 0 {
            Selectors {
                hardware_class: Some(format!("class-{}", i % 16)),
                platform: Some(arm64.clone()),
            }
        } else {
            Selectors::default()
        };
        entries.push(TargetEntry {
            name: TargetName::parse(&format!("app-{i:05}"))?,
            repository: UpstreamRepository::parse(&format!("ghcr.io/example-org/app-{}", i % 500))?,
            digest: Digest::sha256_of(format!("manifest {i}").as_bytes()),
            size: 1000 + (i as u64 % 3000),
            media_type: if i % 3 == 0 { OCI_INDEX } else { OCI_MANIFEST }.to_owned(),
            selectors,
            custom: Default::default(),
            rollout: None,
            apply: None,
        });
    }
    let targets = Targets::new(1, now, expires, entries);
    let bytes = sign(&targets, &[&key])?;
    let json = serde_json::to_vec(&targets)?;

    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        let opened: Targets = open("1.targets.cose", std::hint::black_box(&bytes), &root)?;
        let hash = Digest::sha256_of(&bytes);
        std::hint::black_box((&opened, hash));
        times.push(start.elapsed());
        if opened.entries().len() != ENTRIES {
            return Err("the targets file lost entries".into());
        }
    }
    times.sort();
    // Where the time goes, one stage at a time.
    let stage = |f: &dyn Fn()| {
        let mut best = Duration::MAX;
        for _ in 0..10 {
            let start = Instant::now();
            f();
            best = best.min(start.elapsed());
        }
        best
    };
    let envelope = Envelope::decode("1.targets.cose", &bytes)?;
    let decode = stage(&|| {
        std::hint::black_box(Envelope::decode("1.targets.cose", &bytes).ok());
    });
    let signatures = stage(&|| {
        std::hint::black_box(envelope.valid_signatures(&root, RoleType::Targets));
    });
    let payload = stage(&|| {
        std::hint::black_box(envelope.decode_payload::<Targets>().ok());
    });
    let hash = stage(&|| {
        std::hint::black_box(Digest::sha256_of(&bytes));
    });
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("targets with {ENTRIES} entries, decode + verify ({RUNS} runs):");
    println!(
        "  min {:.2} ms, median {:.2} ms, max {:.2} ms",
        ms(times.first().copied().unwrap_or_default()),
        ms(times.get(RUNS / 2).copied().unwrap_or_default()),
        ms(times.last().copied().unwrap_or_default())
    );
    println!(
        "  signed CBOR file: {} bytes; same payload as JSON: {} bytes ({:.0}%)",
        bytes.len(),
        json.len(),
        100.0 * bytes.len() as f64 / json.len() as f64
    );
    println!(
        "  stages (best of 10): envelope {:.2} ms, signature {:.2} ms, payload {:.2} ms, sha256 {:.2} ms",
        ms(decode),
        ms(signatures),
        ms(payload),
        ms(hash)
    );
    Ok(())
}
