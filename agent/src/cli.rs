//! The command line: parses arguments, reads the configuration once, sets up logging, and
//! runs one command. Exit codes: 0 success, 1 failure, 64 bad configuration or usage
//! (`EX_USAGE`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshanics_agent::apply::{self, Applied, Checks};
use meshanics_agent::client::Client;
use meshanics_agent::config::{Config, Environment};
use meshanics_agent::metadata::MetadataSource;
use meshanics_agent::notify;
use meshanics_agent::progress::{Bars, LogLines, Progress};
use meshanics_agent::pull::{PullTarget, Puller};
use meshanics_agent::service::{self, Agent, SlotAction};
use meshanics_agent::status::{ArtifactView, RoleView};
use meshanics_agent::store::{LastResult, Store, StoreOptions};
use meshanics_shared::media_type::OCI_INDEX;
use meshanics_shared::metadata::ApplyMode;
use meshanics_shared::metadata::TargetName;
use meshanics_shared::{Digest, Repository};
use tracing::{error, info};

/// `EX_USAGE` from sysexits.h: the configuration or the command line is wrong.
const EXIT_CONFIG: u8 = 64;

/// The Meshanics device agent: verifies signed update metadata, fetches OCI content by digest
/// through the facade with the device's certificate, caches it by content and applies it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file.
    #[arg(
        long,
        short,
        env = "MESHANICS_AGENT_CONFIG",
        default_value = "/etc/meshanics/agent.toml"
    )]
    config: PathBuf,
    /// Log JSON lines instead of plain text.
    #[arg(long, global = true)]
    json_logs: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service: update cycles every poll interval until SIGTERM (systemd
    /// `Type=notify`).
    Run,
    /// Run one update cycle now: signed metadata, pull, apply.
    Sync {
        /// One cycle, then exit (0 when it succeeded, 1 otherwise). Required: the loop is
        /// `run`.
        #[arg(long, required = true)]
        once: bool,
    },
    /// Work with the configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Show every slot (applied, previous, pending health check, held-back release), the
    /// cache and the last result.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every cached blob and report corrupt ones.
    Fsck {
        /// Remove corrupt blobs (they are fetched again at the next update) and fix the index.
        #[arg(long)]
        repair: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove cached blobs and layouts that no slot's current or previous artifact uses.
    Gc {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pull one target by digest through the facade and apply it (for fleet engineers; the
    /// service pulls what the signed metadata lists).
    Pull {
        /// The repository on the facade: `<upstream>/<repository>`, e.g.
        /// `docker.io/library/nginx` or `registry.example.com_5000/team/app`.
        #[arg(long)]
        repository: String,
        /// The manifest or index digest.
        #[arg(long)]
        digest: String,
        /// Its exact size in bytes.
        #[arg(long)]
        size: u64,
        /// Its media type.
        #[arg(long, default_value = OCI_INDEX)]
        media_type: String,
        /// The target name: the slot it is applied to (default: the repository's last
        /// component).
        #[arg(long)]
        name: Option<String>,
        /// Pull into the cache only; do not switch `current`.
        #[arg(long)]
        no_apply: bool,
        /// Apply as `layout` or `files` (default: as the artifact says).
        #[arg(long, value_name = "layout|files")]
        apply: Option<ApplyMode>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check the configuration file and exit (64 when it is invalid).
    Check,
}

/// Runs the command line.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let works = matches!(
        cli.command,
        Command::Pull { .. } | Command::Sync { .. } | Command::Run
    );
    let bars = matches!(cli.command, Command::Pull { .. } | Command::Sync { .. })
        && std::io::stderr().is_terminal();
    // Reports (status, fsck, gc) own stdout so that `--json` output parses; their logs go to
    // stderr. Commands that do work log to stdout, which journald collects.
    let report = !works;
    init_logging(cli.json_logs, bars, report);
    let env = Environment::from_process();
    let config = match Config::load(&cli.config, &env) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match cli.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            println!("{}: configuration is valid", cli.config.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => run(&config, &env),
        Command::Sync { once: _ } => sync_once(&config, bars),
        Command::Status { json } => status(&config, json),
        Command::Fsck { repair, json } => fsck(&config, repair, json),
        Command::Gc { json } => gc(&config, json),
        Command::Pull {
            repository,
            digest,
            size,
            media_type,
            name,
            no_apply,
            apply,
        } => pull(
            &config,
            &repository,
            &digest,
            size,
            media_type,
            name,
            no_apply,
            apply,
            bars,
        ),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(json: bool, quiet: bool, to_stderr: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let default = if quiet { "warn" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let (writer, terminal) = if to_stderr {
        (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        )
    } else {
        (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        )
    };
    // journald stamps every line itself; JSON lines carry their own timestamp. Colours only
    // on a terminal: journald, log files and pipes get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(terminal)
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.without_time().init();
    }
}

fn open_store(config: &Config) -> anyhow::Result<Store> {
    let (store, _) = Store::open(&config.state_dir, StoreOptions::default())
        .with_context(|| format!("opening the state directory {}", config.state_dir.display()))?;
    Ok(store)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn open_agent(config: &Config) -> anyhow::Result<(Agent, MetadataSource)> {
    // A rebuilt index is logged by the store itself.
    let (agent, _) = Agent::from_config(config, StoreOptions::default())
        .with_context(|| format!("opening the state directory {}", config.state_dir.display()))?;
    let source = MetadataSource::from_config(config)?;
    Ok((agent, source))
}

fn run(config: &Config, env: &Environment) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let (agent, mut source) = open_agent(config)?;
    let notifier = notify::from_env(env);
    info!(
        facade = %config
            .facade
            .urls
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        platform = %config.device.platform,
        class = %config.device.class,
        "meshanics-agent running"
    );
    runtime.block_on(service::run(
        &agent,
        &mut source,
        &notifier,
        service::Schedule::from_config(config),
        &LogLines,
        service::shutdown_signal(),
    ));
    Ok(ExitCode::SUCCESS)
}

fn sync_once(config: &Config, bars: bool) -> anyhow::Result<ExitCode> {
    let runtime = runtime()?;
    let (agent, mut source) = open_agent(config)?;
    let progress: Box<dyn Progress> = if bars {
        Box::new(Bars::new())
    } else {
        Box::new(LogLines)
    };
    let outcome = runtime.block_on(agent.cycle(&mut source, progress.as_ref()))?;
    if outcome.slots.is_empty() {
        println!("no target for this device");
    }
    for slot in &outcome.slots {
        let target = &slot.target;
        match &slot.result {
            Ok(SlotAction::UpToDate) => println!("{target} is up to date"),
            Ok(SlotAction::Applied { received_bytes, .. }) => println!(
                "applied {target} at {} ({received_bytes} bytes downloaded)",
                config
                    .state_dir
                    .join("slots")
                    .join(target)
                    .join("current")
                    .display()
            ),
            Ok(SlotAction::HeldBack { reason }) => println!("{target} held back: {reason}"),
            Ok(SlotAction::Waiting {
                opens,
                received_bytes,
            }) => println!(
                "{target} waits for this device's rollout wave, which opens at {opens} ({received_bytes} bytes downloaded ahead)"
            ),
            Err(err) => println!("{target} failed: {err}"),
        }
    }
    for target in &outcome.retired {
        println!("{target} retired: no longer listed for this device");
    }
    Ok(if outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let view = meshanics_agent::status::read(config)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    let line = |a: &Option<ArtifactView>| match a {
        Some(a) => format!(
            "{} {} ({})",
            a.name,
            a.manifest_digest
                .as_ref()
                .map(Digest::as_str)
                .unwrap_or("unknown manifest"),
            a.layout.display()
        ),
        None => "none".to_owned(),
    };
    println!("platform:  {} (class {})", view.platform, view.device_class);
    let role = |name: &str, r: &Option<RoleView>| match r {
        Some(r) => println!(
            "{name:<10} version {}, expires {}{}",
            r.version,
            r.expires,
            if r.expired { " (EXPIRED)" } else { "" }
        ),
        None => println!("{name:<10} none trusted yet"),
    };
    match (&view.metadata, &view.metadata_problem) {
        (Some(m), _) => {
            role("root:", &Some(m.root.clone()));
            role("timestamp:", &m.timestamp);
            role("targets:", &m.targets);
            for w in &m.rollouts {
                println!(
                    "rollout:   {}: wave {} of {} ({} % of the fleet), {} {}",
                    w.target,
                    w.wave,
                    w.waves,
                    f64::from(w.share) / 10_000.0,
                    if w.open { "opened" } else { "opens" },
                    w.opens
                );
            }
        }
        (None, problem) => println!(
            "metadata:  unreadable: {}",
            problem.as_deref().unwrap_or("unknown")
        ),
    }
    // The primary slot's, as `<state_dir>/current` and `previous` show it.
    println!("current:   {}", line(&view.current));
    println!("previous:  {}", line(&view.previous));
    if view.slots.is_empty() {
        println!("slots:     none");
    }
    for slot in &view.slots {
        println!(
            "slot:      {}{}",
            slot.name,
            if slot.primary {
                " (primary: <state_dir>/current follows it)"
            } else {
                ""
            }
        );
        println!("  current:   {}", line(&slot.current));
        println!("  previous:  {}", line(&slot.previous));
        if let Some(pending) = &slot.pending_health {
            println!(
                "  pending:   {} since {}: its checks have not passed yet",
                pending.id,
                meshanics_shared::metadata::UnixTime::from_secs(pending.since)
            );
        }
        if let Some(bad) = &slot.bad {
            println!(
                "  held back: {} (until the signed metadata changes): {}",
                bad.target_digest, bad.reason
            );
        }
        if let Some(opens) = &slot.wave_opens {
            println!("  wave opens: {opens}");
        }
        if let Some(last) = &slot.last_result {
            println!(
                "  last:      {} at {}: {}",
                if last.ok { "ok" } else { "FAILED" },
                meshanics_shared::metadata::UnixTime::from_secs(last.time),
                last.message
            );
        }
    }
    println!(
        "cache:     {} blobs, {} bytes; {} partial downloads, {} bytes",
        view.cache.blobs, view.cache.bytes, view.cache.partial_downloads, view.cache.partial_bytes
    );
    match &view.last_result {
        Some(last) => println!(
            "last:      {} at {}: {}",
            if last.ok { "ok" } else { "FAILED" },
            meshanics_shared::metadata::UnixTime::from_secs(last.time),
            last.message
        ),
        None => println!("last:      nothing yet"),
    }
    Ok(ExitCode::SUCCESS)
}

fn fsck(config: &Config, repair: bool, json: bool) -> anyhow::Result<ExitCode> {
    let store = open_store(config)?;
    let report = store.fsck(repair)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("checked {} blobs", report.checked);
        for digest in &report.corrupt {
            println!(
                "corrupt: {digest}{}",
                if repair { " (removed)" } else { "" }
            );
        }
        for digest in &report.unindexed {
            println!("not in the index: {digest}");
        }
        for digest in &report.dangling {
            println!("indexed but missing: {digest}");
        }
        for id in &report.damaged_artifacts {
            println!("artifact needs pulling again: {id}");
        }
    }
    Ok(if report.is_clean() || repair {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn gc(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let store = open_store(config)?;
    let report = store.gc()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "removed {} blobs ({} bytes) and {} layouts; kept {}",
            report.removed_blobs.len(),
            report.freed_bytes,
            report.removed_artifacts.len(),
            report.kept_artifacts.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one argument per command-line flag"
)]
fn pull(
    config: &Config,
    repository: &str,
    digest: &str,
    size: u64,
    media_type: String,
    name: Option<String>,
    no_apply: bool,
    apply: Option<ApplyMode>,
    bars: bool,
) -> anyhow::Result<ExitCode> {
    let name = name.unwrap_or_else(|| {
        repository
            .rsplit('/')
            .next()
            .unwrap_or(repository)
            .to_owned()
    });
    let slot = TargetName::parse(&name).context("--name (the slot's name)")?;
    let target = PullTarget {
        name,
        repository: Repository::parse(repository).context("--repository")?,
        digest: Digest::parse(digest).context("--digest")?,
        size,
        media_type,
        rollout: None,
        apply,
    };
    let runtime = runtime()?;
    let store = open_store(config)?;
    let client = Client::from_config(config)?;
    let progress: Box<dyn Progress> = if bars {
        Box::new(Bars::new())
    } else {
        Box::new(LogLines)
    };
    let puller = Puller {
        client: &client,
        store: &store,
        platform: &config.device.platform,
        concurrency: config.concurrency,
        progress: progress.as_ref(),
    };
    let checks = Checks {
        hook: config.hook.as_ref(),
        health: config.health.as_ref(),
        ..Checks::default()
    };
    let outcome = runtime.block_on(async {
        // An apply a stop interrupted is finished (or rolled back) first, as `run` does.
        for (slot, result) in apply::recover(&store, &checks).await? {
            if let Err(err) = result {
                error!(target = %slot, error = %err, "the interrupted apply was rolled back");
            }
        }
        let pulled = puller.pull(&target).await?;
        if no_apply {
            return Ok(None);
        }
        let record = apply::materialize(&store, &pulled)?;
        let applied = apply::apply(&store, &record.id, &checks).await?;
        Ok::<_, meshanics_agent::Error>(Some((record, applied)))
    });
    match outcome {
        Ok(Some((record, Applied::Switched { .. }))) => {
            println!(
                "applied {} {} at {}",
                record.name,
                record.manifest_digest,
                store.slot_dir(&slot).join("current").display()
            );
        }
        Ok(Some((_, Applied::AlreadyCurrent))) => println!("already current"),
        Ok(None) => println!("pulled {} into the cache", target.digest),
        Err(err) => {
            let _ = store.set_last_result(&LastResult {
                time: now(),
                target: Some(target.name),
                ok: false,
                message: err.to_string(),
            });
            return Err(err.into());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
