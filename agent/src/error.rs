//! The agent's one error type: every variant names the operation and the path, URL or digest
//! it failed on, because the person reading it is a fleet engineer looking at a journal.
//!
//! Configuration problems are not here: they are [`crate::config::ConfigError`], which the
//! binary turns into exit code 64.

use std::path::PathBuf;
use std::time::Duration;

use meshanics_shared::fs::FsError;
use meshanics_shared::metadata::MetadataError;
use meshanics_shared::{Digest, ManifestError, Platform, TlsError, VerifyError};

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A layer could not be materialized as files (files mode): a hostile or corrupt archive,
    /// a bad file name, or a write that failed.
    #[error("materializing layer {digest} of {target} as files: {source}")]
    Files {
        /// The target's name.
        target: String,
        /// The layer.
        digest: Digest,
        /// Why.
        #[source]
        source: Box<crate::apply::extract::ExtractError>,
    },
    /// A file system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`writing`, `renaming`...).
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The sled index failed.
    #[error("{action} the cache index: {source}")]
    Index {
        /// What was being done.
        action: &'static str,
        /// Why.
        #[source]
        source: sled::Error,
    },
    /// A record in the index could not be read or written.
    #[error("cache index record {key:?}: {source}")]
    IndexRecord {
        /// The record's key.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Another agent process holds the state directory.
    #[error("another meshanics-agent is using {path} (its lock is held)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Not enough free disk for a download.
    #[error(
        "not enough free space in {path}: {needed} bytes needed (with a {reserve}-byte reserve), {available} available"
    )]
    NoSpace {
        /// Where the cache is.
        path: PathBuf,
        /// Bytes the download needs.
        needed: u64,
        /// Bytes kept free on top of it.
        reserve: u64,
        /// Bytes available to the agent.
        available: u64,
    },
    /// Content failed verification and was discarded.
    #[error("refused {digest}: {source}")]
    Verify {
        /// The digest the content should have had.
        digest: Digest,
        /// Why it failed.
        #[source]
        source: VerifyError,
    },
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A URL could not be used.
    #[error("invalid URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TCP connection could not be made.
    #[error("connecting to {authority}: {source}")]
    Connect {
        /// `host:port`.
        authority: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection and TLS handshake took too long.
    #[error("connecting to {authority} timed out after {after:?}")]
    ConnectTimeout {
        /// `host:port`.
        authority: String,
        /// The limit.
        after: Duration,
    },
    /// The TLS handshake failed (a wrong CA, a revoked device...).
    #[error("TLS handshake with {authority}: {source}")]
    Handshake {
        /// `host:port`.
        authority: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP request to {url}: {source}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The server answered with a status the agent cannot continue from.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// No response head arrived within the deadline (a facade that accepts the request and
    /// never answers): the attempt is abandoned and retried.
    #[error("no response from {url} within {after:?}")]
    ResponseTimeout {
        /// The URL.
        url: String,
        /// The deadline (`network.header_timeout`).
        after: Duration,
    },
    /// A transfer fell below the configured speed floor.
    #[error("transfer from {url} stalled: under {floor} bytes/s for {window:?}")]
    Stalled {
        /// The URL.
        url: String,
        /// The floor in bytes per second.
        floor: u64,
        /// The window it was measured over.
        window: Duration,
    },
    /// A body ended before the expected size (a dropped connection): resumed on retry.
    #[error("{url} ended after {received} of {expected} bytes")]
    ShortBody {
        /// The URL.
        url: String,
        /// Bytes received in total.
        received: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// A ranged request was not answered with the range asked for (or with 416): the
    /// partial download was dropped and the next attempt starts from zero.
    #[error("{url} did not serve the range from byte {offset}; starting over")]
    RangeRefused {
        /// The URL.
        url: String,
        /// The offset asked for.
        offset: u64,
    },
    /// A response was larger than allowed.
    #[error("{url} sent more than the {limit}-byte limit")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// Every attempt failed (on every facade replica, when several are configured).
    #[error("giving up on {url} after {attempts} attempts: {last}{}", render_elsewhere(.elsewhere))]
    RetriesExhausted {
        /// The URL of the last attempt.
        url: String,
        /// How many attempts were made, over every replica.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<Error>,
        /// Each other replica URL tried, with its last failure (`URL: reason`).
        elsewhere: Vec<String>,
    },
    /// A manifest could not be used.
    #[error("manifest {digest}: {source}")]
    Manifest {
        /// The manifest's digest.
        digest: Digest,
        /// Why.
        #[source]
        source: ManifestError,
    },
    /// An index has no manifest this device can run.
    #[error("index {digest} has no manifest for {platform}")]
    NoPlatform {
        /// The index's digest.
        digest: Digest,
        /// The device's platform.
        platform: Platform,
    },
    /// A name (target, repository, metadata file) is not acceptable.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// What kind of name.
        what: &'static str,
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A blob the operation needs is not in the cache.
    #[error("{digest} is not in the cache")]
    MissingBlob {
        /// The blob.
        digest: Digest,
    },
    /// The signed metadata workflow failed: the facade could not serve a file, a file was
    /// refused (signatures, versions, expiry), or the trusted files could not be stored.
    /// Nothing is pulled or applied after it.
    #[error("{action}: {source}")]
    Metadata {
        /// What was being done.
        action: &'static str,
        /// Why (it names the metadata file).
        #[source]
        source: MetadataError,
    },
    /// The device certificate could not be read for the identity rollout waves place the
    /// device by.
    #[error("placing this device in rollout waves: {path}: {reason}")]
    Rollout {
        /// The device certificate.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An update cycle ran past its deadline and was abandoned; its downloads resume at the
    /// next cycle from what their ingest files hold.
    #[error(
        "the update cycle was abandoned after {after:?} (agent.cycle_deadline); interrupted downloads resume at the next cycle"
    )]
    CycleDeadline {
        /// The deadline.
        after: Duration,
    },
    /// The apply hook could not be run.
    #[error("running the apply hook {path}: {source}")]
    HookSpawn {
        /// The hook.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The apply hook failed; the slot was rolled back.
    #[error("the apply hook {path} failed ({status}); rolled back to the previous artifact")]
    HookFailed {
        /// The hook.
        path: PathBuf,
        /// Its exit status, or `timed out after ...`.
        status: String,
    },
    /// A freshly applied release failed its health check (or it timed out, or could not
    /// start); its slot was rolled back and the release is held back until the signed
    /// metadata changes.
    #[error(
        "the health check {program} failed for {target} {digest} ({status}); rolled back to the previous release, held back until the signed metadata changes"
    )]
    HealthCheckFailed {
        /// The target (the slot's name).
        target: String,
        /// The release's target digest.
        digest: Digest,
        /// The health check's program.
        program: PathBuf,
        /// Its exit status, `timed out after ...` or why it could not start.
        status: String,
    },
}

/// The agent's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

// === impl Error ===

impl Error {
    /// Whether trying again later may succeed: network trouble and server-side errors, not
    /// refusals, missing content or local problems.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::Http { .. }
            | Error::ResponseTimeout { .. }
            | Error::Stalled { .. }
            | Error::ShortBody { .. }
            | Error::RangeRefused { .. } => true,
            // Cut mid-handshake: a facade over its handshake budget for this address (many
            // devices behind one NAT) closes the socket, as a flaky link does. A certificate
            // refused either way (an alert, bad data) is not worth retrying.
            Error::Handshake { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::TimedOut
            ),
            Error::Status { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Whether the next facade replica may succeed where this one failed: the replica is
    /// out of reach (connect errors and timeouts, a TLS handshake it failed, a connection
    /// it dropped or left silent mid-request) or broken (5xx). Not 429 or 408: those say
    /// "this client, slow down", and the replicas share one upstream and one fleet, so
    /// moving on would carry the load to the survivor instead of backing off. Not a refusal
    /// (4xx) or bad content either: every replica serves the same answer.
    pub fn fails_over(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::Handshake { .. }
            | Error::Http { .. }
            | Error::ResponseTimeout { .. }
            | Error::Stalled { .. }
            | Error::ShortBody { .. } => true,
            Error::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// A closure mapping an `io::Error` to [`Error::Io`] for `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    /// A closure mapping a `sled::Error` to [`Error::Index`].
    pub(crate) fn index(action: &'static str) -> impl FnOnce(sled::Error) -> Error {
        move |source| Error::Index { action, source }
    }
}

/// A failed durable write is a failed file system operation: the step is the action.
impl From<FsError> for Error {
    fn from(err: FsError) -> Self {
        Error::Io {
            action: err.step.as_str(),
            path: err.path,
            source: err.source,
        }
    }
}

/// `; also tried URL: reason; ...` for the replicas tried before the last one.
fn render_elsewhere(elsewhere: &[String]) -> String {
    elsewhere
        .iter()
        .map(|e| format!("; also tried {e}"))
        .collect()
}
