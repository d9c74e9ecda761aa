//! Digests: never panic; a parsed digest prints back to exactly its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshanics_shared::Digest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(digest) = Digest::parse(text) {
        assert_eq!(digest.as_str(), text);
        assert_eq!(digest.hex().len(), digest.algorithm().hex_len());
    }
});
