//! # meshanics-http
//!
//! The HTTP server pieces every Meshanics listener shares, so that each exists once:
//!
//! - [`serve`]: the one accept loop. The facade's device listener, its `/healthz` and
//!   `/metrics` listener, the operator API's Unix socket and the layout registry all run
//!   through it: accept failures (out of file descriptors) are backed off instead of spun on,
//!   connections are counted against an optional limit and tracked, and shutdown drains them
//!   within a grace period. What a connection does (a TLS handshake, HTTP/1 or HTTP/2) is the
//!   caller's handler.
//! - [`oci_error`]: the distribution spec's error body, `{"errors":[{"code","message"}]}`.
//! - [`budget`]: how many of something may be in progress at once, overall and per key (the
//!   facade's handshake, connection, stream and manifest-memory budgets).
//! - [`range`]: the single `Range: bytes=` parser.
//! - [`init_logging`]: the log set-up the server binaries share.
//!
//! What it does not do: route requests, map errors to statuses (each server keeps its own
//! mapping and calls [`oci_error`] for the body), or speak TLS.

/// The OCI error body lives in the runtime-free shared crate (the operator API's client reads
/// it too); servers reach it here beside the serve loop.
pub use meshanics_shared::oci_error;
pub mod budget;
pub mod range;
pub mod serve;

mod logging;

pub use budget::{Budget, KeyShare, PerKey, Share};
pub use logging::init_logging;
pub use serve::{Connection, Drain, Listener, ServeConfig, serve};
