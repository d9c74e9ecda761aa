//! The log set-up of the server binaries (the facade, the layout registry).

/// Logging for a server binary: `RUST_LOG` or `info`, no module targets, colours only when
/// stdout is a terminal (journald and log files get plain text).
pub fn init_logging() {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}
