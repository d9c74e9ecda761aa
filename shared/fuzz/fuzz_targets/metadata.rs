//! Signed metadata from the network: the COSE envelope and CBOR payload decoders and the
//! signature checks must never panic, whatever the bytes. A root is opened as a device opens
//! its first root (self-signed); the same bytes are then opened as targets and timestamp
//! under a fixed root, exercising the role and threshold checks.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshanics_shared::metadata::{Root, Targets, Timestamp, open, open_root};

/// A root to check targets and timestamps against: the seed corpus's own first root.
fn fixed_root() -> Option<&'static Root> {
    static ROOT: OnceLock<Option<Root>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let bytes = std::fs::read("corpus/metadata/1.root.cose").ok()?;
        open_root("1.root.cose", &bytes, None).ok()
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(root) = open_root("root.cose", data, None) {
        // Anything that opens must open again the same way under itself.
        assert!(open_root("root.cose", data, Some(&root)).is_ok());
    }
    if let Some(root) = fixed_root() {
        let _ = open::<Targets>("targets.cose", data, root);
        let _ = open::<Timestamp>("timestamp.cose", data, root);
    }
});
