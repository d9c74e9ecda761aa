use std::os::unix::net::UnixDatagram;

use meshanics_shared::tls;

use super::*;
use crate::client::ClientOptions;
use crate::config::Environment;
use crate::progress::Silent;

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
    let messages = notifications_of(
        &agent,
        dir.path(),
        "8000000",
        source,
        schedule,
        tokio::time::sleep(run_for),
    )
    .await;
    (messages, agent, dir)
}

/// Runs the service loop of `agent` until `stop` under a systemd watchdog of
/// `watchdog_usec`, with its notify socket in `dir`; returns the notifications it sent, in
/// order.
async fn notifications_of<S: TargetSource>(
    agent: &Agent,
    dir: &std::path::Path,
    watchdog_usec: &str,
    source: &mut S,
    schedule: Schedule,
    stop: impl Future<Output = ()>,
) -> Vec<String> {
    let socket_path = dir.join("notify.sock");
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
        watchdog_usec: Some(watchdog_usec.into()),
        ..Environment::default()
    });
    run(
        agent,
        source,
        &notifier,
        schedule,
        &crate::progress::LogLines,
        stop,
    )
    .await;
    received.join().unwrap()
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

/// The targets a verified targets file of `version` would list.
struct Listed {
    targets: Vec<PullTarget>,
    version: Option<u64>,
}

impl TargetSource for Listed {
    async fn targets(&mut self, _client: &Client) -> Result<Vec<PullTarget>> {
        Ok(self.targets.clone())
    }

    fn targets_version(&self) -> Option<u64> {
        self.version
    }
}

/// An executable shell script `name` in `dir`.
fn script(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    fs_err::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs_err::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A health check that fails for the release `digest` only.
fn failing_for(dir: &std::path::Path, digest: &meshanics_shared::Digest) -> HealthCheck {
    HealthCheck {
        program: script(
            dir,
            "health.sh",
            &format!("[ \"$MESHANICS_TARGET_DIGEST\" != \"{digest}\" ]"),
        ),
        args: Vec::new(),
        settle: Duration::ZERO,
        timeout: Duration::from_secs(30),
    }
}

/// A hook that appends `<event> <target>` to `log`.
fn logging_hook(dir: &std::path::Path, log: &std::path::Path) -> Hook {
    Hook {
        path: script(
            dir,
            "hook.sh",
            &format!(
                "echo \"$MESHANICS_EVENT $MESHANICS_TARGET\" >> {}",
                log.display()
            ),
        ),
        timeout: Duration::from_secs(30),
    }
}

fn current_of(agent: &Agent, slot: &str) -> Option<String> {
    let slot = TargetName::parse(slot).unwrap();
    agent.store.slot_pointers(&slot).unwrap().current
}

fn manifest_of(agent: &Agent, slot: &str) -> Option<meshanics_shared::Digest> {
    let id = current_of(agent, slot)?;
    Some(agent.store.index().artifact(&id).unwrap()?.manifest_digest)
}

#[tokio::test]
async fn a_target_failing_its_health_check_is_rolled_back_and_held_back_while_the_other_is_applied()
{
    use crate::testing::release;
    let (dir, mut agent) = agent();
    let app1 = release(&agent.store, "app", "app1", &[b"app 1"]);
    let model1 = release(&agent.store, "model", "model1", &[b"weights 1"]);
    let mut v1 = Listed {
        targets: vec![app1.target.clone(), model1.target.clone()],
        version: Some(1),
    };
    let first = agent.cycle(&mut v1, &Silent).await.unwrap();
    assert!(first.is_ok(), "{first:?}");
    let app2 = release(&agent.store, "app", "app2", &[b"app 2"]);
    let model2 = release(&agent.store, "model", "model2", &[b"weights 2"]);
    agent.health = Some(failing_for(dir.path(), &model2.target.digest));
    let mut v2 = Listed {
        targets: vec![app2.target.clone(), model2.target.clone()],
        version: Some(2),
    };

    let second = agent.cycle(&mut v2, &Silent).await.unwrap();

    assert!(
        matches!(
            second.slot("app").unwrap().result,
            Ok(SlotAction::Applied { .. })
        ),
        "{second:?}"
    );
    assert!(
        matches!(
            second.slot("model").unwrap().result,
            Err(Error::HealthCheckFailed { .. })
        ),
        "{second:?}"
    );
    assert_eq!(
        manifest_of(&agent, "app"),
        Some(app2.manifest.digest.clone())
    );
    assert_eq!(
        manifest_of(&agent, "model"),
        Some(model1.manifest.digest.clone())
    );
    let text = second.describe();
    assert!(text.starts_with("last update failed"), "{text}");
    assert!(
        text.contains("applied app") && text.contains("model failed"),
        "{text}"
    );
    let last = agent.store.last_result().unwrap().unwrap();
    assert!(
        !last.ok && last.message.contains("model failed"),
        "{last:?}"
    );

    // Under the same metadata the bad release is not tried again; the other slot is settled.
    let third = agent.cycle(&mut v2, &Silent).await.unwrap();
    assert!(
        matches!(
            second_result(&third, "model"),
            Ok(SlotAction::HeldBack { .. })
        ),
        "{third:?}"
    );
    assert!(matches!(
        second_result(&third, "app"),
        Ok(SlotAction::UpToDate)
    ));
    assert!(
        third.is_ok(),
        "a held-back release is not a failure: {third:?}"
    );
    assert!(
        third.describe().contains("model held back"),
        "{}",
        third.describe()
    );

    // New signed metadata (a new targets version) retries it.
    v2.version = Some(3);
    let fourth = agent.cycle(&mut v2, &Silent).await.unwrap();
    assert!(
        matches!(
            second_result(&fourth, "model"),
            Err(Error::HealthCheckFailed { .. })
        ),
        "{fourth:?}"
    );
    assert_eq!(
        manifest_of(&agent, "model"),
        Some(model1.manifest.digest.clone())
    );
    let model = TargetName::parse("model").unwrap();
    let bad = agent.store.slot_state(&model).unwrap().bad.unwrap();
    assert_eq!(bad.targets_version, Some(3));

    // The operator goes back to the first model release: nothing is held back any more.
    v2.targets = vec![app2.target.clone(), model1.target.clone()];
    v2.version = Some(4);
    let fifth = agent.cycle(&mut v2, &Silent).await.unwrap();
    assert!(matches!(
        second_result(&fifth, "model"),
        Ok(SlotAction::UpToDate)
    ));
    assert_eq!(agent.store.slot_state(&model).unwrap().bad, None);
}

fn second_result<'a>(outcome: &'a CycleOutcome, target: &str) -> &'a Result<SlotAction> {
    &outcome.slot(target).unwrap().result
}

#[tokio::test]
async fn a_target_no_longer_listed_is_retired_with_the_hook_told() {
    use crate::testing::release;
    let (dir, mut agent) = agent();
    let log = dir.path().join("hook.log");
    agent.hook = Some(logging_hook(dir.path(), &log));
    let app = release(&agent.store, "app", "app", &[b"app"]);
    let model = release(&agent.store, "model", "model", &[b"weights"]);
    let mut both = Listed {
        targets: vec![model.target.clone(), app.target.clone()],
        version: Some(1),
    };
    agent.cycle(&mut both, &Silent).await.unwrap();
    // The first listed target is the primary slot: the state directory's links follow it.
    assert_eq!(
        agent
            .store
            .primary_slot()
            .unwrap()
            .map(String::from)
            .as_deref(),
        Some("model")
    );
    let model_layout = current_of(&agent, "model").unwrap();

    let mut app_only = Listed {
        targets: vec![app.target.clone()],
        version: Some(2),
    };
    let outcome = agent.cycle(&mut app_only, &Silent).await.unwrap();

    assert_eq!(outcome.retired, vec!["model".to_owned()]);
    assert!(matches!(
        second_result(&outcome, "app"),
        Ok(SlotAction::UpToDate)
    ));
    assert_eq!(
        fs_err::read_to_string(&log).unwrap(),
        "apply model\napply app\nretire model\n"
    );
    assert_eq!(current_of(&agent, "model"), None);
    assert_eq!(
        agent
            .store
            .primary_slot()
            .unwrap()
            .map(String::from)
            .as_deref(),
        Some("app")
    );
    assert!(
        outcome.describe().contains("model retired"),
        "{}",
        outcome.describe()
    );
    let gc = agent.store.gc().unwrap();
    assert_eq!(gc.removed_artifacts, vec![model_layout]);
}

#[tokio::test]
async fn the_watchdog_keeps_being_fed_during_a_long_health_check() {
    use crate::testing::release;
    let (dir, mut agent) = agent();
    let app = release(&agent.store, "app", "app", &[b"app"]);
    // Three seconds of checking against a ping every 0.5 s (WatchdogSec=1s): without the
    // check announcing its bound, the loop would call the cycle stuck after 0.5 s.
    agent.health = Some(HealthCheck {
        program: script(dir.path(), "health.sh", "sleep 3"),
        args: Vec::new(),
        settle: Duration::ZERO,
        timeout: Duration::from_secs(60),
    });
    let mut source = Listed {
        targets: vec![app.target.clone()],
        version: Some(1),
    };
    let store = &agent.store;
    let slot = TargetName::parse("app").unwrap();
    let applied = async {
        while store
            .slot_state(&slot)
            .ok()
            .and_then(|s| s.last_result)
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    let messages = notifications_of(
        &agent,
        dir.path(),
        "1000000",
        &mut source,
        Schedule::from(Duration::from_secs(3600)),
        applied,
    )
    .await;

    let checking = messages
        .iter()
        .position(|m| m == "STATUS=checking for updates")
        .unwrap();
    let pings_during_cycle = messages
        .iter()
        .skip(checking)
        .take_while(|m| !m.starts_with("STATUS=applied") && !m.starts_with("STOPPING"))
        .filter(|m| *m == "WATCHDOG=1")
        .count();
    assert!(
        !messages.iter().any(|m| m.contains("no progress")),
        "{messages:?}"
    );
    assert!(
        pings_during_cycle >= 3,
        "{pings_during_cycle} pings: {messages:?}"
    );
    assert!(current_of(&agent, "app").is_some());
}

#[tokio::test]
async fn a_target_waiting_for_its_rollout_wave_does_not_hold_back_the_other() {
    use crate::rollout::Gate;
    use crate::testing::release;
    use meshanics_shared::metadata::{Position, UnixTime, rollout::example};
    let (_dir, agent) = agent();
    let app = release(&agent.store, "app", "app", &[b"app"]);
    let mut model = release(&agent.store, "model", "model", &[b"weights"]);
    let start = UnixTime::from_secs(1_700_000_000);
    // The last place of the fleet: the last wave, a day after the start.
    model.target.rollout = Some(Gate {
        rollout: example(start),
        position: Position::from_bits(u64::MAX),
        now: start,
        download_ahead: false,
    });
    let mut source = Listed {
        targets: vec![model.target.clone(), app.target.clone()],
        version: Some(1),
    };

    let outcome = agent.cycle(&mut source, &Silent).await.unwrap();

    let opens = UnixTime::from_secs(start.as_secs() + 24 * 3600);
    assert_eq!(
        outcome.action("model"),
        Some(&SlotAction::Waiting {
            opens,
            received_bytes: 0
        })
    );
    assert!(matches!(
        outcome.action("app"),
        Some(SlotAction::Applied { .. })
    ));
    assert_eq!(current_of(&agent, "model"), None);
    let model_slot = TargetName::parse("model").unwrap();
    assert_eq!(
        agent.store.slot_state(&model_slot).unwrap().wave_opens,
        Some(opens.as_secs())
    );
    let text = outcome.describe();
    assert!(
        text.contains("model waits for this device's rollout wave") && text.contains("applied app"),
        "{text}"
    );

    // The wave opens: applied, and the slot no longer shows an opening time.
    if let Some(gate) = &mut source.targets[0].rollout {
        gate.now = opens;
    }
    let outcome = agent.cycle(&mut source, &Silent).await.unwrap();
    assert!(matches!(
        outcome.action("model"),
        Some(SlotAction::Applied { .. })
    ));
    assert_eq!(
        agent.store.slot_state(&model_slot).unwrap().wave_opens,
        None
    );
}
