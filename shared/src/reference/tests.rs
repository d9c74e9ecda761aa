//! The normalization table: each row is an input and what `docker pull` (plus our Docker Hub
//! rules) makes of it. Pasted browser URLs are the facade's (`connections/pasted/tests.rs`).

use super::*;

const D64: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

/// What a row expects: the normalized reference, or the kind of error (by name).
enum Want {
    Ok(&'static str),
    Err(&'static str),
}
use Want::{Err as E, Ok as O};

fn kind_name(kind: &ReferenceErrorKind) -> &'static str {
    match kind {
        ReferenceErrorKind::Empty => "empty",
        ReferenceErrorKind::HexIdentifier => "hex",
        ReferenceErrorKind::Uppercase(_) => "uppercase",
        ReferenceErrorKind::InvalidRegistry(_) => "registry",
        ReferenceErrorKind::InvalidRepository(_) => "repository",
        ReferenceErrorKind::NameTooLong(_) => "too-long",
        ReferenceErrorKind::InvalidTag(_) => "tag",
        ReferenceErrorKind::InvalidDigest(_) => "digest",
        ReferenceErrorKind::MissingRepository => "no-repository",
        ReferenceErrorKind::UnsupportedUrl(_) => "url",
    }
}

fn check(parse: fn(&str) -> Result<Reference, ReferenceError>, rows: &[(String, Want)]) -> usize {
    let mut failures = Vec::new();
    for (input, want) in rows {
        let got = parse(input);
        match (want, &got) {
            (O(expected), Ok(r)) if r.to_string() == *expected => {}
            (E(expected), Err(e)) if kind_name(&e.kind) == *expected => {}
            _ => failures.push(format!("{input:?}: got {got:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    rows.len()
}

fn s(x: &str) -> String {
    x.to_owned()
}

fn docker_rows() -> Vec<(String, Want)> {
    vec![
        // Docker Hub defaults.
        (s("nginx"), O("docker.io/library/nginx")),
        (s("nginx:latest"), O("docker.io/library/nginx:latest")),
        (
            s("nginx:1.25-alpine"),
            O("docker.io/library/nginx:1.25-alpine"),
        ),
        (s("library/nginx"), O("docker.io/library/nginx")),
        (s("docker.io/nginx"), O("docker.io/library/nginx")),
        (s("docker.io/nginx:1.0"), O("docker.io/library/nginx:1.0")),
        (s("docker.io/library/nginx"), O("docker.io/library/nginx")),
        (s("index.docker.io/nginx"), O("docker.io/library/nginx")),
        (
            s("index.docker.io/bitnami/redis"),
            O("docker.io/bitnami/redis"),
        ),
        (
            s("registry-1.docker.io/library/nginx"),
            O("docker.io/library/nginx"),
        ),
        (s("hub.docker.com/nginx"), O("docker.io/library/nginx")),
        (s("bitnami/redis"), O("docker.io/bitnami/redis")),
        (s("bitnami/redis:7.2"), O("docker.io/bitnami/redis:7.2")),
        (s("example/app"), O("docker.io/example/app")),
        (s("foo_bar/baz"), O("docker.io/foo_bar/baz")),
        (s("a/b/c/d"), O("docker.io/a/b/c/d")),
        // Single elements are official images, even when they look like hosts (docker's FIXME).
        (s("localhost"), O("docker.io/library/localhost")),
        (s("example.com"), O("docker.io/library/example.com")),
        // Hosts: '.', ':', localhost, or uppercase in the first component.
        (s("ghcr.io/org/app"), O("ghcr.io/org/app")),
        (s("ghcr.io/app"), O("ghcr.io/app")),
        (s("localhost/app"), O("localhost/app")),
        (s("localhost:5000/app"), O("localhost:5000/app")),
        (s("localhost:5000/app:v1"), O("localhost:5000/app:v1")),
        (
            s("registry.example.com:5000/team/app:1.0"),
            O("registry.example.com:5000/team/app:1.0"),
        ),
        (s("127.0.0.1:5000/app"), O("127.0.0.1:5000/app")),
        (s("[::1]:5000/app"), O("[::1]:5000/app")),
        (s("[2001:db8::1]/app"), O("[2001:db8::1]/app")),
        (s("Foo/bar"), O("Foo/bar")),
        (
            s("sub.domain-name.example.com/x"),
            O("sub.domain-name.example.com/x"),
        ),
        // Separators.
        (
            s("my-registry:5000/a__b/c--d/e.f"),
            O("my-registry:5000/a__b/c--d/e.f"),
        ),
        (
            s("registry.example.com/a---b"),
            O("registry.example.com/a---b"),
        ),
        (
            s("registry.example.com/a_b.c-d"),
            O("registry.example.com/a_b.c-d"),
        ),
        // Tags and digests.
        (
            format!("nginx@{D64}"),
            O(
                "docker.io/library/nginx@sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            ),
        ),
        (
            format!("nginx:1.0@{D64}"),
            O(
                "docker.io/library/nginx:1.0@sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            ),
        ),
        (
            format!("localhost:5000/app@{D64}"),
            O(
                "localhost:5000/app@sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            ),
        ),
        (s("app:TAG_Upper"), O("docker.io/library/app:TAG_Upper")),
        (s("app:_tag"), O("docker.io/library/app:_tag")),
        (s("app:1.0.0-rc.1"), O("docker.io/library/app:1.0.0-rc.1")),
        (
            format!("app:{}", "a".repeat(128)),
            O(Box::leak(
                format!("docker.io/library/app:{}", "a".repeat(128)).into_boxed_str(),
            )),
        ),
        // The length limit counts the normalized name.
        (
            format!("ghcr.io/{}", "a".repeat(247)),
            O(Box::leak(
                format!("ghcr.io/{}", "a".repeat(247)).into_boxed_str(),
            )),
        ),
        (format!("ghcr.io/{}", "a".repeat(248)), E("too-long")),
        ("a".repeat(240), E("too-long")),
        // Refused.
        (s(""), E("empty")),
        (
            s("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"),
            E("hex"),
        ),
        (s("Nginx"), E("uppercase")),
        (s("docker.io/Library/nginx"), E("uppercase")),
        (s("ghcr.io/Org/app"), E("uppercase")),
        (s("nginx:"), E("tag")),
        (s("nginx:-tag"), E("tag")),
        (s("nginx:.tag"), E("tag")),
        (format!("nginx:{}", "a".repeat(129)), E("tag")),
        (s("nginx:latest:extra"), E("tag")),
        (s("nginx@sha256:abc"), E("digest")),
        (format!("nginx@md5:{}", "a".repeat(32)), E("digest")),
        (format!("nginx@sha256:{}", "A".repeat(64)), E("digest")),
        (s("nginx@"), E("digest")),
        (s("-nginx"), E("repository")),
        (s("nginx-"), E("repository")),
        (s("ngi..nx"), E("repository")),
        (s("ngi___nx"), E("repository")),
        (s("ngi._nx"), E("repository")),
        (s("a//b"), E("repository")),
        (s("ghcr.io/a/b/"), E("repository")),
        (s("ghcr.io/"), E("repository")),
        (s("app name"), E("repository")),
        (s("-host.com/app"), E("registry")),
        (s("host-.com/app"), E("registry")),
        (s("host.com:port/app"), E("registry")),
        (s("host.com:99999/app"), E("registry")),
        (s("host.com:/app"), E("registry")),
        (s("[zz::1]:5000/app"), E("registry")),
        (s("http://ghcr.io/app"), E("registry")),
    ]
}

#[test]
fn normalizes_references_like_the_docker_cli() {
    let n = check(Reference::parse, &docker_rows());
    assert!(n >= 60, "only {n} rows");
}

#[test]
fn never_repeats_url_credentials_in_errors() {
    let err = Reference::parse("https://user:hunter2@registry.example.com/Team/app").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(err.to_string().contains("registry.example.com"), "{err}");
}

#[test]
fn writes_a_port_as_host_underscore_port_in_paths_and_reads_it_back() {
    let rows = [
        ("localhost:5000", "localhost_5000"),
        ("127.0.0.1:5000", "127.0.0.1_5000"),
        ("registry.example.com", "registry.example.com"),
        ("docker.io", "docker.io"),
    ];
    for (host, path) in rows {
        let registry = Registry::parse(host).unwrap();
        assert_eq!(registry.path_form().as_deref(), Some(path));
        assert_eq!(Registry::from_path_form(path).unwrap(), registry);
    }
    assert_eq!(Registry::parse("[::1]:5000").unwrap().path_form(), None);
    for bad in ["host_abc", "a_1_2", "host_", "", "-x_5000"] {
        assert!(Registry::from_path_form(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn splits_host_and_port() {
    let r = Registry::parse("registry.example.com:5000").unwrap();
    assert_eq!(r.hostname(), "registry.example.com");
    assert_eq!(r.port(), Some(5000));
    let r = Registry::parse("[::1]:443").unwrap();
    assert_eq!(r.hostname(), "[::1]");
    assert_eq!(r.port(), Some(443));
    assert_eq!(Registry::docker_hub().port(), None);
}

#[test]
fn exposes_the_parts_of_a_reference() {
    let r = Reference::parse(&format!("localhost:5000/team/app:v1@{D64}")).unwrap();
    assert_eq!(r.registry().as_str(), "localhost:5000");
    assert_eq!(r.repository().as_str(), "team/app");
    assert_eq!(r.tag().map(Tag::as_str), Some("v1"));
    assert_eq!(r.digest().map(Digest::as_str), Some(D64));
    assert_eq!(r.name(), "localhost:5000/team/app");
    let pinned = r.pinned(Digest::parse(D64).unwrap());
    assert_eq!(pinned.to_string(), format!("localhost:5000/team/app@{D64}"));
}

#[test]
fn parses_repositories_and_tags_on_their_own() {
    assert_eq!(Repository::parse("org/app").unwrap().as_str(), "org/app");
    assert!(matches!(
        Repository::parse("Org/app").unwrap_err().kind,
        ReferenceErrorKind::Uppercase(_)
    ));
    assert!(Repository::parse("org//app").is_err());
    assert!(Repository::parse("").is_err());
    assert_eq!(Tag::parse("v1.2.3").unwrap().as_str(), "v1.2.3");
    assert!(Tag::parse("").is_err());
    assert!(Tag::parse("sha256:abc").is_err());
}

#[test]
fn round_trips_references_through_serde() {
    let r = Reference::parse("nginx:1.25").unwrap();
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(json, "\"docker.io/library/nginx:1.25\"");
    assert_eq!(serde_json::from_str::<Reference>(&json).unwrap(), r);
    assert!(serde_json::from_str::<Reference>("\"Bad\"").is_err());
}
