//! `meshanics-layout-registry`: a read-only registry over a folder of OCI image layouts, for
//! sites that receive images as `skopeo copy ... oci:DIR:TAG` folders (and for the demo).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use meshanics_layout_registry::LayoutRegistry;
use tokio::signal::unix::{SignalKind, signal};

/// Serves the OCI image layouts under a folder as a read-only registry (plain HTTP, GET and
/// HEAD only), for the facade to connect to like to any registry.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Every folder under DIR that holds `oci-layout` and `index.json` is a repository \
named by its path below DIR: `skopeo copy docker://HOST/org/app:1.2 oci:DIR/org/app:1.2` makes \
`org/app` with tag `1.2`. Layouts added or changed while it runs are served at once.\n\n\
Connect it to the facade with:\n  meshctl registry add 127.0.0.1:5000 --anonymous --plain-http\n  \
meshctl registry approve 127.0.0.1:5000\n\n\
It speaks plain HTTP: keep it on loopback or a trusted link. Blobs are served as stored; the \
facade and the devices verify every byte against its digest."
)]
struct Cli {
    /// The folder of OCI layouts.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The address to listen on (port 0 picks a free port; the log says which).
    #[arg(long, default_value = "127.0.0.1:5000")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    meshanics_http::init_logging();
    let registry = match LayoutRegistry::open(&cli.dir) {
        Ok(registry) => registry,
        Err(error) => {
            eprintln!("meshanics-layout-registry: {error}");
            return ExitCode::from(64);
        }
    };
    match run(cli.listen, registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meshanics-layout-registry: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(listen: SocketAddr, registry: LayoutRegistry) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut terminate = signal(SignalKind::terminate()).context("watching SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("listening on {listen}"))?;
        let address = listener
            .local_addr()
            .with_context(|| format!("reading the address bound for {listen}"))?;
        for (name, tags) in registry.repositories() {
            tracing::info!(repository = name, tags = tags.join(", "), "serving layout");
        }
        if !address.ip().is_loopback() {
            tracing::warn!(%address, "plain HTTP on a non-loopback address: use a trusted link only");
        }
        tracing::info!("listening on {address}");
        meshanics_layout_registry::serve(listener, Arc::new(registry), async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
                _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
            }
        })
        .await;
        Ok(())
    })
}
