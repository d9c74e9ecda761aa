//! Cloud token endpoints' answers: Google's OAuth2 token JSON, STS `AssumeRole` XML and ECR
//! `GetAuthorizationToken` JSON (the first byte picks the parser), plus STS's timestamps.
//! Never panic; whatever parses is a usable credential.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use meshanics_facade::cloud::{ecr, gcp};

const ENDPOINT: &str = "https://token.example/";

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_763_800_000);
    match selector % 4 {
        0 => {
            if let Ok(token) = gcp::parse_token_response(body, ENDPOINT, now) {
                assert_eq!(token.username, gcp::REGISTRY_USERNAME);
                assert!(!token.password.is_empty());
                assert_eq!(
                    token.expires_at.duration_since(now).ok(),
                    Some(token.lifetime)
                );
            }
        }
        1 => {
            if let Ok(session) = ecr::parse_assume_role_response(body, ENDPOINT) {
                assert!(!session.access_key_id.is_empty());
                assert!(!session.secret_access_key.is_empty());
                assert!(session.session_token.is_some_and(|t| !t.is_empty()));
                assert!(session.expires_at.is_some());
            }
        }
        2 => {
            if let Ok(token) = ecr::parse_authorization_response(body, ENDPOINT, now) {
                let left = token.expires_at.duration_since(now).unwrap_or_default();
                assert_eq!(token.lifetime, left);
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(body) else {
                return;
            };
            if let Some(time) = ecr::parse_iso8601(text) {
                assert!(time >= SystemTime::UNIX_EPOCH);
                // Fractional seconds are dropped, whatever they are.
                if !text.contains('.') {
                    let fractional = format!("{}.999Z", text.trim_end_matches('Z'));
                    assert_eq!(ecr::parse_iso8601(&fractional), Some(time), "{fractional}");
                }
            }
        }
    }
});
