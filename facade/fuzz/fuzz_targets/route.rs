//! Device request paths: the router turns method, path and query into a route or a refusal,
//! and must never panic. What routes is checked against the path it came from: content only
//! for GET/HEAD, the digest is the path's last segment and prints back to itself, and the
//! canonical path of a content route routes to the same route.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use meshanics_facade::registry_client::ContentKind;
use meshanics_facade::routes::{Route, route};
use meshanics_shared::Digest;

const METHODS: [Method; 5] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
];

fuzz_target!(|data: &[u8]| {
    let Some((selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let method = &METHODS[usize::from(*selector) % METHODS.len()];
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let Ok(routed) = route(method, path, query) else {
        return;
    };
    assert!(
        *method == Method::GET || *method == Method::HEAD,
        "{method} routed: {routed:?}"
    );
    match &routed {
        Route::Ping => assert!(path == "/v2/" || path == "/v2"),
        Route::Meta(name) => {
            assert_eq!(path.strip_prefix("/meta/"), Some(name.as_str()));
            assert!(!name.as_str().contains('/') && !name.as_str().starts_with('.'));
        }
        Route::Content(content) => {
            let digest = content.digest.as_str();
            assert!(path.starts_with("/v2/"));
            assert!(path.ends_with(&format!("/{digest}")), "{path} vs {digest}");
            assert_eq!(Digest::parse(digest).ok().as_ref(), Some(&content.digest));
            let kind = match content.kind {
                ContentKind::Manifest => "manifests",
                ContentKind::Blob => "blobs",
            };
            assert!(path.ends_with(&format!("/{kind}/{digest}")));
            // The canonical `/v2/<upstream>/<repository>/...` form (no `ns`) routes the same.
            if let Some(upstream) = content.upstream.path_form() {
                let canonical = format!("/v2/{upstream}/{}/{kind}/{digest}", content.repository);
                assert_eq!(
                    route(&Method::GET, &canonical, None).ok().as_ref(),
                    Some(&routed),
                    "{canonical}"
                );
            }
        }
    }
});
