//! systemd notifications for the agent: [`Notifier`] is the one implementation in
//! [`meshanics_shared::notify`]; [`from_env`] sets it up from the agent's [`Environment`],
//! read once at start-up (`$NOTIFY_SOCKET`, `$WATCHDOG_USEC`, `$WATCHDOG_PID`).
//!
//! The service loop ([`crate::service::run`]) sends `READY=1`, a `STATUS=` line per step,
//! `WATCHDOG=1` at half the watchdog timeout, and `STOPPING=1` on the way out.

use crate::config::Environment;

pub use meshanics_shared::notify::Notifier;

/// The notifier systemd asked for through the environment, if it did: its socket, and the
/// watchdog when `WATCHDOG_PID` is absent or names this process.
pub fn from_env(env: &Environment) -> Notifier {
    Notifier::new(env.notify_socket.as_deref())
        .with_watchdog(env.watchdog_usec.as_deref(), env.watchdog_pid.as_deref())
}

#[cfg(test)]
mod tests;
