//! `meshctl`: the operator's CLI. Its commands land with the metadata and connections issues;
//! for now it only answers `--version` and `--help`.

use clap::Parser;

/// The Meshanics operator CLI: connect registries, browse tags, import tags as digests, sign
/// release metadata offline.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
