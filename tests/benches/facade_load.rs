//! Load on the real facade binary: `MESHANICS_LOAD_CONNECTIONS` mutual-TLS connections
//! (default 500) held for `MESHANICS_LOAD_SECONDS` (default 60), each looping on its own kind
//! of traffic:
//!
//! - valid pulls (70 % of the connections): a device certificate, keep-alive, a small blob
//!   and a manifest by digest from the real registry, each body checked against its digest;
//! - refused certificates (10 %): expired, revoked, of another CA, or none: the handshake must
//!   end in the matching TLS alert, never in an HTTP answer;
//! - malformed requests (20 %) on a valid connection: a bad digest (400), a tag where a
//!   digest belongs (400), an unknown route (404), an unknown upstream (404), a PUT (405).
//!
//! It prints the count per class and outcome, the requests per second, and the facade's
//! resident memory and open descriptors (sampled from `/proc` every second), and fails if a
//! valid pull erred, a bad request got anything but its refusal, or memory passed a bound.
//! A closed loop: each connection waits for its answer, so on a small machine the rate is
//! what the machine gives, not a target. Run it with `scripts/faults` (release build).

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a benchmark program: a setup that fails ends it"
)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use meshanics_shared::Digest;
use meshanics_tests::facade::{
    FacadeFixture, FacadeOptions, UpstreamEntry, Who, device_repository,
};
use meshanics_tests::facade_process::FacadeProcess;
use meshanics_tests::oci_layout::SampleImage;
use meshanics_tests::registry::{Options, RegistryServer};
use meshanics_tests::skopeo;
use rustls::AlertDescription;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Resident memory the facade may not pass under this load, KiB.
const RSS_BOUND_KIB: u64 = 512 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Valid,
    Refused(Who2),
    Malformed(Bad),
}

/// `Who` without the good device, ordered for the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Who2 {
    Expired,
    Revoked,
    Foreign,
    Nobody,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Bad {
    Digest,
    Tag,
    UnknownRoute,
    UnknownUpstream,
    Put,
}

struct Targets {
    base: String,
    blob: Digest,
    manifest: Digest,
}

#[derive(Default)]
struct Tally {
    right: BTreeMap<Class, u64>,
    wrong: BTreeMap<Class, u64>,
    problems: Vec<String>,
}

// === impl Tally ===

impl Tally {
    fn record(&mut self, class: Class, result: Result<(), String>) {
        match result {
            Ok(()) => *self.right.entry(class).or_default() += 1,
            Err(problem) => {
                *self.wrong.entry(class).or_default() += 1;
                if self.problems.len() < 20 {
                    self.problems.push(format!("{class:?}: {problem}"));
                }
            }
        }
    }
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

async fn connect(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<BufReader<TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let stream = TlsConnector::from(tls).connect(name, tcp).await?;
    Ok(BufReader::new(stream))
}

async fn request(
    stream: &mut BufReader<TlsStream<TcpStream>>,
    method: &str,
    path: &str,
) -> std::io::Result<Response> {
    let head = format!("{method} {path} HTTP/1.1\r\nHost: facade\r\nContent-Length: 0\r\n\r\n");
    stream.get_mut().write_all(head.as_bytes()).await?;
    let mut status_line = String::new();
    if stream.read_line(&mut status_line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; if method == "HEAD" { 0 } else { length }];
    stream.read_exact(&mut body).await?;
    Ok(Response { status, body })
}

/// The TLS alert a refused certificate must end in.
fn expected_alert(who: Who2) -> AlertDescription {
    match who {
        Who2::Expired => AlertDescription::CertificateExpired,
        Who2::Revoked => AlertDescription::CertificateRevoked,
        Who2::Foreign => AlertDescription::UnknownCA,
        Who2::Nobody => AlertDescription::CertificateRequired,
    }
}

/// One refused connection: the handshake (or, with TLS 1.3, the first read) must fail with
/// the alert for its certificate.
async fn refused(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    who: Who2,
) -> Result<(), String> {
    let result = async {
        let mut stream = connect(addr, tls).await?;
        request(&mut stream, "GET", "/v2/").await
    }
    .await;
    match result {
        Ok(response) => Err(format!(
            "answered {} over a refused certificate",
            response.status
        )),
        Err(error) => {
            let alert = error
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .and_then(|e| match e {
                    rustls::Error::AlertReceived(alert) => Some(*alert),
                    _ => None,
                });
            if alert == Some(expected_alert(who)) {
                Ok(())
            } else {
                Err(format!(
                    "ended with {error} ({alert:?}), expected {:?}",
                    expected_alert(who)
                ))
            }
        }
    }
}

fn malformed_request(bad: Bad, targets: &Targets) -> (&'static str, String, u16) {
    let base = &targets.base;
    match bad {
        Bad::Digest => ("GET", format!("{base}/blobs/sha256:xyz"), 400),
        // The facade never resolves tags: a tag is a manifest it does not have (the
        // distribution spec's conformance suite expects 404 MANIFEST_UNKNOWN there).
        Bad::Tag => ("GET", format!("{base}/manifests/latest"), 404),
        Bad::UnknownRoute => ("GET", "/v2/_catalog/nothing/here".into(), 404),
        Bad::UnknownUpstream => (
            "GET",
            format!("/v2/unknown.example/team/app/blobs/{}", targets.blob),
            404,
        ),
        Bad::Put => ("PUT", format!("{base}/blobs/{}", targets.blob), 405),
    }
}

/// One connection's loop until `stop`: reconnects after every few requests (and after any
/// error), so handshakes are part of the load.
async fn connection(
    class: Class,
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    targets: Arc<Targets>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> Tally {
    let mut tally = Tally::default();
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.load(Ordering::Relaxed) {
        if let Class::Refused(who) = class {
            tally.record(class, refused(addr, tls.clone(), who).await);
            tokio::time::sleep(Duration::from_millis(rng.u64(50..250))).await;
            continue;
        }
        let mut stream = match connect(addr, tls.clone()).await {
            Ok(stream) => stream,
            Err(error) => {
                tally.record(class, Err(format!("connect: {error}")));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for _ in 0..rng.usize(5..40) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let result = match class {
                Class::Valid => {
                    let (kind, digest) = if rng.bool() {
                        ("blobs", &targets.blob)
                    } else {
                        ("manifests", &targets.manifest)
                    };
                    let path = format!("{}/{kind}/{digest}", targets.base);
                    match request(&mut stream, "GET", &path).await {
                        Ok(r) if r.status == 200 && Digest::sha256_of(&r.body) == *digest => Ok(()),
                        Ok(r) => Err(format!(
                            "{path}: status {}, {} bytes",
                            r.status,
                            r.body.len()
                        )),
                        Err(error) => Err(format!("{path}: {error}")),
                    }
                }
                Class::Malformed(bad) => {
                    let (method, path, want) = malformed_request(bad, &targets);
                    match request(&mut stream, method, &path).await {
                        Ok(r) if r.status == want && r.body.starts_with(b"{\"errors\"") => Ok(()),
                        Ok(r) => Err(format!(
                            "{method} {path}: status {}, expected {want}",
                            r.status
                        )),
                        Err(error) => Err(format!("{method} {path}: {error}")),
                    }
                }
                Class::Refused(_) => unreachable!("handled above"),
            };
            let failed = result.is_err();
            tally.record(class, result);
            if failed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(rng.u64(0..20))).await;
        }
    }
    tally
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let connections = env_number("MESHANICS_LOAD_CONNECTIONS", 500) as usize;
    let seconds = env_number("MESHANICS_LOAD_SECONDS", 60);
    let seed = env_number("MESHANICS_FAULT_SEED", fastrand::u64(..));
    println!("facade load: {connections} connections for {seconds} s, seed {seed}");

    let work = tempfile::tempdir().unwrap();
    let registry = RegistryServer::start(&Options::default()).unwrap();
    let built = SampleImage::multi_arch(&["linux/amd64"], 16 * 1024, 8 * 1024)
        .unwrap()
        .write_layout(&work.path().join("app"), "v1")
        .unwrap();
    skopeo::push_layout(&built.dir, "v1", &registry.host(), "team/app").unwrap();
    // Every valid client is the one device certificate from 127.0.0.1: lift the per-device
    // and per-source caps, which would otherwise refuse most of the load this bench means.
    let fixture = FacadeFixture::start(&FacadeOptions {
        upstreams: vec![UpstreamEntry::anonymous(&registry.host())],
        limits: vec![
            format!("max_connections_per_device = {}", connections.max(1)),
            format!("max_handshakes_per_source = {}", connections.max(1)),
            format!("max_streams_per_device = {}", connections.max(128)),
        ],
        ..FacadeOptions::default()
    })
    .unwrap();
    let facade = FacadeProcess::start(&fixture.config_path(), "error").unwrap();
    let targets = Arc::new(Targets {
        base: format!("/v2/{}", device_repository(&registry.host(), "team/app")),
        blob: built.blobs[0][1].digest.clone(),
        manifest: built.manifests[0].digest.clone(),
    });
    let config = |who: Who| Arc::new(fixture.tls_config(who).unwrap());
    let good = config(Who::Device);
    let refused_configs = [
        (Who2::Expired, config(Who::Expired)),
        (Who2::Revoked, config(Who::Revoked)),
        (Who2::Foreign, config(Who::Foreign)),
        (Who2::Nobody, config(Who::Nobody)),
    ];
    let bads = [
        Bad::Digest,
        Bad::Tag,
        Bad::UnknownRoute,
        Bad::UnknownUpstream,
        Bad::Put,
    ];
    let baseline = facade.stats().unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = facade.device_addr();
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let (class, tls) = match i % 10 {
                0 => {
                    let (who, tls) = &refused_configs[(i / 10) % refused_configs.len()];
                    (Class::Refused(*who), tls.clone())
                }
                1 | 2 => (Class::Malformed(bads[(i / 10) % bads.len()]), good.clone()),
                _ => (Class::Valid, good.clone()),
            };
            runtime.spawn(connection(
                class,
                addr,
                tls,
                targets.clone(),
                stop.clone(),
                seed.wrapping_add(i as u64),
            ))
        })
        .collect();
    let mut peak_fds = 0;
    let mut peak_rss = 0;
    let mut open_peak = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        let stats = facade.stats().unwrap();
        peak_fds = peak_fds.max(stats.fds);
        peak_rss = peak_rss.max(stats.rss_kib);
        open_peak = open_peak.max(facade.metric("facade_open_connections").unwrap_or(0));
    }
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for task in tasks {
        let one = runtime.block_on(task).unwrap();
        for (class, n) in one.right {
            *tally.right.entry(class).or_default() += n;
        }
        for (class, n) in one.wrong {
            *tally.wrong.entry(class).or_default() += n;
        }
        tally.problems.extend(one.problems.into_iter().take(3));
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(runtime);
    std::thread::sleep(Duration::from_secs(2));
    let end = facade.stats().unwrap();

    let total: u64 = tally.right.values().chain(tally.wrong.values()).sum();
    println!("{:<28} {:>10} {:>8}", "class", "right", "wrong");
    let classes: std::collections::BTreeSet<Class> = tally
        .right
        .keys()
        .chain(tally.wrong.keys())
        .copied()
        .collect();
    for class in &classes {
        println!(
            "{:<28} {:>10} {:>8}",
            format!("{class:?}"),
            tally.right.get(class).unwrap_or(&0),
            tally.wrong.get(class).unwrap_or(&0)
        );
    }
    println!(
        "{total} requests/handshakes in {elapsed:.1} s ({:.0}/s); facade connections open at \
         peak {open_peak}",
        total as f64 / elapsed
    );
    println!(
        "facade RSS KiB: baseline {}, peak sampled {peak_rss}, VmHWM {}, after {}; fds: baseline \
         {}, peak {peak_fds}, after {}",
        baseline.rss_kib, end.peak_rss_kib, end.rss_kib, baseline.fds, end.fds
    );
    let wrong: u64 = tally.wrong.values().sum();
    if wrong > 0 {
        for problem in &tally.problems {
            println!("  {problem}");
        }
        panic!("{wrong} wrong answers");
    }
    let valid: u64 = tally.right.get(&Class::Valid).copied().unwrap_or(0);
    assert!(valid > 0, "no valid pull completed");
    assert!(
        end.peak_rss_kib < RSS_BOUND_KIB,
        "facade peak RSS {} KiB over {RSS_BOUND_KIB} KiB",
        end.peak_rss_kib
    );
}
