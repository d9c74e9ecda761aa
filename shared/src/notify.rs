//! systemd's notification protocol (`sd_notify`) for `Type=notify` services, the one
//! implementation the agent and the facade share: `READY=1` once started, `STATUS=` with the
//! current step, `WATCHDOG=1` pings at half of `WATCHDOG_USEC`, `STOPPING=1` on the way out.
//!
//! The protocol is one datagram per message to the Unix socket named by `$NOTIFY_SOCKET` (a
//! path, or an abstract name written with a leading `@`). The caller reads the environment
//! once and hands the values over; nothing here reads or changes it. Sending never fails the
//! program: a lost notification is logged and the work goes on.
//!
//! Why not the `sd-notify` crate: it reads `$NOTIFY_SOCKET` (and `$WATCHDOG_USEC`) from the
//! process environment itself, on every call. The programs read their environment once, into
//! typed configuration, and the tests point a notifier at a socket of their own; with that
//! crate they would have to set the process environment, which edition 2024 makes `unsafe`
//! (forbidden here). What it would replace is a datagram send that `std` already does.

use std::ffi::OsStr;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go, if anywhere, and how often systemd wants a watchdog ping.
#[derive(Debug)]
pub struct Notifier {
    target: Option<SocketAddr>,
    watchdog: Option<Duration>,
}

// === impl Notifier ===

impl Notifier {
    /// A notifier that sends nothing (not started by systemd).
    pub fn disabled() -> Self {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// A notifier for the socket systemd named in `$NOTIFY_SOCKET`, or one that sends nothing
    /// when there is none (or it is not a usable address).
    pub fn new(notify_socket: Option<&OsStr>) -> Self {
        let target =
            notify_socket.and_then(
                |socket| match socket.as_encoded_bytes().strip_prefix(b"@") {
                    Some(name) => abstract_address(name),
                    None => SocketAddr::from_pathname(socket).ok(),
                },
            );
        Notifier {
            target,
            watchdog: None,
        }
    }

    /// Takes the watchdog systemd set up (`WatchdogSec=`): `$WATCHDOG_USEC`, the timeout, and
    /// `$WATCHDOG_PID`, which when present must name this process for the watchdog to be
    /// ours. A missing, zero or malformed timeout means no watchdog.
    pub fn with_watchdog(self, watchdog_usec: Option<&str>, watchdog_pid: Option<&str>) -> Self {
        let for_us = watchdog_pid
            .is_none_or(|pid| pid.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = watchdog_usec
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { watchdog, ..self }
    }

    /// Whether notifications are sent.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1` (half the watchdog timeout), when systemd watches us.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.target.as_ref()?;
        self.watchdog.map(|timeout| timeout / 2)
    }

    /// Sends raw `KEY=value` lines; a failure is logged at debug level.
    pub fn notify(&self, message: &str) {
        if let Err(error) = self.send(message) {
            tracing::debug!(%error, message, "sd_notify failed");
        }
    }

    /// `READY=1` with `STATUS=<status>`: start-up is over. A failure is a warning: systemd
    /// that never hears it fails the start.
    pub fn ready(&self, status: &str) {
        self.lifecycle("READY=1", status);
    }

    /// `STATUS=<text>`: what the program is doing (one line: newlines become spaces).
    pub fn status(&self, text: &str) {
        self.notify(&format!("STATUS={}", one_line(text)));
    }

    /// `WATCHDOG=1`: still alive.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// `STOPPING=1` with `STATUS=<status>`: shutting down.
    pub fn stopping(&self, status: &str) {
        self.lifecycle("STOPPING=1", status);
    }

    fn lifecycle(&self, state: &str, status: &str) {
        let message = format!("{state}\nSTATUS={}", one_line(status));
        if let Err(error) = self.send(&message) {
            tracing::warn!(%error, message, "sd_notify failed");
        }
    }

    fn send(&self, message: &str) -> std::io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), target)?;
        Ok(())
    }
}

fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect()
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
mod tests;
