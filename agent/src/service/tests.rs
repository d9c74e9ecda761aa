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

#[tokio::test(start_paused = true)]
async fn keeps_pinging_the_watchdog_while_cycles_fail_faster_than_the_ping_interval() {
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
    };
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
        &mut FailsAtOnce,
        &notifier,
        Duration::from_secs(2),
        &crate::progress::LogLines,
        tokio::time::sleep(Duration::from_secs(60)),
    )
    .await;
    let messages = received.join().unwrap();
    let count = |f: &dyn Fn(&str) -> bool| messages.iter().filter(|m| f(m)).count();
    let pings = count(&|m| m == "WATCHDOG=1");
    let failures = count(&|m| m.starts_with("STATUS=last update failed"));
    assert!(failures >= 20, "{failures} failed cycles");
    // 60 s at one ping per 4 s; systemd would kill the agent after 8 s without one.
    assert!(pings >= 14, "{pings} pings in 60 s");
}
