//! The demo's stage: everything between an image and a device, set up on 127.0.0.1 with
//! the project's own programs. Each function is one step the demo announces.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use meshanics_shared::devpki::DevCa;
use meshanics_tests::oci_layout::{BuiltImage, SampleImage};
use meshanics_tests::registry::{self, RegistryServer};
use meshanics_tests::skopeo;

use crate::process::{Service, Shown};

/// The sample image's repository and tag.
pub(crate) const REPOSITORY: &str = "demo/app";
/// The sample image's tag.
pub(crate) const TAG: &str = "1.0";
/// The platforms of the sample image.
pub(crate) const PLATFORMS: [&str; 2] = ["linux/amd64", "linux/arm64"];
/// The hardware class the release is signed for and the devices are in.
pub(crate) const CLASS: &str = "demo";

/// One simulated device: its certificate, its agent config and its platform.
#[derive(Debug)]
pub(crate) struct Device {
    /// Its name (the certificate's common name).
    pub name: String,
    /// The platform it pulls for.
    pub platform: String,
    /// Its folder (certificates, trust anchor, agent config, state).
    pub dir: PathBuf,
}

// === impl Device ===

impl Device {
    /// Its agent configuration file.
    pub(crate) fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }
}

/// Where the programs are: beside this one (`target/release/`).
pub(crate) fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the demo's own path")?;
    let dir = exe
        .parent()
        .context("the demo binary has no folder")?
        .to_owned();
    for program in [
        "meshanics-facade",
        "meshctl",
        "meshanics-agent",
        "meshanics-layout-registry",
    ] {
        if !dir.join(program).is_file() {
            bail!(
                "{program} is not built in {}: run `cargo build --release --workspace --bins` \
                 (scripts/demo does)",
                dir.display()
            );
        }
    }
    Ok(dir)
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> anyhow::Result<()> {
    write(path, contents)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} private", path.display()))
}

/// Makes the dev PKI: a CA, the facade's server certificate (for localhost, 127.0.0.1 and
/// `extra_names`), and one certificate per device. Writes `pki/` and returns the devices.
pub(crate) fn pki(
    dir: &Path,
    extra_names: &[String],
    devices: &[(&str, &str)],
) -> anyhow::Result<Vec<Device>> {
    let pki = dir.join("pki");
    let mut ca = DevCa::new("Meshanics demo CA").context("making the demo CA")?;
    write(&pki.join("ca.crt"), ca.cert_pem())?;
    let mut names = vec!["localhost", "127.0.0.1"];
    names.extend(extra_names.iter().map(String::as_str));
    let server = ca
        .issue_server(&names)
        .context("issuing the facade's certificate")?;
    write(&pki.join("facade.crt"), &server.cert_pem)?;
    write_private(&pki.join("facade.key"), &server.key_pem)?;
    let mut out = Vec::new();
    for (name, platform) in devices {
        let issued = ca
            .issue_device(name)
            .with_context(|| format!("issuing the certificate of {name}"))?;
        let device_dir = dir.join(name);
        write(&device_dir.join("ca.crt"), ca.cert_pem())?;
        write(&device_dir.join("device.crt"), &issued.cert_pem)?;
        write_private(&device_dir.join("device.key"), &issued.key_pem)?;
        out.push(Device {
            name: (*name).to_owned(),
            platform: (*platform).to_owned(),
            dir: device_dir,
        });
    }
    Ok(out)
}

/// Builds the sample image as an OCI layout in `images/demo/app`, with a shared layer of
/// `layer_bytes` pseudo-random bytes.
pub(crate) fn image(dir: &Path, layer_bytes: usize) -> anyhow::Result<BuiltImage> {
    let layout = dir.join("images").join(REPOSITORY);
    SampleImage::multi_arch(&PLATFORMS, layer_bytes, 64 * 1024)
        .and_then(|image| image.write_layout(&layout, TAG))
        .with_context(|| format!("writing the sample image to {}", layout.display()))
}

/// Which upstream the demo starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum UpstreamKind {
    /// The distribution registry when `docker-registry` and `skopeo` are installed, else
    /// the layout registry.
    Auto,
    /// The CNCF distribution registry (Debian's docker-registry), the image pushed by skopeo.
    Registry,
    /// meshanics-layout-registry serving the OCI layout folder.
    Layout,
}

/// The running upstream.
#[derive(Debug)]
pub(crate) enum Upstream {
    /// The distribution registry.
    Registry(RegistryServer),
    /// The layout registry.
    Layout(Service),
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Resolves `auto` to what is installed.
pub(crate) fn pick_upstream(kind: UpstreamKind) -> UpstreamKind {
    match kind {
        UpstreamKind::Auto if installed(registry::REGISTRY_BIN) && installed("skopeo") => {
            UpstreamKind::Registry
        }
        UpstreamKind::Auto => UpstreamKind::Layout,
        other => other,
    }
}

/// Starts the upstream and puts the image in it; returns it and its `host:port`.
pub(crate) fn upstream(
    kind: UpstreamKind,
    dir: &Path,
    bins: &Path,
) -> anyhow::Result<(Upstream, String)> {
    if kind == UpstreamKind::Registry {
        let server = RegistryServer::start(&registry::Options::default())
            .context("starting the distribution registry")?;
        let layout = dir.join("images").join(REPOSITORY);
        skopeo::push_layout(&layout, TAG, &server.host(), REPOSITORY)
            .context("pushing the sample image with skopeo")?;
        let host = server.host();
        return Ok((Upstream::Registry(server), host));
    }
    let mut command = Command::new(bins.join("meshanics-layout-registry"));
    command
        .arg("--dir")
        .arg(dir.join("images"))
        .args(["--listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1");
    let (service, line) = Service::start(
        "meshanics-layout-registry",
        command,
        &dir.join("layout-registry.log"),
        "listening on",
        Duration::from_secs(20),
    )?;
    let host = line
        .rsplit("listening on ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|h| h.starts_with("127.0.0.1:"))
        .with_context(|| format!("no address in the layout registry's line `{line}`"))?
        .to_owned();
    Ok((Upstream::Layout(service), host))
}

/// The facade as started: its device URL and its operator socket.
#[derive(Debug)]
pub(crate) struct Facade {
    /// The process.
    pub service: Service,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// Its port.
    pub port: u16,
    /// The operator socket meshctl talks to.
    pub socket: PathBuf,
}

/// Writes the facade's config (mutual TLS with the dev PKI, a fresh master key, ports
/// picked by the system) and starts it.
pub(crate) fn facade(dir: &Path, bins: &Path) -> anyhow::Result<Facade> {
    let base = dir.join("facade");
    let state = base.join("state");
    let metadata_dir = base.join("metadata");
    for folder in [&state, &metadata_dir] {
        fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    }
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", state.display()))?;
    let mut key = [0_u8; 32];
    getrandom::getrandom(&mut key)
        .map_err(|e| anyhow::anyhow!("reading random bytes for the master key: {e}"))?;
    let key_path = base.join("master-key");
    write_private(&key_path, key)?;
    let pki = dir.join("pki");
    let config = format!(
        r#"# The demo facade: devices on mutual TLS, operator metrics, connections sealed
# under master-key, signed metadata published with `meshctl publish` into metadata/.
listen = "127.0.0.1:0"
operator_listen = "127.0.0.1:0"
state_dir = "{state}"
metadata_dir = "{metadata}"
master_key_file = "{key}"

[tls]
certificate = "{pki}/facade.crt"
private_key = "{pki}/facade.key"
device_ca = "{pki}/ca.crt"
"#,
        state = state.display(),
        metadata = metadata_dir.display(),
        key = key_path.display(),
        pki = pki.display(),
    );
    let config_path = base.join("facade.toml");
    write(&config_path, config)?;
    let mut command = Command::new(bins.join("meshanics-facade"));
    command.arg("--config").arg(&config_path);
    let (service, line) = Service::start(
        "meshanics-facade",
        command,
        &base.join("facade.log"),
        "facade listening",
        Duration::from_secs(20),
    )?;
    let port = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("device_addr="))
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|port| port.parse::<u16>().ok())
        .with_context(|| format!("no device address in the facade's line `{line}`"))?;
    Ok(Facade {
        service,
        url: format!("https://127.0.0.1:{port}"),
        port,
        socket: state.join("admin.sock"),
    })
}

/// A meshctl command talking to the facade's operator socket.
pub(crate) fn meshctl(bins: &Path, facade: &Facade) -> Command {
    let mut command = Command::new(bins.join("meshctl"));
    command.env("MESHANICS_SOCKET", &facade.socket);
    command
}

/// Connects the upstream anonymously (approved by the operator, as anonymous connections
/// must be), lists its tags, and imports the tag as a digest into `release/pins.json`.
pub(crate) fn connect_and_import(
    shown: &Shown,
    bins: &Path,
    facade: &Facade,
    upstream: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let mut add = meshctl(bins, facade);
    add.args([
        "registry",
        "add",
        upstream,
        "--anonymous",
        "--plain-http",
        "--by",
        "demo",
    ]);
    shown.run(add)?;
    let mut approve = meshctl(bins, facade);
    approve.args(["registry", "approve", upstream]);
    shown.run(approve)?;
    let mut tags = meshctl(bins, facade);
    tags.args(["tags", &format!("{upstream}/{REPOSITORY}")]);
    shown.run(tags)?;
    let pins = dir.join("release").join("pins.json");
    fs::create_dir_all(dir.join("release")).context("creating the release folder")?;
    let mut import = meshctl(bins, facade);
    import
        .args([
            "import",
            &format!("{upstream}/{REPOSITORY}:{TAG}"),
            "--pins",
        ])
        .arg(&pins);
    shown.run(import)?;
    // The operator decides which devices a target is for: here, the demo's hardware class.
    let text = fs::read_to_string(&pins).with_context(|| format!("reading {}", pins.display()))?;
    let mut entries: Vec<serde_json::Value> =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", pins.display()))?;
    for entry in &mut entries {
        if let Some(object) = entry.as_object_mut() {
            object.insert(
                "selectors".into(),
                serde_json::json!({ "hardware_class": CLASS }),
            );
        }
    }
    let text = serde_json::to_string_pretty(&entries).context("writing the pins")?;
    write(&pins, format!("{text}\n"))?;
    println!("    (pins.json: each target gets the selector hardware_class = \"{CLASS}\")");
    Ok(pins)
}

/// Signs the release offline, as an operator does on a machine without network: three key
/// pairs, the first root, then targets and timestamp from the pins; then publishes the
/// signed files through the facade (`meshctl publish`). Returns the trust anchor
/// (`1.root.cose`).
pub(crate) fn sign_and_publish(
    shown: &Shown,
    bins: &Path,
    dir: &Path,
    pins: &Path,
    facade: &Facade,
) -> anyhow::Result<PathBuf> {
    let keys = dir.join("keys");
    let signed = dir.join("release").join("signed");
    fs::create_dir_all(&signed).with_context(|| format!("creating {}", signed.display()))?;
    let meshctl = || Command::new(bins.join("meshctl"));
    for role in ["root", "targets", "timestamp"] {
        let mut generate = meshctl();
        generate
            .args(["key", "generate", "--out"])
            .arg(keys.join(role));
        shown.run(generate)?;
    }
    let mut init = meshctl();
    init.args(["root", "init", "--dir"])
        .arg(&signed)
        .arg("--root-key")
        .arg(keys.join("root.key"))
        .arg("--targets-key")
        .arg(keys.join("targets.pub"))
        .arg("--timestamp-key")
        .arg(keys.join("timestamp.pub"));
    shown.run(init)?;
    let mut release = meshctl();
    release
        .args(["release", "--dir"])
        .arg(&signed)
        .arg("--pins")
        .arg(pins)
        .arg("--targets-key")
        .arg(keys.join("targets.key"))
        .arg("--timestamp-key")
        .arg(keys.join("timestamp.key"));
    shown.run(release)?;
    let anchor = signed.join("1.root.cose");
    let mut verify = meshctl();
    verify.arg("verify").arg(&signed).arg("--root").arg(&anchor);
    shown.run(verify)?;
    // Published through the operator API: the facade checks that devices trusting what it
    // serves would accept the set before storing it in its metadata folder.
    let mut publish = self::meshctl(bins, facade);
    publish.arg("publish").arg(&signed);
    shown.run(publish)?;
    Ok(anchor)
}

/// Writes a device's agent configuration: the facade URL, its certificate, the trust
/// anchor, its class and platform, its state folder.
pub(crate) fn agent_config(device: &Device, facade_url: &str, anchor: &Path) -> anyhow::Result<()> {
    let anchor_copy = device.dir.join("root.cose");
    fs::copy(anchor, &anchor_copy)
        .with_context(|| format!("installing the trust anchor {}", anchor_copy.display()))?;
    let config = format!(
        r#"# {name}: a demo device ({platform}).
[facade]
url = "{facade_url}"
ca = "ca.crt"

[device]
certificate = "device.crt"
key = "device.key"
class = "{CLASS}"
platform = "{platform}"

[trust]
anchor = "root.cose"

[agent]
state_dir = "{state}"
"#,
        name = device.name,
        platform = device.platform,
        state = device.dir.join("state").display(),
    );
    write(&device.config(), config)
}
