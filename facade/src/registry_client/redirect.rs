//! Redirect targets, and the origin rule that keeps credentials at home.

use http::HeaderValue;
use reqwest::Url;

use super::UpstreamError;

/// Whether two URLs share scheme, host and port: the only case where `Authorization` may be
/// sent on after a redirect.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A URL fit for logs: scheme, host, port and path; no query (blob storage puts signatures
/// there) and no user info.
pub fn redacted(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
        None => format!("{}://{host}{}", url.scheme(), url.path()),
    }
}

/// The absolute target of a redirect from `current`.
pub(super) fn location(
    current: &Url,
    location: Option<&HeaderValue>,
) -> Result<Url, UpstreamError> {
    let err = |reason| UpstreamError::Redirect {
        url: redacted(current),
        reason,
    };
    let text = location
        .ok_or_else(|| err("no Location header"))?
        .to_str()
        .map_err(|_| err("the Location header is not text"))?;
    let next = current
        .join(text)
        .map_err(|_| err("the Location is not a URL"))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(err("the Location is not an http(s) URL"));
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn origin_changes_with_scheme_host_or_port() {
        let base = url("https://registry.example/v2/");
        assert!(same_origin(
            &base,
            &url("https://registry.example:443/blobs/x")
        ));
        assert!(!same_origin(&base, &url("http://registry.example/blobs/x")));
        assert!(!same_origin(&base, &url("https://registry.example:8443/x")));
        assert!(!same_origin(&base, &url("https://storage.example/x")));
    }

    #[test]
    fn resolves_relative_locations_and_refuses_other_schemes() {
        let current = url("https://r.example/v2/a/blobs/sha256:1");
        let v = HeaderValue::from_static("/storage/abc?sig=1");
        assert_eq!(
            location(&current, Some(&v)).unwrap().as_str(),
            "https://r.example/storage/abc?sig=1"
        );
        let bad = HeaderValue::from_static("file:///etc/passwd");
        assert!(location(&current, Some(&bad)).is_err());
        assert!(location(&current, None).is_err());
    }

    #[test]
    fn redacted_urls_drop_query_and_user_info() {
        assert_eq!(
            redacted(&url("https://u:p@s.example:9000/b/k?X-Amz-Signature=abc")),
            "https://s.example:9000/b/k"
        );
    }
}
