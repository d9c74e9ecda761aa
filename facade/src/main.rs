//! `meshanics-facade`: the registry facade's binary. Reads the config once (exit 64 on a bad
//! one, naming the key and the file, and on a connection record the master key does not
//! open, naming the record), serves until SIGTERM or SIGINT, then drains. SIGHUP re-reads
//! the `[tls]` files (device CA, CRLs, certificate and key; see
//! [`meshanics_facade::device_tls`]) without a restart.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use meshanics_facade::admin::{self, AdminState};
use meshanics_facade::cloud::ecr::AwsCredentials;
use meshanics_facade::connections::{ADMIN_SOCKET, Connections};
use meshanics_facade::publish::Metadata;
use meshanics_facade::seal::MasterKey;
use meshanics_facade::{ApprovedUpstreams, Config, ConfiguredUpstreams};
use meshanics_shared::notify::Notifier;
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
    meshanics_http::init_logging();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("meshanics-facade: bad configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let configured: Arc<dyn ApprovedUpstreams> = match ConfiguredUpstreams::new(
        &config.upstreams,
        config.limits.upstream(),
        &config.own_listeners(),
    ) {
        Ok(upstreams) => Arc::new(upstreams),
        Err(error) => {
            eprintln!("meshanics-facade: bad configuration: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // The environment is read here, once: systemd's credentials folder for the master key,
    // its notification socket, and the AWS SDKs' variables for the base credentials ECR
    // roles are assumed with.
    let credentials_dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    let notifier = Notifier::new(std::env::var_os("NOTIFY_SOCKET").as_deref());
    let aws = AwsCredentials::from_vars(|name| std::env::var(name).ok());
    let connections = if config.master_key_file.is_some() || credentials_dir.is_some() {
        let key = match MasterKey::load(
            config.master_key_file.as_deref(),
            credentials_dir.as_deref(),
        ) {
            Ok(key) => key,
            Err(error) => {
                eprintln!(
                    "meshanics-facade: bad configuration: config key `master_key_file`: {error}"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
        };
        match Connections::open(&config, key, aws, Some(configured.clone())) {
            Ok(connections) => Some(connections),
            // Every record was opened: a wrong master key (or a record altered without it)
            // stops the facade here, naming the record, rather than answering devices 404.
            Err(error) if error.needs_operator() => {
                eprintln!("meshanics-facade: opening the connection store: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
            Err(error) => {
                eprintln!("meshanics-facade: opening the connection store: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        tracing::warn!(
            "no master key (config `master_key_file` or the systemd credential `master-key`): \
             registry connections and the operator socket are off; only [[upstreams]] are proxied"
        );
        None
    };
    match run(config, configured, connections, &notifier) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meshanics-facade: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    config: Config,
    configured: Arc<dyn ApprovedUpstreams>,
    connections: Option<Connections>,
    notifier: &Notifier,
) -> anyhow::Result<()> {
    // The blocking pool runs the cache's file reads and writes (pread/pwrite, mostly from the
    // page cache): 64 threads keep up with any number of devices, where tokio's default (512)
    // would let a burst of readers grow hundreds of threads, each with its stack and malloc
    // arena.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut terminate = signal(SignalKind::terminate()).context("watching SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
        let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
        // What `/meta/` serves and the operator API publishes into (one and the same).
        let metadata = Arc::new(Metadata::new(
            &config,
            connections.as_ref().map(|c| c.store.clone()),
        ));
        // The operator API's task is kept, so its connections drain before the runtime ends.
        let (upstreams, admin_task): (Arc<dyn ApprovedUpstreams>, _) = match &connections {
            Some(connections) => {
                let socket = config.state_dir.join(ADMIN_SOCKET);
                let listener = admin::bind(&socket)
                    .with_context(|| format!("binding the operator socket {}", socket.display()))?;
                let state = Arc::new(AdminState {
                    store: connections.store.clone(),
                    browser: connections.browser.clone(),
                    metadata: metadata.clone(),
                });
                let mut stopped = admin_stopped.clone();
                let task = tokio::spawn(admin::serve(listener, state, async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                }));
                tracing::info!(socket = %socket.display(), connections = connections.store.list().len(), "operator API listening");
                (connections.upstreams.clone(), Some(task))
            }
            None => (configured, None),
        };
        let running = meshanics_facade::start_with(&config, upstreams, metadata).await?;
        notifier.ready("serving");
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        }
        notifier.stopping("draining");
        let _ = stop_admin.send(true);
        running.shutdown().await;
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        Ok(())
    })
}
