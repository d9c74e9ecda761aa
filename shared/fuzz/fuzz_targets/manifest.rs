//! Manifests and indexes from a registry: never panic, whatever the bytes and declared type;
//! what parses selects platforms without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshanics_shared::manifest::Manifest;
use meshanics_shared::media_type::{DOCKER_MANIFEST, OCI_INDEX};
use meshanics_shared::Platform;

fuzz_target!(|data: &[u8]| {
    let (selector, body) = match data.split_first() {
        Some((s, b)) => (*s, b),
        None => return,
    };
    let declared = match selector % 3 {
        0 => None,
        1 => Some(OCI_INDEX),
        _ => Some(DOCKER_MANIFEST),
    };
    if let Ok(manifest) = Manifest::parse(body, declared) {
        let _ = manifest.blobs();
        if let Manifest::Index(index) = &manifest {
            for p in ["linux/arm64", "linux/arm/v7", "linux/amd64"] {
                let platform = Platform::parse(p).expect("fixed platform");
                let _ = index.manifest_for(&platform);
            }
        }
    }
});
