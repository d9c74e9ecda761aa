//! # meshanics-tests
//!
//! Whole-system tests for Meshanics, and the fixtures they share. The tests run the real
//! parts wherever a real one runs here: the CNCF distribution registry (`docker-registry`,
//! from Debian) as the upstream, `skopeo` as a standard OCI client, and TLS with a PKI made
//! per test run.
//!
//! - [`oci_layout`]: builds small multi-platform sample images as OCI image layouts
//!   (real tar layers, real configs), the way `skopeo copy ... oci:DIR` writes them.
//! - [`registry`]: starts the distribution registry on 127.0.0.1, port 0, with a generated
//!   config (anonymous, htpasswd Basic auth, optional TLS and client CAs), and stops it on drop.
//! - [`binaries`]: the workspace's binaries (`meshctl`, ...), built and found for tests.
//! - [`skopeo`]: runs `skopeo` and reports failures with its output.
//! - [`facade`]: the facade in-process on port 0, with a fresh PKI (good, expired, revoked and
//!   foreign device certificates) and mTLS clients for tests.
//! - [`facade_process`]: the real `meshanics-facade` binary as a child process, for tests
//!   that count its own file descriptors, memory and tasks, or run several replicas.
//! - [`haproxy`]: Debian's HAProxy in TCP mode in front of facade replicas.
//! - [`token_server`]: a Docker token server signing ES256 JWTs the registry verifies.
//! - [`scripted`]: a raw HTTP server that answers with whatever a test scripts: the
//!   malicious upstream and the blob storage of redirect tests.
//! - [`gcp_server`], [`aws_server`]: token endpoints that speak the real protocols and check
//!   the real signatures (RS256 JWTs; SigV4 recomputed independently), on
//!   [`http_server`], a small HTTP server on 127.0.0.1:0.
//! - [`tls_registry`]: the registry behind mutual TLS with a fresh PKI, standing in for the
//!   facade (same API, same names, device certificate required) in agent tests.
//! - [`release`]: an operator's keys signing root, targets and timestamp files into the
//!   facade's metadata folder, with test-chosen expiries.
//! - [`artifacts`]: CNCF ModelPack and ORAS artifacts as OCI layouts, built from a list of
//!   files, for the agent's files mode.
//! - [`pull_device`]: a cache and a client (one facade URL or several replicas) running the
//!   agent's own pull code in-process.
//! - [`agent_device`]: an agent configuration (TOML, certificates, trust anchor, state dir)
//!   for a device talking to the facade fixture.
//! - [`update_chain`]: registry, facade and release together, the start of every end-to-end
//!   test of the agent.
//! - [`tcp_proxy`]: a TCP proxy that cuts or stalls a connection after some bytes.
//! - [`postgres`]: Debian's PostgreSQL in a temporary folder on a free loopback port (as the
//!   `postgres` user when root), stopped and started again for outage tests.
//! - [`proc_stats`]: a process's open file descriptors and resident memory, from `/proc`.
//!
//! Everything a fixture starts is stopped, and every folder it makes is removed, when the
//! fixture is dropped.
//!
//! The tests are one binary, `tests/system/` (a module per former file: `cargo test -p
//! meshanics-tests --test system -- agent_pull::`), so the facade, the agent and these fixtures
//! are linked once. Two keep a binary of their own: `tests/connections_e2e.rs` installs a
//! process-wide log subscriber, and `tests/power_loss.rs` needs `--features failpoints`. The
//! agent's own `agent/tests` need none of this crate, so they never build the facade.

pub mod agent_device;
pub mod artifacts;
pub mod aws_server;
pub mod binaries;
pub mod facade;
pub mod facade_process;
pub mod gcp_server;
pub mod haproxy;
pub mod http_server;
pub mod oci_layout;
pub mod postgres;
pub mod proc_stats;
pub mod pull_device;
pub mod registry;
pub mod release;
pub mod scripted;
pub mod skopeo;
pub mod tcp_proxy;
pub mod tls_registry;
pub mod token_server;
pub mod update_chain;

/// The `main` of a bench (or any program on these fixtures): runs `run`, and on failure prints
/// `NAME: error` and each cause under it (the path or program it failed on, not an OS error
/// code alone), and exits 1.
pub fn run_main(
    name: &str,
    run: impl FnOnce() -> Result<(), Box<dyn std::error::Error + Send + Sync>>,
) -> std::process::ExitCode {
    let Err(error) = run() else {
        return std::process::ExitCode::SUCCESS;
    };
    eprintln!("{name}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
    std::process::ExitCode::FAILURE
}

/// Polls `done` every 10 ms until it holds or `bound` passes; whether it held (for tests that
/// check a change reaches a process within a bound).
pub fn within(bound: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = std::time::Instant::now();
    loop {
        if done() {
            return true;
        }
        if started.elapsed() > bound {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Why a fixture could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FixtureError {
    /// A file system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A program could not be started or failed.
    #[error("{program} failed: {detail}")]
    Program {
        /// The program.
        program: String,
        /// Its exit status and output.
        detail: String,
    },
    /// A program did not get ready in time.
    #[error("{program} did not start within {seconds} s; its output:\n{output}")]
    NotReady {
        /// The program.
        program: String,
        /// How long we waited.
        seconds: u64,
        /// What it printed.
        output: String,
    },
    /// Invalid input to a fixture.
    #[error("invalid fixture input: {0}")]
    Invalid(String),
}

pub(crate) fn io_err(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> FixtureError {
    let path = path.to_owned();
    move |source| FixtureError::Io {
        action,
        path,
        source,
    }
}
