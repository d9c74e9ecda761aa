//! The CNCF distribution registry (`docker-registry` from Debian) as a test upstream.
//!
//! [`RegistryServer::start`] writes a config into a temporary folder, starts the registry on
//! `127.0.0.1:0`, reads the port it actually bound from its log line `listening on ...`, and
//! stops it (and removes the folder) on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshanics_shared::Digest;

use crate::{FixtureError, io_err};

/// The registry binary's name in Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "docker-registry";

/// How the registry authenticates clients.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// Anyone may pull and push.
    #[default]
    Anonymous,
    /// HTTP Basic with one user (an htpasswd file with a bcrypt hash).
    Htpasswd {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// The Docker token flow: the registry sends clients to `realm` and verifies the tokens
    /// it gets back against `root_cert_bundle` (a PEM file the test writes).
    Token {
        /// The token endpoint URL.
        realm: String,
        /// The service name tokens are issued for.
        service: String,
        /// The issuer tokens must name.
        issuer: String,
        /// PEM certificate(s) whose keys sign the tokens.
        root_cert_bundle: PathBuf,
    },
}

/// Options for a registry instance.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Client authentication.
    pub auth: Auth,
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With TLS: require client certificates chained to these CAs.
    pub client_cas: Vec<PathBuf>,
    /// Run as a pull-through cache (distribution's proxy mode) of the registry at this URL
    /// (`http://127.0.0.1:PORT`): it stores what it fetched and answers from its storage.
    pub proxy_remote: Option<String>,
}

// === impl Options ===

impl Options {
    /// A plain-HTTP registry with HTTP Basic auth for one user.
    pub fn basic_auth(username: &str, password: &str) -> Options {
        Options {
            auth: Auth::Htpasswd {
                username: username.to_owned(),
                password: password.to_owned(),
            },
            ..Options::default()
        }
    }
}

/// A running registry.
#[derive(Debug)]
pub struct RegistryServer {
    child: Child,
    port: u16,
    tls: bool,
    output: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

// === impl RegistryServer ===

impl RegistryServer {
    /// Starts a registry with `options`; waits (up to 20 s) until it listens.
    pub fn start(options: &Options) -> Result<Self, FixtureError> {
        let dir = tempfile::tempdir().map_err(io_err("creating a temp dir", Path::new("/tmp")))?;
        let config = config_yaml(dir.path(), options)?;
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(io_err("writing", &config_path))?;
        let mut child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| FixtureError::Program {
                program: REGISTRY_BIN.into(),
                detail: format!(
                    "cannot start it ({e}); install the Debian package docker-registry"
                ),
            })?;
        let stderr = child.stderr.take().ok_or_else(|| FixtureError::Program {
            program: REGISTRY_BIN.into(),
            detail: "no stderr pipe".into(),
        })?;
        let output = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let sink = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = listening_port(&line) {
                    let _ = port_tx.send(port);
                }
                if let Ok(mut out) = sink.lock() {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(port) = port_rx.recv_timeout(Duration::from_millis(100)) {
                break port;
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(FixtureError::NotReady {
                    program: REGISTRY_BIN.into(),
                    seconds: 20,
                    output: output.lock().map(|o| o.clone()).unwrap_or_default(),
                });
            }
        };
        Ok(RegistryServer {
            child,
            port,
            tls: options.tls.is_some(),
            output,
            dir,
        })
    }

    /// The registry's process id (for its memory and descriptors: [`crate::proc_stats`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT` as a socket address (for a proxy in front of it).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `127.0.0.1:PORT`: the registry's host as references name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Everything the registry logged so far.
    pub fn log(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// The folder holding its config and storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How many requests with `method` (`GET`, `HEAD`) whose URI path ends with `path_end`
    /// (`/blobs/sha256:...`, `/team/app/manifests/sha256:...`) the registry completed so far,
    /// from its log (a `response completed` line per request, whatever the status).
    pub fn requests(&self, method: &str, path_end: &str) -> usize {
        let log = self.log();
        log.lines()
            .filter(|line| line.contains("msg=\"response completed"))
            .filter_map(logged_request)
            .filter(|(m, uri)| {
                *m == method && uri.split('?').next().is_some_and(|p| p.ends_with(path_end))
            })
            .count()
    }

    /// Where the registry stores a blob's bytes (to tamper with them).
    pub fn blob_data_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir()
            .join("data/docker/registry/v2/blobs")
            .join(digest.algorithm().name())
            .join(hex.get(..2).unwrap_or_default())
            .join(hex)
            .join("data")
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The method and URI of a `response completed` log line (`http.request.method=GET
/// http.request.uri="/v2/..."`; the value is quoted only when it needs to be).
fn logged_request(line: &str) -> Option<(&str, &str)> {
    let field = |key: &str| -> Option<&str> {
        let rest = line.split(key).nth(1)?;
        match rest.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next(),
            None => rest.split(' ').next(),
        }
    };
    Some((field("http.request.method=")?, field("http.request.uri=")?))
}

fn listening_port(line: &str) -> Option<u16> {
    let rest = line.split("listening on ").nth(1)?;
    // With TLS the line reads `listening on 127.0.0.1:PORT, tls`.
    let addr = rest.split(['"', ' ', ',']).next()?;
    addr.rsplit(':').next()?.parse().ok()
}

fn config_yaml(dir: &Path, options: &Options) -> Result<String, FixtureError> {
    let storage = dir.join("data");
    let mut yaml = format!(
        "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
         http:\n  addr: 127.0.0.1:0\n  secret: meshanics-test-secret\n",
        storage.display()
    );
    if let Some((cert, key)) = &options.tls {
        yaml.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ));
        if !options.client_cas.is_empty() {
            yaml.push_str("    clientcas:\n");
            for ca in &options.client_cas {
                yaml.push_str(&format!("      - {}\n", ca.display()));
            }
        }
    }
    if let Some(remote) = &options.proxy_remote {
        yaml.push_str(&format!("proxy:\n  remoteurl: {remote}\n"));
    }
    match &options.auth {
        Auth::Anonymous => {}
        Auth::Htpasswd { username, password } => {
            let hash =
                bcrypt::hash(password, 5).map_err(|e| FixtureError::Invalid(e.to_string()))?;
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, format!("{username}:{hash}\n"))
                .map_err(io_err("writing", &htpasswd))?;
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: meshanics-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        Auth::Token {
            realm,
            service,
            issuer,
            root_cert_bundle,
        } => {
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                root_cert_bundle.display()
            ));
        }
    }
    Ok(yaml)
}
