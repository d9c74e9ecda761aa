//! A device for end-to-end tests: a temp folder with the agent's TOML configuration, the
//! facade fixture's CA and the good device certificate, the trust anchor, and the state
//! directory. Network timeouts and retries are short so fault tests stay fast.

use std::path::{Path, PathBuf};
use std::process::Command;

use meshanics_agent::config::{Config, Environment};

use crate::binaries;
use crate::facade::{FacadeFixture, Who};
use crate::{FixtureError, io_err};

/// A configured device; its folder is removed on drop.
#[derive(Debug)]
pub struct AgentDevice {
    dir: tempfile::TempDir,
    /// The configuration, parsed as the agent parses it.
    pub config: Config,
}

// === impl AgentDevice ===

impl AgentDevice {
    /// A device of hardware class `class` and platform `platform` that talks to `facade`
    /// with its good device certificate and trusts `anchor`.
    pub fn new(
        facade: &FacadeFixture,
        anchor: &[u8],
        class: &str,
        platform: &str,
    ) -> Result<Self, FixtureError> {
        AgentDevice::with_settings(facade, anchor, class, platform, "", 2)
    }

    /// [`AgentDevice::new`] with extra `[agent]` lines (`bandwidth_limit = "128KiB"`) and
    /// `network.attempts`.
    pub fn with_settings(
        facade: &FacadeFixture,
        anchor: &[u8],
        class: &str,
        platform: &str,
        agent_keys: &str,
        attempts: u32,
    ) -> Result<Self, FixtureError> {
        AgentDevice::build(facade, anchor, class, platform, agent_keys, attempts, "")
    }

    /// [`AgentDevice::new`] with an `[apply]` table of these lines (`health_check = ...`).
    pub fn with_apply(
        facade: &FacadeFixture,
        anchor: &[u8],
        class: &str,
        platform: &str,
        apply_keys: &str,
    ) -> Result<Self, FixtureError> {
        let table = format!("\n[apply]\n{apply_keys}\n");
        AgentDevice::build(facade, anchor, class, platform, "", 2, &table)
    }

    fn build(
        facade: &FacadeFixture,
        anchor: &[u8],
        class: &str,
        platform: &str,
        agent_keys: &str,
        attempts: u32,
        more: &str,
    ) -> Result<Self, FixtureError> {
        let dir = tempfile::tempdir().map_err(io_err("creating a temp dir", Path::new("/tmp")))?;
        let certs = facade.cert_dir(Who::Device)?;
        let anchor_path = dir.path().join("root.cose");
        std::fs::write(&anchor_path, anchor).map_err(io_err("writing", &anchor_path))?;
        let text = format!(
            r#"[facade]
url = "{url}"
ca = "{certs}/ca.crt"

[device]
certificate = "{certs}/client.cert"
key = "{certs}/client.key"
class = "{class}"
platform = "{platform}"

[trust]
anchor = "{anchor}"

[agent]
state_dir = "{state}"
poll_interval = "1m"
concurrency = 2
{agent_keys}

[network]
connect_timeout = "2s"
stall_window = "2s"
attempts = {attempts}
{more}"#,
            url = facade.url(""),
            certs = certs.display(),
            anchor = anchor_path.display(),
            state = dir.path().join("state").display(),
        );
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).map_err(io_err("writing", &path))?;
        let config = Config::load(&path, &Environment::default())
            .map_err(|e| FixtureError::Invalid(e.to_string()))?;
        Ok(AgentDevice { dir, config })
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    /// `meshanics-agent --config <this device's file>` (through the test runner, if one is
    /// set: [`binaries::command`]), for the test to add a subcommand to.
    pub fn command(&self) -> Result<Command, FixtureError> {
        let agent = binaries::workspace_binary("meshanics-agent", "meshanics-agent")?;
        let mut command = binaries::command(agent);
        command.arg("--config").arg(self.config_path());
        Ok(command)
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// The `current` link: the applied OCI layout (the primary slot's).
    pub fn current(&self) -> PathBuf {
        self.config.state_dir.join("current")
    }

    /// The `current` link of the slot of the target `name`.
    pub fn slot_current(&self, name: &str) -> PathBuf {
        self.config
            .state_dir
            .join("slots")
            .join(name)
            .join("current")
    }
}
