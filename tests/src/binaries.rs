//! The workspace's binaries for tests in this crate (cargo only hands `CARGO_BIN_EXE_*` to a
//! package's own tests): found beside the test executable in `target/<profile>/`.
//!
//! `cargo test --workspace` (the project's test command) builds every binary before any test
//! runs, so they match the sources. A binary that is missing (`cargo test -p
//! meshanics-tests` on a fresh tree) is built first with the cargo running the tests; one that
//! is there is used as it is (after an edit to the agent or the facade, `cargo build` them
//! before `cargo test -p meshanics-tests`). Building it anyway would cost CI a second build
//! of each: a plain `cargo build` resolves other features than `cargo test --workspace`.
//!
//! [`command`] starts a binary built for the architecture the tests run on. When that is not
//! the machine's (`scripts/test-aarch64` runs aarch64 tests under `qemu-aarch64-static`), cargo
//! runs the test executables through its runner, but what a test spawns would not run: the
//! kernel has no binfmt_misc registration here. `MESHANICS_TEST_RUNNER` names that emulator.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
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
    let path = profile_dir()?.join(name);
    if path.exists() {
        return Ok(path);
    }
    workspace_binary_with(package, name, &[])
}

/// The path of binary `name` of workspace package `package` built with cargo features of that
/// package (the agent's `failpoints`), built now (once per test process). Cargo keeps a build
/// per feature set, but `target/<profile>/NAME` is the one built last: it stays the featured
/// build until `cargo build` or `cargo test --workspace` builds the plain one again.
pub fn workspace_binary_with(
    package: &str,
    name: &str,
    features: &[&str],
) -> Result<PathBuf, FixtureError> {
    type Builds = HashMap<(String, Vec<String>), Result<(), String>>;
    static BUILT: Mutex<Option<Builds>> = Mutex::new(None);
    let dir = profile_dir()?;
    let target_dir = dir.parent().unwrap_or(&dir).to_owned();
    let path = dir.join(name);
    let features: Vec<String> = features.iter().map(|f| (*f).to_owned()).collect();
    let mut guard = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let built = guard
        .get_or_insert_with(HashMap::new)
        .entry((package.to_owned(), features.clone()))
        .or_insert_with(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut command = Command::new(cargo);
            command.args(["build", "--quiet", "--package", package, "--bins"]);
            command.arg("--target-dir").arg(&target_dir);
            // `target/debug` is the dev profile's folder; every other profile's is its name
            // (`cargo bench` puts the bench profile in `target/release`: built --release, as
            // the README's release binaries are). Cross builds (`<target>/<triple>/<profile>`)
            // do not run these tests.
            match dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => {}
                Some(profile) => {
                    command.args(["--profile", profile]);
                }
            }
            if !features.is_empty() {
                command.arg("--features").arg(features.join(","));
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
        program: format!(
            "cargo build --package {package} --bins --features '{}'",
            features.join(",")
        ),
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

/// `<target>/<profile>`, where cargo put the running test executable (in its `deps`).
fn profile_dir() -> Result<PathBuf, FixtureError> {
    let exe = std::env::current_exe()
        .map_err(|e| FixtureError::Invalid(format!("no test executable path: {e}")))?;
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(Path::to_owned)
        .ok_or_else(|| {
            FixtureError::Invalid(format!(
                "{}: the test executable is not in <target>/<profile>/deps",
                exe.display()
            ))
        })
}

/// The binary named by the environment variable `var` (benches take a release build this
/// way). A relative path is taken from the workspace root, where the README's commands run:
/// cargo starts a bench in its package folder. Errors name the variable and the path.
pub fn from_env(var: &str, hint: &str) -> Result<PathBuf, FixtureError> {
    let value = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| FixtureError::Invalid(format!("set {var}: {hint}")))?;
    let path = PathBuf::from(value);
    let path = match path.is_absolute() {
        true => path,
        false => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("/"))
            .join(path),
    };
    if !path.is_file() {
        return Err(FixtureError::Invalid(format!(
            "{var}={}: no such file (relative paths are taken from the workspace root); {hint}",
            path.display()
        )));
    }
    Ok(path)
}
