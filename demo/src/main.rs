//! `meshanics-demo`: the main job, on one machine. An image goes from an upstream registry
//! through the facade into verifying agents: a dev PKI, a sample multi-arch image, an
//! upstream (the distribution registry, or the built-in layout registry), the facade,
//! `meshctl` connecting, importing and signing a release offline, and two devices'
//! agents syncing it. Everything listens on 127.0.0.1 and is stopped at the end.
//!
//! `up` sets up the same stage and keeps it running for other tools (the QEMU fleet
//! script) until SIGINT or SIGTERM.

mod process;
mod stage;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::process::Shown;
use crate::stage::{Device, Facade, Upstream, UpstreamKind};

/// Runs the whole Meshanics path on this machine and says what it does: registry ->
/// facade (mutual TLS) -> agents that verify every byte against signed metadata.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Step>,
    #[command(flatten)]
    options: Options,
}

#[derive(Debug, clap::Args)]
struct Options {
    /// Which upstream to start: the distribution registry (needs docker-registry and
    /// skopeo), the built-in layout registry, or whichever is installed.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    upstream: UpstreamKind,
    /// The size of the image's shared layer, in MiB.
    #[arg(long, default_value_t = 4, global = true)]
    layer_mib: usize,
}

#[derive(Debug, Subcommand)]
enum Step {
    /// Run the demo from start to end (the default).
    Run {
        /// Keep everything the demo made in DIR (must be empty or missing) instead of a
        /// temporary folder removed at the end.
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
    },
    /// Set up the stage (PKI, upstream, facade, signed release) in DIR and keep it running
    /// until SIGINT/SIGTERM: for the QEMU fleet script and for trying the agent by hand.
    /// Writes DIR/facade.url and DIR/device/ (ca.crt, device.crt, device.key, root.cose,
    /// agent.toml), then prints `ready`.
    Up {
        /// The folder (must be empty or missing; kept afterwards).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Another name or IP address for the facade's certificate (e.g. 10.0.2.2, the
        /// host as a QEMU guest sees it). Repeatable.
        #[arg(long = "san", value_name = "NAME_OR_IP")]
        sans: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(&cli.options, None),
        Some(Step::Run { keep }) => run(&cli.options, keep),
        Some(Step::Up { dir, sans }) => up(&cli.options, &dir, &sans),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\nmeshanics-demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Announces steps with their number and time.
#[derive(Debug)]
struct Steps {
    total: usize,
    done: usize,
    started: Instant,
}

impl Steps {
    fn new(total: usize) -> Self {
        Steps {
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    fn next(&mut self, what: &str) {
        self.done += 1;
        println!(
            "\n[{}/{}] {what}  (at {:.1} s)",
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// The folder the demo works in: kept where the user asked, else a temporary one.
enum WorkDir {
    Kept(PathBuf),
    Temporary(tempfile::TempDir),
}

impl WorkDir {
    fn new(keep: Option<PathBuf>) -> anyhow::Result<Self> {
        match keep {
            Some(dir) => {
                ensure_empty(&dir)?;
                Ok(WorkDir::Kept(std::path::absolute(&dir).with_context(
                    || format!("making {} an absolute path", dir.display()),
                )?))
            }
            None => Ok(WorkDir::Temporary(
                tempfile::Builder::new()
                    .prefix("meshanics-demo-")
                    .tempdir()
                    .context("creating a temporary folder")?,
            )),
        }
    }

    fn path(&self) -> &Path {
        match self {
            WorkDir::Kept(dir) => dir,
            WorkDir::Temporary(dir) => dir.path(),
        }
    }
}

fn ensure_empty(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                anyhow::bail!(
                    "{} is not empty: give a new or empty folder (nothing was changed)",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", dir.display())),
    }
}

/// What the shared set-up leaves running.
struct Stage {
    upstream: Upstream,
    upstream_host: String,
    facade: Facade,
    devices: Vec<Device>,
}

/// Steps 1 to 6: PKI, image, upstream, facade, connect and import, sign and publish.
fn set_up(
    steps: &mut Steps,
    options: &Options,
    dir: &Path,
    shown: &Shown,
    sans: &[String],
    devices: &[(&str, &str)],
) -> anyhow::Result<Stage> {
    let bins = stage::bin_dir()?;
    steps.next("A development PKI, made with meshanics-shared's devpki module");
    let devices = stage::pki(dir, sans, devices)?;
    println!(
        "    a CA; the facade's server certificate (localhost, 127.0.0.1{}); device certificates {}",
        sans.iter().map(|s| format!(", {s}")).collect::<String>(),
        devices
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(" and ")
    );

    steps.next("A sample multi-arch image, written as an OCI image layout");
    let image = stage::image(dir, options.layer_mib.saturating_mul(1024 * 1024))?;
    println!(
        "    {}:{} for {}: index {}, {} blobs, {} bytes in all (images/{})",
        stage::REPOSITORY,
        stage::TAG,
        stage::PLATFORMS.join(" and "),
        image.index.digest,
        image.all_blobs.len(),
        image.all_blobs.values().sum::<u64>(),
        stage::REPOSITORY
    );

    let kind = stage::pick_upstream(options.upstream);
    let (upstream, upstream_host) = match kind {
        UpstreamKind::Registry => {
            steps.next("The upstream: the CNCF distribution registry (docker-registry)");
            let started = stage::upstream(kind, dir, &bins)?;
            println!(
                "    listening on {}; skopeo pushed {}:{} into it (all platforms)",
                started.1,
                stage::REPOSITORY,
                stage::TAG
            );
            started
        }
        _ => {
            steps.next(
                "The upstream: meshanics-layout-registry, serving the OCI layout folder read-only",
            );
            if options.upstream == UpstreamKind::Auto {
                println!(
                    "    (docker-registry or skopeo is not installed, so the built-in layout \
                     registry stands in)"
                );
            }
            let started = stage::upstream(kind, dir, &bins)?;
            println!("    listening on {}, serving $DEMO/images", started.1);
            started
        }
    };

    steps.next("The facade: mutual TLS for devices, an operator socket for meshctl");
    let facade = stage::facade(dir, &bins)?;
    println!(
        "    devices connect to {} with a certificate from the demo CA; registry credentials \
         would be sealed under $DEMO/facade/master-key",
        facade.url
    );

    steps.next("The operator connects the registry and imports the tag as a digest (meshctl)");
    let pins = stage::connect_and_import(shown, &bins, &facade, &upstream_host, dir)?;

    steps.next("The operator signs the release offline and publishes it (meshctl)");
    let anchor = stage::sign_and_publish(shown, &bins, dir, &pins, &facade)?;
    for device in &devices {
        stage::agent_config(device, &facade.url, &anchor)?;
    }
    Ok(Stage {
        upstream,
        upstream_host,
        facade,
        devices,
    })
}

fn run(options: &Options, keep: Option<PathBuf>) -> anyhow::Result<()> {
    let work = WorkDir::new(keep)?;
    let dir = work.path().to_owned();
    let shown = Shown { dir: dir.clone() };
    println!(
        "Meshanics demo: an image from a registry, through the facade, into verifying agents."
    );
    println!(
        "Everything runs on 127.0.0.1 and is stopped at the end. $DEMO is {}",
        dir.display()
    );
    let mut steps = Steps::new(8);
    let devices = [
        ("demo-device-1", "linux/amd64"),
        ("demo-device-2", "linux/arm64"),
    ];
    let mut stage = set_up(&mut steps, options, &dir, &shown, &[], &devices)?;
    let bins = stage::bin_dir()?;

    steps.next("Each device's agent syncs once: metadata verified, blobs fetched by digest and verified, then applied");
    for device in &stage.devices {
        println!("    {} ({}):", device.name, device.platform);
        let mut sync = Command::new(bins.join("meshanics-agent"));
        sync.arg("--config")
            .arg(device.config())
            .args(["sync", "--once"]);
        shown.run_attached(sync)?;
    }

    steps.next("What the agents say (status)");
    for device in &stage.devices {
        let mut status = Command::new(bins.join("meshanics-agent"));
        status.arg("--config").arg(device.config()).arg("status");
        shown.run(status)?;
    }

    println!("\nStopping what the demo started:");
    let facade_log = stage.facade.service.log().to_owned();
    let status = stage.facade.service.stop();
    println!(
        "    the facade ({}; log $DEMO/{})",
        describe(status),
        relative(&facade_log, &dir)
    );
    match &mut stage.upstream {
        Upstream::Registry(server) => {
            println!("    the distribution registry on {}", server.host());
        }
        Upstream::Layout(service) => {
            let status = service.stop();
            println!(
                "    the layout registry on {} ({})",
                stage.upstream_host,
                describe(status)
            );
        }
    }
    drop(stage);
    match work {
        WorkDir::Kept(dir) => println!(
            "Kept everything in {} (PKI, image, signed release, facade state, device state).",
            dir.display()
        ),
        WorkDir::Temporary(dir) => {
            let path = dir.path().display().to_string();
            dir.close().with_context(|| format!("removing {path}"))?;
            println!("Removed {path}. Run with `run --keep DIR` to keep it.");
        }
    }
    println!("Done: both devices verified and applied the signed release.");
    Ok(())
}

fn up(options: &Options, dir: &Path, sans: &[String]) -> anyhow::Result<()> {
    ensure_empty(dir)?;
    let dir = std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?;
    let shown = Shown { dir: dir.clone() };
    println!(
        "Meshanics demo stage in {} (kept afterwards)",
        dir.display()
    );
    let mut steps = Steps::new(6);
    let stage = set_up(
        &mut steps,
        options,
        &dir,
        &shown,
        sans,
        &[("device", "linux/amd64")],
    )?;
    let url_file = dir.join("facade.url");
    std::fs::write(&url_file, format!("{}\n", stage.facade.url))
        .with_context(|| format!("writing {}", url_file.display()))?;
    println!(
        "\nThe facade is at {} (port {}); a device's files and agent.toml are in {}/device.",
        stage.facade.url,
        stage.facade.port,
        dir.display()
    );
    println!("ready");
    wait_for_signal()?;
    println!("stopping");
    drop(stage);
    Ok(())
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime to wait for signals")?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate()).context("watching SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("watching SIGINT")?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        Ok(())
    })
}

fn describe(status: Option<std::process::ExitStatus>) -> String {
    match status {
        Some(status) if status.success() => "exited cleanly".to_owned(),
        Some(status) => format!("ended: {status}"),
        None => "already stopped".to_owned(),
    }
}

fn relative(path: &Path, dir: &Path) -> String {
    path.strip_prefix(dir).unwrap_or(path).display().to_string()
}
