//! How the agent's environment becomes a notifier; what the notifier sends is tested with it,
//! in meshanics_shared::notify (and end to end by the service loop's tests).

use std::time::Duration;

use super::*;

fn env(socket: Option<&str>, usec: Option<&str>, pid: Option<String>) -> Environment {
    Environment {
        notify_socket: socket.map(Into::into),
        watchdog_usec: usec.map(str::to_owned),
        watchdog_pid: pid,
        ..Environment::default()
    }
}

#[test]
fn takes_the_socket_and_the_watchdog_from_the_environment() {
    let notifier = from_env(&env(Some("/run/notify.sock"), Some("20000000"), None));
    assert!(notifier.is_enabled());
    assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(10)));

    let abstract_socket = from_env(&env(Some("@meshanics-notify"), None, None));
    assert!(abstract_socket.is_enabled());
    assert_eq!(abstract_socket.watchdog_interval(), None);
}

#[test]
fn pings_the_watchdog_only_when_it_is_for_this_process() {
    let ours = Some(std::process::id().to_string());
    let socket = Some("/run/notify.sock");
    assert_eq!(
        from_env(&env(socket, Some("20000000"), ours)).watchdog_interval(),
        Some(Duration::from_secs(10))
    );
    assert_eq!(
        from_env(&env(socket, Some("20000000"), Some("1".into()))).watchdog_interval(),
        None
    );
}

#[test]
fn without_a_socket_nothing_is_sent_and_nothing_fails() {
    let notifier = from_env(&env(None, Some("1000"), None));
    assert!(!notifier.is_enabled());
    assert_eq!(notifier.watchdog_interval(), None);
    notifier.ready("started");
}
