//! `meshanics-facade`: the registry facade's binary. Reads the config once (exit 64 on a bad
//! one, naming the key and the file), serves until SIGTERM or SIGINT, then drains.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use meshanics_facade::{Config, ConfiguredUpstreams};
use tokio::signal::unix::{SignalKind, signal};

/// The Meshanics registry facade: serves manifests and blobs by digest only, over mutual TLS,
/// streaming from upstream registries an operator connected.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The config file (TOML).
    #[arg(long, env = "MESHANICS_FACADE_CONFIG")]
    config: PathBuf,
}

/// `EX_USAGE` from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        // journald and log files get plain text; colours only on a terminal.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("meshanics-facade: bad configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let upstreams = match ConfiguredUpstreams::new(&config.upstreams, config.limits.upstream()) {
        Ok(upstreams) => upstreams,
        Err(error) => {
            eprintln!("meshanics-facade: bad configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run(config, Arc::new(upstreams)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meshanics-facade: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, upstreams: Arc<ConfiguredUpstreams>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut terminate = signal(SignalKind::terminate()).context("watching SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
        let running = meshanics_facade::start(&config, upstreams).await?;
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        }
        running.shutdown().await;
        Ok(())
    })
}
