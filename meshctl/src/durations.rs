//! Lifetimes on the command line: `30d`, `12h`, `90m`, `3600s`.

use std::time::Duration;

/// Parses `<number><unit>` with unit `s`, `m`, `h` or `d`.
pub fn parse(input: &str) -> Result<Duration, String> {
    let split = input
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(input.len());
    let (number, unit) = input.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{input:?} is not a duration such as 30d, 12h, 90m or 3600s"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{input:?} has no unit: use s, m, h or d (e.g. 30d)"
            ));
        }
    };
    if number == 0 {
        return Err(format!(
            "{input:?} is zero: metadata must live for some time"
        ));
    }
    number
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{input:?} is too long"))
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
    }

    #[test]
    fn refuses_durations_without_unit_or_length() {
        for bad in ["30", "d", "0d", "-1d", "1w", ""] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
