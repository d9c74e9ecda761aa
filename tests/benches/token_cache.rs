//! Token cache under a steady pull rate, on simulated time.
//!
//! ```text
//! cargo bench -p meshanics-tests --bench token_cache
//! ```
//!
//! 1,000 pulls are spread evenly over a simulated window (10 minutes, then 10 hours) with
//! 1-hour Google tokens from the local GCP protocol server (real RS256 assertions, verified by
//! the server). It prints the token-endpoint calls (target: one per token lifetime) and the
//! latency a pull adds: a cache hit (target < 50 µs) and a refresh.
#![expect(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a benchmark program: failures should stop it loudly"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use meshanics_facade::cloud::gcp::ServiceAccountKey;
use meshanics_facade::cloud::token_cache::{Clock, CloudTokenCache, MarginPolicy, TokenKey};
use meshanics_facade::http_client;
use meshanics_tests::gcp_server::{GcpTokenServer, ServiceAccount};

#[derive(Debug)]
struct SimulatedClock(Mutex<SystemTime>);

impl Clock for SimulatedClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().expect("clock")
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let account =
            ServiceAccount::generate(dir.path(), "bench@meshanics.iam.gserviceaccount.com")
                .expect("key");
        let server = GcpTokenServer::start(account.clone())
            .await
            .expect("server");
        let key = Arc::new(
            ServiceAccountKey::parse(&account.key_json(&server.token_uri())).expect("key json"),
        );
        let client = http_client::client(
            rustls::RootCertStore::empty(),
            Duration::from_secs(5),
            Duration::from_secs(10),
        )
        .expect("client");
        println!("token cache: 1,000 pulls, 1-hour tokens, margin min(5 min, 10 %)");
        println!(
            "{:<10} {:>12} {:>10} {:>14} {:>14} {:>14}",
            "window", "token calls", "expected", "hit p50 (µs)", "hit p99 (µs)", "refresh (ms)"
        );
        let connection = TokenKey {
            host: "europe-docker.pkg.dev".into(),
            connection: 1,
        };
        for window in [Duration::from_secs(600), Duration::from_secs(10 * 3600)] {
            let start = SystemTime::now();
            let clock = Arc::new(SimulatedClock(Mutex::new(start)));
            let cache = CloudTokenCache::new(MarginPolicy::default(), clock.clone());
            let before = server.requests();
            let mut hits = Vec::new();
            let mut refreshes = Vec::new();
            let pulls = 1000u32;
            for i in 0..pulls {
                *clock.0.lock().expect("clock") =
                    start + window.mul_f64(f64::from(i) / f64::from(pulls));
                let calls_before = server.requests();
                let (key, client) = (key.clone(), client.clone());
                let t = Instant::now();
                let token = cache
                    .get(&connection, |sim_now| async move {
                        // The assertion is signed at real time (the server checks it); the
                        // token's expiry is placed on the simulated timeline.
                        let mut token = key.fetch(&client, SystemTime::now()).await?;
                        token.expires_at = sim_now + token.lifetime;
                        Ok(token)
                    })
                    .await
                    .expect("token");
                let took = t.elapsed();
                std::hint::black_box(token);
                if server.requests() > calls_before {
                    refreshes.push(took);
                } else {
                    hits.push(took);
                }
            }
            hits.sort();
            let calls = server.requests() - before;
            // One token per lifetime minus its 5-minute margin, starting with the first pull.
            let expected = (window.as_secs_f64() / 3300.0).ceil().max(1.0) as u64;
            let refresh_ms = refreshes.iter().map(Duration::as_secs_f64).sum::<f64>()
                / refreshes.len().max(1) as f64
                * 1e3;
            println!(
                "{:<10} {:>12} {:>10} {:>14.2} {:>14.2} {:>14.2}",
                format!("{} min", window.as_secs() / 60),
                calls,
                expected,
                percentile(&hits, 0.5).as_secs_f64() * 1e6,
                percentile(&hits, 0.99).as_secs_f64() * 1e6,
                refresh_ms
            );
        }
    });
}
