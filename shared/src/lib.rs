//! # meshanics-shared
//!
//! The pure logic that the device agent, the facade and `meshctl` all stand on. Nothing here
//! opens a connection or spawns a task: it parses, hashes, matches and builds configuration,
//! so both sides of the wire agree on exactly the same rules, and holds the two small pieces
//! of plumbing both programs need alike (durable file writes, systemd notifications).
//!
//! A short tour:
//!
//! - [`digest`]: [`Digest`], a content address (`sha256:<64 hex>` or `sha512:<128 hex>`),
//!   parsed once and never re-checked, and [`digest::Hasher`] to compute one.
//! - [`verify`]: adapters that hash bytes as they pass ([`VerifyingReader`] for `AsyncRead`,
//!   [`VerifyingStream`] for a stream of chunks, [`VerifyingWriter`] for `std::io::Write`),
//!   fail as soon as more bytes arrive than expected, and fail at the end on a short body or a
//!   digest mismatch. They are how "verify while streaming, fail closed" is implemented.
//! - [`reference`]: OCI image references normalized exactly as the docker CLI does
//!   (`nginx` is `docker.io/library/nginx`), [`Registry`] (the host a connection is keyed by,
//!   with Docker Hub's many names folded into one).
//! - [`platform`]: `os/arch[/variant]` with containerd's normalization and the platforms a
//!   device can run, best first (a leaf: it knows nothing of manifests).
//! - [`media_type`] and [`manifest`]: the OCI and Docker manifest media types and the few
//!   manifest and index structures the agent and facade need, with a 4 MiB size cap;
//!   [`ImageIndex::manifest_for`] picks the best manifest for a device out of an index.
//! - `devpki` (feature `devpki`): a development CA for tests, benchmarks and the demo.
//! - [`metadata`]: the signed update metadata (root, targets, timestamp as CBOR in COSE_Sign,
//!   Ed25519), the signing side `meshctl` uses and the device's TUF-style verification
//!   workflow with rollback, freeze and mix-and-match protection.
//! - [`duration`]: durations as both TOML files spell them (`"30s"`, `"1h 30m"`).
//! - [`tls`]: PEM loading with errors that name the file, and the rustls client and server
//!   configurations (mutual TLS, CRLs) both sides use, all on the `ring` provider.
//! - [`fs`]: the one atomic write (temporary file, fsync, rename, fsync of the folder) and the
//!   folder fsync, with errors that name the step and the path.
//! - [`oci_error`]: the OCI distribution spec's error body, the one builder every server of
//!   the project (the facade, its operator API, the layout registry) writes it with.
//! - [`notify`]: systemd's `sd_notify` protocol (`READY`, `STATUS`, `WATCHDOG`, `STOPPING`)
//!   for both programs' `Type=notify` units.
//!
//! What this crate does not do: networking (beyond one datagram to systemd), or storage
//! beyond durable whole-file writes. It decides what a device may run only through the signed
//! update metadata.

#[cfg(feature = "devpki")]
pub mod devpki;
pub mod digest;
pub mod duration;
pub mod fs;
pub mod manifest;
pub mod media_type;
pub mod metadata;
pub mod notify;
pub mod oci_error;
pub mod platform;
pub mod reference;
pub mod tls;
pub mod verify;

pub use digest::{Algorithm, Digest, DigestError};
pub use manifest::{Descriptor, ImageIndex, ImageManifest, Manifest, ManifestError};
pub use metadata::MetadataError;
pub use platform::{Platform, PlatformError};
pub use reference::{Reference, ReferenceError, Registry, Repository, Tag};
pub use tls::TlsError;
pub use verify::{Verifier, VerifyError, VerifyingReader, VerifyingStream, VerifyingWriter};
