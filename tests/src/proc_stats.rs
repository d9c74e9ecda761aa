//! What `/proc/<pid>` says about a process: open file descriptors and resident memory. The
//! fault campaign and the load program read them from the real facade binary, so the
//! figures are that process's own, not the test harness's.

use std::path::Path;

use crate::{FixtureError, io_err};

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStats {
    /// Open file descriptors (entries of `/proc/<pid>/fd`).
    pub fds: usize,
    /// Resident memory now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident memory (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
}

// === impl ProcStats ===

impl ProcStats {
    /// Reads process `pid`.
    pub fn read(pid: u32) -> Result<ProcStats, FixtureError> {
        let fd_dir = format!("/proc/{pid}/fd");
        let fds = std::fs::read_dir(&fd_dir)
            .map_err(io_err("listing", Path::new(&fd_dir)))?
            .count();
        let status_path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&status_path)
            .map_err(io_err("reading", Path::new(&status_path)))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Ok(ProcStats {
            fds,
            rss_kib: field("VmRSS:"),
            peak_rss_kib: field("VmHWM:"),
        })
    }
}
