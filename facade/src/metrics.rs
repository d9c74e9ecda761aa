//! Prometheus metrics, rendered in the text exposition format on the operator listener.
//!
//! Hand-rolled: a handful of counters, a few gauges and one histogram do not need a metrics
//! framework, and every update on the streaming path is a relaxed atomic add.
//!
//! The gauges of work in progress (requests being answered, upstream bodies being streamed,
//! the runtime's live tasks) are what a leak shows up in: after the traffic stops they must
//! come back to zero (tasks: to the handful the listeners keep), whatever the clients and
//! upstreams did on the way (the fault campaign in `docs/faults.md` counts them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::device_tls::CrlFile;

/// A unit of work counted in a gauge while it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A device request being routed and answered (up to its response head).
    Request,
    /// An upstream body being streamed to a device.
    UpstreamBody,
    /// A TLS handshake with its turn (`max_handshakes`).
    Handshake,
    /// A verified connection waiting for a connection slot (`max_connections`).
    SlotWait,
    /// Bytes of manifests held in memory (`manifest_buffer_bytes`).
    ManifestBytes,
}

/// Holds `+1` on a gauge of [`Work`] until dropped.
#[derive(Debug)]
pub struct InProgress {
    metrics: Arc<Metrics>,
    work: Work,
    amount: i64,
}

/// Upstream latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The facade's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    verification_failures: Mutex<BTreeMap<&'static str, u64>>,
    refused_handshakes: Mutex<BTreeMap<&'static str, u64>>,
    handshakes: AtomicU64,
    bytes_streamed: AtomicU64,
    open_connections: AtomicI64,
    requests_in_flight: AtomicI64,
    upstream_bodies_open: AtomicI64,
    handshakes_in_progress: AtomicI64,
    connections_waiting: AtomicI64,
    manifest_buffer_bytes: AtomicI64,
    refused_connections: Mutex<BTreeMap<&'static str, u64>>,
    refused_streams: Mutex<BTreeMap<&'static str, u64>>,
    manifest_waits: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    crls: Mutex<Vec<CrlFile>>,
    tls_reloads: Mutex<BTreeMap<&'static str, u64>>,
    cache: CacheCounters,
}

/// Where bytes sent to a device were read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedFrom {
    /// A committed cache entry.
    Cache,
    /// An upstream fetch: a fill in progress, or content streamed through uncached.
    Upstream,
}

/// The cache's counters and gauges (`facade_cache_*`).
#[derive(Debug, Default)]
struct CacheCounters {
    /// By kind: manifest, blob.
    hits: [AtomicU64; 2],
    misses: [AtomicU64; 2],
    /// By source: cache, upstream.
    bytes_served: [AtomicU64; 2],
    fills_ok: AtomicU64,
    fills_failed: AtomicU64,
    fill_devices: AtomicU64,
    evictions: AtomicU64,
    bytes: AtomicU64,
    entries: AtomicU64,
}

/// Manifest or blob, as the cache metrics label it.
const KINDS: [&str; 2] = ["manifest", "blob"];

// === impl Metrics ===

impl Metrics {
    /// Counts a finished request by route and status.
    pub fn request(&self, route: &'static str, status: u16) {
        bump(&self.requests, (route, status));
    }

    /// Counts content that failed verification, by kind of failure.
    pub fn verification_failure(&self, kind: &'static str) {
        bump(&self.verification_failures, kind);
    }

    /// Counts a refused TLS handshake, by reason.
    pub fn refused_handshake(&self, reason: &'static str) {
        bump(&self.refused_handshakes, reason);
    }

    /// Counts a completed TLS handshake (a device connection that got in).
    pub fn handshake(&self) {
        self.handshakes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts body bytes sent to devices.
    pub fn streamed(&self, bytes: u64) {
        self.bytes_streamed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records the time an upstream took to answer with headers.
    pub fn upstream_latency(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// A device connection opened (`+1`) or closed (`-1`).
    pub fn connection(&self, delta: i64) {
        self.open_connections.fetch_add(delta, Ordering::Relaxed);
    }

    /// Records the device CRL files in force (after the start and each reload).
    pub fn set_crls(&self, crls: &[CrlFile]) {
        if let Ok(mut current) = self.crls.lock() {
            *current = crls.to_vec();
        }
    }

    /// Counts a reload of the device TLS files, by outcome.
    pub fn tls_reload(&self, succeeded: bool) {
        bump(&self.tls_reloads, if succeeded { "ok" } else { "failed" });
    }

    /// Counts a verified device connection closed for want of budget, by reason
    /// (`device_cap`).
    pub fn refused_connection(&self, reason: &'static str) {
        bump(&self.refused_connections, reason);
    }

    /// Counts a device request refused for want of budget, by reason (`device_cap`).
    pub fn refused_stream(&self, reason: &'static str) {
        bump(&self.refused_streams, reason);
    }

    /// Counts a manifest that had to wait for room in memory, by whether it got it.
    pub fn manifest_wait(&self, got_room: bool) {
        bump(
            &self.manifest_waits,
            if got_room { "waited" } else { "refused" },
        );
    }

    /// Counts a request answered from a committed cache entry (`manifest` is its kind).
    pub fn cache_hit(&self, manifest: bool) {
        pick(&self.cache.hits, !manifest).fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request the cache did not hold (a fill started or joined, or streamed
    /// through).
    pub fn cache_miss(&self, manifest: bool) {
        pick(&self.cache.misses, !manifest).fetch_add(1, Ordering::Relaxed);
    }

    /// Counts bytes sent to a device from the cache or from an upstream fetch (both also
    /// count in `facade_bytes_streamed_total`).
    pub fn cache_served(&self, from: ServedFrom, bytes: u64) {
        pick(&self.cache.bytes_served, from == ServedFrom::Upstream)
            .fetch_add(bytes, Ordering::Relaxed);
        self.streamed(bytes);
    }

    /// Counts bytes streamed to a device straight from an upstream, uncached (already
    /// counted in `facade_bytes_streamed_total`).
    pub fn passed_through(&self, bytes: u64) {
        pick(&self.cache.bytes_served, true).fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a finished fill by outcome, and the requests it served.
    pub fn cache_fill(&self, ok: bool, devices: u64) {
        let counter = if ok {
            &self.cache.fills_ok
        } else {
            &self.cache.fills_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.cache
            .fill_devices
            .fetch_add(devices, Ordering::Relaxed);
    }

    /// Counts an evicted entry.
    pub fn cache_eviction(&self) {
        self.cache.evictions.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the cache's size gauges.
    pub fn cache_size(&self, bytes: u64, entries: u64) {
        self.cache.bytes.store(bytes, Ordering::Relaxed);
        self.cache.entries.store(entries, Ordering::Relaxed);
    }

    /// Counts `work` in its gauge until the returned guard is dropped.
    pub fn in_progress(self: &Arc<Self>, work: Work) -> InProgress {
        self.in_progress_by(work, 1)
    }

    /// Adds `amount` to `work`'s gauge until the returned guard is dropped (bytes, for
    /// [`Work::ManifestBytes`]).
    pub fn in_progress_by(self: &Arc<Self>, work: Work, amount: i64) -> InProgress {
        self.gauge(work).fetch_add(amount, Ordering::Relaxed);
        InProgress {
            metrics: self.clone(),
            work,
            amount,
        }
    }

    fn gauge(&self, work: Work) -> &AtomicI64 {
        match work {
            Work::Request => &self.requests_in_flight,
            Work::UpstreamBody => &self.upstream_bodies_open,
            Work::Handshake => &self.handshakes_in_progress,
            Work::SlotWait => &self.connections_waiting,
            Work::ManifestBytes => &self.manifest_buffer_bytes,
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        header(
            &mut out,
            "facade_requests_total",
            "counter",
            "Device requests by route and status.",
        );
        for ((route, status), n) in snapshot(&self.requests) {
            let _ = writeln!(
                out,
                "facade_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        single(
            &mut out,
            "facade_state_stale",
            "gauge",
            "1 while the state database is unreachable and the last state loaded is served.",
            u8::from(crate::connections::state_stale()),
        );
        single(
            &mut out,
            "facade_bytes_streamed_total",
            "counter",
            "Body bytes sent to devices.",
            self.bytes_streamed.load(Ordering::Relaxed),
        );
        header(
            &mut out,
            "facade_verification_failures_total",
            "counter",
            "Upstream content that failed size or digest verification.",
        );
        for (kind, n) in snapshot(&self.verification_failures) {
            let _ = writeln!(
                out,
                "facade_verification_failures_total{{kind=\"{kind}\"}} {n}"
            );
        }
        header(
            &mut out,
            "facade_refused_handshakes_total",
            "counter",
            "TLS handshakes refused, by reason.",
        );
        for (reason, n) in snapshot(&self.refused_handshakes) {
            let _ = writeln!(
                out,
                "facade_refused_handshakes_total{{reason=\"{reason}\"}} {n}"
            );
        }
        single(
            &mut out,
            "facade_handshakes_total",
            "counter",
            "TLS handshakes completed (device connections let in).",
            self.handshakes.load(Ordering::Relaxed),
        );
        let crls = self.crls.lock().map(|c| c.clone()).unwrap_or_default();
        let now = SystemTime::now();
        header(
            &mut out,
            "facade_crl_expired",
            "gauge",
            "Whether a device CRL file is past its nextUpdate (1): still enforced, but its publisher is late.",
        );
        for crl in &crls {
            let file = label_value(&crl.path.display().to_string());
            let expired = u8::from(crl.is_expired(now));
            let _ = writeln!(out, "facade_crl_expired{{file=\"{file}\"}} {expired}");
        }
        header(
            &mut out,
            "facade_crl_next_update_seconds",
            "gauge",
            "When each device CRL file is due to be replaced (its earliest nextUpdate), in Unix seconds.",
        );
        for crl in &crls {
            let Some(next) = crl
                .next_update
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            else {
                continue;
            };
            let file = label_value(&crl.path.display().to_string());
            let _ = writeln!(
                out,
                "facade_crl_next_update_seconds{{file=\"{file}\"}} {}",
                next.as_secs()
            );
        }
        header(
            &mut out,
            "facade_tls_reloads_total",
            "counter",
            "Reloads of the device TLS files (SIGHUP or a changed file), by outcome.",
        );
        for (outcome, n) in snapshot(&self.tls_reloads) {
            let _ = writeln!(out, "facade_tls_reloads_total{{outcome=\"{outcome}\"}} {n}");
        }
        single(
            &mut out,
            "facade_open_connections",
            "gauge",
            "Device connections open now.",
            self.open_connections.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "facade_requests_in_flight",
            "gauge",
            "Device requests being routed and answered (up to the response head).",
            self.requests_in_flight.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "facade_upstream_bodies_open",
            "gauge",
            "Upstream bodies being streamed to devices.",
            self.upstream_bodies_open.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "facade_handshakes_in_progress",
            "gauge",
            "TLS handshakes in progress (each holding a turn of max_handshakes).",
            self.handshakes_in_progress.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "facade_connections_waiting",
            "gauge",
            "Verified device connections waiting for a connection slot (max_connections).",
            self.connections_waiting.load(Ordering::Relaxed),
        );
        header(
            &mut out,
            "facade_refused_connections_total",
            "counter",
            "Verified device connections closed for want of budget, by reason.",
        );
        for (reason, n) in snapshot(&self.refused_connections) {
            let _ = writeln!(
                out,
                "facade_refused_connections_total{{reason=\"{reason}\"}} {n}"
            );
        }
        header(
            &mut out,
            "facade_refused_streams_total",
            "counter",
            "Device requests answered 429 for want of budget, by reason.",
        );
        for (reason, n) in snapshot(&self.refused_streams) {
            let _ = writeln!(
                out,
                "facade_refused_streams_total{{reason=\"{reason}\"}} {n}"
            );
        }
        single(
            &mut out,
            "facade_manifest_buffer_bytes",
            "gauge",
            "Bytes of manifest_buffer_bytes held by manifests in memory now.",
            self.manifest_buffer_bytes.load(Ordering::Relaxed),
        );
        header(
            &mut out,
            "facade_manifest_buffer_waits_total",
            "counter",
            "Manifests that waited for room in manifest_buffer_bytes, by outcome (waited, refused).",
        );
        for (outcome, n) in snapshot(&self.manifest_waits) {
            let _ = writeln!(
                out,
                "facade_manifest_buffer_waits_total{{outcome=\"{outcome}\"}} {n}"
            );
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            single(
                &mut out,
                "facade_runtime_alive_tasks",
                "gauge",
                "Tasks alive in the facade's async runtime (listeners, connections, streams).",
                runtime.metrics().num_alive_tasks(),
            );
        }
        header(
            &mut out,
            "facade_upstream_latency_seconds",
            "histogram",
            "Time from an upstream request to its response headers.",
        );
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(
                out,
                "facade_upstream_latency_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "facade_upstream_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "facade_upstream_latency_seconds_sum {sum}");
        let _ = writeln!(out, "facade_upstream_latency_seconds_count {count}");
        self.cache.render(&mut out);
        out
    }
}

// === impl CacheCounters ===

impl CacheCounters {
    fn render(&self, out: &mut String) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        for (name, help, counters) in [
            (
                "facade_cache_hits_total",
                "Requests answered from a committed cache entry, by kind.",
                &self.hits,
            ),
            (
                "facade_cache_misses_total",
                "Requests for content the cache did not hold, by kind.",
                &self.misses,
            ),
        ] {
            header(out, name, "counter", help);
            for (kind, counter) in KINDS.iter().zip(counters) {
                let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", load(counter));
            }
        }
        header(
            out,
            "facade_cache_bytes_served_total",
            "counter",
            "Body bytes sent to devices, by source: cache (a committed entry) or upstream (a fill in progress, or streamed through uncached).",
        );
        for (source, counter) in ["cache", "upstream"].iter().zip(&self.bytes_served) {
            let _ = writeln!(
                out,
                "facade_cache_bytes_served_total{{source=\"{source}\"}} {}",
                load(counter)
            );
        }
        header(
            out,
            "facade_cache_fills_total",
            "counter",
            "Upstream fetches into the cache (one per digest at a time), by outcome.",
        );
        for (outcome, counter) in [("ok", &self.fills_ok), ("failed", &self.fills_failed)] {
            let _ = writeln!(
                out,
                "facade_cache_fills_total{{outcome=\"{outcome}\"}} {}",
                load(counter)
            );
        }
        single(
            out,
            "facade_cache_fill_devices_total",
            "counter",
            "Requests served from fills, summed over finished fills (divided by fills: devices per fill).",
            load(&self.fill_devices),
        );
        single(
            out,
            "facade_cache_evictions_total",
            "counter",
            "Cache entries evicted to keep the size cap.",
            load(&self.evictions),
        );
        single(
            out,
            "facade_cache_bytes",
            "gauge",
            "Bytes of committed cache entries.",
            load(&self.bytes),
        );
        single(
            out,
            "facade_cache_entries",
            "gauge",
            "Committed cache entries.",
            load(&self.entries),
        );
    }
}

// === impl InProgress ===

impl Drop for InProgress {
    fn drop(&mut self) {
        self.metrics
            .gauge(self.work)
            .fetch_sub(self.amount, Ordering::Relaxed);
    }
}

/// The first or (`second`) the second of a labelled pair of counters.
fn pick(pair: &[AtomicU64; 2], second: bool) -> &AtomicU64 {
    let [first, other] = pair;
    if second { other } else { first }
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    if let Ok(mut map) = map.lock() {
        *map.entry(key).or_default() += 1;
    }
}

fn snapshot<K: Ord + Clone>(map: &Mutex<BTreeMap<K, u64>>) -> Vec<(K, u64)> {
    map.lock()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default()
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn label_value(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A metric with one unlabelled sample: its header, then `name value`.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let metrics = Metrics::default();
        metrics.request("blob", 200);
        metrics.request("blob", 200);
        metrics.request("manifest", 404);
        metrics.verification_failure("mismatch");
        metrics.refused_handshake("unknown_issuer");
        metrics.handshake();
        metrics.streamed(1234);
        metrics.upstream_latency(Duration::from_millis(30));
        let text = metrics.render();
        assert!(text.contains("facade_requests_total{route=\"blob\",status=\"200\"} 2\n"));
        assert!(text.contains("facade_handshakes_total 1\n"));
        assert!(text.contains("facade_requests_total{route=\"manifest\",status=\"404\"} 1\n"));
        assert!(text.contains("facade_verification_failures_total{kind=\"mismatch\"} 1\n"));
        assert!(text.contains("facade_refused_handshakes_total{reason=\"unknown_issuer\"} 1\n"));
        assert!(text.contains("facade_bytes_streamed_total 1234\n"));
        assert!(text.contains("facade_upstream_latency_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("facade_upstream_latency_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("facade_upstream_latency_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("facade_upstream_latency_seconds_count 1\n"));
    }

    #[test]
    fn renders_the_cache_metrics_by_their_labels() {
        let metrics = Metrics::default();
        metrics.cache_hit(true);
        metrics.cache_hit(false);
        metrics.cache_hit(false);
        metrics.cache_miss(false);
        metrics.cache_served(ServedFrom::Cache, 100);
        metrics.cache_served(ServedFrom::Upstream, 30);
        metrics.passed_through(7);
        metrics.cache_fill(true, 3);
        metrics.cache_fill(false, 2);
        metrics.cache_eviction();
        metrics.cache_size(4096, 2);
        let text = metrics.render();
        for line in [
            "facade_cache_hits_total{kind=\"manifest\"} 1\n",
            "facade_cache_hits_total{kind=\"blob\"} 2\n",
            "facade_cache_misses_total{kind=\"manifest\"} 0\n",
            "facade_cache_misses_total{kind=\"blob\"} 1\n",
            "facade_cache_bytes_served_total{source=\"cache\"} 100\n",
            "facade_cache_bytes_served_total{source=\"upstream\"} 37\n",
            "facade_cache_fills_total{outcome=\"ok\"} 1\n",
            "facade_cache_fills_total{outcome=\"failed\"} 1\n",
            "facade_cache_fill_devices_total 5\n",
            "facade_cache_evictions_total 1\n",
            "facade_cache_bytes 4096\n",
            "facade_cache_entries 2\n",
            // Bytes from the cache and from fills count as streamed too.
            "facade_bytes_streamed_total 130\n",
        ] {
            assert!(text.contains(line), "{line}{text}");
        }
    }

    #[test]
    fn work_gauges_count_live_guards_only() {
        let metrics = Arc::new(Metrics::default());
        let request = metrics.in_progress(Work::Request);
        let body = metrics.in_progress(Work::UpstreamBody);
        let second = metrics.in_progress(Work::UpstreamBody);
        drop(request);
        drop(second);
        let text = metrics.render();
        assert!(text.contains("facade_requests_in_flight 0\n"), "{text}");
        assert!(text.contains("facade_upstream_bodies_open 1\n"), "{text}");
        drop(body);
        assert!(metrics.render().contains("facade_upstream_bodies_open 0\n"));
    }
}
