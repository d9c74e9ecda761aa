//! Crash points for the power-loss campaign (`docs/faults.md`): with the cargo feature
//! `failpoints`, the environment variable `MESHANICS_FAILPOINT` names one point where the
//! process calls `abort()`, the nearest a test can come to pulling the plug there.
//!
//! - `POINT` aborts at the first hit of `POINT`, `POINT#N` at its N-th hit (1-based).
//! - `ingest.write@BYTES` aborts once this process has written `BYTES` bytes into ingest
//!   files, after writing only the part of the last chunk below that figure (a torn write).
//!
//! Before aborting it prints `failpoint POINT DETAIL` on stderr (the path it was working on),
//! so a test can also take away what a power cut could have lost that was not yet fsynced.
//!
//! Without the feature every function here is an empty inline function and the variable is
//! never read: release builds have no crash points and no extra work.

/// The crash points, in the order a blob and an apply pass them.
pub const POINTS: &[&str] = &[
    "ingest.write",
    "ingest.before-fsync",
    "ingest.before-rename",
    "ingest.before-dir-fsync",
    "ingest.before-index",
    "layout.before-rename",
    "apply.between-pointers",
    "apply.before-dir-fsync",
    "apply.before-health",
    "apply.before-state",
];

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The parsed `MESHANICS_FAILPOINT`.
    struct Armed {
        point: String,
        nth: u64,
        hits: AtomicU64,
        write_budget: Option<u64>,
        written: AtomicU64,
    }

    fn armed() -> Option<&'static Armed> {
        static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
        ARMED
            .get_or_init(|| {
                let spec = std::env::var("MESHANICS_FAILPOINT").ok()?;
                if let Some(bytes) = spec.strip_prefix("ingest.write@") {
                    return Some(Armed {
                        point: "ingest.write".into(),
                        nth: 1,
                        hits: AtomicU64::new(0),
                        write_budget: Some(bytes.parse().ok()?),
                        written: AtomicU64::new(0),
                    });
                }
                let (point, nth) = match spec.split_once('#') {
                    Some((point, nth)) => (point.to_owned(), nth.parse().ok()?),
                    None => (spec, 1),
                };
                Some(Armed {
                    point,
                    nth,
                    hits: AtomicU64::new(0),
                    write_budget: None,
                    written: AtomicU64::new(0),
                })
            })
            .as_ref()
    }

    pub(super) fn hit(point: &str, detail: &dyn std::fmt::Display) {
        let Some(armed) = armed() else { return };
        if armed.point != point || armed.write_budget.is_some() {
            return;
        }
        if armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth {
            crash(point, detail);
        }
    }

    pub(super) fn write_allowance(len: usize) -> usize {
        let Some(budget) = armed().and_then(|a| a.write_budget.map(|b| (a, b))) else {
            return len;
        };
        let (armed, budget) = budget;
        let before = armed.written.fetch_add(len as u64, Ordering::SeqCst);
        let left = budget.saturating_sub(before);
        usize::try_from(left).unwrap_or(usize::MAX).min(len)
    }

    pub(super) fn crash(point: &str, detail: &dyn std::fmt::Display) -> ! {
        eprintln!("failpoint {point} {detail}");
        std::process::abort()
    }
}

/// Aborts the process if `MESHANICS_FAILPOINT` names `point` (and this is its chosen hit).
#[cfg(feature = "failpoints")]
pub(crate) fn hit(point: &str, detail: &dyn std::fmt::Display) {
    armed::hit(point, detail);
}

/// Without the feature: nothing.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_point: &str, _detail: &dyn std::fmt::Display) {}

/// How many of the `len` bytes about to be written to an ingest file may be written before
/// the `ingest.write@BYTES` point; when fewer than `len`, the caller writes them and calls
/// [`torn_write`].
#[cfg(feature = "failpoints")]
pub(crate) fn write_allowance(len: usize) -> usize {
    armed::write_allowance(len)
}

/// Without the feature: all of them.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn write_allowance(len: usize) -> usize {
    len
}

/// Aborts after a partial write (see [`write_allowance`]).
#[cfg(feature = "failpoints")]
pub(crate) fn torn_write(detail: &dyn std::fmt::Display) {
    armed::crash("ingest.write", detail)
}

/// Without the feature: nothing (never called, as the allowance is always whole).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn torn_write(_detail: &dyn std::fmt::Display) {}
