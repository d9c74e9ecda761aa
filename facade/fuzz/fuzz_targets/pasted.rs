//! What an operator pastes (hosts, references, browser URLs of registry pages): never panic,
//! and whatever is read back prints to a reference or registry that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshanics_facade::connections::pasted;
use meshanics_shared::{Reference, Registry};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(reference) = pasted::reference(text) {
        assert_eq!(Reference::parse(&reference.to_string()).ok(), Some(reference));
    }
    if let Ok(registry) = pasted::registry(text) {
        assert_eq!(Registry::parse(registry.as_str()).ok(), Some(registry));
    }
});
