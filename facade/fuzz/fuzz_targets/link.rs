//! Tag-list pagination: the `Link` header parser, the resolution of its target against the
//! registry's API base, and the tag order, on header values and tag names a registry chose.
//! Never panic; a found target is one `<...>` of the input; a resolved target keeps the
//! base's origin; ordering is sorted, duplicate-free and idempotent.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshanics_facade::registry_client::same_origin;
use meshanics_facade::tags::{next_link, order, resolve_link};
use url::Url;

fn bases() -> &'static [Url] {
    static BASES: OnceLock<Vec<Url>> = OnceLock::new();
    BASES.get_or_init(|| {
        [
            "https://registry.example/v2/",
            "https://registry.example:5000/v2/",
            "http://127.0.0.1:5000/v2/",
            "https://[::1]:8443/v2/",
            "https://xn--bcher-kva.example/v2/",
        ]
        .iter()
        .map(|u| Url::parse(u).expect("fixed base URL"))
        .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let values: Vec<&str> = text.split('\n').collect();

    if let Some(target) = next_link(values.iter().copied()) {
        let bracketed = format!("<{target}>");
        assert!(values.iter().any(|v| v.contains(&bracketed)), "{target:?}");
        let bases = bases();
        let base = &bases[usize::from(*selector) % bases.len()];
        if let Ok(url) = resolve_link(base, &target) {
            assert!(same_origin(&url, base), "{url} left {base}");
            assert!(matches!(url.scheme(), "http" | "https"));
        }
    }

    let tags: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
    let ordered = order(tags.clone());
    assert!(ordered.len() <= tags.len());
    let mut sorted_in = tags;
    sorted_in.sort();
    sorted_in.dedup();
    let mut sorted_out = ordered.clone();
    sorted_out.sort();
    assert_eq!(sorted_in, sorted_out, "order must keep every tag once");
    assert_eq!(order(ordered.clone()), ordered, "order is not idempotent");
});
