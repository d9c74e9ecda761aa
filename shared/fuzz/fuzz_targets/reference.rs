//! References, registries, repositories and tags: never panic, and whatever parses
//! prints back to something that parses to the same value (normalization is idempotent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshanics_shared::{Reference, Registry, Repository, Tag};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(reference) = Reference::parse(text) {
        let printed = reference.to_string();
        let again = Reference::parse(&printed).expect("a printed reference parses");
        assert_eq!(again, reference, "normalization is not idempotent for {text:?}");
        assert!(reference.name().len() <= 255);
        if let Some(path) = reference.registry().path_form() {
            let back = Registry::from_path_form(&path).expect("path form parses back");
            assert_eq!(&back, reference.registry());
        }
    }
    let _ = Registry::from_path_form(text);
    let _ = Repository::parse(text);
    let _ = Tag::parse(text);
});
