use std::os::unix::net::UnixDatagram;

use meshanics_shared::tls;

use super::*;
use crate::client::ClientOptions;
use crate::config::Environment;

#[test]
fn jitter_stays_within_ten_percent() {
    for _ in 0..100 {
        let d = jitter(Duration::from_secs(100));
        assert!(
            d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
            "{d:?}"
        );
    }
}

#[test]
fn backoff_grows_and_never_passes_the_poll_interval() {
    let poll = Duration::from_secs(60);
    for failures in 1..20 {
        for _ in 0..20 {
            let d = backoff(failures, poll);
            assert!(d <= poll, "{d:?}");
            assert!(d >= Duration::from_secs(1), "{d:?}");
            let ceiling = Duration::from_secs(5).saturating_mul(1 << (failures - 1).min(16));
            assert!(
                d <= ceiling.max(Duration::from_secs(1)),
                "{failures}: {d:?}"
            );
        }
    }
}

/// A source whose every cycle fails at once, as with a facade that refuses connections.
struct FailsAtOnce;

impl TargetSource for FailsAtOnce {
    async fn targets(&mut self, _client: &Client) -> Result<Vec<PullTarget>> {
        Err(Error::Locked {
            path: "/nowhere".into(),
        })
    }
}

/// An agent on an empty store whose client reaches nothing (the sources below never use
/// it for requests), and its state folder.
fn agent() -> (tempfile::TempDir, Agent) {
    let (dir, store) = crate::testing::store();
    let tls = tls::client_config_from(rustls::RootCertStore::empty(), None).unwrap();
    let client = Client::new(
        &"https://127.0.0.1:1".parse().unwrap(),
        tls,
        ClientOptions::default(),
    )
    .unwrap();
    let agent = Agent {
        store,
        client,
        platform: Platform::parse("linux/amd64").unwrap(),
        concurrency: 1,
        hook: None,
        health: None,
    };
    (dir, agent)
}

/// Runs the service loop of a fresh `agent()` for `run_for` (of tokio's paused clock) under a
/// systemd watchdog of `WatchdogSec=8s` (a ping every 4 s); returns the notifications it
/// sent, in order, with the agent and its state folder.
async fn notifications<S: TargetSource>(
    source: &mut S,
    schedule: Schedule,
    run_for: Duration,
) -> (Vec<String>, Agent, tempfile::TempDir) {
    let (dir, agent) = agent();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    // Read as systemd would, as the messages come: a datagram socket queues only a few, and
    // the agent's send waits when the queue is full.
    let received = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let mut messages = Vec::new();
        loop {
            let n = socket.recv(&mut buf).unwrap();
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let last = message.starts_with("STOPPING=1");
            messages.push(message);
            if last {
                return messages;
            }
        }
    });
    // WatchdogSec=8s: a ping every 4 s. Each failed cycle is followed by a backoff of 1-2 s
    // (the poll interval caps it), so no cycle-plus-wait ever lasts a whole ping interval.
    let notifier = crate::notify::from_env(&Environment {
        notify_socket: Some(socket_path.into_os_string()),
        watchdog_usec: Some("8000000".into()),
        ..Environment::default()
    });
    run(
        &agent,
        source,
        &notifier,
        schedule,
        &crate::progress::LogLines,
        tokio::time::sleep(run_for),
    )
    .await;
    (received.join().unwrap(), agent, dir)
}

fn count(messages: &[String], f: impl Fn(&str) -> bool) -> usize {
    messages.iter().filter(|m| f(m)).count()
}

#[tokio::test(start_paused = true)]
async fn keeps_pinging_the_watchdog_while_cycles_fail_faster_than_the_ping_interval() {
    // Each failed cycle is followed by a backoff of 1-2 s (the poll interval caps it), so no
    // cycle-plus-wait ever lasts a whole ping interval.
    let (messages, ..) = notifications(
        &mut FailsAtOnce,
        Schedule::from(Duration::from_secs(2)),
        Duration::from_secs(60),
    )
    .await;
    let pings = count(&messages, |m| m == "WATCHDOG=1");
    let failures = count(&messages, |m| m.starts_with("STATUS=last update failed"));
    assert!(failures >= 20, "{failures} failed cycles");
    // 60 s at one ping per 4 s; systemd would kill the agent after 8 s without one.
    assert!(pings >= 14, "{pings} pings in 60 s");
}

/// A source that never answers and shows no sign of life: a cycle wedged somewhere no
/// deadline covers.
struct Hangs;

impl TargetSource for Hangs {
    async fn targets(&mut self, _client: &Client) -> Result<Vec<PullTarget>> {
        std::future::pending().await
    }
}

/// A source that takes for ever but shows a sign of life every 3 s (as a slow download
/// does through the client), counting the cycles that asked it.
#[derive(Default)]
struct Crawls {
    cycles: usize,
}

impl TargetSource for Crawls {
    async fn targets(&mut self, client: &Client) -> Result<Vec<PullTarget>> {
        self.cycles += 1;
        loop {
            client.activity().expect_within(Duration::from_secs(5));
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_stops_when_a_cycle_makes_no_progress() {
    let (messages, ..) = notifications(
        &mut Hangs,
        Schedule::from(Duration::from_secs(2)),
        Duration::from_secs(120),
    )
    .await;
    let pings = count(&messages, |m| m == "WATCHDOG=1");
    // A ping at the start and at most one more within the grace of a ping interval; then
    // none, so systemd (WatchdogSec=8s) would restart the agent. Before, 31 in 120 s.
    assert!(pings <= 2, "{pings} pings while the cycle was stuck");
    assert!(
        count(&messages, |m| m.starts_with("STATUS=")
            && m.contains("no progress"))
            == 1,
        "{messages:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_keeps_pinging_while_a_long_cycle_makes_progress() {
    let mut source = Crawls::default();
    let (messages, ..) = notifications(
        &mut source,
        Schedule::from(Duration::from_secs(2)),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(source.cycles, 1, "the one cycle ran all along");
    let pings = count(&messages, |m| m == "WATCHDOG=1");
    assert!(pings >= 14, "{pings} pings in 60 s");
}

#[tokio::test(start_paused = true)]
async fn a_cycle_past_its_deadline_is_abandoned() {
    let mut source = Crawls::default();
    let (messages, agent, _dir) = notifications(
        &mut source,
        Schedule {
            poll_interval: Duration::from_secs(2),
            cycle_deadline: Duration::from_secs(10),
        },
        Duration::from_secs(60),
    )
    .await;
    // Each cycle runs 10 s, then a backoff of at most 2 s: at least 5 in 60 s (one, before).
    assert!(source.cycles >= 5, "{} cycles in 60 s", source.cycles);
    let abandoned = count(&messages, |m| {
        m.starts_with("STATUS=last update failed") && m.contains("abandoned after 10s")
    });
    assert!(abandoned >= 4, "{messages:?}");
    // The crawling cycles showed progress: the watchdog was fed throughout.
    assert!(
        count(&messages, |m| m == "WATCHDOG=1") >= 14,
        "{messages:?}"
    );
    let last = agent.store.last_result().unwrap().unwrap();
    assert!(!last.ok && last.message.contains("abandoned"), "{last:?}");
}
