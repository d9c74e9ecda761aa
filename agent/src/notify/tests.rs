use std::ffi::OsString;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use super::*;

fn listen() -> (tempfile::TempDir, UnixDatagram, OsString) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    (dir, socket, path.into_os_string())
}

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn sends_ready_status_and_stopping_to_the_notify_socket() {
    let (_dir, socket, path) = listen();
    let notifier = from_env(&Environment {
        notify_socket: Some(path),
        ..Environment::default()
    });
    assert!(notifier.is_enabled());
    notifier.ready("started");
    notifier.status("pulling app\nsecond line");
    notifier.watchdog();
    notifier.stopping("stopping");
    assert_eq!(receive(&socket), "READY=1\nSTATUS=started");
    assert_eq!(receive(&socket), "STATUS=pulling app second line");
    assert_eq!(receive(&socket), "WATCHDOG=1");
    assert_eq!(receive(&socket), "STOPPING=1\nSTATUS=stopping");
}

#[test]
fn reaches_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!(
        "meshanics-notify-test-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    );
    let socket =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let notifier = from_env(&Environment {
        notify_socket: Some(format!("@{name}").into()),
        ..Environment::default()
    });
    notifier.ready("started");
    assert_eq!(receive(&socket), "READY=1\nSTATUS=started");
}

#[test]
fn pings_the_watchdog_at_half_its_timeout_only_for_this_process() {
    let (_dir, _socket, path) = listen();
    let env = |pid: Option<String>| Environment {
        notify_socket: Some(path.clone()),
        watchdog_usec: Some("20000000".into()),
        watchdog_pid: pid,
        ..Environment::default()
    };
    assert_eq!(
        from_env(&env(None)).watchdog_interval(),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        from_env(&env(Some(std::process::id().to_string()))).watchdog_interval(),
        Some(Duration::from_secs(10))
    );
    assert_eq!(from_env(&env(Some("1".into()))).watchdog_interval(), None);
}

#[test]
fn without_a_socket_nothing_is_sent_and_nothing_fails() {
    let notifier = from_env(&Environment {
        watchdog_usec: Some("1000".into()),
        ..Environment::default()
    });
    assert!(!notifier.is_enabled());
    assert_eq!(notifier.watchdog_interval(), None);
    notifier.ready("started");
}
