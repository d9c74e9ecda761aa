//! Durations as the TOML files spell them: one dialect for the agent's config and the
//! facade's, read with `humantime` (`"500ms"`, `"30s"`, `"5m"`, `"1h 30m"`, `"2d"`).
//!
//! [`parse`] reads the text; [`deserialize`] is the serde adapter (`#[serde(deserialize_with =
//! "meshanics_shared::duration::deserialize")]`), which also takes a bare integer as seconds,
//! the spelling the facade's config used before it spoke this dialect.

use std::fmt;
use std::time::Duration;

use serde::Deserializer;
use serde::de::{self, Visitor};

use crate::digest::echo;

/// Why a text is not a duration. It names the text (shortened if long).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{text:?} is not a duration like 30s, 5m or 1h 30m: {reason}")]
pub struct DurationError {
    /// The text as written.
    pub text: String,
    /// What `humantime` found wrong with it.
    pub reason: humantime::DurationError,
}

/// Parses a duration: numbers each followed by a unit (`ms`, `s`, `m`, `h`, `d`, and
/// humantime's longer spellings), with optional spaces: `250ms`, `30s`, `1h 30m`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(text).map_err(|reason| DurationError {
        text: echo(text),
        reason,
    })
}

/// Deserializes a duration written as text ([`parse`]) or as a bare non-negative integer,
/// which counts seconds.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration like \"30s\" or \"5m\", or a whole number of seconds")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse(text).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(seconds))
    }

    fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Duration, E> {
        u64::try_from(seconds)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("{seconds} seconds: a duration cannot be negative")))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Limits {
        #[serde(deserialize_with = "deserialize")]
        timeout: Duration,
    }

    fn timeout(json: &str) -> Result<Duration, String> {
        serde_json::from_str::<Limits>(json)
            .map(|l| l.timeout)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn reads_the_agents_spellings_and_humantimes() {
        let rows = [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            (" 5 m ", Duration::from_secs(300)),
            ("1h 30m", Duration::from_secs(5400)),
            ("2d", Duration::from_secs(2 * 86_400)),
        ];
        for (text, want) in rows {
            assert_eq!(parse(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn refuses_numbers_without_units_and_unknown_units_naming_the_text() {
        for bad in ["5", "10 fortnights", "soon", "", "-5s", "5s!"] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.text, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn deserializes_text_or_whole_seconds_and_refuses_negative_ones() {
        assert_eq!(timeout(r#"{"timeout":"90s"}"#), Ok(Duration::from_secs(90)));
        assert_eq!(timeout(r#"{"timeout":90}"#), Ok(Duration::from_secs(90)));
        let negative = timeout(r#"{"timeout":-1}"#).unwrap_err();
        assert!(negative.contains("cannot be negative"), "{negative}");
        let bad = timeout(r#"{"timeout":"90 parsecs"}"#).unwrap_err();
        assert!(bad.contains("\"90 parsecs\""), "{bad}");
        assert!(timeout(r#"{"timeout":1.5}"#).is_err());
    }
}
