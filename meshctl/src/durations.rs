//! Lifetimes on the command line (`30d`, `12h`, `90m`, `1h 30m`): the workspace's one duration
//! dialect ([`meshanics_shared::duration`], the one both TOML files use), plus the rule that
//! signed metadata must live for some time.

use std::time::Duration;

use meshanics_shared::duration;

/// Parses a lifetime: a duration in the workspace's dialect that is not zero.
pub(crate) fn parse(input: &str) -> Result<Duration, String> {
    let lifetime = duration::parse(input).map_err(|error| error.to_string())?;
    if lifetime.is_zero() {
        return Err(format!(
            "{input:?} is zero: metadata must live for some time"
        ));
    }
    Ok(lifetime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_days_hours_minutes_and_seconds() {
        assert_eq!(parse("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse("90m"), Ok(Duration::from_secs(90 * 60)));
        assert_eq!(parse("3600s"), Ok(Duration::from_secs(3600)));
        // The shared dialect also combines units and knows weeks.
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1w"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn refuses_durations_without_unit_or_length() {
        for bad in ["30", "d", "0d", "-1d", "1x", ""] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_the_bad_text() {
        let error = parse("soon").err().unwrap_or_default();
        assert!(error.contains("\"soon\""), "{error}");
    }
}
