//! Reporting download progress: bars on a terminal (indicatif), log lines otherwise.

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use meshanics_shared::Digest;
use tracing::info;

/// Receives download events. Every method has an empty default.
pub trait Progress: Send + Sync {
    /// A pull will download `total` bytes (what is not cached or partial yet).
    fn plan(&self, _total: u64) {}
    /// A blob download starts (or resumes at `offset`).
    fn start(&self, _digest: &Digest, _size: u64, _offset: u64) {}
    /// `n` more bytes of a blob arrived.
    fn advance(&self, _digest: &Digest, _n: u64) {}
    /// A blob's download went back to zero.
    fn restart(&self, _digest: &Digest) {}
    /// A blob was committed.
    fn finish(&self, _digest: &Digest) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {}

/// Log lines at the start and end of each blob (for journald).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogLines;

impl Progress for LogLines {
    fn plan(&self, total: u64) {
        info!(bytes = total, "downloading");
    }

    fn start(&self, digest: &Digest, size: u64, offset: u64) {
        if offset > 0 {
            info!(%digest, size, offset, "resuming blob");
        } else {
            info!(%digest, size, "fetching blob");
        }
    }

    fn restart(&self, digest: &Digest) {
        info!(%digest, "blob download starts over");
    }

    fn finish(&self, digest: &Digest) {
        info!(%digest, "blob verified and stored");
    }
}

/// A bar per blob and one in total.
#[derive(Debug)]
pub struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

// === impl Bars ===

impl Bars {
    /// Bars drawn on stderr.
    pub fn new() -> Self {
        let multi = MultiProgress::new();
        let total = multi.add(ProgressBar::new(0));
        total.set_style(style("total"));
        Bars {
            multi,
            total,
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn bar(&self, digest: &Digest) -> Option<ProgressBar> {
        self.bars.lock().ok()?.get(digest).cloned()
    }
}

impl Default for Bars {
    fn default() -> Self {
        Bars::new()
    }
}

impl Progress for Bars {
    fn plan(&self, total: u64) {
        self.total.set_length(total);
    }

    fn start(&self, digest: &Digest, size: u64, offset: u64) {
        let bar = self.multi.add(ProgressBar::new(size));
        bar.set_style(style(&format!("{:.19}", digest.hex())));
        bar.set_position(offset);
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(digest.clone(), bar);
        }
    }

    fn advance(&self, digest: &Digest, n: u64) {
        if let Some(bar) = self.bar(digest) {
            bar.inc(n);
        }
        self.total.inc(n);
    }

    fn restart(&self, digest: &Digest) {
        if let Some(bar) = self.bar(digest) {
            bar.set_position(0);
        }
    }

    fn finish(&self, digest: &Digest) {
        if let Some(bar) = self.bar(digest) {
            bar.finish();
        }
    }
}

fn style(prefix: &str) -> ProgressStyle {
    let template = format!(
        "{prefix:>19} [{{bar:30}}] {{bytes:>10}}/{{total_bytes:<10}} {{bytes_per_sec:>12}}"
    );
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
