use std::fs;
use std::time::Duration;

use meshanics_shared::devpki::DevCa;

use super::*;

/// A facade config on 127.0.0.1:0 (both listeners) keeping its state in `dir`, with
/// `server.crt`, `server.key` and `ca.crt` there as its TLS files, and `extra` lines at the
/// end of its `[tls]` table.
pub(crate) fn toml_in(dir: &Path, extra: &str) -> String {
    let path = |name: &str| dir.join(name).display().to_string();
    format!(
        r#"
listen = "127.0.0.1:0"
operator_listen = "127.0.0.1:0"
state_dir = "{state}"

[tls]
certificate = "{cert}"
private_key = "{key}"
device_ca = "{ca}"
{extra}
"#,
        state = dir.display(),
        cert = path("server.crt"),
        key = path("server.key"),
        ca = path("ca.crt"),
    )
}

/// A folder with a valid server certificate, key, device CA and token file.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = DevCa::new("device CA").unwrap();
        let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        let other = ca.issue_server(&["other"]).unwrap();
        fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        fs::write(dir.path().join("server.crt"), &server.cert_pem).unwrap();
        fs::write(dir.path().join("server.key"), &server.key_pem).unwrap();
        fs::write(dir.path().join("other.key"), &other.key_pem).unwrap();
        fs::write(dir.path().join("token"), "s3cret\n").unwrap();
        fs::write(dir.path().join("garbage"), "not pem").unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn toml(&self, extra: &str) -> String {
        toml_in(self.dir.path(), extra)
    }

    fn parse(&self, text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("facade.toml"))
    }
}

#[test]
fn reads_a_complete_config_with_defaults() {
    let files = Files::new();
    let text = files.toml(&format!(
        r#"
[[upstreams]]
host = "127.0.0.1:5000"
plain_http = true

[[upstreams]]
host = "https://hub.docker.com/_/nginx"
username = "bot"
token_file = "{}"
"#,
        files.path("token")
    ));
    let config = files.parse(&text).unwrap();
    assert_eq!(config.limits.max_connections, 1024);
    assert_eq!(config.upstreams.len(), 2);
    assert_eq!(config.upstreams[0].registry.as_str(), "127.0.0.1:5000");
    assert!(config.upstreams[0].plain_http);
    assert!(config.upstreams[1].registry.is_docker_hub());
    let credentials = config.upstreams[1].credentials.as_ref().unwrap();
    assert_eq!(credentials.password.expose(), "s3cret");
}

#[test]
fn names_the_key_of_a_bad_private_key() {
    let files = Files::new();
    let text = files
        .toml("")
        .replace(&files.path("server.key"), &files.path("garbage"));
    let error = files.parse(&text).unwrap_err().to_string();
    assert!(error.contains("tls.private_key"), "{error}");
    assert!(error.contains("garbage"), "{error}");
}

#[test]
fn refuses_a_key_that_does_not_match_the_certificate() {
    let files = Files::new();
    let text = files
        .toml("")
        .replace(&files.path("server.key"), &files.path("other.key"));
    let error = files.parse(&text).unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Tls {
                key: "tls.private_key",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn names_an_unreadable_device_ca() {
    let files = Files::new();
    let text = files
        .toml("")
        .replace(&files.path("ca.crt"), &files.path("missing.crt"));
    let error = files.parse(&text).unwrap_err().to_string();
    assert!(error.contains("tls.device_ca"), "{error}");
    assert!(error.contains("missing.crt"), "{error}");
}

#[test]
fn refuses_unknown_keys_and_bad_limits() {
    let files = Files::new();
    let error = files.parse(&files.toml("\n[limits]\nmax_conections = 5\n"));
    assert!(error.unwrap_err().to_string().contains("max_conections"));
    let error = files.parse(&files.toml("\n[limits]\nidle_timeout = 0\n"));
    assert!(
        error
            .unwrap_err()
            .to_string()
            .contains("limits.idle_timeout")
    );
}

#[test]
fn reads_the_connection_budgets_and_refuses_ones_that_cannot_work() {
    let files = Files::new();
    let config = files.parse(&files.toml("")).unwrap();
    let limits = &config.limits;
    assert_eq!(
        (
            limits.max_handshakes,
            limits.max_handshakes_per_source,
            limits.max_connections_per_device,
            limits.max_streams_per_device,
            limits.manifest_buffer_bytes,
        ),
        (128, 8, 8, 128, 64 * 1024 * 1024)
    );
    assert_eq!(limits.max_sockets(), 1024 + 2 * 128);
    let text = files.toml(
        "\n[limits]\nmax_handshakes = 4\nmax_handshakes_per_source = 2\n\
         max_connections_per_device = 3\nmax_streams_per_device = 16\n\
         manifest_buffer_bytes = 8388608\n",
    );
    let limits = files.parse(&text).unwrap().limits;
    assert_eq!(limits.max_handshakes_per_source, 2);
    assert_eq!(limits.max_streams_per_device, 16);
    for (bad, key) in [
        ("max_handshakes = 0", "limits.max_handshakes"),
        (
            "max_handshakes_per_source = 0",
            "limits.max_handshakes_per_source",
        ),
        (
            "max_connections_per_device = 0",
            "limits.max_connections_per_device",
        ),
        (
            "max_streams_per_device = 0",
            "limits.max_streams_per_device",
        ),
        (
            "manifest_buffer_bytes = 1048576",
            "limits.manifest_buffer_bytes",
        ),
    ] {
        let error = files.parse(&files.toml(&format!("\n[limits]\n{bad}\n")));
        let message = error.unwrap_err().to_string();
        assert!(message.contains(key), "{bad}: {message}");
    }
}

#[test]
fn reads_durations_in_the_agents_dialect_and_bare_integers_as_seconds() {
    let files = Files::new();
    let text = files.toml(
        "\n[limits]\nidle_timeout = \"2m\"\nheader_timeout = \"1500ms\"\nshutdown_grace = 45\n\n[cloud]\ntoken_margin = \"1h 30m\"\n",
    );
    let config = files.parse(&text).unwrap();
    assert_eq!(config.limits.idle(), Duration::from_secs(120));
    assert_eq!(config.limits.header(), Duration::from_millis(1500));
    assert_eq!(config.limits.grace(), Duration::from_secs(45));
    assert_eq!(config.limits.handshake(), Duration::from_secs(5));
    assert_eq!(config.cloud.token_margin, Duration::from_secs(5400));
    let old = files.parse(&files.toml("\n[cloud]\ntoken_margin_seconds = 7\n"));
    assert_eq!(old.unwrap().cloud.token_margin, Duration::from_secs(7));
}

#[test]
fn names_the_key_and_the_text_of_a_bad_duration() {
    let files = Files::new();
    for bad in ["\"2 parsecs\"", "-5", "\"0s\""] {
        let text = files.toml(&format!("\n[limits]\nupstream_read_timeout = {bad}\n"));
        let error = files.parse(&text).unwrap_err().to_string();
        assert!(error.contains("upstream_read_timeout"), "{error}");
    }
    let text = files.toml("\n[limits]\nupstream_read_timeout = \"2 parsecs\"\n");
    let error = files.parse(&text).unwrap_err().to_string();
    assert!(error.contains("\"2 parsecs\" is not a duration"), "{error}");
}

#[test]
fn refuses_incomplete_or_duplicate_upstreams() {
    let files = Files::new();
    let half = files.toml("\n[[upstreams]]\nhost = \"ghcr.io\"\nusername = \"bot\"\n");
    let error = files.parse(&half).unwrap_err().to_string();
    assert!(error.contains("upstreams[0]"), "{error}");
    assert!(error.contains("token_file"), "{error}");
    let twice = files
        .toml("\n[[upstreams]]\nhost = \"docker.io\"\n[[upstreams]]\nhost = \"index.docker.io\"\n");
    let error = files.parse(&twice).unwrap_err().to_string();
    assert!(error.contains("upstreams[1]"), "{error}");
}

#[test]
fn refuses_a_missing_state_dir() {
    let files = Files::new();
    let text = files.toml("").replace(
        &format!("state_dir = \"{}\"", files.dir.path().display()),
        "state_dir = \"/nonexistent/meshanics\"",
    );
    let error = files.parse(&text).unwrap_err().to_string();
    assert!(error.contains("state_dir"), "{error}");
}

#[test]
fn names_an_unreadable_crl() {
    let files = Files::new();
    let text = files.toml(&format!("crls = [\"{}\"]", files.path("missing.crl")));
    let error = files.parse(&text).unwrap_err().to_string();
    assert!(error.contains("tls.crls"), "{error}");
    assert!(error.contains("missing.crl"), "{error}");
}

#[test]
fn the_cache_is_on_by_default_under_the_state_dir() {
    let files = Files::new();
    let config = files.parse(&files.toml("")).unwrap();
    let dir = files.dir.path().join("cache");
    assert_eq!(config.cache.dir, dir);
    assert_eq!(config.cache.max_bytes, 10_737_418_240);
    assert!(dir.is_dir(), "the cache folder is made at start");
}

#[test]
fn reads_the_cache_folder_and_cap_and_zero_turns_it_off() {
    let files = Files::new();
    let dir = files.dir.path().join("elsewhere/cache");
    let text = files.toml(&format!(
        "\n[cache]\ndir = \"{}\"\nmax_bytes = 1048576",
        dir.display()
    ));
    let config = files.parse(&text).unwrap();
    assert_eq!(config.cache.dir, dir);
    assert_eq!(config.cache.max_bytes, 1_048_576);
    let off = files
        .parse(&files.toml("\n[cache]\nmax_bytes = 0"))
        .unwrap();
    assert_eq!(off.cache.max_bytes, 0);
    assert!(!files.dir.path().join("cache").exists(), "made while off");
}

#[test]
fn names_the_key_of_a_cache_folder_that_is_not_one() {
    let files = Files::new();
    for dir in [files.path("garbage"), files.path("garbage/cache")] {
        let text = files.toml(&format!("\n[cache]\ndir = \"{dir}\""));
        let error = files.parse(&text).unwrap_err().to_string();
        assert!(error.contains("cache.dir"), "{error}");
        assert!(error.contains("garbage"), "{error}");
    }
    let error = files
        .parse(&files.toml("\n[cache]\nsize = 1"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("size"), "{error}");
}

#[test]
fn the_state_is_files_by_default_and_postgres_takes_a_url_without_password_and_tls_settings() {
    let files = Files::new();
    assert_eq!(
        files.parse(&files.toml("")).unwrap().state,
        StateConfig::Files
    );
    let ca = files.path("ca.crt");
    let config = files
        .parse(&files.toml(&format!(
            "[state]\nbackend = \"postgres\"\nurl = \"postgres://facade@db.lan/meshanics\"\nca_file = \"{ca}\"\nresync_interval = \"10s\"\n"
        )))
        .unwrap();
    assert_eq!(
        config.state,
        StateConfig::Postgres(PostgresConfig {
            url: "postgres://facade@db.lan/meshanics".into(),
            password_file: None,
            ca_file: Some(ca.into()),
            resync_interval: Duration::from_secs(10),
        })
    );
    let refused = |state: &str| {
        files
            .parse(&files.toml(&format!("[state]\n{state}")))
            .unwrap_err()
            .to_string()
    };
    let with_password = refused(
        "backend = \"postgres\"\nurl = \"postgres://facade:hunter2@db.lan/m\"\nsslmode = \"disable\"\n",
    );
    assert!(
        with_password.contains("state.url") && with_password.contains("password"),
        "{with_password}"
    );
    assert!(!with_password.contains("hunter2"), "{with_password}");
    let no_ca = refused("backend = \"postgres\"\nurl = \"postgres://facade@db.lan/m\"\n");
    assert!(no_ca.contains("state.ca_file"), "{no_ca}");
    let plain = files
        .parse(&files.toml(
            "[state]\nbackend = \"postgres\"\nurl = \"postgres://facade@db.lan/m\"\nsslmode = \"disable\"\n",
        ))
        .unwrap();
    assert!(matches!(
        plain.state,
        StateConfig::Postgres(PostgresConfig { ca_file: None, .. })
    ));
    assert!(refused("backend = \"mysql\"\n").contains("state.backend"));
}
