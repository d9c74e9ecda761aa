//! PostgreSQL from Debian (`postgresql`, binaries in [`BIN_DIR`]) for the facade cluster tests.
//!
//! [`PostgresServer::start`] runs `initdb` into a temporary folder (trust authentication on
//! loopback, superuser [`USER`]) and starts the server on a free 127.0.0.1 port with its socket
//! in that folder. The server refuses to run as root, and CI runs as root: then both run as the
//! `postgres` user (`setpriv`, which execs, so the child is the postmaster itself), with the
//! folder owned by it. [`PostgresServer::stop`] and [`PostgresServer::start_again`] stop it
//! (fast shutdown) and start it again on the same folder and port, for outage tests; drop stops
//! it and removes the folder.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{FixtureError, io_err};

/// Where Debian's PostgreSQL 15 binaries are.
pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The superuser the cluster is made with (trust authentication: no password).
pub const USER: &str = "meshanics";
/// The unprivileged user the server runs as when the tests run as root.
const SERVER_USER: &str = "postgres";
/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A PostgreSQL server on 127.0.0.1, stopped and removed on drop.
#[derive(Debug)]
pub struct PostgresServer {
    dir: tempfile::TempDir,
    port: u16,
    /// `uid:gid` to run as, when running as root.
    run_as: Option<(u32, u32)>,
    /// Serve TLS with these files (certificate, key), written into the folder.
    tls: Option<(PathBuf, PathBuf)>,
    child: Option<Child>,
}

// === impl PostgresServer ===

impl PostgresServer {
    /// Makes a cluster in a temporary folder and starts the server on a free loopback port.
    pub fn start() -> Result<Self, FixtureError> {
        Self::start_with(None)
    }

    /// [`PostgresServer::start`], the server also offering TLS with this certificate and key
    /// (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Result<Self, FixtureError> {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Result<Self, FixtureError> {
        let dir = tempfile::Builder::new()
            .prefix("meshanics-pg-")
            .tempdir()
            .map_err(io_err("creating a temp dir in", &std::env::temp_dir()))?;
        let run_as = if is_root()? {
            Some(user_ids(SERVER_USER)?)
        } else {
            None
        };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(io_err("giving to the postgres user", dir.path()))?;
        }
        let port = free_port()?;
        let tls = match tls {
            Some((cert_pem, key_pem)) => {
                let files = (dir.path().join("server.crt"), dir.path().join("server.key"));
                for (path, text) in [(&files.0, cert_pem), (&files.1, key_pem)] {
                    write_private(path, text, run_as)?;
                }
                Some(files)
            }
            None => None,
        };
        let mut server = PostgresServer {
            dir,
            port,
            run_as,
            tls,
            child: None,
        };
        let data = server.data_dir();
        let mut initdb = server.command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb")?;
        server.start_again()?;
        Ok(server)
    }

    /// The URL of its `postgres` database, as the facade's `[state] url` takes it.
    pub fn url(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The lines of a facade's `[state]` table that keep its state in this server's database
    /// (for [`crate::facade::FacadeOptions::state`]).
    pub fn facade_state(&self) -> Vec<String> {
        vec![
            "backend = \"postgres\"".into(),
            format!("url = \"{}\"", self.url()),
            "sslmode = \"disable\"".into(),
        ]
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server (again) on the same folder and port, and waits until it accepts
    /// connections.
    pub fn start_again(&mut self) -> Result<(), FixtureError> {
        let data = self.data_dir();
        let log = self.dir.path().join("server.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err("opening", &log))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&log, Some(uid), Some(gid))
                .map_err(io_err("giving to the postgres user", &log))?;
        }
        let err_file = log_file.try_clone().map_err(io_err("opening", &log))?;
        let mut postgres = self.command("postgres");
        postgres
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
            ])
            .stdin(Stdio::null());
        if let Some((cert, key)) = &self.tls {
            postgres
                .args(["-c", "ssl=on", "-c"])
                .arg(format!("ssl_cert_file={}", cert.display()))
                .arg("-c")
                .arg(format!("ssl_key_file={}", key.display()));
        }
        postgres.stdout(log_file).stderr(err_file);
        let child = postgres.spawn().map_err(|e| FixtureError::Program {
            program: "postgres".into(),
            detail: e.to_string(),
        })?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            let mut ready = Command::new(Path::new(BIN_DIR).join("pg_isready"));
            ready
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if ready.status().is_ok_and(|s| s.success()) {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                let output = std::fs::read_to_string(&log).unwrap_or_default();
                self.stop();
                return Err(FixtureError::NotReady {
                    program: "postgres".into(),
                    seconds: READY_TIMEOUT.as_secs(),
                    output,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (fast shutdown: sessions are cut) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGINT is PostgreSQL's fast shutdown; SIGKILL would leave its backends running.
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < READY_TIMEOUT {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for one of the server's binaries, as the unprivileged user when root.
    fn command(&self, program: &str) -> Command {
        let binary = Path::new(BIN_DIR).join(program);
        match self.run_as {
            Some((uid, gid)) => {
                let mut command = Command::new("setpriv");
                command
                    .arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(binary)
                    .current_dir(self.dir.path())
                    .env("HOME", self.dir.path());
                command
            }
            None => Command::new(binary),
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `text` to `path`, mode 0600, owned by `owner` when given (the server refuses a key
/// others can read).
fn write_private(path: &Path, text: &str, owner: Option<(u32, u32)>) -> Result<(), FixtureError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).map_err(io_err("writing", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("restricting", path))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io_err("giving to the postgres user", path))?;
    }
    Ok(())
}

fn run(mut command: Command, program: &str) -> Result<(), FixtureError> {
    let output = command.output().map_err(|e| FixtureError::Program {
        program: program.into(),
        detail: format!("{e} (is Debian's postgresql installed? {BIN_DIR})"),
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(FixtureError::Program {
        program: program.into(),
        detail: format!(
            "{}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

fn is_root() -> Result<bool, FixtureError> {
    Ok(id(&["-u"])? == 0)
}

fn user_ids(user: &str) -> Result<(u32, u32), FixtureError> {
    Ok((id(&["-u", user])?, id(&["-g", user])?))
}

fn id(args: &[&str]) -> Result<u32, FixtureError> {
    let output = Command::new("id")
        .args(args)
        .output()
        .map_err(|e| FixtureError::Program {
            program: "id".into(),
            detail: e.to_string(),
        })?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| FixtureError::Program {
            program: format!("id {}", args.join(" ")),
            detail: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
}

/// A port on 127.0.0.1 nothing listens on now.
fn free_port() -> Result<u16, FixtureError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(io_err("binding", Path::new("127.0.0.1:0")))?;
    let port = listener
        .local_addr()
        .map_err(io_err("reading the address of", Path::new("127.0.0.1:0")))?
        .port();
    Ok(port)
}
