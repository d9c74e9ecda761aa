//! `meshctl`: the operator's CLI.
//!
//! - `registry.rs`: the commands that talk to a running facade over its operator socket,
//!   with the `meshanics-operator-api` client: `registry add|list|show|approve|unapprove|remove`,
//!   `tags`, `import` (tag import: tags resolved to digests and written as pins). It lists
//!   their exit codes.
//! - `publish.rs`: `meshctl publish DIR`, a signed metadata folder sent to the facade, which
//!   checks it against what it serves before storing it.
//! - `signing.rs` and `signing/`: the offline signing of the update metadata (see
//!   docs/metadata.md): `key generate`, `root init`, `root rotate`, `release`,
//!   `timestamp refresh`, and `verify`, which runs the device's verification workflow on a
//!   metadata folder. None of them talks to the facade: signing keys stay on the operator's
//!   machine.
//! - `output.rs`: text for people by default and JSON with `--json`; every error names the
//!   file it is about. `durations.rs`: lifetimes such as `30d` on the command line.

mod durations;
mod output;
mod publish;
mod registry;
mod signing;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use output::Output;
use signing::{keys, release, root, verify};

/// The Meshanics operator CLI: connect registries, browse tags, import tags as digests, sign
/// release metadata offline.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Print JSON for scripts instead of text for people.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    socket: registry::SocketArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Signing keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The root of trust: create it, rotate its keys.
    #[command(subcommand)]
    Root(RootCommand),
    /// Sign new targets from a pins file, and a timestamp naming them.
    Release(release::ReleaseArgs),
    /// The timestamp.
    #[command(subcommand)]
    Timestamp(TimestampCommand),
    /// Run the device's verification workflow on a metadata folder and print what a device
    /// would accept.
    Verify(verify::VerifyArgs),
    /// Registry connections on the facade (add, list, show, approve, unapprove, remove).
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// List a repository's tags through its connection, newest-likely-first.
    Tags(registry::TagsArgs),
    /// Resolve tags to the digests they point at now; write them as pins for `release`.
    Import(registry::ImportArgs),
    /// The operator audit log: who connected, approved, unapproved or removed which registry,
    /// or published which metadata, when.
    Audit(registry::AuditArgs),
    /// Publish a signed metadata folder (`meshctl release` output) through the facade, which
    /// checks that devices would accept it before serving it.
    Publish(publish::PublishArgs),
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Generate an Ed25519 key pair: OUT.key (private, mode 0600) and OUT.pub.
    Generate {
        /// Path prefix of the key files, e.g. `keys/root`.
        #[arg(long, value_name = "DIR/NAME")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum RootCommand {
    /// Write root version 1 into a metadata folder.
    Init(root::InitArgs),
    /// Write the next root version, signed by the current root keys and the new ones.
    Rotate(root::RotateArgs),
}

#[derive(Debug, Subcommand)]
enum TimestampCommand {
    /// Sign a fresh timestamp naming the current targets (run it more often than the
    /// timestamp expires).
    Refresh(release::RefreshArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = Output::new(cli.json);
    let result = match cli.command {
        Command::Registry(command) => return registry::registry(&command, &cli.socket, &out),
        Command::Tags(args) => return registry::tags(&args, &cli.socket, &out),
        Command::Import(args) => return registry::import(&args, &cli.socket, &out),
        Command::Audit(args) => return registry::audit(&args, &cli.socket, &out),
        Command::Publish(args) => return publish::publish(&args, &cli.socket, &out),
        Command::Key(KeyCommand::Generate { out: path }) => keys::generate(&path, &out),
        Command::Root(RootCommand::Init(args)) => root::init(&args, &out),
        Command::Root(RootCommand::Rotate(args)) => root::rotate(&args, &out),
        Command::Release(args) => release::release(&args, &out),
        Command::Timestamp(TimestampCommand::Refresh(args)) => release::refresh(&args, &out),
        Command::Verify(args) => verify::verify(&args, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            out.error(&error);
            ExitCode::FAILURE
        }
    }
}
