//! The one place errors become HTTP responses: a status, an OCI error code and a message
//! (`{"errors":[{"code":"...","message":"..."}]}`, the distribution spec's error body, built
//! by [`meshanics_http::oci_error`]).
//!
//! Messages to devices say what the device did wrong, or that the upstream side failed; they
//! never name which upstream hosts exist or echo upstream error bodies.
//!
//! Codes follow the distribution spec ("Error Codes"): a 4XX body carries one of its fourteen
//! codes, never one of our own, and the status is the one its endpoint table gives (a
//! manifest or blob the facade cannot serve is `404`, whatever the reason). The spec's list
//! binds 4XX bodies only; a server-side failure no listed code describes (the upstream is
//! down, a metadata file unreadable) says `UNAVAILABLE`, the code distribution's own errcode
//! package registers for that, which docker and containerd know.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use meshanics_http::oci_error;

use crate::body::Body;
use crate::error::Error;
use crate::registry_client::{ContentKind, UpstreamError};

/// The `Retry-After` (seconds) sent when upstream credentials could not be obtained and the
/// provider gave no hint, or when a miss finds its upstream unavailable and it gave none.
const RETRY_AFTER_SECONDS: u64 = 5;

/// The status, OCI error code and message for an error.
pub fn classify(error: &Error) -> (StatusCode, &'static str, String) {
    use StatusCode as S;
    match error.root() {
        // Catalog, tag lists, uploads, anything else: operations a read-only, digest-only
        // registry does not offer (the conformance suites read a 404 as "not supported").
        Error::NotFound { .. } => (
            S::NOT_FOUND,
            "UNSUPPORTED",
            "no such route: the facade serves pulls by digest only".into(),
        ),
        Error::MethodNotAllowed { method, .. } => (
            S::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{method} is not supported: the facade is read-only"),
        ),
        // A manifest reference may be a tag or a digest (`<tag-or-digest>` in the spec), and
        // the facade never resolves tags: any other reference, a valid tag or not, names a
        // manifest it does not have. The spec's only failure status for a manifest GET/HEAD
        // is 404, and the released conformance suite (v1.1) asks for exactly 404 for
        // `.INVALID_MANIFEST_NAME`, neither a tag nor a digest. Refused before any upstream
        // request (routes.rs).
        Error::DigestOnly { .. } => (
            S::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "digest references only".into(),
        ),
        // A blob is named by digest alone: a malformed one is the device's error, 400.
        Error::InvalidDigest { .. } => (S::BAD_REQUEST, "DIGEST_INVALID", error.to_string()),
        Error::InvalidName { .. } => (S::BAD_REQUEST, "NAME_INVALID", error.to_string()),
        Error::UnknownUpstream { .. } => (
            S::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository name not known to registry".into(),
        ),
        Error::ContentUnknown { kind, digest, .. } => match kind {
            ContentKind::Manifest => (
                S::NOT_FOUND,
                "MANIFEST_UNKNOWN",
                format!("manifest unknown: {digest}"),
            ),
            ContentKind::Blob => (
                S::NOT_FOUND,
                "BLOB_UNKNOWN",
                format!("blob unknown: {digest}"),
            ),
        },
        // The spec has no range code (RANGE_INVALID is distribution's own): the range asked
        // for does not fit the blob's length, which is what SIZE_INVALID says.
        Error::RangeNotSatisfiable { .. } => (
            S::RANGE_NOT_SATISFIABLE,
            "SIZE_INVALID",
            "requested range not satisfiable".into(),
        ),
        Error::UpstreamDenied { .. } => (
            S::BAD_GATEWAY,
            "DENIED",
            "the upstream registry refused the facade's credentials".into(),
        ),
        Error::UpstreamRateLimited { .. } => (
            S::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            "the upstream registry is rate-limiting; retry later".into(),
        ),
        // An upstream that says it is briefly unavailable (often with a Retry-After) is
        // passed on as such, so a device backs off instead of treating it as broken.
        Error::UpstreamStatus { status, .. } if *status == S::SERVICE_UNAVAILABLE => (
            S::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the upstream registry is unavailable; retry later".into(),
        ),
        Error::UpstreamStatus { status, .. } => (
            S::BAD_GATEWAY,
            "UNAVAILABLE",
            format!("the upstream registry answered {}", status.as_u16()),
        ),
        Error::Upstream(UpstreamError::Credentials(_)) => (
            S::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the facade could not obtain credentials for the upstream registry; retry later".into(),
        ),
        Error::Upstream(UpstreamError::Timeout { .. }) => (
            S::GATEWAY_TIMEOUT,
            "UNAVAILABLE",
            "the upstream registry did not answer in time".into(),
        ),
        Error::Upstream(_) => (
            S::BAD_GATEWAY,
            "UNAVAILABLE",
            "the upstream registry could not be reached".into(),
        ),
        Error::DigestHeaderMismatch { .. } | Error::Verification { .. } => (
            S::BAD_GATEWAY,
            "DIGEST_INVALID",
            "the upstream served content that does not match its digest".into(),
        ),
        Error::ManifestTooLarge { .. } => (
            S::BAD_GATEWAY,
            "SIZE_INVALID",
            "the upstream manifest is over the size cap".into(),
        ),
        Error::MissingLength { .. } => (
            S::BAD_GATEWAY,
            "SIZE_INVALID",
            "the upstream did not announce the content size".into(),
        ),
        // A metadata file is a named blob of the facade's own API; not there (or not one of
        // the published names) is unknown content, as for a blob.
        Error::MetaNotFound { .. } => {
            (S::NOT_FOUND, "BLOB_UNKNOWN", "no such metadata file".into())
        }
        // A miss the upstream cannot serve now: retry later (`Retry-After`), as distribution
        // answers 503 UNAVAILABLE.
        Error::Unavailable { .. } => (
            S::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the content is not cached and the upstream registry is unavailable; retry later"
                .into(),
        ),
        Error::FillFailed { .. } => (
            S::BAD_GATEWAY,
            "UNAVAILABLE",
            "fetching the content from the upstream registry failed".into(),
        ),
        // Unwrapped by `root` above.
        Error::Shared(_) => (
            S::INTERNAL_SERVER_ERROR,
            "UNAVAILABLE",
            "internal error".into(),
        ),
        Error::MetaTooLarge { .. } | Error::MetaIo { .. } => (
            S::INTERNAL_SERVER_ERROR,
            "UNAVAILABLE",
            "the metadata file cannot be served".into(),
        ),
    }
}

/// The response for an error.
pub fn error_response(error: &Error) -> Response<Body> {
    let error = error.root();
    let (status, code, message) = classify(error);
    let json = oci_error::body(code, &message);
    let length = json.len();
    let mut response = Response::new(full(json));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(oci_error::CONTENT_TYPE),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    if let Error::Upstream(UpstreamError::Credentials(provider)) = error {
        let seconds = provider
            .retry_after
            .map_or(RETRY_AFTER_SECONDS, |d| d.as_secs().max(1));
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Error::UpstreamRateLimited {
        retry_after: Some(value),
        ..
    }
    | Error::UpstreamStatus {
        retry_after: Some(value),
        ..
    } = error
    {
        headers.insert(RETRY_AFTER, value.clone());
    }
    if let Error::Unavailable { retry_after, .. } = error {
        let value = retry_after
            .clone()
            .unwrap_or_else(|| HeaderValue::from(RETRY_AFTER_SECONDS));
        headers.insert(RETRY_AFTER, value);
    }
    if let Error::RangeNotSatisfiable {
        content_range: Some(range),
        ..
    } = error
    {
        headers.insert(CONTENT_RANGE, range.clone());
    }
    response
}

/// A whole, in-memory body.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshanics_shared::{Digest, Registry};

    async fn body_json(response: Response<Body>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_become_oci_error_json() {
        let response = error_response(&Error::DigestOnly {
            reference: "latest".into(),
        });
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let json = body_json(response).await;
        assert_eq!(json["errors"][0]["code"], "MANIFEST_UNKNOWN");
        assert_eq!(json["errors"][0]["message"], "digest references only");
    }

    #[tokio::test]
    async fn unknown_upstreams_are_not_named_to_devices() {
        let response = error_response(&Error::UnknownUpstream {
            registry: Registry::parse("secret.example").unwrap(),
        });
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let text = body_json(response).await.to_string();
        assert!(text.contains("NAME_UNKNOWN"), "{text}");
        assert!(!text.contains("secret.example"), "{text}");
    }

    #[tokio::test]
    async fn upstream_rate_limits_and_unavailability_pass_on_retry_after() {
        let registry = Registry::parse("r.example").unwrap();
        let limited = error_response(&Error::UpstreamRateLimited {
            registry: registry.clone(),
            retry_after: Some(HeaderValue::from_static("7")),
        });
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()[RETRY_AFTER], "7");
        let unavailable = error_response(&Error::UpstreamStatus {
            registry: registry.clone(),
            digest: Digest::sha256_of(b"x"),
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: Some(HeaderValue::from_static("3")),
        });
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unavailable.headers()[RETRY_AFTER], "3");
        let broken = error_response(&Error::UpstreamStatus {
            registry,
            digest: Digest::sha256_of(b"x"),
            status: StatusCode::INTERNAL_SERVER_ERROR,
            retry_after: None,
        });
        assert_eq!(broken.status(), StatusCode::BAD_GATEWAY);
        assert!(broken.headers().get(RETRY_AFTER).is_none());
    }

    /// The `code` values of the distribution spec ("Error Codes"): the only ones a 4XX body
    /// may carry.
    const SPEC_CODES: [&str; 14] = [
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    ];

    #[test]
    fn range_not_satisfiable_uses_a_spec_error_code() {
        let (status, code, _) = classify(&Error::RangeNotSatisfiable {
            registry: Registry::parse("r.example").unwrap(),
            digest: Digest::sha256_of(b"x"),
            content_range: None,
        });
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert!(SPEC_CODES.contains(&code), "{code}");
    }

    #[test]
    fn unrouted_paths_and_missing_metadata_use_spec_error_codes() {
        for error in [
            Error::NotFound {
                path: "/v2/_catalog".into(),
            },
            Error::MetaNotFound {
                name: "2.root.cose".into(),
            },
        ] {
            let (status, code, _) = classify(&error);
            assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
            assert!(SPEC_CODES.contains(&code), "{error}: {code}");
        }
    }

    #[test]
    fn every_answer_uses_a_code_from_the_distribution_spec() {
        let registry = || Registry::parse("r.example").unwrap();
        let digest = || Digest::sha256_of(b"x");
        let verify = meshanics_shared::VerifyError::TooLong {
            digest: digest(),
            expected: 0,
        };
        let errors = [
            Error::NotFound { path: "/".into() },
            Error::MethodNotAllowed {
                method: http::Method::PUT,
                path: "/v2/".into(),
            },
            Error::DigestOnly {
                reference: "latest".into(),
            },
            Error::InvalidDigest {
                input: "sha256:1".into(),
                reason: "short".into(),
            },
            Error::InvalidName {
                input: "A".into(),
                reason: "uppercase".into(),
            },
            Error::UnknownUpstream {
                registry: registry(),
            },
            Error::ContentUnknown {
                registry: registry(),
                kind: ContentKind::Manifest,
                digest: digest(),
            },
            Error::ContentUnknown {
                registry: registry(),
                kind: ContentKind::Blob,
                digest: digest(),
            },
            Error::RangeNotSatisfiable {
                registry: registry(),
                digest: digest(),
                content_range: None,
            },
            Error::UpstreamDenied {
                registry: registry(),
                status: StatusCode::FORBIDDEN,
            },
            Error::UpstreamRateLimited {
                registry: registry(),
                retry_after: None,
            },
            Error::UpstreamStatus {
                registry: registry(),
                digest: digest(),
                status: StatusCode::SERVICE_UNAVAILABLE,
                retry_after: None,
            },
            Error::UpstreamStatus {
                registry: registry(),
                digest: digest(),
                status: StatusCode::INTERNAL_SERVER_ERROR,
                retry_after: None,
            },
            Error::Upstream(UpstreamError::Timeout {
                url: "https://r.example/v2/".into(),
                seconds: 1,
            }),
            Error::Upstream(UpstreamError::Redirect {
                url: "https://r.example/v2/".into(),
                reason: "loop",
            }),
            Error::DigestHeaderMismatch {
                registry: registry(),
                expected: digest(),
                announced: "sha256:0".into(),
            },
            Error::ManifestTooLarge {
                registry: registry(),
                digest: digest(),
                size: 1,
                limit: 0,
            },
            Error::MissingLength {
                registry: registry(),
                digest: digest(),
            },
            Error::Verification {
                registry: registry(),
                source: verify,
            },
            Error::MetaNotFound {
                name: "2.root.cose".into(),
            },
            Error::MetaTooLarge {
                path: "/m/1.root.cose".into(),
                size: 1,
                limit: 0,
            },
        ];
        for error in &errors {
            let (status, code, _) = classify(error);
            if status.is_client_error() {
                assert!(SPEC_CODES.contains(&code), "{error}: {status} {code}");
            } else {
                // The spec's list binds 4XX bodies only; a server-side failure that no listed
                // code describes says UNAVAILABLE, as distribution's errcode does for 503.
                assert!(
                    SPEC_CODES.contains(&code) || code == "UNAVAILABLE",
                    "{error}: {status} {code}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_miss_the_upstream_cannot_serve_now_is_a_503_with_retry_after() {
        let registry = || Registry::parse("r.example").unwrap();
        let digest = Digest::sha256_of(b"x");
        let broken = Error::UpstreamStatus {
            registry: registry(),
            digest: digest.clone(),
            status: StatusCode::INTERNAL_SERVER_ERROR,
            retry_after: None,
        };
        let response = error_response(&broken.on_miss(&digest));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "5");
        assert_eq!(
            body_json(response).await["errors"][0]["code"],
            "UNAVAILABLE"
        );
        let limited = Error::UpstreamRateLimited {
            registry: registry(),
            retry_after: Some(HeaderValue::from_static("7")),
        };
        let shared = Error::Shared(std::sync::Arc::new(limited));
        let response = error_response(&shared.on_miss(&digest));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "7");
        // Content the upstream refuses or serves wrong keeps its answer.
        for kept in [
            Error::ContentUnknown {
                registry: registry(),
                kind: ContentKind::Blob,
                digest: digest.clone(),
            },
            Error::Verification {
                registry: registry(),
                source: meshanics_shared::VerifyError::TooLong {
                    digest: digest.clone(),
                    expected: 0,
                },
            },
        ] {
            let (status, code, _) = classify(&kept);
            assert_eq!(classify(&kept.on_miss(&digest)).0, status, "{code}");
        }
    }

    #[tokio::test]
    async fn range_refusals_keep_the_upstream_content_range() {
        let digest = Digest::sha256_of(b"x");
        let response = error_response(&Error::RangeNotSatisfiable {
            registry: Registry::parse("r.example").unwrap(),
            digest,
            content_range: Some(HeaderValue::from_static("bytes */1")),
        });
        assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(response.headers()[CONTENT_RANGE], "bytes */1");
    }
}
