//! Platforms: never panic; normalization is idempotent; a platform always runs itself first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshanics_shared::Platform;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(platform) = Platform::parse(text) {
        let again = Platform::parse(&platform.to_string()).expect("a printed platform parses");
        assert_eq!(again, platform);
        assert_eq!(platform.rank(&platform), Some(0));
    }
});
