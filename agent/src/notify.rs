//! systemd's notification protocol (`sd_notify`), for `Type=notify` services: `READY=1`
//! once started, `STATUS=` with the current step, `WATCHDOG=1` pings at half of
//! `WATCHDOG_USEC`, `STOPPING=1` on the way out.
//!
//! The protocol is one datagram per message to the Unix socket named by `$NOTIFY_SOCKET`
//! (a path, or an abstract name written with a leading `@`). Sending never fails the agent:
//! a lost notification is logged and the work goes on.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::debug;

use crate::config::Environment;

/// Where notifications go, if anywhere.
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

    /// The notifier systemd asked for through the environment, if it did.
    pub fn from_env(env: &Environment) -> Self {
        let target = env.notify_socket.as_ref().and_then(|socket| {
            let bytes = socket.as_encoded_bytes();
            match bytes.strip_prefix(b"@") {
                Some(name) => abstract_address(name),
                None => SocketAddr::from_pathname(socket).ok(),
            }
        });
        let for_us = env
            .watchdog_pid
            .as_deref()
            .is_none_or(|pid| pid.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = env
            .watchdog_usec
            .as_deref()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { target, watchdog }
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

    /// Sends raw `KEY=value` lines.
    pub fn notify(&self, message: &str) {
        let Some(target) = &self.target else {
            return;
        };
        let sent = UnixDatagram::unbound()
            .and_then(|socket| socket.send_to_addr(message.as_bytes(), target));
        if let Err(err) = sent {
            debug!(error = %err, message, "sd_notify failed");
        }
    }

    /// `READY=1`: start-up is over.
    pub fn ready(&self) {
        self.notify("READY=1\nSTATUS=started");
    }

    /// `STATUS=<text>`: what the agent is doing (one line).
    pub fn status(&self, text: &str) {
        let line: String = text
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .collect();
        self.notify(&format!("STATUS={line}"));
    }

    /// `WATCHDOG=1`: still alive.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    /// `STOPPING=1`: shutting down.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping");
    }
}

#[cfg(target_os = "linux")]
fn abstract_address(name: &[u8]) -> Option<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name).ok()
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &[u8]) -> Option<SocketAddr> {
    None
}

#[cfg(test)]
mod tests;
