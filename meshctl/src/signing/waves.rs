//! `meshctl release --waves 1%@0,10%@2h,100%@24h --rollout-start <RFC 3339 | now>`: the
//! command-line form of a signed rollout (docs/metadata.md section 4.4).
//!
//! A wave is `SHARE%@DELAY`: the share of the fleet as a percentage with at most four
//! decimals (`0.5%`, `12.25%`; stored as millionths), the delay after the start as `0` or a
//! duration in the workspace's dialect (`90m`, `2h`, `1d 12h`). Waves are separated by
//! commas. Errors name the wave and the part that is wrong.

use meshanics_shared::duration;
use meshanics_shared::metadata::UnixTime;
use meshanics_shared::metadata::rollout::{Rollout, WHOLE, Wave};

/// Parses `--waves` into waves, checking the rollout rules (increasing shares and delays,
/// the last 100 %) against `start`.
pub(crate) fn parse(text: &str, start: UnixTime) -> Result<Rollout, String> {
    let mut waves = Vec::new();
    for (index, part) in text.split(',').enumerate() {
        let part = part.trim();
        let number = index + 1;
        let bad = |why: String| format!("--waves: wave {number} {part:?}: {why}");
        let Some((share, delay)) = part.split_once('@') else {
            return Err(bad("expected SHARE%@DELAY, e.g. 10%@2h".to_owned()));
        };
        waves.push(Wave {
            share: parse_share(share.trim()).map_err(bad)?,
            delay: parse_delay(delay.trim()).map_err(bad)?,
        });
    }
    let rollout = Rollout { start, waves };
    rollout
        .check()
        .map_err(|e| format!("--waves {text:?}: {e}"))?;
    Ok(rollout)
}

/// Parses `--rollout-start`: `now`, or an RFC 3339 time.
pub(crate) fn parse_start(text: &str, now: UnixTime) -> Result<UnixTime, String> {
    if text == "now" {
        return Ok(now);
    }
    UnixTime::parse_rfc3339(text).map_err(|e| format!("--rollout-start: {e} (or write \"now\")"))
}

/// `12.5%` as millionths of the fleet.
fn parse_share(text: &str) -> Result<u32, String> {
    let Some(number) = text.strip_suffix('%') else {
        return Err(format!("share {text:?} must end in %"));
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(fraction.is_empty() || digits(fraction)) || fraction.len() > 4 {
        return Err(format!(
            "share {text:?} must be a percentage with at most 4 decimals (0.5%, 10%)"
        ));
    }
    let whole: u64 = whole
        .parse()
        .map_err(|_| format!("share {text:?} is too large"))?;
    let mut padded = fraction.to_owned();
    while padded.len() < 4 {
        padded.push('0');
    }
    let fraction: u64 = padded.parse().unwrap_or(0);
    let share = whole.saturating_mul(10_000).saturating_add(fraction);
    match u32::try_from(share) {
        Ok(share) if share > 0 && share <= WHOLE => Ok(share),
        _ => Err(format!("share {text:?} must be above 0% and at most 100%")),
    }
}

/// `0`, or a duration (`2h`).
fn parse_delay(text: &str) -> Result<u64, String> {
    if text == "0" {
        return Ok(0);
    }
    duration::parse(text)
        .map(|d| d.as_secs())
        .map_err(|e| format!("delay: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: UnixTime = UnixTime::from_secs(1_800_000_000);

    #[test]
    fn parses_shares_as_millionths_and_delays_as_seconds() {
        let rollout = parse("1%@0,10%@2h,100%@24h", START).unwrap();
        assert_eq!(rollout.start, START);
        assert_eq!(
            rollout.waves,
            [
                Wave {
                    share: 10_000,
                    delay: 0
                },
                Wave {
                    share: 100_000,
                    delay: 7200
                },
                Wave {
                    share: WHOLE,
                    delay: 86_400
                },
            ]
        );
        let fine = parse("0.0001%@0, 12.25%@1h 30m, 100%@2d", START).unwrap();
        assert_eq!(fine.waves[0].share, 1);
        assert_eq!(
            fine.waves[1],
            Wave {
                share: 122_500,
                delay: 5400
            }
        );
        assert_eq!(parse("100%@0", START).unwrap().waves.len(), 1);
    }

    #[test]
    fn names_the_wave_and_the_part_that_is_wrong() {
        let rows = [
            (
                "1%@0,10%2h,100%@1d",
                "wave 2 \"10%2h\": expected SHARE%@DELAY",
            ),
            ("1@0,100%@1d", "wave 1 \"1@0\": share \"1\" must end in %"),
            ("1%@0,10%@soon,100%@1d", "wave 2 \"10%@soon\": delay"),
            ("0%@0,100%@1d", "share \"0%\" must be above 0%"),
            (
                "1%@0,101%@1d",
                "share \"101%\" must be above 0% and at most 100%",
            ),
            ("0.00001%@0,100%@1d", "at most 4 decimals"),
            ("-1%@0,100%@1d", "at most 4 decimals"),
            (
                "1%@0,10%@1d,100%@2h",
                "rollout wave 3: delay 7200s is not after",
            ),
            (
                "10%@0,5%@1h,100%@2h",
                "rollout wave 2: share 50000 is not above",
            ),
            ("1%@0,50%@1h", "it must be 1000000 (the whole fleet)"),
            ("", "wave 1 \"\": expected SHARE%@DELAY"),
        ];
        for (text, want) in rows {
            let err = parse(text, START).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.starts_with("--waves"), "{err}");
        }
    }

    #[test]
    fn the_start_is_now_or_an_rfc3339_time() {
        assert_eq!(parse_start("now", START), Ok(START));
        assert_eq!(
            parse_start("2026-11-22T07:19:32Z", START),
            Ok(UnixTime::from_secs(1_795_331_972))
        );
        let err = parse_start("tomorrow", START).unwrap_err();
        assert!(err.contains("\"tomorrow\""), "{err}");
        assert!(err.contains("--rollout-start"), "{err}");
    }
}
