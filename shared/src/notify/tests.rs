use std::ffi::OsString;

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
fn sends_each_message_as_one_datagram_to_the_notify_socket() {
    let (_dir, socket, path) = listen();
    let notifier = Notifier::new(Some(&path));
    assert!(notifier.is_enabled());
    notifier.ready("started");
    notifier.status("pulling app\nsecond line");
    notifier.watchdog();
    notifier.notify("EXTEND_TIMEOUT_USEC=1000000");
    notifier.stopping("draining");
    assert_eq!(receive(&socket), "READY=1\nSTATUS=started");
    assert_eq!(receive(&socket), "STATUS=pulling app second line");
    assert_eq!(receive(&socket), "WATCHDOG=1");
    assert_eq!(receive(&socket), "EXTEND_TIMEOUT_USEC=1000000");
    assert_eq!(receive(&socket), "STOPPING=1\nSTATUS=draining");
}

#[test]
fn reaches_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt as _;
    let name = format!("meshanics-shared-notify-test-{}", std::process::id());
    let socket =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    Notifier::new(Some(OsStr::new(&format!("@{name}")))).ready("serving");
    assert_eq!(receive(&socket), "READY=1\nSTATUS=serving");
}

#[test]
fn pings_the_watchdog_at_half_its_timeout_only_for_this_process() {
    let (_dir, _socket, path) = listen();
    let with = |usec: Option<&str>, pid: Option<&str>| {
        Notifier::new(Some(&path))
            .with_watchdog(usec, pid)
            .watchdog_interval()
    };
    let me = std::process::id().to_string();
    assert_eq!(with(Some("20000000"), None), Some(Duration::from_secs(10)));
    assert_eq!(
        with(Some(" 20000000\n"), Some(&me)),
        Some(Duration::from_secs(10))
    );
    assert_eq!(with(Some("20000000"), Some("1")), None);
    assert_eq!(with(Some("0"), None), None);
    assert_eq!(with(Some("soon"), None), None);
    assert_eq!(with(None, Some(&me)), None);
}

#[test]
fn without_a_socket_sends_nothing_and_does_not_fail() {
    let notifier = Notifier::new(None).with_watchdog(Some("1000"), None);
    assert!(!notifier.is_enabled());
    assert_eq!(notifier.watchdog_interval(), None);
    notifier.ready("serving");
    notifier.status("idle");
    notifier.stopping("draining");
    assert!(!Notifier::disabled().is_enabled());
}
