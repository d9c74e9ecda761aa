//! Tag listing and import against registries that paginate and fail the way real ones do:
//! Quay's opaque `next_page` cursor in a relative `Link`, ECR's `last=` cursor in an absolute
//! `Link` with unsorted pages, a rate-limited tag (429 with `Retry-After`), a refused one;
//! and registries that misbehave: a `Link` back to the same page, pages past the byte caps,
//! tags that break the tag grammar.
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test servers and helpers outside #[test] fns: a failure fails the test"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meshanics_operator_api::{ClipReason, OperatorClient, Outcome, ProviderKind, TagList};
use meshanics_tests::facade::{FacadeFixture, plain_http_connection};
use meshanics_tests::http_server::{TestRequest, TestResponse, TestServer, respond};

const PAGE: usize = 10;

/// 25 tags: `1.0.0` ... `1.24.0`.
fn all_tags() -> Vec<String> {
    (0..25).map(|i| format!("1.{i}.0")).collect()
}

fn page_response(tags: &[String], link: Option<String>) -> TestResponse {
    let body = serde_json::json!({"name": "team/app", "tags": tags}).to_string();
    let mut response = respond(200, "application/json", body);
    if let Some(link) = link {
        response.headers_mut().insert("link", link.parse().unwrap());
    }
    response
}

/// Quay: `next_page` is an opaque token, the link is relative.
fn quay(req: &TestRequest, pages: &AtomicU64) -> TestResponse {
    if req.uri().path() == "/v2/" {
        return respond(200, "application/json", "{}");
    }
    pages.fetch_add(1, Ordering::SeqCst);
    let query = req.uri().query().unwrap_or("");
    let start = query
        .split('&')
        .find_map(|p| p.strip_prefix("next_page="))
        .map_or(0, |token| {
            token
                .trim_start_matches("opaque-")
                .parse::<usize>()
                .unwrap()
        });
    let tags = all_tags();
    let end = (start + PAGE).min(tags.len());
    let link = (end < tags.len())
        .then(|| format!("</v2/team/app/tags/list?n={PAGE}&next_page=opaque-{end}>; rel=\"next\""));
    page_response(&tags[start..end], link)
}

/// ECR: `last=` cursor, an absolute link, and each page in no particular order.
fn ecr(req: &TestRequest, base: &str, pages: &AtomicU64) -> TestResponse {
    if req.uri().path() == "/v2/" {
        return respond(200, "application/json", "{}");
    }
    pages.fetch_add(1, Ordering::SeqCst);
    let tags = all_tags();
    let query = req.uri().query().unwrap_or("");
    let start = query
        .split('&')
        .find_map(|p| p.strip_prefix("last="))
        .map_or(0, |last| tags.iter().position(|t| t == last).unwrap() + 1);
    let end = (start + PAGE).min(tags.len());
    let mut page: Vec<String> = tags[start..end].to_vec();
    page.reverse();
    let link = (end < tags.len()).then(|| {
        format!(
            "<{base}/v2/team/app/tags/list?last={}&n={PAGE}>; rel=\"next\"",
            tags[end - 1]
        )
    });
    page_response(&page, link)
}

fn connect(facade: &FacadeFixture, host: &str) -> OperatorClient {
    let client = OperatorClient::new(facade.admin_socket().unwrap());
    let request = plain_http_connection(host.into(), ProviderKind::Anonymous, None, Vec::new());
    facade.block_on(client.add(&request)).unwrap();
    client
}

fn facade() -> FacadeFixture {
    FacadeFixture::with_connections().unwrap()
}

fn newest_first() -> Vec<String> {
    (0..25).rev().map(|i| format!("1.{i}.0")).collect()
}

#[test]
fn follows_quays_opaque_cursor_to_the_end_and_orders_newest_first() {
    let facade = facade();
    let pages = Arc::new(AtomicU64::new(0));
    let counter = pages.clone();
    let server = facade
        .block_on(TestServer::start(move |req| quay(&req, &counter)))
        .unwrap();
    let list = list_team_app(&facade, &server);
    assert_eq!(list.tags, newest_first());
    assert!(!list.clipped);
    assert_eq!(list.seen, 25);
    assert_eq!(list.clip_reason, None);
    assert_eq!(pages.load(Ordering::SeqCst), 3);
}

#[test]
fn follows_ecrs_absolute_last_cursor_through_unsorted_pages() {
    let facade = facade();
    let pages = Arc::new(AtomicU64::new(0));
    let counter = pages.clone();
    let base = Arc::new(std::sync::OnceLock::<String>::new());
    let base_in = base.clone();
    let server = facade
        .block_on(TestServer::start(move |req| {
            ecr(&req, base_in.get().map_or("", String::as_str), &counter)
        }))
        .unwrap();
    base.set(server.base_url()).unwrap();
    let list = list_team_app(&facade, &server);
    assert_eq!(list.tags, newest_first());
    assert!(!list.clipped);
    assert_eq!(pages.load(Ordering::SeqCst), 3);
}

#[test]
fn says_clipped_when_the_limit_stops_the_walk() {
    let facade = facade();
    let counter = Arc::new(AtomicU64::new(0));
    let server = facade
        .block_on(TestServer::start(move |req| quay(&req, &counter)))
        .unwrap();
    let host = server.addr().to_string();
    let client = connect(&facade, &host);
    let list = facade
        .block_on(client.tags(&format!("{host}/team/app"), Some(15)))
        .unwrap();
    assert!(list.clipped);
    assert_eq!(list.seen, 15);
    assert_eq!(list.clip_reason, Some(ClipReason::Limit));
    assert_eq!(list.tags.len(), 15);
    // A limit that ends exactly where a page ends is clipped too: the registry has more.
    let list = facade
        .block_on(client.tags(&format!("{host}/team/app"), Some(10)))
        .unwrap();
    assert!(list.clipped);
    assert_eq!(list.seen, 10);
}

/// A registry that answers every tag-list request with `page` and a `Link` built from the
/// request's query (`None`: no link), counting the requests.
fn scripted_pages(
    facade: &FacadeFixture,
    page: impl Fn(&str) -> (String, Option<String>) + Send + Sync + 'static,
) -> (TestServer, Arc<AtomicU64>) {
    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    let server = facade
        .block_on(TestServer::start(move |req| {
            if req.uri().path() == "/v2/" {
                return respond(200, "application/json", "{}");
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let (body, link) = page(req.uri().query().unwrap_or(""));
            let mut response = respond(200, "application/json", body);
            if let Some(link) = link {
                response.headers_mut().insert("link", link.parse().unwrap());
            }
            response
        }))
        .unwrap();
    (server, requests)
}

/// All tags of `team/app` on `server`, through the facade.
fn list_team_app(facade: &FacadeFixture, server: &TestServer) -> TagList {
    let host = server.addr().to_string();
    let client = connect(facade, &host);
    facade
        .block_on(client.tags(&format!("{host}/team/app"), None))
        .unwrap()
}

#[test]
fn stops_when_the_next_link_points_back_at_a_page_already_fetched() {
    let facade = facade();
    // The first page links to itself, verbatim: `n=` is what the facade asked for.
    let (server, requests) = scripted_pages(&facade, |query| {
        let body = serde_json::json!({"name": "team/app", "tags": ["1.0.0"]}).to_string();
        (
            body,
            Some(format!("</v2/team/app/tags/list?{query}>; rel=\"next\"")),
        )
    });
    let list = list_team_app(&facade, &server);
    assert!(
        requests.load(Ordering::SeqCst) <= 2,
        "{requests:?} requests"
    );
    assert!(list.clipped);
    assert_eq!(list.clip_reason, Some(ClipReason::LinkLoop));
    assert_eq!(list.tags, ["1.0.0"]);
}

/// A page of one tag (`1.<cursor>.0`) padded with an extra field (as GCR's `manifest` map)
/// to about `size` bytes, linking to the next cursor until `pages` pages were served.
fn padded_page(query: &str, size: usize, pages: usize) -> (String, Option<String>) {
    let cursor: usize = query
        .split('&')
        .find_map(|p| p.strip_prefix("c="))
        .map_or(0, |c| c.parse().unwrap());
    let body = serde_json::json!({
        "name": "team/app",
        "tags": [format!("1.{cursor}.0")],
        "manifest": {"padding": "x".repeat(size)},
    })
    .to_string();
    let link = (cursor + 1 < pages)
        .then(|| format!("</v2/team/app/tags/list?c={}>; rel=\"next\"", cursor + 1));
    (body, link)
}

#[test]
fn stops_when_the_pages_together_pass_the_byte_cap() {
    let facade = facade();
    // 12 pages of 3 MiB: 36 MiB, more than the 32 MiB the facade reads over all pages.
    let (server, requests) =
        scripted_pages(&facade, |query| padded_page(query, 3 * 1024 * 1024, 12));
    let list = list_team_app(&facade, &server);
    assert!(list.clipped);
    assert_eq!(requests.load(Ordering::SeqCst), 11);
    assert_eq!(list.clip_reason, Some(ClipReason::TotalBytes));
    // Ten whole pages fit; the eleventh passes the cap and is not used.
    assert_eq!(list.seen, 10);
}

#[test]
fn stops_at_a_page_larger_than_the_page_cap() {
    let facade = facade();
    // Page 0 is small, page 1 is 5 MiB (more than 4 MiB), page 2 would end the list.
    let (server, requests) = scripted_pages(&facade, |query| {
        let size = if query.contains("c=1") {
            5 * 1024 * 1024
        } else {
            10
        };
        padded_page(query, size, 3)
    });
    let list = list_team_app(&facade, &server);
    assert!(list.clipped);
    assert_eq!(list.tags, ["1.0.0"]);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(list.clip_reason, Some(ClipReason::PageBytes));
}

#[test]
fn drops_tags_that_break_the_tag_grammar() {
    let facade = facade();
    let (server, _requests) = scripted_pages(&facade, |_| {
        let long = "a".repeat(129);
        let tags = [
            "1.0.0",
            "evil\u{1b}[2J",
            "../x",
            "",
            "-dash",
            long.as_str(),
            "abc_x.y-z",
        ];
        let body = serde_json::json!({"name": "team/app", "tags": tags}).to_string();
        (body, None)
    });
    let list = list_team_app(&facade, &server);
    assert_eq!(list.tags, ["1.0.0", "abc_x.y-z"]);
    assert_eq!(list.seen, 2);
    assert!(!list.clipped);
    assert_eq!(list.dropped, 5);
}

#[test]
fn import_reports_rate_limits_refusals_and_successes_per_tag() {
    let facade = facade();
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","size":5},"layers":[]}"#;
    let digest = meshanics_shared::Digest::sha256_of(manifest).to_string();
    let server = facade
        .block_on(TestServer::start(move |req| match req.uri().path() {
            "/v2/" => respond(200, "application/json", "{}"),
            "/v2/team/app/manifests/busy" => {
                let mut r = respond(
                    429,
                    "application/json",
                    r#"{"errors":[{"code":"TOOMANYREQUESTS"}]}"#,
                );
                r.headers_mut().insert("retry-after", "7".parse().unwrap());
                r
            }
            "/v2/team/app/manifests/secret" => {
                respond(403, "application/json", r#"{"errors":[{"code":"DENIED"}]}"#)
            }
            // No digest header, and HEAD not allowed: the facade must GET and hash.
            "/v2/team/app/manifests/v1" if req.method() == hyper::Method::HEAD => {
                respond(405, "text/plain", "")
            }
            "/v2/team/app/manifests/v1" => respond(
                200,
                "application/vnd.oci.image.manifest.v1+json",
                &manifest[..],
            ),
            _ => respond(
                404,
                "application/json",
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#,
            ),
        }))
        .unwrap();
    let host = server.addr().to_string();
    let client = connect(&facade, &host);
    let refs = ["busy", "secret", "v1", "gone"]
        .map(|t| format!("{host}/team/app:{t}"))
        .to_vec();
    let response = facade.block_on(client.import(refs)).unwrap();
    let outcomes: Vec<Outcome> = response.results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::RateLimited,
            Outcome::Unauthorized,
            Outcome::Imported,
            Outcome::NotFound
        ]
    );
    assert_eq!(response.results[0].retry_after, Some(7));
    assert_eq!(response.results[2].digest.as_deref(), Some(digest.as_str()));
    assert_eq!(response.results[2].size, Some(manifest.len() as u64));
    assert_eq!(
        response.results[2].media_type.as_deref(),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
}
