//! The real `meshanics-facade` binary as a child process, started on the config file of a
//! [`FacadeFixture`](crate::facade::FacadeFixture) (same PKI, same upstreams; the fixture's
//! own in-process facade stays idle beside it). Its listeners bind port 0; the addresses are
//! read from its `facade listening` log line. Killed on drop.
//!
//! Tests that count leaks use it: `/proc/<pid>/fd` and `VmRSS` are then the facade's alone,
//! and its `/metrics` (read over plain HTTP from the operator listener) are its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binaries::workspace_binary;
use crate::proc_stats::ProcStats;
use crate::{FixtureError, io_err};

/// How long the binary may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running facade process.
#[derive(Debug)]
pub struct FacadeProcess {
    child: Child,
    device_addr: SocketAddr,
    operator_addr: SocketAddr,
    log: tempfile::NamedTempFile,
}

// === impl FacadeProcess ===

impl FacadeProcess {
    /// Starts `meshanics-facade --config <config>` with the log filter `log_filter`
    /// (`RUST_LOG` syntax; the `facade listening` line of `meshanics_facade::server` must
    /// stay at info).
    pub fn start(config: &Path, log_filter: &str) -> Result<Self, FixtureError> {
        let binary = workspace_binary("meshanics-facade", "meshanics-facade")?;
        FacadeProcess::start_binary(&binary, config, log_filter)
    }

    /// [`FacadeProcess::start`] of another build of the facade (a release binary, for
    /// benches), on any config whose listeners bind port 0.
    pub fn start_binary(
        binary: &Path,
        config: &Path,
        log_filter: &str,
    ) -> Result<Self, FixtureError> {
        let log = tempfile::NamedTempFile::new()
            .map_err(io_err("creating a log file in", Path::new("/tmp")))?;
        let stderr = log.reopen().map_err(io_err("opening", log.path()))?;
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .env(
                "RUST_LOG",
                format!("{log_filter},meshanics_facade::server=info"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(io_err("starting", binary))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err(FixtureError::Invalid("no stdout pipe".into()));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // The log goes on being read (and copied to the log file) for the process's life, so
        // a full pipe never blocks it.
        let mut copy = log.reopen().map_err(io_err("opening", log.path()))?;
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(copy, "{line}");
                if !sent && line.contains("facade listening") {
                    sent = tx.send(line).is_ok();
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let line = loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                break line;
            }
            let exited = child.try_wait().ok().flatten().is_some();
            if exited || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(FixtureError::NotReady {
                    program: binary.display().to_string(),
                    seconds: START_TIMEOUT.as_secs(),
                    output: std::fs::read_to_string(log.path()).unwrap_or_default(),
                });
            }
        };
        let addr = |key: &str| -> Result<SocketAddr, FixtureError> {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(key))
                .and_then(|value| value.parse().ok())
                .ok_or_else(|| FixtureError::Invalid(format!("no {key} in `{line}`")))
        };
        let device_addr = addr("device_addr=")?;
        let operator_addr = addr("operator_addr=")?;
        Ok(FacadeProcess {
            child,
            device_addr,
            operator_addr,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The device listener's address.
    pub fn device_addr(&self) -> SocketAddr {
        self.device_addr
    }

    /// `https://127.0.0.1:PORT{path}` on the device listener.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.device_addr)
    }

    /// Open fds and memory of the process now.
    pub fn stats(&self) -> Result<ProcStats, FixtureError> {
        ProcStats::read(self.pid())
    }

    /// The metrics text, from `GET /metrics` on the operator listener.
    pub fn metrics(&self) -> Result<String, FixtureError> {
        let io = |source| FixtureError::Io {
            action: "reading metrics from",
            path: self.operator_addr.to_string().into(),
            source,
        };
        let mut tcp =
            TcpStream::connect_timeout(&self.operator_addr, Duration::from_secs(5)).map_err(io)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io)?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: facade\r\nConnection: close\r\n\r\n")
            .map_err(io)?;
        let mut text = String::new();
        tcp.read_to_string(&mut text).map_err(io)?;
        Ok(text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default())
    }

    /// One metric's value (the first line starting with `name` followed by a space).
    pub fn metric(&self, name: &str) -> Result<i64, FixtureError> {
        let text = self.metrics()?;
        Ok(metric_value(&text, name).unwrap_or(0))
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

/// Dropping it is a SIGKILL: no graceful shutdown, connections cut mid-response.
impl Drop for FacadeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A copy of the facade config at `config` with a `state_dir` of its own (so its own cache
/// and connection state), in a new folder: one replica of the facade it describes, sharing
/// its certificates, upstreams and metadata folder. Returns the folder (removed on drop)
/// and the config file in it.
pub fn replica_config(
    config: &Path,
) -> Result<(tempfile::TempDir, std::path::PathBuf), FixtureError> {
    let work = tempfile::tempdir().map_err(io_err("creating a temp dir", Path::new("/tmp")))?;
    let state = work.path().join("state");
    std::fs::create_dir(&state).map_err(io_err("creating", &state))?;
    let text = std::fs::read_to_string(config).map_err(io_err("reading", config))?;
    let text: String = text
        .lines()
        .map(|line| {
            if line.starts_with("state_dir") {
                format!("state_dir = \"{}\"\n", state.display())
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    let path = work.path().join("facade.toml");
    std::fs::write(&path, text).map_err(io_err("writing", &path))?;
    Ok((work, path))
}

/// The value of the metric line `name VALUE` (or `name{labels} VALUE` when `name` includes
/// the labels) in a Prometheus text.
pub fn metric_value(text: &str, name: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
}
