//! `meshanics-facade`: the registry facade. The server lands with the facade issue; for now
//! the binary only answers `--version` and `--help`.

use clap::Parser;

/// The Meshanics registry facade: serves manifests and blobs by digest only, over mutual TLS,
/// streaming from upstream registries an operator connected.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
