//! The agent's update cycle and service loop against the real registry behind mutual TLS:
//! a cycle applies what its target source lists, the loop talks to systemd's notify socket,
//! and a stop in the middle of a download leaves a partial blob the next start resumes.
//!
//! The target source here is a fixed list: it stands in for the signed metadata workflow,
//! which is what produces the list in the product.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a setup that fails is a failing test"
)]

use std::path::Path;
use std::time::Duration;

use meshanics_agent::Result;
use meshanics_agent::client::{Client, ClientOptions};
use meshanics_agent::config::Environment;
use meshanics_agent::notify::{self, Notifier};
use meshanics_agent::progress::Silent;
use meshanics_agent::pull::PullTarget;
use meshanics_agent::service::{self, Agent, SlotAction, TargetSource};
use meshanics_agent::store::{Pointers, Store, StoreOptions};
use meshanics_shared::{Descriptor, Platform};
use meshanics_tests::oci_layout::{BuiltImage, SampleImage};
use meshanics_tests::tcp_proxy::{Fault, TcpProxy};
use meshanics_tests::tls_registry::TlsRegistry;
use tokio::net::UnixDatagram;

const REPO: &str = "team/app";

/// The list a verified targets file would give.
struct Fixed(Vec<PullTarget>);

impl TargetSource for Fixed {
    async fn targets(&mut self, _client: &Client) -> Result<Vec<PullTarget>> {
        Ok(self.0.clone())
    }
}

fn agent(registry: &TlsRegistry, state: &Path, base: &str, stall_window: Duration) -> Agent {
    let (store, _) = Store::open(state, StoreOptions::default()).unwrap();
    let tls = registry.device_tls().unwrap();
    let options = ClientOptions {
        backoff_base: Duration::from_millis(20),
        stall_window,
        ..ClientOptions::default()
    };
    Agent {
        store,
        client: Client::new(&base.parse().unwrap(), tls, options).unwrap(),
        platform: Platform::parse("linux/amd64").unwrap(),
        concurrency: 2,
        hook: None,
        health: None,
    }
}

/// An agent talking to the registry directly, stall window 30 s.
fn healthy_agent(registry: &TlsRegistry, state: &Path) -> Agent {
    agent(
        registry,
        state,
        &registry.base_url(),
        Duration::from_secs(30),
    )
}

fn target(registry: &TlsRegistry, descriptor: &Descriptor) -> PullTarget {
    registry.pull_target("app", REPO, descriptor).unwrap()
}

fn publish(registry: &TlsRegistry, work: &Path, shared: usize) -> BuiltImage {
    let image = SampleImage::multi_arch(&["linux/amd64"], shared, 8 * 1024).unwrap();
    registry.push_image(&image, work, "v1", REPO).unwrap()
}

/// The service loop of `agent` (a cycle an hour) until `stopped` fires.
async fn serve(
    agent: &Agent,
    source: &mut Fixed,
    notifier: &Notifier,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let stop = async {
        let _ = stopped.await;
    };
    service::run(
        agent,
        source,
        notifier,
        Duration::from_secs(3600),
        &Silent,
        stop,
    )
    .await;
}

async fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 1024];
    let n = socket.recv(&mut buf).await.unwrap();
    String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned()
}

#[tokio::test]
async fn a_cycle_applies_the_target_and_the_next_cycle_finds_it_up_to_date() {
    let work = tempfile::tempdir().unwrap();
    let registry = TlsRegistry::start().unwrap();
    let built = publish(&registry, work.path(), 64 * 1024);
    let state = tempfile::tempdir().unwrap();
    let agent = healthy_agent(&registry, state.path());
    let mut source = Fixed(vec![target(&registry, &built.index)]);

    let first = agent.cycle(&mut source, &Silent).await.unwrap();
    let Some(SlotAction::Applied {
        layout,
        received_bytes,
    }) = first.action("app").cloned()
    else {
        panic!("nothing applied: {first:?}");
    };
    assert_eq!(received_bytes, built.all_blobs.values().sum::<u64>());
    assert_eq!(Pointers::read(&agent.store).unwrap().current, Some(layout));

    let before = agent.client.downloaded_bytes();
    let second = agent.cycle(&mut source, &Silent).await.unwrap();
    assert_eq!(
        second.action("app"),
        Some(&SlotAction::UpToDate),
        "{second:?}"
    );
    assert_eq!(agent.client.downloaded_bytes(), before);
    let last = agent.store.last_result().unwrap().unwrap();
    assert!(last.ok);
    assert!(last.message.contains("up to date"), "{}", last.message);
}

#[tokio::test]
async fn an_empty_target_list_applies_nothing() {
    let registry = TlsRegistry::start().unwrap();
    let state = tempfile::tempdir().unwrap();
    let agent = healthy_agent(&registry, state.path());
    let outcome = agent.cycle(&mut Fixed(Vec::new()), &Silent).await.unwrap();
    assert!(
        outcome.slots.is_empty() && outcome.retired.is_empty(),
        "{outcome:?}"
    );
    assert_eq!(Pointers::read(&agent.store).unwrap(), Pointers::default());
}

#[tokio::test]
async fn the_loop_tells_systemd_it_is_ready_what_it_did_and_that_it_stops() {
    let work = tempfile::tempdir().unwrap();
    let registry = TlsRegistry::start().unwrap();
    let built = publish(&registry, work.path(), 16 * 1024);
    let state = tempfile::tempdir().unwrap();
    let agent = healthy_agent(&registry, state.path());
    let socket_path = work.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let notifier = notify::from_env(&Environment {
        notify_socket: Some(socket_path.into_os_string()),
        ..Environment::default()
    });
    let mut source = Fixed(vec![target(&registry, &built.index)]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();

    let service = serve(&agent, &mut source, &notifier, stopped);
    let observer = async {
        let mut seen = Vec::new();
        let mut stop = Some(stop);
        loop {
            let message = next_message(&socket).await;
            if message.starts_with("STATUS=applied app")
                && let Some(stop) = stop.take()
            {
                let _ = stop.send(());
            }
            let done = message.starts_with("STOPPING=1");
            seen.push(message);
            if done {
                return seen;
            }
        }
    };
    let ((), seen) = tokio::join!(service, observer);

    assert_eq!(seen[0], "READY=1\nSTATUS=started");
    assert_eq!(seen[1], "STATUS=checking for updates");
    assert!(seen[2].starts_with("STATUS=applied app"), "{seen:?}");
    assert_eq!(seen.last().unwrap(), "STOPPING=1\nSTATUS=stopping");
    assert!(Pointers::read(&agent.store).unwrap().current.is_some());
}

#[tokio::test]
async fn stopping_mid_download_keeps_the_partial_blob_for_the_next_start() {
    let work = tempfile::tempdir().unwrap();
    let registry = TlsRegistry::start().unwrap();
    let built = publish(&registry, work.path(), 1024 * 1024);
    let layer = built.blobs[0][1].clone();
    let proxy = TcpProxy::start(
        registry.registry.addr(),
        vec![Fault::StallAfter(400 * 1024)],
    )
    .await
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let stalled_base = format!("https://{}", proxy.addr());

    // First start: the transfer hangs mid-layer (the floor is not reached within the long
    // window); the service is told to stop while it waits.
    {
        let agent = agent(
            &registry,
            state.path(),
            &stalled_base,
            Duration::from_secs(600),
        );
        let mut source = Fixed(vec![target(&registry, &built.index)]);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let notifier = Notifier::disabled();
        let service = serve(&agent, &mut source, &notifier, stopped);
        let store = &agent.store;
        let trigger = async {
            while store.partial_len(&layer.digest) == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = stop.send(());
        };
        tokio::time::timeout(Duration::from_secs(120), async {
            tokio::join!(service, trigger)
        })
        .await
        .expect("the service did not stop");
        assert_eq!(Pointers::read(&agent.store).unwrap().current, None);
    }

    // Next start, through a healthy connection: the partial layer is resumed, not refetched.
    let agent = healthy_agent(&registry, state.path());
    let partial = agent.store.partial_len(&layer.digest);
    assert!(
        partial > 0 && partial < layer.size,
        "partial {partial} of {}",
        layer.size
    );
    let missing: u64 = built
        .all_blobs
        .iter()
        .filter(|(digest, size)| !agent.store.has(digest, **size).unwrap())
        .map(|(_, size)| size)
        .sum();
    // Under load another blob may have been cut mid-download too: every partial counts.
    let partials: u64 = built
        .all_blobs
        .keys()
        .map(|digest| agent.store.partial_len(digest))
        .sum();
    let outcome = agent
        .cycle(&mut Fixed(vec![target(&registry, &built.index)]), &Silent)
        .await
        .unwrap();
    let Some(SlotAction::Applied { received_bytes, .. }) = outcome.action("app").cloned() else {
        panic!("nothing applied: {outcome:?}");
    };
    assert_eq!(
        received_bytes,
        missing - partials,
        "a byte on disk was fetched again"
    );
    assert!(agent.store.fsck(false).unwrap().is_clean());
}

/// A source whose metadata cannot be fetched.
struct Unavailable;

impl TargetSource for Unavailable {
    async fn targets(&mut self, _client: &Client) -> Result<Vec<PullTarget>> {
        Err(meshanics_agent::Error::Status {
            url: "https://facade.invalid/meta/timestamp.cose".into(),
            status: 503,
        })
    }
}

#[tokio::test]
async fn a_source_failure_applies_nothing_and_status_says_why() {
    let work = tempfile::tempdir().unwrap();
    let registry = TlsRegistry::start().unwrap();
    let built = publish(&registry, work.path(), 16 * 1024);
    let state = tempfile::tempdir().unwrap();
    let agent = healthy_agent(&registry, state.path());
    agent
        .cycle(&mut Fixed(vec![target(&registry, &built.index)]), &Silent)
        .await
        .unwrap();
    let before = Pointers::read(&agent.store).unwrap();

    let err = agent.cycle(&mut Unavailable, &Silent).await.unwrap_err();

    assert!(err.to_string().contains("timestamp.cose"), "{err}");
    assert_eq!(Pointers::read(&agent.store).unwrap(), before);
    let last = agent.store.last_result().unwrap().unwrap();
    assert!(!last.ok);
    assert!(last.message.contains("503"), "{}", last.message);
}

#[tokio::test]
async fn a_failing_hook_in_a_cycle_keeps_the_previous_artifact_current() {
    use std::os::unix::fs::PermissionsExt;
    let work = tempfile::tempdir().unwrap();
    let registry = TlsRegistry::start().unwrap();
    let v1 = publish(&registry, work.path(), 16 * 1024);
    let v2 = SampleImage::multi_arch(&["linux/amd64"], 16 * 1024, 9 * 1024).unwrap();
    let v2 = registry.push_image(&v2, work.path(), "v2", REPO).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut agent = healthy_agent(&registry, state.path());
    agent
        .cycle(&mut Fixed(vec![target(&registry, &v1.index)]), &Silent)
        .await
        .unwrap();
    let before = Pointers::read(&agent.store).unwrap();
    let hook = work.path().join("hook.sh");
    std::fs::write(&hook, "#!/bin/sh\necho refusing >&2\nexit 7\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    agent.hook = Some(meshanics_agent::config::Hook {
        path: hook,
        timeout: Duration::from_secs(30),
    });

    let outcome = agent
        .cycle(&mut Fixed(vec![target(&registry, &v2.index)]), &Silent)
        .await
        .unwrap();

    assert!(!outcome.is_ok());
    assert!(
        matches!(
            outcome.slot("app").unwrap().result,
            Err(meshanics_agent::Error::HookFailed { .. })
        ),
        "{outcome:?}"
    );
    assert_eq!(Pointers::read(&agent.store).unwrap(), before);
    let last = agent.store.last_result().unwrap().unwrap();
    assert!(!last.ok);
    assert!(last.message.contains("exit status: 7"), "{}", last.message);
}
