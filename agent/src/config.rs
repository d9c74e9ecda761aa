//! The agent's configuration: one TOML file, read once at start into typed structs and
//! checked whole, so that a device with a bad config says every wrong key at once and exits
//! with code 64 instead of failing half-way through an update.
//!
//! ```toml
//! [facade]
//! url = "https://facade.example.com:8443"
//! # or, for facade replicas without a load balancer in front (tried in order, sticky):
//! # urls = ["https://facade-a.example.com:8443", "https://facade-b.example.com:8443"]
//! ca = "/etc/meshanics/facade-ca.pem"      # one CA for every replica
//!
//! [device]
//! certificate = "/etc/meshanics/device.pem"
//! key = "/etc/meshanics/device.key"     # or: key_credential = "device-key"
//! class = "gateway"
//! platform = "linux/arm64"                # default: detected
//!
//! [trust]
//! anchor = "/etc/meshanics/root.cose"
//!
//! [agent]
//! state_dir = "/var/lib/meshanics-agent"
//! poll_interval = "5m"
//! cycle_deadline = "6h"                   # a cycle still running then is abandoned
//! concurrency = 4
//! bandwidth_limit = "2MiB"               # per second; optional
//!
//! [network]                               # optional
//! connect_timeout = "10s"
//! header_timeout = "30s"                  # request sent -> response head
//! stall_floor = "1KiB"                    # per second
//! stall_window = "30s"
//! attempts = 5
//!
//! [apply]                                 # optional
//! hook = "/usr/libexec/meshanics/apply"
//! hook_timeout = "5m"
//! health_check = ["/usr/bin/curl", "-fsS", "http://127.0.0.1:8080/healthz"]  # or a path
//! health_settle = "10s"                   # wait after the hook before checking
//! health_timeout = "1m"                   # a check still running then has failed
//!
//! [rollout]                               # optional
//! download_ahead = false                  # true: pull a target before this device's
//!                                         # rollout wave opens, apply it once it opens
//! ```
//!
//! The hook and the health check run once per slot (one slot per target this device runs),
//! with the slot's details in their environment (`MESHANICS_EVENT`, `MESHANICS_PATH`,
//! `MESHANICS_TARGET`, `MESHANICS_KIND`, ...: see the agent's README). A failing or
//! timed-out health check rolls the slot back and holds that release back until the signed
//! metadata changes.
//!
//! Durations are humantime's, as in the facade's config: `"500ms"`, `"30s"`, `"5m"`,
//! `"1h 30m"`, `"2d"` (see [`meshanics_shared::duration`]).
//!
//! `key_credential` names a systemd credential: the key is read from
//! `$CREDENTIALS_DIRECTORY/<name>` (`LoadCredential=` in the unit), so it never sits in a
//! world-readable place.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshanics_shared::{Platform, duration, tls};
use serde::Deserialize;

/// The parsed, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the facade is and how to trust it.
    pub facade: Facade,
    /// This device's identity and what it runs.
    pub device: Device,
    /// The pinned trust anchor: the initial root metadata file.
    pub trust_anchor: PathBuf,
    /// The state directory (cache, trusted metadata, applied artifacts).
    pub state_dir: PathBuf,
    /// How often to look for updates.
    pub poll_interval: Duration,
    /// How long one update cycle may run before the service abandons it.
    pub cycle_deadline: Duration,
    /// How many blobs to download at once.
    pub concurrency: usize,
    /// A cap on download speed in bytes per second, if any.
    pub bandwidth_limit: Option<u64>,
    /// Network timeouts and retries.
    pub network: Network,
    /// The apply hook, if any.
    pub hook: Option<Hook>,
    /// The health check run after the hook, if any.
    pub health: Option<HealthCheck>,
    /// How the device follows signed rollout waves.
    pub rollout: RolloutConfig,
}

/// `[rollout]`: how the device follows signed rollout waves (docs/metadata.md 4.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RolloutConfig {
    /// Pull a target whose wave has not opened yet, so that it applies without a download
    /// once the wave opens (default: false, the download waits for the wave too).
    pub download_ahead: bool,
}

/// The facade's addresses and CA.
#[derive(Debug, Clone)]
pub struct Facade {
    /// `https://host[:port]` (no path), one per replica in the order they are tried; never
    /// empty (`facade.url` is a list of one).
    pub urls: Vec<http::Uri>,
    /// The CA bundle the facade's certificate must chain to.
    pub ca: PathBuf,
}

/// The device's identity.
#[derive(Debug, Clone)]
pub struct Device {
    /// The device certificate chain (PEM).
    pub certificate: PathBuf,
    /// The device's private key (PEM), possibly inside `$CREDENTIALS_DIRECTORY`.
    pub key: PathBuf,
    /// The hardware class targets select on.
    pub class: String,
    /// The platform manifests are chosen for.
    pub platform: Platform,
}

/// Network behaviour.
#[derive(Debug, Clone)]
pub struct Network {
    /// Limit on TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Limit on the wait for a response's status and headers once a request is sent.
    pub header_timeout: Duration,
    /// A transfer slower than this (bytes per second) over `stall_window` is cut and retried.
    pub stall_floor: u64,
    /// The window the floor is measured over.
    pub stall_window: Duration,
    /// Attempts per request before giving up (at least 1).
    pub attempts: u32,
    /// Offer only HTTP/1.1 (for a facade behind a proxy that mishandles HTTP/2).
    pub http1_only: bool,
}

/// The apply hook.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The program to run.
    pub path: PathBuf,
    /// How long it may run.
    pub timeout: Duration,
}

/// The health check: a command whose success says a freshly applied release works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The program to run (an executable file).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// How long to wait after the hook before running it (the workload starting up).
    pub settle: Duration,
    /// How long it may run; one still running then has failed.
    pub timeout: Duration,
}

/// The process environment the agent depends on, read once by `main` (the agent never
/// reads or changes the environment anywhere else).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$CREDENTIALS_DIRECTORY`, set by systemd for `LoadCredential=`.
    pub credentials_directory: Option<PathBuf>,
    /// `$NOTIFY_SOCKET`, set by systemd for `Type=notify` services.
    pub notify_socket: Option<std::ffi::OsString>,
    /// `$WATCHDOG_USEC`, set by systemd with `WatchdogSec=`.
    pub watchdog_usec: Option<String>,
    /// `$WATCHDOG_PID`: the watchdog is for this process only if it names it.
    pub watchdog_pid: Option<String>,
}

// === impl Environment ===

impl Environment {
    /// Reads the variables above from the process environment.
    pub fn from_process() -> Self {
        let text = |name: &str| std::env::var(name).ok();
        Environment {
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            notify_socket: std::env::var_os("NOTIFY_SOCKET"),
            watchdog_usec: text("WATCHDOG_USEC"),
            watchdog_pid: text("WATCHDOG_PID"),
        }
    }
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, dotted (`facade.url`), or empty for the file as a whole.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

/// Everything wrong with a configuration file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid configuration {path}:{}", render(.problems))]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    facade: RawFacade,
    #[serde(default)]
    device: RawDevice,
    #[serde(default)]
    trust: RawTrust,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    apply: RawApply,
    #[serde(default)]
    rollout: RawRollout,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFacade {
    url: Option<String>,
    urls: Option<Vec<String>>,
    ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    key_credential: Option<String>,
    class: Option<String>,
    platform: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    anchor: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    state_dir: Option<PathBuf>,
    poll_interval: Option<String>,
    cycle_deadline: Option<String>,
    concurrency: Option<i64>,
    bandwidth_limit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    connect_timeout: Option<String>,
    header_timeout: Option<String>,
    stall_floor: Option<String>,
    stall_window: Option<String>,
    attempts: Option<i64>,
    http1_only: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApply {
    hook: Option<PathBuf>,
    hook_timeout: Option<String>,
    health_check: Option<RawCommand>,
    health_settle: Option<String>,
    health_timeout: Option<String>,
}

/// A command: a program's path, or the program and its arguments.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawCommand {
    Path(PathBuf),
    Argv(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    download_ahead: Option<bool>,
}

/// Collects problems while the raw config is turned into a typed one.
#[derive(Debug, Default)]
struct Checker {
    problems: Vec<Problem>,
}

// === impl Config ===

impl Config {
    /// Reads and checks the file at `path`. Relative paths inside are taken relative to the
    /// file's folder.
    pub fn load(path: &Path, env: &Environment) -> Result<Config, ConfigError> {
        let text = fs_err::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            problems: vec![Problem {
                key: String::new(),
                reason: e.to_string(),
            }],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base, env).map_err(|problems| ConfigError {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and checks configuration text; relative paths are resolved against `base`.
    /// Files it names must exist and parse (certificates, keys, CA bundle, trust anchor,
    /// hook); every problem found is returned, not only the first.
    pub fn parse(text: &str, base: &Path, env: &Environment) -> Result<Config, Vec<Problem>> {
        // toml's message quotes the offending line and names an unknown field, which is
        // what an operator needs to find the key.
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            vec![Problem {
                key: String::new(),
                reason: e.to_string().trim_end().to_owned(),
            }]
        })?;
        let mut c = Checker::default();
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

        let urls = match (raw.facade.url, raw.facade.urls) {
            (Some(_), Some(_)) => {
                c.problem("facade.url", "set either url or urls, not both");
                None
            }
            (Some(url), None) => c
                .check("facade.url", parse_facade_url(&url))
                .map(|url| vec![url]),
            (None, Some(urls)) => c.check("facade.urls", parse_facade_urls(&urls)),
            (None, None) => {
                c.problem("facade.url", "missing (or set facade.urls)");
                None
            }
        };
        let ca = c.required("facade.ca", raw.facade.ca).map(resolve);
        if let Some(ca) = &ca {
            c.check(
                "facade.ca",
                tls::load_ca_bundle(ca).map_err(|e| e.to_string()),
            );
        }
        let certificate = c
            .required("device.certificate", raw.device.certificate)
            .map(resolve);
        let key = match (raw.device.key, raw.device.key_credential) {
            (Some(_), Some(_)) => {
                c.problem("device.key", "set either key or key_credential, not both");
                None
            }
            (Some(key), None) => Some(resolve(key)),
            (None, Some(name)) => c.check(
                "device.key_credential",
                credential_path(&name, env.credentials_directory.as_deref()),
            ),
            (None, None) => {
                c.problem("device.key", "missing (or set device.key_credential)");
                None
            }
        };
        if let (Some(cert), Some(key)) = (&certificate, &key)
            && let Some(chain) = c.check(
                "device.certificate",
                tls::load_certificates(cert).map_err(|e| e.to_string()),
            )
            && let Some(private) = c.check(
                "device.key",
                tls::load_private_key(key).map_err(|e| e.to_string()),
            )
            && let Some(ca) = &ca
            && let Ok(roots) = tls::load_ca_bundle(ca)
        {
            c.check(
                "device.key",
                tls::client_config_from(roots, Some((chain, private)))
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            );
        }
        let class = c
            .required("device.class", raw.device.class)
            .and_then(|class| c.check("device.class", check_class(&class).map(|()| class)));
        let platform = match raw.device.platform {
            Some(p) => c.check(
                "device.platform",
                Platform::parse(&p).map_err(|e| e.to_string()),
            ),
            None => Some(Platform::detect()),
        };
        let trust_anchor = c.required("trust.anchor", raw.trust.anchor).map(resolve);
        if let Some(anchor) = &trust_anchor {
            c.check("trust.anchor", readable_file(anchor));
        }
        let state_dir = c
            .required("agent.state_dir", raw.agent.state_dir)
            .and_then(|dir| {
                c.check(
                    "agent.state_dir",
                    if dir.is_absolute() {
                        Ok(dir)
                    } else {
                        Err("must be an absolute path".to_owned())
                    },
                )
            });
        let poll_interval = c.duration("agent.poll_interval", raw.agent.poll_interval, "5m");
        if poll_interval.is_some_and(|d| d < Duration::from_secs(1)) {
            c.problem("agent.poll_interval", "must be at least 1s");
        }
        // Generous on purpose: the deadline is a backstop against a cycle that never ends,
        // not a download budget. Hangs are caught sooner (the header timeout, the stall
        // window, the watchdog), so what reaches it is a transfer that keeps crawling above
        // the stall floor. Abandoning a cycle costs little (the next one resumes the
        // downloads with Range), and 6 h still moves about 2.7 GB at 1 Mbit/s per cycle.
        let cycle_deadline = c.duration("agent.cycle_deadline", raw.agent.cycle_deadline, "6h");
        if cycle_deadline.is_some_and(|d| d < Duration::from_secs(60)) {
            c.problem("agent.cycle_deadline", "must be at least 1m");
        }
        let concurrency = c.range("agent.concurrency", raw.agent.concurrency, 4, 1, 64);
        let bandwidth_limit = match raw.agent.bandwidth_limit {
            Some(text) => c
                .check("agent.bandwidth_limit", parse_size(&text))
                .and_then(|n| {
                    if n == 0 {
                        c.problem("agent.bandwidth_limit", "must be above 0 (or left out)");
                        None
                    } else {
                        Some(Some(n))
                    }
                }),
            None => Some(None),
        };
        let connect_timeout = c.duration(
            "network.connect_timeout",
            raw.network.connect_timeout,
            "10s",
        );
        let header_timeout =
            c.duration("network.header_timeout", raw.network.header_timeout, "30s");
        if header_timeout.is_some_and(|d| d < Duration::from_secs(1)) {
            c.problem("network.header_timeout", "must be at least 1s");
        }
        let stall_floor = match raw.network.stall_floor {
            Some(text) => c.check("network.stall_floor", parse_size(&text)),
            None => Some(1024),
        };
        let stall_window = c.duration("network.stall_window", raw.network.stall_window, "30s");
        let attempts = c.range("network.attempts", raw.network.attempts, 5, 1, 100);
        let hook_timeout = c.duration("apply.hook_timeout", raw.apply.hook_timeout, "5m");
        let hook = match raw.apply.hook.map(resolve) {
            Some(path) => c
                .check("apply.hook", executable_file(&path).map(|()| path))
                .map(Some),
            None => Some(None),
        };
        let health_settle = c.duration("apply.health_settle", raw.apply.health_settle, "10s");
        let health_timeout = c.duration("apply.health_timeout", raw.apply.health_timeout, "1m");
        if health_timeout.is_some_and(|d| d.is_zero()) {
            c.problem("apply.health_timeout", "must be above 0");
        }
        let health_command = match raw.apply.health_check {
            None => Some(None),
            Some(command) => {
                let (program, args) = match command {
                    RawCommand::Path(path) => (Some(path), Vec::new()),
                    RawCommand::Argv(mut argv) => {
                        let program = (!argv.is_empty()).then(|| PathBuf::from(argv.remove(0)));
                        (program, argv)
                    }
                };
                match program.map(resolve) {
                    Some(program) => c.check(
                        "apply.health_check",
                        executable_file(&program).map(|()| Some((program, args))),
                    ),
                    None => {
                        c.problem("apply.health_check", "names no program");
                        None
                    }
                }
            }
        };
        let health = match (health_command, health_settle, health_timeout) {
            (Some(Some((program, args))), Some(settle), Some(timeout)) => Some(Some(HealthCheck {
                program,
                args,
                settle,
                timeout,
            })),
            (Some(None), Some(_), Some(_)) => Some(None),
            _ => None,
        };

        match (
            urls,
            ca,
            certificate,
            key,
            class,
            platform,
            trust_anchor,
            state_dir,
            poll_interval,
            cycle_deadline,
            concurrency,
            bandwidth_limit,
            connect_timeout,
            header_timeout,
            stall_floor,
            stall_window,
            attempts,
            hook_timeout,
            hook,
            health,
        ) {
            (
                Some(urls),
                Some(ca),
                Some(certificate),
                Some(key),
                Some(class),
                Some(platform),
                Some(trust_anchor),
                Some(state_dir),
                Some(poll_interval),
                Some(cycle_deadline),
                Some(concurrency),
                Some(bandwidth_limit),
                Some(connect_timeout),
                Some(header_timeout),
                Some(stall_floor),
                Some(stall_window),
                Some(attempts),
                Some(hook_timeout),
                Some(hook),
                Some(health),
            ) if c.problems.is_empty() => Ok(Config {
                facade: Facade { urls, ca },
                device: Device {
                    certificate,
                    key,
                    class,
                    platform,
                },
                trust_anchor,
                state_dir,
                poll_interval,
                cycle_deadline,
                concurrency: usize::try_from(concurrency).unwrap_or(1),
                bandwidth_limit,
                network: Network {
                    connect_timeout,
                    header_timeout,
                    stall_floor,
                    stall_window,
                    attempts: u32::try_from(attempts).unwrap_or(1),
                    http1_only: raw.network.http1_only.unwrap_or(false),
                },
                hook: hook.map(|path| Hook {
                    path,
                    timeout: hook_timeout,
                }),
                health,
                rollout: RolloutConfig {
                    download_ahead: raw.rollout.download_ahead.unwrap_or(false),
                },
            }),
            _ => Err(c.problems),
        }
    }
}

// === impl Checker ===

impl Checker {
    fn problem(&mut self, key: &str, reason: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_owned(),
            reason: reason.into(),
        });
    }

    fn required<T>(&mut self, key: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.problem(key, "missing");
        }
        value
    }

    fn check<T>(&mut self, key: &str, result: Result<T, String>) -> Option<T> {
        result.map_err(|reason| self.problem(key, reason)).ok()
    }

    fn duration(&mut self, key: &str, value: Option<String>, default: &str) -> Option<Duration> {
        let text = value.unwrap_or_else(|| default.to_owned());
        self.check(key, duration::parse(&text).map_err(|e| e.to_string()))
    }

    fn range(
        &mut self,
        key: &str,
        value: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let n = value.unwrap_or(default);
        if n < min || n > max {
            self.problem(key, format!("must be between {min} and {max}, not {n}"));
            return None;
        }
        Some(n)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.key, self.reason)
        }
    }
}

fn render(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

fn parse_facade_url(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("must be an https:// URL (the facade is only reached over mutual TLS)".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err("must not have a path (the facade serves /v2/ and /meta/ at its root)".into());
    }
    Ok(uri)
}

/// The replica list: at least one URL, each a facade URL, none twice.
fn parse_facade_urls(texts: &[String]) -> Result<Vec<http::Uri>, String> {
    if texts.is_empty() {
        return Err("must list at least one URL".into());
    }
    let mut urls: Vec<http::Uri> = Vec::with_capacity(texts.len());
    for text in texts {
        let url = parse_facade_url(text).map_err(|reason| format!("{text:?} {reason}"))?;
        if urls.iter().any(|u| u.authority() == url.authority()) {
            return Err(format!("{text:?} is listed twice"));
        }
        urls.push(url);
    }
    Ok(urls)
}

fn credential_path(name: &str, directory: Option<&Path>) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("{name:?} is not a credential name"));
    }
    let directory = directory.ok_or_else(|| {
        "names a systemd credential but $CREDENTIALS_DIRECTORY is not set (LoadCredential= in the unit)"
            .to_owned()
    })?;
    Ok(directory.join(name))
}

fn check_class(class: &str) -> Result<(), String> {
    if class.is_empty()
        || class.len() > 64
        || !class
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("must be 1 to 64 of [A-Za-z0-9._-]".into());
    }
    Ok(())
}

fn readable_file(path: &Path) -> Result<(), String> {
    fs_err::File::open(path)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn executable_file(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs_err::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not an executable file", path.display()));
    }
    Ok(())
}

/// Parses a byte count: `1048576`, `512KiB`, `10MiB`, `1GiB`, `500kB`, `2MB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 512KiB or 10MiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "KiB" => 1024,
        "MB" => 1000 * 1000,
        "MiB" => 1024 * 1024,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown unit {other:?} in {text:?}")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests;
