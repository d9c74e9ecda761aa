use std::os::unix::fs::PermissionsExt;

use meshanics_shared::devpki::DevCa;
use meshanics_shared::duration::parse as parse_duration;

use super::*;

/// A folder with a CA, a device certificate and key, a trust anchor and a hook.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = DevCa::new("test CA").unwrap();
        let device = ca.issue_device("device-1").unwrap();
        fs_err::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        fs_err::write(dir.path().join("device.pem"), &device.cert_pem).unwrap();
        fs_err::write(dir.path().join("device.key"), &device.key_pem).unwrap();
        fs_err::write(dir.path().join("root.cose"), b"root").unwrap();
        let hook = dir.path().join("hook.sh");
        fs_err::write(&hook, "#!/bin/sh\n").unwrap();
        fs_err::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        Files { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn parse(&self, text: &str) -> Result<Config, Vec<Problem>> {
        Config::parse(text, self.path(), &Environment::default())
    }

    fn keys(&self, text: &str) -> Vec<String> {
        self.parse(text)
            .unwrap_err()
            .into_iter()
            .map(|p| p.key)
            .collect()
    }
}

const VALID: &str = r#"
[facade]
url = "https://facade.example.com:8443"
ca = "ca.pem"

[device]
certificate = "device.pem"
key = "device.key"
class = "gateway"
platform = "linux/arm64"

[trust]
anchor = "root.cose"

[agent]
state_dir = "/var/lib/meshanics-agent"
poll_interval = "10m"
concurrency = 3
bandwidth_limit = "2MiB"

[apply]
hook = "hook.sh"
hook_timeout = "90s"
"#;

#[test]
fn parses_a_complete_configuration_into_typed_values() {
    let files = Files::new();
    let config = files.parse(VALID).unwrap();
    assert_eq!(config.facade.urls.len(), 1);
    assert_eq!(config.facade.urls[0].host(), Some("facade.example.com"));
    assert_eq!(config.facade.ca, files.path().join("ca.pem"));
    assert_eq!(
        config.device.platform,
        Platform::parse("linux/arm64").unwrap()
    );
    assert_eq!(config.device.class, "gateway");
    assert_eq!(config.poll_interval, Duration::from_secs(600));
    assert_eq!(config.concurrency, 3);
    assert_eq!(config.bandwidth_limit, Some(2 * 1024 * 1024));
    assert_eq!(config.network.attempts, 5);
    assert_eq!(config.network.connect_timeout, Duration::from_secs(10));
    let hook = config.hook.unwrap();
    assert_eq!(hook.path, files.path().join("hook.sh"));
    assert_eq!(hook.timeout, Duration::from_secs(90));
}

#[test]
fn takes_a_list_of_facade_replicas_in_order() {
    let files = Files::new();
    let text = VALID.replace(
        "url = \"https://facade.example.com:8443\"",
        "urls = [\"https://b.example.com:8443\", \"https://a.example.com\"]",
    );
    let urls = files.parse(&text).unwrap().facade.urls;
    let hosts: Vec<_> = urls.iter().map(|u| u.host().unwrap().to_owned()).collect();
    assert_eq!(hosts, ["b.example.com", "a.example.com"]);
}

#[test]
fn refuses_a_replica_list_that_is_empty_repeats_a_url_or_comes_with_url() {
    let files = Files::new();
    let single = "url = \"https://facade.example.com:8443\"";
    for (urls, key) in [
        ("urls = []", "facade.urls"),
        (
            "urls = [\"https://a.example.com\", \"https://a.example.com\"]",
            "facade.urls",
        ),
        ("urls = [\"http://a.example.com\"]", "facade.urls"),
        (
            "url = \"https://a.example.com\"\nurls = [\"https://b.example.com\"]",
            "facade.url",
        ),
    ] {
        let keys = files.keys(&VALID.replace(single, urls));
        assert_eq!(keys, [key], "{urls}");
    }
}

#[test]
fn rollout_download_ahead_is_off_unless_configured() {
    let files = Files::new();
    assert!(!files.parse(VALID).unwrap().rollout.download_ahead);
    let text = format!("{VALID}\n[rollout]\ndownload_ahead = true\n");
    assert!(files.parse(&text).unwrap().rollout.download_ahead);
    let text = format!("{VALID}\n[rollout]\ndownload_ahed = true\n");
    assert!(files.parse(&text).is_err());
}

#[test]
fn detects_the_platform_when_none_is_configured() {
    let files = Files::new();
    let text = VALID.replace("platform = \"linux/arm64\"\n", "");
    assert_eq!(
        files.parse(&text).unwrap().device.platform,
        Platform::detect()
    );
}

#[test]
fn reports_every_missing_key_at_once() {
    let files = Files::new();
    let keys = files.keys("");
    for key in [
        "facade.url",
        "facade.ca",
        "device.certificate",
        "device.key",
        "device.class",
        "trust.anchor",
        "agent.state_dir",
    ] {
        assert!(
            keys.contains(&key.to_owned()),
            "{key} not reported in {keys:?}"
        );
    }
}

#[test]
fn names_the_key_of_a_bad_value() {
    let files = Files::new();
    let cases = [
        (
            "https://facade.example.com:8443",
            "http://facade.example.com",
            "facade.url",
        ),
        (
            "poll_interval = \"10m\"",
            "poll_interval = \"10 fortnights\"",
            "agent.poll_interval",
        ),
        ("concurrency = 3", "concurrency = 0", "agent.concurrency"),
        (
            "bandwidth_limit = \"2MiB\"",
            "bandwidth_limit = \"lots\"",
            "agent.bandwidth_limit",
        ),
        (
            "platform = \"linux/arm64\"",
            "platform = \"linux/arm64/v8/extra\"",
            "device.platform",
        ),
        (
            "class = \"gateway\"",
            "class = \"no spaces\"",
            "device.class",
        ),
        (
            "anchor = \"root.cose\"",
            "anchor = \"missing.cose\"",
            "trust.anchor",
        ),
        ("hook = \"hook.sh\"", "hook = \"root.cose\"", "apply.hook"),
        (
            "state_dir = \"/var/lib/meshanics-agent\"",
            "state_dir = \"relative\"",
            "agent.state_dir",
        ),
        ("ca = \"ca.pem\"", "ca = \"device.key\"", "facade.ca"),
    ];
    for (from, to, key) in cases {
        let text = VALID.replace(from, to);
        assert_ne!(text, VALID, "{from} not in the sample");
        assert_eq!(
            files.keys(&text),
            vec![key.to_owned()],
            "after replacing {from}"
        );
    }
}

#[test]
fn refuses_a_key_that_does_not_match_the_certificate() {
    let files = Files::new();
    let mut other = DevCa::new("other").unwrap();
    let stranger = other.issue_device("stranger").unwrap();
    fs_err::write(files.path().join("stranger.key"), &stranger.key_pem).unwrap();
    let text = VALID.replace("key = \"device.key\"", "key = \"stranger.key\"");
    assert_eq!(files.keys(&text), vec!["device.key".to_owned()]);
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let files = Files::new();
    let text = VALID.replace("[trust]", "[trust]\nanchr = \"typo\"");
    let problems = files.parse(&text).unwrap_err();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].reason.contains("anchr"),
        "{}",
        problems[0].reason
    );
}

#[test]
fn reads_the_key_from_the_systemd_credentials_directory() {
    let files = Files::new();
    let creds = tempfile::tempdir().unwrap();
    fs_err::copy(
        files.path().join("device.key"),
        creds.path().join("device-key"),
    )
    .unwrap();
    let text = VALID.replace("key = \"device.key\"", "key_credential = \"device-key\"");
    let env = Environment {
        credentials_directory: Some(creds.path().to_owned()),
        ..Environment::default()
    };
    let config = Config::parse(&text, files.path(), &env).unwrap();
    assert_eq!(config.device.key, creds.path().join("device-key"));

    assert_eq!(files.keys(&text), vec!["device.key_credential".to_owned()]);
    let both = VALID.replace(
        "key = \"device.key\"",
        "key = \"device.key\"\nkey_credential = \"k\"",
    );
    assert_eq!(files.keys(&both), vec!["device.key".to_owned()]);
}

#[test]
fn parses_durations_and_sizes() {
    // The agent's durations are the shared dialect (humantime): what the agent's own parser
    // took still reads the same, a bare number and an unknown unit are still refused, and
    // days, which it refused, are now days.
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("5x").is_err());
    assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86_400)));
    assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
    assert_eq!(parse_size("3MB"), Ok(3_000_000));
    assert_eq!(parse_size("77"), Ok(77));
    assert!(parse_size("99999999999GiB").is_err());
    assert!(parse_size("MiB").is_err());
}

#[test]
fn load_names_the_file_in_its_error() {
    let err = Config::load(
        Path::new("/nonexistent/agent.toml"),
        &Environment::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/agent.toml"), "{err}");
}

#[test]
fn the_example_configuration_is_valid() {
    let files = Files::new();
    let creds = tempfile::tempdir().unwrap();
    fs_err::copy(
        files.path().join("device.key"),
        creds.path().join("device-key"),
    )
    .unwrap();
    let example = include_str!("../../agent.example.toml")
        .replace("/etc/meshanics/facade-ca.pem", "ca.pem")
        .replace("/etc/meshanics/", "");
    let env = Environment {
        credentials_directory: Some(creds.path().to_owned()),
        ..Environment::default()
    };
    let config = Config::parse(&example, files.path(), &env).unwrap();
    assert_eq!(config.poll_interval, Duration::from_secs(300));
    assert_eq!(config.network.stall_window, Duration::from_secs(30));
    assert!(config.hook.is_none());
}

#[test]
fn a_health_check_is_a_program_or_a_program_with_arguments_with_its_timings() {
    let files = Files::new();
    let path = files
        .parse(&format!(
            "{VALID}health_check = \"hook.sh\"\nhealth_settle = \"5s\"\nhealth_timeout = \"2m\"\n"
        ))
        .unwrap()
        .health
        .unwrap();
    assert_eq!(
        path,
        HealthCheck {
            program: files.path().join("hook.sh"),
            args: Vec::new(),
            settle: Duration::from_secs(5),
            timeout: Duration::from_secs(120),
        }
    );
    let argv = files
        .parse(&format!(
            "{VALID}health_check = [\"hook.sh\", \"--port\", \"8080\"]\n"
        ))
        .unwrap()
        .health
        .unwrap();
    assert_eq!(argv.program, files.path().join("hook.sh"));
    assert_eq!(argv.args, vec!["--port".to_owned(), "8080".to_owned()]);
    assert_eq!(
        argv.settle,
        Duration::from_secs(10),
        "the default settle time"
    );
    assert_eq!(argv.timeout, Duration::from_secs(60), "the default timeout");
    assert_eq!(files.parse(VALID).unwrap().health, None);
}

#[test]
fn a_health_check_that_cannot_run_is_refused_by_its_key() {
    let files = Files::new();
    for (more, key) in [
        ("health_check = \"root.cose\"\n", "apply.health_check"),
        ("health_check = []\n", "apply.health_check"),
        (
            "health_check = \"hook.sh\"\nhealth_timeout = \"0s\"\n",
            "apply.health_timeout",
        ),
        (
            "health_check = \"hook.sh\"\nhealth_settle = \"soon\"\n",
            "apply.health_settle",
        ),
    ] {
        assert_eq!(
            files.keys(&format!("{VALID}{more}")),
            vec![key.to_owned()],
            "{more}"
        );
    }
}
