//! Where a malicious upstream's redirects may lead the facade, whose 401s it answers, and
//! which 206s it passes on. A redirect off the upstream's origin reaches only its listed
//! storage hosts or public addresses (tests run on loopback, so every redirect that must be
//! followed is to a listed host); a 401 from storage never gets the upstream's credentials;
//! a 206 must be the range the device asked for; presigned URLs never reach the logs.

#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test servers and helpers outside #[test] functions: a failure fails the test"
)]

use meshanics_shared::Digest;
use meshanics_tests::facade::{
    DeviceResponse, FacadeFixture, FacadeOptions, UpstreamEntry, Who, device_path,
    plain_http_connection,
};
use meshanics_tests::facade_process::FacadeProcess;
use meshanics_tests::scripted::{Recorded, Reply, ScriptedServer, ok, reply};

/// What an internal service would answer: no byte of it may reach a device.
const INTERNAL: &[u8] = b"internal-metrics-and-secrets;";

fn server(script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> ScriptedServer {
    ScriptedServer::start(script).unwrap()
}

fn facade(entry: UpstreamEntry) -> FacadeFixture {
    FacadeFixture::with_upstream(entry).unwrap()
}

/// An upstream that redirects every request to `location`.
fn redirecting_to(location: String) -> ScriptedServer {
    server(move |_| {
        Reply::Raw(reply(
            307,
            &[
                ("Location", location.clone()),
                ("Content-Length", "0".into()),
            ],
            b"",
        ))
    })
}

/// A server that answers like an internal service: its content, as a 206 when a range is
/// asked.
fn internal_service() -> ScriptedServer {
    let body = INTERNAL.repeat(4096);
    server(move |request| match request.header("range") {
        Some(_) => Reply::Raw(reply(
            206,
            &[
                ("Content-Length", body.len().to_string()),
                (
                    "Content-Range",
                    format!("bytes 0-{}/{}", body.len() - 1, body.len()),
                ),
            ],
            &body,
        )),
        None => Reply::Raw(ok(&body, &[])),
    })
}

fn get_blob(
    facade: &FacadeFixture,
    upstream: &ScriptedServer,
    digest: &Digest,
    range: Option<&str>,
) -> DeviceResponse {
    let path = device_path(&upstream.host(), "team/app", "blobs", digest.as_ref());
    let headers: Vec<(&str, &str)> = range.map(|range| ("Range", range)).into_iter().collect();
    facade
        .device_request(reqwest::Method::GET, &path, &headers, false)
        .unwrap()
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_redirect_to_another_loopback_port_gets_the_device_no_byte_of_it() {
    let internal = internal_service();
    let upstream = redirecting_to(format!("{}/metrics", internal.base_url()));
    let facade = facade(UpstreamEntry::anonymous(&upstream.host()));
    let digest = Digest::sha256_of(b"any blob");
    for range in [None, Some("bytes=0-")] {
        let outcome = get_blob(&facade, &upstream, &digest, range);
        assert_eq!(outcome.status, 502, "range {range:?}");
        assert!(outcome.clean, "range {range:?}");
        assert!(
            !holds(&outcome.body, INTERNAL),
            "range {range:?}: the internal service's bytes reached the device"
        );
    }
    assert!(
        internal.requests().is_empty(),
        "the facade connected to the internal service"
    );
}

#[test]
fn a_redirect_to_the_cloud_metadata_address_is_refused_without_connecting() {
    let upstream =
        redirecting_to("http://169.254.169.254/latest/meta-data/iam/security-credentials/".into());
    let fixture = facade(UpstreamEntry::anonymous(&upstream.host()));
    let (status, log) = through_process(&fixture, &upstream);
    assert_eq!(status, 502);
    // The refusal comes from the address check, which runs before any connection; a
    // connection attempt would fail with another error ("error sending request").
    assert!(
        log.contains(
            "refusing a redirect to http://169.254.169.254/latest/meta-data/iam/security-credentials/: \
             169.254.169.254:80 is not a public address"
        ),
        "{log}"
    );
    assert!(!log.contains("error sending request"), "{log}");
}

/// Starts the facade binary on `fixture`'s config, GETs a blob of `upstream` through it, and
/// returns the status and the facade's log once it holds the request's failure.
fn through_process(fixture: &FacadeFixture, upstream: &ScriptedServer) -> (u16, String) {
    let process = FacadeProcess::start(&fixture.config_path(), "info").unwrap();
    let url = process.url(&format!(
        "/v2/{}/team/app/blobs/{}",
        upstream.host().replace(':', "_"),
        Digest::sha256_of(b"blob")
    ));
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(fixture.tls_config(Who::Device).unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let status = fixture.block_on(async { client.get(url).send().await.unwrap().status() });
    // The log line is written as the response goes out: wait for it (bounded).
    let mut log = process.log();
    for _ in 0..200 {
        if log.contains("request failed") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        log = process.log();
    }
    assert!(log.contains("request failed"), "{log}");
    (status.as_u16(), log)
}

#[test]
fn a_redirect_to_a_listed_storage_host_is_followed_with_and_without_range() {
    let content = INTERNAL.repeat(100);
    let digest = Digest::sha256_of(&content);
    let storage = internal_service_with(content.clone());
    let upstream = redirecting_to(format!("{}/bucket/blob?sig=1", storage.base_url()));
    // The cache off: with it, the range would be answered from the cached whole.
    let facade = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::anonymous(&upstream.host()).storage(&storage.host())],
        cache: vec!["max_bytes = 0".into()],
        ..FacadeOptions::default()
    })
    .unwrap();
    let whole = get_blob(&facade, &upstream, &digest, None);
    assert_eq!((whole.status, whole.clean), (200, true));
    assert_eq!(whole.body, content);
    let part = get_blob(&facade, &upstream, &digest, Some("bytes=10-19"));
    assert_eq!((part.status, part.clean), (206, true));
    assert_eq!(part.body, &content[10..20]);
    assert_eq!(storage.requests().len(), 2);
}

/// Serves `content`, whole or the range asked (`bytes=A-B` only).
fn internal_service_with(content: Vec<u8>) -> ScriptedServer {
    server(move |request| {
        let Some(range) = request.header("range") else {
            return Reply::Raw(ok(&content, &[]));
        };
        let (a, b) = range
            .strip_prefix("bytes=")
            .and_then(|r| r.split_once('-'))
            .unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        Reply::Raw(reply(
            206,
            &[
                ("Content-Length", (b + 1 - a).to_string()),
                ("Content-Range", format!("bytes {a}-{b}/{}", content.len())),
            ],
            &content[a..=b],
        ))
    })
}

#[test]
fn a_401_from_storage_is_never_answered_with_the_upstreams_credentials() {
    let realm = server(|_| Reply::Raw(ok(br#"{"token":"stolen"}"#, &[])));
    let realm_url = format!("{}/token", realm.base_url());
    let storage = server(move |_| {
        Reply::Raw(reply(
            401,
            &[
                (
                    "WWW-Authenticate",
                    format!("Bearer realm=\"{realm_url}\",service=\"evil\""),
                ),
                ("Content-Length", "0".into()),
            ],
            b"",
        ))
    });
    let storage_url = storage.base_url();
    // The registry sends blobs to storage without asking for credentials first.
    let registry = redirecting_to(format!("{storage_url}/blob"));
    let facade = facade(
        UpstreamEntry::with_credentials(&registry.host(), "bot", "TOKEN").storage(&storage.host()),
    );
    let outcome = get_blob(&facade, &registry, &Digest::sha256_of(b"blob"), None);
    assert_eq!(outcome.status, 502);
    assert!(
        storage
            .requests()
            .iter()
            .all(|r| r.header("authorization").is_none())
    );
    assert!(
        realm.requests().is_empty(),
        "the storage's token realm was asked, with: {:?}",
        realm
            .requests()
            .iter()
            .map(|r| r.header("authorization").map(str::to_owned))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_206_whose_content_range_is_not_the_range_asked_is_refused() {
    let content = INTERNAL.repeat(40);
    let digest = Digest::sha256_of(&content);
    let total = content.len();
    // Each answer to `bytes=0-99`: 100 bytes, but labelled as another slice, or a slice of
    // another length, or with no total.
    for content_range in [
        format!("bytes 100-199/{total}"),
        format!("bytes 0-98/{total}"),
        "bytes 0-99/50".to_owned(),
        "bytes 0-99/*".to_owned(),
        "items 0-99/1000".to_owned(),
    ] {
        let body = content[..100].to_vec();
        let upstream = server(move |_| {
            Reply::Raw(reply(
                206,
                &[
                    ("Content-Length", "100".into()),
                    ("Content-Range", content_range.clone()),
                ],
                &body,
            ))
        });
        let facade = facade(UpstreamEntry::anonymous(&upstream.host()));
        let outcome = get_blob(&facade, &upstream, &digest, Some("bytes=0-99"));
        assert_eq!(outcome.status, 502, "{:?}", upstream.requests());
        assert!(!holds(&outcome.body, INTERNAL));
    }
}

#[test]
fn a_206_for_the_range_asked_is_passed_on() {
    let content = INTERNAL.repeat(40);
    let digest = Digest::sha256_of(&content);
    let storage = internal_service_with(content.clone());
    let facade = facade(UpstreamEntry::anonymous(&storage.host()));
    let outcome = get_blob(&facade, &storage, &digest, Some("bytes=5-104"));
    assert_eq!((outcome.status, outcome.clean), (206, true));
    assert_eq!(outcome.body, &content[5..105]);
}

#[test]
fn presigned_urls_never_reach_the_logs() {
    // A listed storage host with nothing listening: the request to it fails, and the error
    // is logged.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let storage = gone.local_addr().unwrap();
    drop(gone);
    let upstream = redirecting_to(format!(
        "http://{storage}/bucket/blob?X-Amz-Credential=AKIA&X-Amz-Signature=SECRETSIGNATURE"
    ));
    let fixture = facade(UpstreamEntry::anonymous(&upstream.host()).storage(&storage.to_string()));
    let (status, log) = through_process(&fixture, &upstream);
    // Storage that cannot be reached: a miss the device retries later.
    assert_eq!(status, 503);
    assert!(
        log.contains(&format!("http://{storage}/bucket/blob")),
        "{log}"
    );
    assert!(!log.contains("SECRETSIGNATURE"), "{log}");
}

#[test]
fn a_connections_storage_hosts_are_followed_and_others_are_not() {
    use meshanics_operator_api::{OperatorClient, ProviderKind};

    let content = INTERNAL.repeat(100);
    let digest = Digest::sha256_of(&content);
    let storage = internal_service_with(content.clone());
    let listed = redirecting_to(format!("{}/bucket/blob", storage.base_url()));
    let unlisted = redirecting_to(format!("{}/bucket/blob", storage.base_url()));
    let facade = FacadeFixture::with_connections().unwrap();
    let operator = OperatorClient::new(facade.admin_socket().unwrap());
    let request = |registry: String, storage_hosts: Vec<String>| {
        plain_http_connection(
            registry,
            ProviderKind::Static,
            Some(("bot", "TOKEN")),
            storage_hosts,
        )
    };
    for (upstream, storage_hosts) in [(&listed, vec![storage.host()]), (&unlisted, Vec::new())] {
        let view = facade
            .block_on(operator.add(&request(upstream.host(), storage_hosts)))
            .unwrap();
        assert!(view.approved);
    }
    let bad = request(
        "registry.example".into(),
        vec!["https://minio.example/bucket".into()],
    );
    let refused = facade.block_on(operator.add(&bad)).unwrap_err().to_string();
    assert!(refused.contains("storage host"), "{refused}");

    let followed = get_blob(&facade, &listed, &digest, None);
    assert_eq!((followed.status, followed.clean), (200, true));
    assert_eq!(followed.body, content);
    let refused = get_blob(&facade, &unlisted, &digest, Some("bytes=0-"));
    assert_eq!(refused.status, 502);
    assert_eq!(storage.requests().len(), 1);
}
