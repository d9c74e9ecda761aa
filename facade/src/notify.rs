//! The two systemd notifications the facade sends (`Type=notify` in
//! `systemd/meshanics-facade.service`): `READY=1` once both listeners are bound (so units
//! ordered after the facade start when it can serve, and a port already taken fails the
//! start instead of leaving an "active" facade that serves nothing), and `STOPPING=1` when
//! it begins draining. The agent's `notify` module has the whole protocol (status text,
//! watchdog); the facade needs no more than these two.
//!
//! One datagram per message to the Unix socket in `$NOTIFY_SOCKET` (a path, or an abstract
//! name written with a leading `@`). A lost notification is logged, never fatal.

use std::ffi::OsString;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where notifications go, if the facade was started by systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<SocketAddr>,
}

// === impl Notifier ===

impl Notifier {
    /// A notifier for the socket systemd named in `$NOTIFY_SOCKET` (read by `main`), or one
    /// that sends nothing.
    pub fn new(notify_socket: Option<OsString>) -> Self {
        let target =
            notify_socket.and_then(
                |socket| match socket.as_encoded_bytes().strip_prefix(b"@") {
                    Some(name) => abstract_address(name),
                    None => SocketAddr::from_pathname(&socket).ok(),
                },
            );
        Notifier { target }
    }

    /// `READY=1`: the listeners are bound.
    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=serving");
    }

    /// `STOPPING=1`: draining connections before exit.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining");
    }

    fn send(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        let sent = UnixDatagram::unbound()
            .and_then(|socket| socket.send_to_addr(message.as_bytes(), target));
        if let Err(error) = sent {
            tracing::warn!(%error, message, "sd_notify failed");
        }
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> Option<SocketAddr> {
    use std::os::linux::net::SocketAddrExt as _;
    SocketAddr::from_abstract_name(name).ok()
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &[u8]) -> Option<SocketAddr> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_then_stopping_to_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(Some(path.into_os_string()));
        notifier.ready();
        notifier.stopping();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=draining");
    }

    #[test]
    fn reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("meshanics-facade-notify-test-{}", std::process::id());
        let socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        Notifier::new(Some(format!("@{name}").into())).ready();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn without_a_socket_sends_nothing_and_does_not_fail() {
        let notifier = Notifier::new(None);
        assert!(notifier.target.is_none());
        notifier.ready();
        notifier.stopping();
    }
}
