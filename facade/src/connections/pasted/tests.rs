//! Pasted browser URLs, hosts and references: each row is an input and the reference or
//! registry it reduces to (moved from shared's normalization table with the code).

use meshanics_shared::reference::ReferenceErrorKind;

use super::*;

const D64: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

/// The rule a refused row breaks, by name.
fn kind_name(kind: &ReferenceErrorKind) -> &'static str {
    match kind {
        ReferenceErrorKind::Empty => "empty",
        ReferenceErrorKind::Uppercase(_) => "uppercase",
        ReferenceErrorKind::InvalidRegistry(_) => "registry",
        ReferenceErrorKind::MissingRepository => "no-repository",
        ReferenceErrorKind::UnsupportedUrl(_) => "url",
        _ => "other",
    }
}

fn url_rows() -> Vec<(String, Result<&'static str, &'static str>)> {
    let s = |x: &str| x.to_owned();
    vec![
        (
            s("https://hub.docker.com/_/nginx"),
            Ok("docker.io/library/nginx"),
        ),
        (
            s("https://hub.docker.com/_/nginx?tab=tags"),
            Ok("docker.io/library/nginx"),
        ),
        (
            s("https://hub.docker.com/r/bitnami/redis/tags"),
            Ok("docker.io/bitnami/redis"),
        ),
        (
            s("https://hub.docker.com/r/bitnami/redis"),
            Ok("docker.io/bitnami/redis"),
        ),
        (
            s("hub.docker.com/r/bitnami/redis"),
            Ok("docker.io/bitnami/redis"),
        ),
        (
            s("https://hub.docker.com/repository/docker/acme/app/general"),
            Ok("docker.io/acme/app"),
        ),
        (
            s("https://hub.docker.com/layers/library/nginx/latest/images/sha256-abc"),
            Ok("docker.io/library/nginx"),
        ),
        (
            s("https://quay.io/repository/org/app"),
            Ok("quay.io/org/app"),
        ),
        (
            s("https://quay.io/repository/org/app?tab=tags"),
            Ok("quay.io/org/app"),
        ),
        (
            format!("https://quay.io/repository/org/app/manifest/{D64}"),
            Ok("quay.io/org/app"),
        ),
        (
            s("https://github.com/orgs/acme/packages/container/package/app"),
            Ok("ghcr.io/acme/app"),
        ),
        (
            s("https://github.com/orgs/Acme/packages/container/package/app%2Fsub"),
            Ok("ghcr.io/acme/app/sub"),
        ),
        (
            s("https://github.com/users/octo/packages/container/package/tool"),
            Ok("ghcr.io/octo/tool"),
        ),
        (
            s("https://github.com/acme/repo/pkgs/container/app"),
            Ok("ghcr.io/acme/app"),
        ),
        (
            s("https://registry.example.com:5000/team/app?x=y#frag"),
            Ok("registry.example.com:5000/team/app"),
        ),
        (
            s("https://user:secret@registry.example.com/team/app"),
            Ok("registry.example.com/team/app"),
        ),
        (
            s("http://localhost:5000/v2/team/app/tags/list"),
            Ok("localhost:5000/team/app"),
        ),
        (s("HTTPS://GHCR.IO/org/app"), Ok("ghcr.io/org/app")),
        (s("  nginx:1.25  "), Ok("docker.io/library/nginx:1.25")),
        (s("https://ghcr.io"), Err("no-repository")),
        (s("https://ghcr.io/"), Err("no-repository")),
        (s("ftp://example.com/app"), Err("url")),
        (s("https://hub.docker.com/search?q=nginx"), Err("url")),
        (s("https://github.com/acme/repo"), Err("url")),
        (s("https://bad_host.example/app"), Err("registry")),
        (s("https://ghcr.io/Org/App"), Err("uppercase")),
    ]
}

#[test]
fn reduces_pasted_browser_urls_to_registry_and_repository() {
    let mut failures = Vec::new();
    for (input, want) in url_rows() {
        let got = reference(&input);
        let matches = match (&want, &got) {
            (Ok(expected), Ok(r)) => r.to_string() == *expected,
            (Err(expected), Err(e)) => kind_name(&e.kind) == *expected,
            _ => false,
        };
        if !matches {
            failures.push(format!("{input:?}: got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn never_repeats_url_credentials_in_errors() {
    let err = reference("https://user:hunter2@registry.example.com/Team/app").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(err.to_string().contains("registry.example.com"), "{err}");
}

#[test]
fn folds_every_docker_hub_name_into_one_registry() {
    for input in [
        "docker.io",
        "index.docker.io",
        "registry-1.docker.io",
        "hub.docker.com",
        "HUB.DOCKER.COM",
        "https://hub.docker.com/_/nginx",
        "https://index.docker.io/v2/",
        "docker.io/library/nginx:1.0",
    ] {
        let registry = registry(input).unwrap();
        assert_eq!(registry.as_str(), "docker.io", "{input}");
        assert!(registry.is_docker_hub());
        assert_eq!(registry.api_host(), "registry-1.docker.io", "{input}");
    }
}

#[test]
fn reads_registries_from_hosts_references_and_urls() {
    let rows = [
        ("ghcr.io", "ghcr.io"),
        ("GHCR.IO", "ghcr.io"),
        ("registry.example.com:5000", "registry.example.com:5000"),
        (
            "https://registry.example.com:5000/v2/",
            "registry.example.com:5000",
        ),
        ("quay.io/org/app:1.0", "quay.io"),
        ("https://quay.io/repository/org/app", "quay.io"),
        (
            "https://github.com/orgs/acme/packages/container/package/app",
            "ghcr.io",
        ),
        ("[::1]:5000", "[::1]:5000"),
    ];
    for (input, want) in rows {
        assert_eq!(registry(input).unwrap().as_str(), want, "{input}");
    }
    for bad in ["", "  ", "bad host", "host:99999", "ftp://x.example/"] {
        assert!(registry(bad).is_err(), "{bad:?} accepted");
    }
}
