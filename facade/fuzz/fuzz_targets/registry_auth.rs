//! A registry's authentication: the `WWW-Authenticate` challenge of a 401 and the token
//! endpoint's JSON answer (the first byte picks which). Never panic; a bearer challenge has a
//! realm and survives being written out and parsed again; a token is non-empty and is not
//! refreshed before it was received.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use meshanics_facade::registry_client::{Challenge, TokenResponse};

fn quoted(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        let Ok(text) = std::str::from_utf8(body) else {
            return;
        };
        if let Some(challenge @ Challenge::Bearer { .. }) = Challenge::parse(text) {
            let Challenge::Bearer {
                realm,
                service,
                scope,
            } = &challenge
            else {
                return;
            };
            assert!(!realm.is_empty());
            let mut written = format!("Bearer realm={}", quoted(realm));
            if let Some(service) = service {
                written.push_str(&format!(",service={}", quoted(service)));
            }
            if let Some(scope) = scope {
                written.push_str(&format!(",scope={}", quoted(scope)));
            }
            assert_eq!(
                Challenge::parse(&written).as_ref(),
                Some(&challenge),
                "{written}"
            );
        }
    } else {
        let received = Instant::now();
        let Ok(response) = serde_json::from_slice::<TokenResponse>(body) else {
            return;
        };
        if let Some(token) = response.into_token(received) {
            assert!(!token.value().expose().is_empty());
            assert!(token.refresh_at() >= received);
        }
    }
});
