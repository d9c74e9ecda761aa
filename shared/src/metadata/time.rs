//! Time as metadata carries it: whole seconds since the Unix epoch, UTC.
//!
//! Devices without a real-time clock boot in 1970, so the verifier never trusts the system
//! clock alone: see [`UnixTime::effective`].

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// 400 Gregorian years (146,097 days) in seconds: the calendar repeats after them.
const GREGORIAN_CYCLE_SECS: u64 = 146_097 * 86_400;

/// A point in time: seconds since 1970-01-01T00:00:00Z (leap seconds ignored, as POSIX does).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixTime(u64);

// === impl UnixTime ===

impl UnixTime {
    /// The epoch, where a device without a real-time clock starts.
    pub const EPOCH: UnixTime = UnixTime(0);

    /// A time from seconds since the epoch.
    pub const fn from_secs(secs: u64) -> Self {
        UnixTime(secs)
    }

    /// Seconds since the epoch.
    pub const fn as_secs(self) -> u64 {
        self.0
    }

    /// The system clock, truncated to whole seconds; a clock before 1970 reads as the epoch.
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    /// A [`SystemTime`], truncated to whole seconds; before 1970 reads as the epoch.
    pub fn from_system(time: SystemTime) -> Self {
        UnixTime(
            time.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
    }

    /// Parses an RFC 3339 time with its offset (`2026-11-22T07:19:32Z`,
    /// `2026-11-22T08:19:32+01:00`), truncated to whole seconds. Times before 1970 are
    /// refused.
    pub fn parse_rfc3339(text: &str) -> Result<Self, String> {
        let parsed = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))?;
        u64::try_from(parsed.unix_timestamp())
            .map(UnixTime)
            .map_err(|_| format!("{text:?} is before 1970"))
    }

    /// This time plus a duration, saturating at the end of `u64` seconds.
    pub fn saturating_add(self, duration: Duration) -> Self {
        UnixTime(self.0.saturating_add(duration.as_secs()))
    }

    /// The clock the verifier uses: the system clock, but never earlier than the latest
    /// time already known from trusted metadata. A device that boots in 1970, or whose clock
    /// an attacker steps back, must not see expired metadata as fresh.
    pub fn effective(system: UnixTime, latest_known: UnixTime) -> Self {
        system.max(latest_known)
    }
}

impl fmt::Display for UnixTime {
    /// RFC 3339 in UTC: `2026-11-22T07:19:32Z`, for every `u64` of seconds (years past 9999
    /// are written with more digits).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `time` covers years up to 9999, and the Gregorian calendar repeats exactly every 400
        // years: whole cycles are counted apart and added to the year, the rest is `time`'s.
        let cycles = self.0 / GREGORIAN_CYCLE_SECS;
        let within = i64::try_from(self.0 % GREGORIAN_CYCLE_SECS)
            .ok()
            .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok());
        let Some(t) = within else {
            // Unreachable: under 400 years after 1970 is within `time`'s range.
            return write!(f, "{} s after 1970-01-01T00:00:00Z", self.0);
        };
        let year = u64::try_from(t.year())
            .unwrap_or_default()
            .saturating_add(cycles.saturating_mul(400));
        write!(
            f,
            "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }
}

impl fmt::Debug for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self} ({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_rfc3339_utc() {
        assert_eq!(UnixTime::EPOCH.to_string(), "1970-01-01T00:00:00Z");
        assert_eq!(
            UnixTime::from_secs(1_795_331_972).to_string(),
            "2026-11-22T07:19:32Z"
        );
        assert_eq!(
            UnixTime::from_secs(951_782_400).to_string(),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn displays_years_past_9999_and_the_largest_time() {
        let rows = [
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (253_402_300_800, "10000-01-01T00:00:00Z"),
            // Five whole 400-year cycles and 59 days after the epoch: 1 March 3970.
            (63_119_001_600, "3970-03-01T00:00:00Z"),
            (u64::MAX, "584554051223-11-09T07:00:15Z"),
        ];
        for (secs, want) in rows {
            assert_eq!(UnixTime::from_secs(secs).to_string(), want, "{secs}");
        }
    }

    #[test]
    fn parses_rfc3339_with_any_offset_and_refuses_other_text() {
        assert_eq!(
            UnixTime::parse_rfc3339("2026-11-22T07:19:32Z"),
            Ok(UnixTime::from_secs(1_795_331_972))
        );
        assert_eq!(
            UnixTime::parse_rfc3339("2026-11-22T08:19:32+01:00"),
            Ok(UnixTime::from_secs(1_795_331_972))
        );
        for bad in ["2026-11-22", "now", "1969-12-31T23:59:59Z", ""] {
            let err = UnixTime::parse_rfc3339(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn effective_clock_never_goes_below_latest_known_time() {
        let known = UnixTime::from_secs(1_000);
        assert_eq!(UnixTime::effective(UnixTime::EPOCH, known), known);
        assert_eq!(
            UnixTime::effective(UnixTime::from_secs(2_000), known),
            UnixTime::from_secs(2_000)
        );
    }
}
