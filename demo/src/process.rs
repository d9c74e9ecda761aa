//! The programs the demo starts: services that run until the demo stops them (the upstream,
//! the facade), and tools that run once with their command line and output shown (meshctl,
//! the agent).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rustix::process::{Pid, Signal, kill_process};

/// A program running in the background, its output going to a log file. Stopped (SIGTERM,
/// then SIGKILL after 10 s) when dropped.
#[derive(Debug)]
pub(crate) struct Service {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

// === impl Service ===

impl Service {
    /// Starts `command`, and waits (up to `timeout`) until a line of its output contains
    /// `marker`; returns the service and that line.
    pub(crate) fn start(
        name: &str,
        mut command: Command,
        log: &Path,
        marker: &str,
        timeout: Duration,
    ) -> anyhow::Result<(Service, String)> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("opening {} twice", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        let mut service = Service {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(line) = text.lines().find(|line| line.contains(marker)) {
                return Ok((service, line.to_owned()));
            }
            let exited = service
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!(
                    "{name} exited ({status}) before it was ready; its log ({}):\n{text}",
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} was not ready within {} s; its log ({}):\n{text}",
                    timeout.as_secs(),
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it: SIGTERM, then SIGKILL if it has not exited after 10 s. Returns how it ended.
    pub(crate) fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if let Some(pid) = Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "  {} did not stop on SIGTERM within 10 s: killing it",
            self.name
        );
        let _ = child.kill();
        child.wait().ok()
    }

    /// Its log file.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How commands are shown: the demo's folder as `$DEMO`, the programs by name.
#[derive(Debug, Clone)]
pub(crate) struct Shown {
    /// The demo's folder.
    pub dir: PathBuf,
}

// === impl Shown ===

impl Shown {
    /// The command line as a reader would type it.
    pub(crate) fn line(&self, command: &Command) -> String {
        let dir = self.dir.display().to_string();
        let program = Path::new(command.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut line = program;
        for arg in command.get_args() {
            line.push(' ');
            line.push_str(&arg.to_string_lossy().replace(&dir, "$DEMO"));
        }
        line
    }

    /// Runs `command` to the end, showing its line and its output indented; fails naming it
    /// when it exits non-zero.
    pub(crate) fn run(&self, mut command: Command) -> anyhow::Result<String> {
        let line = self.line(&command);
        println!("    $ {line}");
        let output = command
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting `{line}`"))?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        for out_line in text.lines() {
            println!("      {out_line}");
        }
        if !output.status.success() {
            bail!("`{line}` failed ({})", output.status);
        }
        Ok(text)
    }

    /// Runs `command` to the end on the demo's terminal (so progress bars show), after
    /// showing its line.
    pub(crate) fn run_attached(&self, mut command: Command) -> anyhow::Result<()> {
        let line = self.line(&command);
        println!("    $ {line}");
        let status = command
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("starting `{line}`"))?;
        if !status.success() {
            bail!("`{line}` failed ({status})");
        }
        Ok(())
    }
}
