//! The one place errors become HTTP responses: a status, an OCI error code and a message
//! (`{"errors":[{"code":"...","message":"..."}]}`, the distribution spec's error body, built
//! by [`meshanics_http::oci_error`]).
//!
//! Messages to devices say what the device did wrong, or that the upstream side failed; they
//! never name which upstream hosts exist or echo upstream error bodies.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use meshanics_http::oci_error;

use crate::body::Body;
use crate::error::Error;
use crate::registry_client::{ContentKind, UpstreamError};

/// The `Retry-After` (seconds) sent when upstream credentials could not be obtained and the
/// provider gave no hint.
const RETRY_AFTER_SECONDS: u64 = 5;

/// The status, OCI error code and message for an error.
pub fn classify(error: &Error) -> (StatusCode, &'static str, String) {
    use StatusCode as S;
    match error {
        Error::NotFound { .. } => (S::NOT_FOUND, "NOT_FOUND", "no such route".into()),
        Error::MethodNotAllowed { method, .. } => (
            S::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{method} is not supported: the facade is read-only"),
        ),
        Error::DigestOnly { .. } => (
            S::BAD_REQUEST,
            "UNSUPPORTED",
            "digest references only".into(),
        ),
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
        Error::RangeNotSatisfiable { .. } => (
            S::RANGE_NOT_SATISFIABLE,
            "RANGE_INVALID",
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
        Error::MetaNotFound { .. } => (S::NOT_FOUND, "NOT_FOUND", "no such file".into()),
        Error::MetaTooLarge { .. } | Error::MetaIo { .. } => (
            S::INTERNAL_SERVER_ERROR,
            "UNAVAILABLE",
            "the metadata file cannot be served".into(),
        ),
    }
}

/// The response for an error.
pub fn error_response(error: &Error) -> Response<Body> {
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
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let json = body_json(response).await;
        assert_eq!(json["errors"][0]["code"], "UNSUPPORTED");
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
