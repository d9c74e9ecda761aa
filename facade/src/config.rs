//! The facade's configuration: one TOML file, read once at start into typed structs and
//! checked whole (every file it names is opened and parsed), so that a facade that starts is a
//! facade that can serve. A bad config is a [`ConfigError`] that names the key and the file;
//! the binary exits with code 64 (`EX_USAGE`) on it.
//!
//! ```toml
//! listen = "0.0.0.0:5443"            # the device port (mutual TLS)
//! operator_listen = "127.0.0.1:9464" # /healthz and /metrics, plain HTTP, not for devices
//! state_dir = "/var/lib/meshanics-facade"
//! metadata_dir = "/var/lib/meshanics-facade/metadata"   # served as /meta/<file>; where
//!                                    # `meshctl publish` stores (files backend; without it,
//!                                    # publishing is refused naming this key). Not read with
//!                                    # [state] backend = "postgres": the metadata is in the
//!                                    # database (a warning at start says so)
//!
//! [tls]                              # the device listener; re-read on SIGHUP and when one
//!                                    # of these files changes (see below)
//! certificate = "/etc/meshanics/facade.crt"
//! private_key = "/etc/meshanics/facade.key"
//! device_ca = "/etc/meshanics/device-ca.crt"
//! crls = ["/etc/meshanics/devices.crl"]   # optional: PEM or DER revocation lists; with
//!                                    # any, a device whose issuer has none is refused
//!
//! [limits]                           # all optional
//! max_connections = 1024             # device connections served at once (verified ones)
//! max_connections_per_device = 8     # per device certificate; more are closed after the
//!                                    # handshake
//! max_streams_per_device = 128       # requests in progress per device, all its connections
//!                                    # together; more get 429 with Retry-After
//! max_handshakes = 128               # TLS handshakes in progress; more wait up to
//!                                    # handshake_timeout for a turn, then are closed
//! max_handshakes_per_source = 8      # per client IP address (IPv6: per /64); past them,
//!                                    # only while half of max_handshakes is free, else closed
//! handshake_timeout = "5s"
//! header_timeout = "10s"
//! idle_timeout = "2m"                # no request started or ended, none waiting for its
//!                                    # answer, no response byte sent for this long: closed
//!                                    # (PINGs do not count)
//! manifest_buffer_bytes = 67108864   # manifests read whole from upstreams into memory at
//!                                    # once, all devices (64 MiB; the cache streams its own)
//! upstream_connect_timeout = "10s"
//! upstream_response_timeout = "30s"
//! upstream_read_timeout = "1m"
//! shutdown_grace = "30s"
//! max_meta_bytes = 16777216
//! max_unsized_blob_bytes = 17179869184   # a blob sent without Content-Length
//!
//! [cache]                            # the content cache (all optional)
//! dir = "/var/cache/meshanics-facade"   # default: <state_dir>/cache; made if missing
//! max_bytes = 10737418240            # size cap (default 10 GiB); least recently used
//!                                    # entries are evicted to stay under it; content
//!                                    # bigger than it streams through uncached; 0 turns
//!                                    # the cache off (every request goes upstream)
//!
//! master_key_file = "/etc/meshanics/master-key"  # seals connection credentials (32 random
//!                                    # bytes or 64 hex, mode 0600); or the systemd
//!                                    # credential `master-key`. Without a key, connections
//!                                    # (and the operator socket) are off. Every record is
//!                                    # opened at start: one this key does not open exits 64.
//!
//! [cloud]                            # all optional
//! ecr_sts_endpoint = "https://sts.eu-west-1.amazonaws.com/"   # default: the role's region
//! ecr_api_endpoint = "https://api.ecr.eu-west-1.amazonaws.com/"
//! token_margin = "5m"                # refresh cloud tokens min(this, 10 % of lifetime) early
//!
//! [state]                            # where connections, approvals, the published metadata
//!                                    # and the operator audit log live (optional; default:
//!                                    # files in state_dir and metadata_dir)
//! backend = "postgres"               # "files" (default) or "postgres" (a facade cluster:
//!                                    # every replica on one database sees every change)
//! url = "postgres://facade@db.lan:5432/meshanics"   # no password here: it is refused
//! password_file = "/etc/meshanics/postgres-password"   # or the systemd credential
//!                                    # `postgres-password`; none: trust/peer/cert auth
//! sslmode = "verify-full"            # "disable" (labs only), "verify-full" (default with a
//!                                    # ca_file: TLS, the server's certificate checked
//!                                    # against ca_file and its name against the URL's host)
//! ca_file = "/etc/meshanics/postgres-ca.crt"
//! resync_interval = "30s"            # full reload besides LISTEN/NOTIFY (a lost
//!                                    # notification costs at most this; a database gone
//!                                    # silent is noticed within this + 10 s)
//!
//! [[upstreams]]                      # upstreams approved in the file (labs, bootstrapping);
//!                                    # operators connect registries with `meshctl registry add`
//! host = "ghcr.io"
//! username = "bot"
//! token_file = "/etc/meshanics/ghcr.token"
//! ca_file = "/etc/meshanics/private-ca.crt"   # optional: a private CA for this host only
//! plain_http = false                          # plain HTTP only for labs and tests
//! storage_hosts = ["minio.lan:9000"]          # optional: where its blob redirects may lead
//!                                             # even on a private address (HOST or HOST:PORT)
//! ```
//!
//! The device port admits in two steps. An accepted socket first needs a handshake turn
//! (`max_handshakes`; each IP address has `max_handshakes_per_source` of its own and may take
//! more only while half the turns are free, so one address never holds more than half);
//! a connection slot (`max_connections`, and
//! `max_connections_per_device`) is taken only once its device certificate verified, so a
//! client without a certificate can hold neither slots nor more than its share of handshakes.
//! A verified connection waits for a free slot. The accept loop itself stops only at
//! `max_connections + 2 * max_handshakes` open sockets (a file descriptor guard; the unit's
//! `LimitNOFILE` is above it). A manifest waits up to 2 s for room in
//! `manifest_buffer_bytes` (its announced size, or 4 MiB when unannounced), then gets 503
//! with Retry-After.
//!
//! Redirects off an upstream's origin (blob storage) are followed to public addresses and to
//! its `storage_hosts`, never to loopback, private, link-local or reserved addresses
//! otherwise, nor to `listen` or `operator_listen` (see
//! [`RedirectRules`](crate::registry_client::RedirectRules)).
//!
//! Durations are written as in the agent's config (humantime, see
//! [`meshanics_shared::duration`]): `"500ms"`, `"30s"`, `"5m"`, `"1h 30m"`. A bare integer is
//! a number of seconds, as configs written before durations had units say it
//! (`idle_timeout = 120`); `token_margin` is also read under its old name,
//! `token_margin_seconds`.
//!
//! The `[tls]` files are the one part read again while the facade runs: on SIGHUP
//! (`systemctl reload`), and within 30 s of a change to any of them, all of them are
//! re-read and handshakes from then on use them (a CRL that revokes a device keeps it out
//! from its next connection; connections already open are not cut). A reload that fails
//! (a file missing or half written, a CRL that does not parse) keeps the previous files in
//! force and logs an error naming the key and the file; `facade_tls_reloads_total{outcome}`
//! counts both outcomes. A CRL past its `nextUpdate` is still enforced, since refusing every
//! device because the CRL's publisher is late would take the fleet offline: it is logged as
//! a warning (at start, at each reload, and when it expires while loaded) and shown by
//! `facade_crl_expired{file}` (and `facade_crl_next_update_seconds{file}`), so that an
//! alert can page whoever publishes it. Everything else in this file is read once.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshanics_shared::manifest::MAX_MANIFEST_SIZE;
use meshanics_shared::tls::{self, ServerFiles, TlsError};
use meshanics_shared::{Registry, duration};
use rustls::RootCertStore;
use serde::Deserialize;

use crate::connections::pasted;
use crate::device_tls::DeviceTls;
use crate::providers::{PresentedCredentials, Secret};
use crate::registry_client::StorageHost;

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where devices connect (mutual TLS).
    pub listen: SocketAddr,
    /// Where operators and Prometheus connect (`/healthz`, `/metrics`).
    pub operator_listen: SocketAddr,
    /// The facade's own state folder (exists, is a folder).
    pub state_dir: PathBuf,
    /// The signed metadata files served under `/meta/`, if any.
    pub metadata_dir: Option<PathBuf>,
    /// The device-facing TLS configuration (client certificates required), reloadable.
    pub tls: DeviceTls,
    /// Limits and timeouts.
    pub limits: Limits,
    /// The upstreams approved in the file.
    pub upstreams: Vec<UpstreamConfig>,
    /// The master key file that seals connection credentials, if configured.
    pub master_key_file: Option<PathBuf>,
    /// Cloud token settings.
    pub cloud: CloudConfig,
    /// The content cache.
    pub cache: CacheConfig,
    /// Where the connection state lives (`[state]`).
    pub state: StateConfig,
}

/// Where connections, approvals and the audit log live (`[state]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StateConfig {
    /// Files in the state dir (the default: nothing to install).
    #[default]
    Files,
    /// A PostgreSQL database shared by every replica.
    Postgres(PostgresConfig),
}

/// The PostgreSQL backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// The connection URL, without a password.
    pub url: String,
    /// The file holding the password, if any (else the systemd credential
    /// `postgres-password`, else none).
    pub password_file: Option<PathBuf>,
    /// TLS to the server: the CA that signs its certificate (`sslmode = "verify-full"`), or
    /// `None` for plain TCP (`sslmode = "disable"`).
    pub ca_file: Option<PathBuf>,
    /// The full reload besides LISTEN/NOTIFY.
    pub resync_interval: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    #[serde(default)]
    backend: Option<String>,
    url: Option<String>,
    password_file: Option<PathBuf>,
    sslmode: Option<String>,
    ca_file: Option<PathBuf>,
    resync_interval: Option<String>,
}

// === impl RawState ===

impl RawState {
    fn check(self) -> Result<StateConfig, ConfigError> {
        let invalid =
            |key: &'static str, reason: &'static str| ConfigError::Invalid { key, reason };
        match self.backend.as_deref() {
            None | Some("files") => {
                if self.url.is_some() {
                    return Err(invalid(
                        "state.url",
                        "set backend = \"postgres\" to use a database",
                    ));
                }
                Ok(StateConfig::Files)
            }
            Some("postgres") => {
                let Some(url) = self.url else {
                    return Err(invalid(
                        "state.url",
                        "the postgres backend needs a postgres:// URL",
                    ));
                };
                let parsed = url::Url::parse(&url)
                    .map_err(|_| invalid("state.url", "not a postgres:// URL"))?;
                if !matches!(parsed.scheme(), "postgres" | "postgresql")
                    || parsed.host_str().is_none()
                {
                    return Err(invalid("state.url", "not a postgres:// URL with a host"));
                }
                if parsed.password().is_some() {
                    return Err(invalid(
                        "state.url",
                        "the URL holds a password: put it in password_file or the systemd credential `postgres-password`",
                    ));
                }
                if parsed.query().is_some() {
                    return Err(invalid(
                        "state.url",
                        "set TLS with sslmode and ca_file, not in the URL",
                    ));
                }
                let ca_file = match (self.sslmode.as_deref(), self.ca_file) {
                    (Some("disable"), None) => None,
                    (Some("disable"), Some(_)) => {
                        return Err(invalid("state.ca_file", "sslmode = \"disable\" uses no CA"));
                    }
                    (None | Some("verify-full"), Some(ca)) => Some(ca),
                    (None | Some("verify-full"), None) => {
                        return Err(invalid(
                            "state.ca_file",
                            "TLS to the database needs the CA of its certificate (or sslmode = \"disable\" in labs)",
                        ));
                    }
                    _ => return Err(invalid("state.sslmode", "\"verify-full\" or \"disable\"")),
                };
                let resync_interval = match self.resync_interval {
                    None => Duration::from_secs(30),
                    Some(text) => duration::parse(&text).map_err(|_| {
                        invalid("state.resync_interval", "a duration such as \"30s\"")
                    })?,
                };
                if resync_interval.is_zero() {
                    return Err(invalid("state.resync_interval", "must be above zero"));
                }
                Ok(StateConfig::Postgres(PostgresConfig {
                    url,
                    password_file: self.password_file,
                    ca_file,
                    resync_interval,
                }))
            }
            Some(_) => Err(invalid("state.backend", "\"files\" or \"postgres\"")),
        }
    }
}

/// The content cache's settings (`[cache]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// The cache folder (exists and is a folder when the cache is on).
    pub dir: PathBuf,
    /// The size cap in bytes; 0: the cache is off.
    pub max_bytes: u64,
}

/// The default cache size cap: 10 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// Cloud token settings, all with defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudConfig {
    /// The STS endpoint for ECR roles (default: AWS's, in the role's region).
    pub ecr_sts_endpoint: Option<String>,
    /// The ECR API endpoint (default: AWS's, in the role's region).
    pub ecr_api_endpoint: Option<String>,
    /// The largest margin before a cloud token's expiry at which it is refreshed.
    #[serde(
        alias = "token_margin_seconds",
        deserialize_with = "duration::deserialize"
    )]
    pub token_margin: Duration,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            ecr_sts_endpoint: None,
            ecr_api_endpoint: None,
            token_margin: Duration::from_secs(300),
        }
    }
}

/// Limits and timeouts, all with defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Device connections served at once, counted once their certificate verified; more
    /// wait for a free slot.
    pub max_connections: usize,
    /// Connections one device certificate may hold at once; more are closed after the
    /// handshake.
    pub max_connections_per_device: usize,
    /// Requests one device may have in progress at once over all its connections; more are
    /// answered 429 with `Retry-After`. Also each HTTP/2 connection's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub max_streams_per_device: u32,
    /// TLS handshakes in progress at once; more wait up to `handshake_timeout` for a turn.
    pub max_handshakes: usize,
    /// TLS handshakes in progress at once from one IP address (IPv6: one /64) that are its
    /// own; past them it may take more only while half of `max_handshakes` is free, and is
    /// closed at once otherwise.
    pub max_handshakes_per_source: usize,
    /// How long a TLS handshake may take (and, apart, how long one may wait for its turn).
    #[serde(deserialize_with = "duration::deserialize")]
    pub handshake_timeout: Duration,
    /// How long a client may take to send a request's headers.
    #[serde(deserialize_with = "duration::deserialize")]
    pub header_timeout: Duration,
    /// How long a connection may go without stream progress (a request started or ended, a
    /// response body byte sent) and without a request waiting for its answer before it is
    /// closed. Control frames (HTTP/2 PINGs) do not count, and neither does a reader that
    /// stopped reading mid-body.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
    /// How long connecting to an upstream may take.
    #[serde(deserialize_with = "duration::deserialize")]
    pub upstream_connect_timeout: Duration,
    /// How long from sending an upstream request to its response headers.
    #[serde(deserialize_with = "duration::deserialize")]
    pub upstream_response_timeout: Duration,
    /// How long an upstream body may stall between two reads.
    #[serde(deserialize_with = "duration::deserialize")]
    pub upstream_read_timeout: Duration,
    /// How long streams may go on finishing after a shutdown signal.
    #[serde(deserialize_with = "duration::deserialize")]
    pub shutdown_grace: Duration,
    /// The largest file `/meta/` serves, in bytes.
    pub max_meta_bytes: u64,
    /// The most bytes streamed for a blob whose upstream announced no size (an endless body
    /// ends here, aborted).
    pub max_unsized_blob_bytes: u64,
    /// Bytes of manifests held in memory at once (read whole to verify them), all devices
    /// together; at least the 4 MiB a single manifest may have.
    pub manifest_buffer_bytes: u64,
}

/// One approved upstream from the file.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The registry, as connections are keyed (`docker.io`, `ghcr.io`, `host:port`).
    pub registry: Registry,
    /// Speak plain HTTP to it (labs and tests only).
    pub plain_http: bool,
    /// Basic credentials (username and token), if any.
    pub credentials: Option<PresentedCredentials>,
    /// A private CA bundle trusted for this upstream instead of the public roots.
    pub ca: Option<RootCertStore>,
    /// Hosts its redirects may lead to whatever their address (its blob storage).
    pub storage_hosts: Vec<StorageHost>,
}

/// Why the configuration was refused. Each variant names the key and, where there is one,
/// the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or has a wrong, missing or unknown key.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the key and line.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A TLS file named by `key` is unusable.
    #[error("config key `{key}`: {source}")]
    Tls {
        /// The key (`tls.private_key`, ...).
        key: &'static str,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// A folder named by `key` is missing or not a folder.
    #[error("config key `{key}`: {path} is not a readable folder: {reason}")]
    Folder {
        /// The key.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An upstream entry is wrong.
    #[error("config key `upstreams[{index}]` ({host}): {reason}")]
    Upstream {
        /// Its position, from 0.
        index: usize,
        /// Its `host` as written.
        host: String,
        /// Why.
        reason: String,
    },
    /// A limit is out of range.
    #[error("config key `limits.{key}`: {reason}")]
    Limit {
        /// The key.
        key: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Another key has a bad value.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: &'static str,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: SocketAddr,
    operator_listen: SocketAddr,
    state_dir: PathBuf,
    metadata_dir: Option<PathBuf>,
    tls: RawTls,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    master_key_file: Option<PathBuf>,
    #[serde(default)]
    cloud: CloudConfig,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    state: RawState,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    dir: Option<PathBuf>,
    max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: PathBuf,
    private_key: PathBuf,
    device_ca: PathBuf,
    #[serde(default)]
    crls: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    host: String,
    #[serde(default)]
    plain_http: bool,
    username: Option<String>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    storage_hosts: Vec<String>,
}

// === impl Config ===

impl Config {
    /// Reads and checks the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = fs_err::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and checks config `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        raw.limits.check()?;
        check_folder("state_dir", &raw.state_dir)?;
        if let Some(dir) = &raw.metadata_dir {
            check_folder("metadata_dir", dir)?;
        }
        let tls = DeviceTls::load(ServerFiles {
            certificate: raw.tls.certificate,
            private_key: raw.tls.private_key,
            client_ca: raw.tls.device_ca,
            crls: raw.tls.crls,
        })?;
        if raw.cloud.ecr_sts_endpoint.is_some() != raw.cloud.ecr_api_endpoint.is_some() {
            return Err(ConfigError::Invalid {
                key: "cloud.ecr_sts_endpoint",
                reason: "set both ecr_sts_endpoint and ecr_api_endpoint, or neither",
            });
        }
        let mut seen = BTreeSet::new();
        let mut upstreams = Vec::with_capacity(raw.upstreams.len());
        for (index, upstream) in raw.upstreams.into_iter().enumerate() {
            let checked = upstream.check(index)?;
            if !seen.insert(checked.registry.clone()) {
                return Err(ConfigError::Upstream {
                    index,
                    host: checked.registry.to_string(),
                    reason: "approved twice (Docker Hub's aliases are one registry)".into(),
                });
            }
            upstreams.push(checked);
        }
        let cache = raw.cache.check(&raw.state_dir)?;
        let state = raw.state.check()?;
        Ok(Config {
            state,
            cache,
            listen: raw.listen,
            operator_listen: raw.operator_listen,
            state_dir: raw.state_dir,
            metadata_dir: raw.metadata_dir,
            tls,
            limits: raw.limits,
            upstreams,
            master_key_file: raw.master_key_file,
            cloud: raw.cloud,
        })
    }

    /// The facade's own listen addresses: never a redirect's target.
    pub fn own_listeners(&self) -> Vec<SocketAddr> {
        vec![self.listen, self.operator_listen]
    }
}

fn check_folder(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    let folder_err = |reason: String| ConfigError::Folder {
        key,
        path: path.to_owned(),
        reason,
    };
    let meta = fs_err::metadata(path).map_err(|e| folder_err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(folder_err("not a folder".into()));
    }
    Ok(())
}

// === impl RawCache ===

impl RawCache {
    /// The settings, the folder made if missing (when the cache is on).
    fn check(self, state_dir: &Path) -> Result<CacheConfig, ConfigError> {
        let dir = self.dir.unwrap_or_else(|| state_dir.join("cache"));
        let max_bytes = self.max_bytes.unwrap_or(DEFAULT_CACHE_BYTES);
        if max_bytes > 0 {
            fs_err::create_dir_all(&dir).map_err(|e| ConfigError::Folder {
                key: "cache.dir",
                path: dir.clone(),
                reason: e.to_string(),
            })?;
            check_folder("cache.dir", &dir)?;
        }
        Ok(CacheConfig { dir, max_bytes })
    }
}

// === impl Limits ===

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_device: 8,
            max_streams_per_device: 128,
            max_handshakes: 128,
            max_handshakes_per_source: 8,
            handshake_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_response_timeout: Duration::from_secs(30),
            upstream_read_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            max_meta_bytes: 16 * 1024 * 1024,
            max_unsized_blob_bytes: 16 * 1024 * 1024 * 1024,
            manifest_buffer_bytes: 64 * 1024 * 1024,
        }
    }
}

impl Limits {
    fn check(&self) -> Result<(), ConfigError> {
        let durations = [
            ("handshake_timeout", self.handshake_timeout),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("upstream_connect_timeout", self.upstream_connect_timeout),
            ("upstream_response_timeout", self.upstream_response_timeout),
            ("upstream_read_timeout", self.upstream_read_timeout),
        ];
        let counts = [
            ("max_meta_bytes", self.max_meta_bytes),
            ("max_unsized_blob_bytes", self.max_unsized_blob_bytes),
        ];
        let positive = |key| ConfigError::Limit {
            key,
            reason: "must be greater than 0",
        };
        if let Some((key, _)) = durations.iter().find(|(_, value)| value.is_zero()) {
            return Err(positive(key));
        }
        if let Some((key, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return Err(positive(key));
        }
        let sizes = [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_device",
                self.max_connections_per_device,
            ),
            ("max_handshakes", self.max_handshakes),
            ("max_handshakes_per_source", self.max_handshakes_per_source),
        ];
        if let Some((key, _)) = sizes.iter().find(|(_, value)| *value == 0) {
            return Err(positive(key));
        }
        if self.max_streams_per_device == 0 {
            return Err(positive("max_streams_per_device"));
        }
        let too_many = |key| ConfigError::Limit {
            key,
            reason: "must be at most 1000000",
        };
        if let Some((key, _)) = sizes.iter().find(|(_, value)| *value > 1_000_000) {
            return Err(too_many(key));
        }
        if self.manifest_buffer_bytes < MAX_MANIFEST_SIZE {
            return Err(ConfigError::Limit {
                key: "manifest_buffer_bytes",
                reason: "must be at least 4194304 (one manifest of the largest size)",
            });
        }
        if self.manifest_buffer_bytes / 1024 > u64::from(u32::MAX) {
            return Err(ConfigError::Limit {
                key: "manifest_buffer_bytes",
                reason: "must be under 4 TiB",
            });
        }
        Ok(())
    }

    /// Sockets the device listener keeps open at once, whatever they are doing (the accept
    /// loop's file descriptor guard): the connection slots, the handshakes in progress and
    /// as many again waiting for a handshake turn or a slot.
    pub fn max_sockets(&self) -> usize {
        self.max_connections
            .saturating_add(self.max_handshakes.saturating_mul(2))
    }

    /// The TLS handshake deadline.
    pub fn handshake(&self) -> Duration {
        self.handshake_timeout
    }

    /// The request header deadline.
    pub fn header(&self) -> Duration {
        self.header_timeout
    }

    /// The idle connection deadline.
    pub fn idle(&self) -> Duration {
        self.idle_timeout
    }

    /// The shutdown grace period.
    pub fn grace(&self) -> Duration {
        self.shutdown_grace
    }

    /// The upstream timeouts.
    pub fn upstream(&self) -> UpstreamTimeouts {
        UpstreamTimeouts {
            connect: self.upstream_connect_timeout,
            response: self.upstream_response_timeout,
            read: self.upstream_read_timeout,
        }
    }
}

/// How long the facade waits on an upstream.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    /// To connect.
    pub connect: Duration,
    /// From request to response headers.
    pub response: Duration,
    /// Between two reads of a body.
    pub read: Duration,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Limits::default().upstream()
    }
}

// === impl RawUpstream ===

impl RawUpstream {
    fn check(self, index: usize) -> Result<UpstreamConfig, ConfigError> {
        let host = self.host.clone();
        let err = |reason: String| ConfigError::Upstream {
            index,
            host: host.clone(),
            reason,
        };
        let registry = pasted::registry(&self.host).map_err(|e| err(e.to_string()))?;
        let credentials = match (self.username, self.token_file) {
            (None, None) => None,
            (Some(username), Some(path)) => {
                let token =
                    fs_err::read_to_string(&path).map_err(|e| err(format!("`token_file`: {e}")))?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(err(format!("`token_file` {} is empty", path.display())));
                }
                Some(PresentedCredentials::basic(
                    username,
                    Secret::new(token.to_owned()),
                ))
            }
            (Some(_), None) => return Err(err("`username` without `token_file`".into())),
            (None, Some(_)) => return Err(err("`token_file` without `username`".into())),
        };
        let ca = match &self.ca_file {
            Some(path) => {
                Some(tls::load_ca_bundle(path).map_err(|e| err(format!("`ca_file`: {e}")))?)
            }
            None => None,
        };
        let storage_hosts = self
            .storage_hosts
            .iter()
            .map(|text| text.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| err(format!("`storage_hosts`: {e}")))?;
        Ok(UpstreamConfig {
            registry,
            plain_http: self.plain_http,
            credentials,
            ca,
            storage_hosts,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
