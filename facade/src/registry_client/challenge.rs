//! `WWW-Authenticate` challenges (RFC 7235) as registries send them: `Basic realm="..."` or
//! `Bearer realm="...",service="...",scope="..."` (the Docker token flow).

use http::HeaderMap;
use http::header::WWW_AUTHENTICATE;

/// What an upstream asked for on a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP Basic.
    Basic,
    /// A bearer token from `realm`, for `service` and `scope`.
    Bearer {
        /// The token endpoint URL.
        realm: String,
        /// The service the token is for, if named.
        service: Option<String>,
        /// The scope asked for, if named.
        scope: Option<String>,
    },
}

// === impl Challenge ===

impl Challenge {
    /// The challenge in a 401's headers. Bearer wins when several are offered, because a
    /// token keeps the long-lived secret off the registry's front door.
    pub fn from_headers(headers: &HeaderMap) -> Option<Challenge> {
        let mut found = None;
        for value in headers.get_all(WWW_AUTHENTICATE) {
            let Ok(text) = value.to_str() else { continue };
            match Challenge::parse(text) {
                Some(bearer @ Challenge::Bearer { .. }) => return Some(bearer),
                Some(other) => found = Some(other),
                None => {}
            }
        }
        found
    }

    /// Parses one challenge; unknown schemes and a bearer challenge without a realm are
    /// `None`.
    pub fn parse(text: &str) -> Option<Challenge> {
        let text = text.trim();
        let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parameters(rest)?;
        let find = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.clone())
        };
        Some(Challenge::Bearer {
            realm: find("realm").filter(|r| !r.is_empty())?,
            service: find("service"),
            scope: find("scope"),
        })
    }
}

/// `key=value` or `key="quoted \"value\""`, comma separated. `None` on malformed input.
fn parameters(input: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',') {
            key.push(c);
        }
        if chars.next() != Some('=') {
            return None;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
        }
        out.push((key.trim().to_owned(), value.trim_end().to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_hub_bearer_challenge() {
        let parsed = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(
            parsed,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull".into()),
            })
        );
    }

    #[test]
    fn reads_unquoted_values_escapes_and_odd_case() {
        let parsed = Challenge::parse(r#"bearer Realm=https://t.example/token, scope="a\"b""#);
        assert_eq!(
            parsed,
            Some(Challenge::Bearer {
                realm: "https://t.example/token".into(),
                service: None,
                scope: Some("a\"b".into()),
            })
        );
    }

    #[test]
    fn reads_basic_and_refuses_unknown_or_broken_challenges() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), None);
        assert_eq!(Challenge::parse(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn prefers_bearer_when_both_are_offered() {
        let mut headers = HeaderMap::new();
        headers.append(WWW_AUTHENTICATE, "Basic realm=\"x\"".parse().unwrap());
        headers.append(
            WWW_AUTHENTICATE,
            "Bearer realm=\"https://t/\"".parse().unwrap(),
        );
        assert!(matches!(
            Challenge::from_headers(&headers),
            Some(Challenge::Bearer { .. })
        ));
    }
}
