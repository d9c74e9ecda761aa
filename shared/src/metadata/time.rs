//! Time as metadata carries it: whole seconds since the Unix epoch, UTC.
//!
//! Devices without a real-time clock boot in 1970, so the verifier never trusts the system
//! clock alone: see [`UnixTime::effective`].

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

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
    /// RFC 3339 in UTC: `2026-11-22T07:19:32Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0 / 86_400;
        let rem = self.0 % 86_400;
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        )
    }
}

impl fmt::Debug for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self} ({})", self.0)
    }
}

/// Days since the epoch to a proleptic Gregorian (year, month, day), after Howard Hinnant's
/// `civil_from_days`, restricted to non-negative day counts.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
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
    fn effective_clock_never_goes_below_latest_known_time() {
        let known = UnixTime::from_secs(1_000);
        assert_eq!(UnixTime::effective(UnixTime::EPOCH, known), known);
        assert_eq!(
            UnixTime::effective(UnixTime::from_secs(2_000), known),
            UnixTime::from_secs(2_000)
        );
    }
}
