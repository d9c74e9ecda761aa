//! The `meshanics-layout-registry` binary as an operator (or the demo) starts it: a folder it
//! cannot serve is refused at once with exit code 64 naming the folder; a good one is served
//! on the address it logs, until SIGTERM.
//!
//! This test is also why `cargo test --workspace` builds the binary that the demo and the
//! whole-system tests start (cargo builds a package's binaries for its integration tests).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Command, Stdio};

const BINARY: &str = env!("CARGO_BIN_EXE_meshanics-layout-registry");

#[test]
fn a_folder_that_does_not_exist_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-layouts");
    let output = Command::new(BINARY)
        .arg("--dir")
        .arg(&missing)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&missing.display().to_string()),
        "the error names the folder: {stderr}"
    );
}

#[test]
fn an_empty_folder_is_served_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BINARY)
        .arg("--dir")
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The log says where it listens (port 0 picks one).
    let stdout = child.stdout.take().unwrap();
    let mut address = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(at) = line.find("127.0.0.1:") {
            let rest = &line[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            address = Some(rest[..end].to_owned());
            break;
        }
    }
    let address = address.expect("the log names the listening address");
    let mut stream = TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "GET /v2/ HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
