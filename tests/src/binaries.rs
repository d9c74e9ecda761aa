//! The workspace's binaries for tests in this crate (cargo only hands `CARGO_BIN_EXE_*` to a
//! package's own tests): found beside the test executable in `target/<profile>/`.
//!
//! `cargo test --workspace` (the project's test command) builds every binary before any test
//! runs, so they match the sources. A binary that is missing (`cargo test -p
//! meshanics-tests` on a fresh tree) is built first with the cargo running the tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::FixtureError;

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
