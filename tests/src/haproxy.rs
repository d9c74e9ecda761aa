//! Debian's HAProxy in TCP mode in front of facade replicas, as a deployment without
//! anything but a TCP load balancer runs them: TLS passes through to the facades (devices
//! keep their mutual TLS end to end), a replica that stops accepting is marked down by a
//! TCP health check, and a connection to a down or dead replica is redispatched to another.
//!
//! The frontend listens on a port-0 loopback socket the fixture binds itself and hands to
//! HAProxy (`bind fd@N`), so there is no window in which another process could take the
//! port. Killed on drop.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::{FixtureError, io_err};

/// The HAProxy binary (Debian package `haproxy`).
pub const HAPROXY_BIN: &str = "haproxy";

/// A running HAProxy.
#[derive(Debug)]
pub struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

// === impl Haproxy ===

impl Haproxy {
    /// Starts HAProxy in TCP mode balancing over `servers` (round robin), with a TCP health
    /// check every 200 ms that marks a server down on its first failure, and redispatch of a
    /// failed connection to another server.
    pub fn start(servers: &[SocketAddr]) -> Result<Self, FixtureError> {
        let dir = tempfile::tempdir().map_err(io_err("creating a temp dir", Path::new("/tmp")))?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err(
            "binding a port for HAProxy on",
            Path::new("127.0.0.1:0"),
        ))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("reading the address of", Path::new("127.0.0.1:0")))?;
        // The child inherits the socket under the same number. Other children spawned by
        // concurrent tests while the flag is clear may inherit it too; they never accept on
        // it, and the parent's copy is closed once HAProxy has it.
        rustix::io::fcntl_setfd(listener.as_fd(), rustix::io::FdFlags::empty()).map_err(|e| {
            FixtureError::Invalid(format!("clearing close-on-exec on the HAProxy socket: {e}"))
        })?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let config_path = dir.path().join("haproxy.cfg");
        std::fs::write(&config_path, config(fd, servers))
            .map_err(io_err("writing", &config_path))?;
        let check = Command::new(HAPROXY_BIN)
            .arg("-c")
            .arg("-q")
            .arg("-f")
            .arg(&config_path)
            .output()
            .map_err(|e| missing(&e))?;
        if !check.status.success() {
            return Err(FixtureError::Program {
                program: HAPROXY_BIN.into(),
                detail: format!(
                    "refused its config ({}): {}",
                    check.status,
                    String::from_utf8_lossy(&check.stderr)
                ),
            });
        }
        // -db: stay in the foreground, so the fixture's child is HAProxy itself.
        let mut child = Command::new(HAPROXY_BIN)
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| missing(&e))?;
        drop(listener);
        // The socket already listens (connections wait in its backlog until HAProxy
        // accepts them), so HAProxy is "ready" at once; what can still go wrong is an early
        // exit, which the config check above makes unlikely.
        if let Ok(Some(status)) = child.try_wait() {
            return Err(FixtureError::Program {
                program: HAPROXY_BIN.into(),
                detail: format!("exited at start ({status})"),
            });
        }
        Ok(Haproxy {
            child,
            addr,
            _dir: dir,
        })
    }

    /// The frontend's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`: the facade URL devices are given.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn missing(e: &std::io::Error) -> FixtureError {
    FixtureError::Program {
        program: HAPROXY_BIN.into(),
        detail: format!("cannot start it ({e}); install the Debian package haproxy"),
    }
}

/// The configuration: TCP mode, round robin, health-checked servers, redispatch.
fn config(fd: i32, servers: &[SocketAddr]) -> String {
    let mut text = format!(
        "global\n    maxconn 2000\n\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 5m\n    \
         timeout server 5m\n    retries 3\n    option redispatch\n\n\
         frontend devices\n    bind fd@{fd}\n    default_backend facades\n\n\
         backend facades\n    balance roundrobin\n    \
         default-server check inter 200ms fall 1 rise 2\n"
    );
    for (i, server) in servers.iter().enumerate() {
        text.push_str(&format!("    server facade{i} {server}\n"));
    }
    text
}
