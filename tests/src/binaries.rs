//! The workspace's binaries for tests in this crate (cargo only hands `CARGO_BIN_EXE_*` to a
//! package's own tests): found beside the test executable in `target/<profile>/`.
//!
//! `cargo test --workspace` (the project's test command) builds every binary before any test
//! runs, so they match the sources. A binary that is missing (`cargo test -p
//! meshanics-tests` on a fresh tree) is built first with the cargo running the tests.
//!
//! [`command`] starts a binary built for the architecture the tests run on. When that is not
//! the machine's (`scripts/test-aarch64` runs aarch64 tests under `qemu-aarch64-static`), cargo
//! runs the test executables through its runner, but what a test spawns would not run: the
//! kernel has no binfmt_misc registration here. `MESHANICS_TEST_RUNNER` names that emulator.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::FixtureError;

/// The environment variable holding the runner for workspace binaries: a program and its
/// arguments, split on whitespace (`qemu-aarch64-static`). Unset or empty: run them directly.
pub const RUNNER_VAR: &str = "MESHANICS_TEST_RUNNER";

/// A command that runs `program`, a binary of this workspace built for the tests' target,
/// through the runner named by [`RUNNER_VAR`] if one is set.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let runner = std::env::var(RUNNER_VAR).unwrap_or_default();
    let mut runner = runner.split_whitespace();
    match runner.next() {
        Some(emulator) => {
            let mut command = Command::new(emulator);
            command.args(runner).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// The path of binary `name` of workspace package `package`, built if missing (once per test
/// process).
pub fn workspace_binary(package: &str, name: &str) -> Result<PathBuf, FixtureError> {
    static BUILT: Mutex<Option<HashMap<String, Result<(), String>>>> = Mutex::new(None);
    let exe = std::env::current_exe()
        .map_err(|e| FixtureError::Invalid(format!("no test executable path: {e}")))?;
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| {
            FixtureError::Invalid("the test executable is not in target/<profile>/deps".into())
        })?
        .to_owned();
    let path = dir.join(name);
    if path.exists() {
        return Ok(path);
    }
    let mut guard = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let built = guard
        .get_or_insert_with(HashMap::new)
        .entry(package.to_owned())
        .or_insert_with(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let release = dir.file_name().is_some_and(|n| n == "release");
            let mut command = Command::new(cargo);
            command.args(["build", "--quiet", "--package", package, "--bins"]);
            if release {
                command.arg("--release");
            }
            match command.output() {
                Ok(out) if out.status.success() => Ok(()),
                Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
                Err(e) => Err(e.to_string()),
            }
        });
    let built = built.clone();
    drop(guard);
    built.map_err(|detail| FixtureError::Program {
        program: format!("cargo build --package {package}"),
        detail,
    })?;
    if !path.exists() {
        return Err(FixtureError::Invalid(format!(
            "{} was not built",
            path.display()
        )));
    }
    Ok(path)
}
