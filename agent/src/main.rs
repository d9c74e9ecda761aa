//! `meshanics-agent`: the device agent. The update workflow lands with the agent issue; for
//! now the binary only answers `--version` and `--help`.

use clap::Parser;

/// The Meshanics device agent: verifies signed update metadata, fetches OCI content by digest
/// through the facade with the device's certificate, caches it by content and applies it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
