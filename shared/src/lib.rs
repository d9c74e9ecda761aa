//! # meshanics-shared
//!
//! The pure logic that the device agent, the facade and `meshctl` all stand on. Nothing here
//! opens a socket or spawns a task: it parses, hashes, matches and builds configuration, so
//! both sides of the wire agree on exactly the same rules.
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
//! - [`platform`]: `os/arch[/variant]` with containerd's normalization and its matcher that
//!   picks the best manifest for a device out of an index.
//! - [`media_type`] and [`manifest`]: the OCI and Docker manifest media types and the few
//!   manifest and index structures the agent and facade need, with a 4 MiB size cap.
//! - `devpki` (feature `devpki`): a development CA for tests, benchmarks and the demo.
//! - [`metadata`]: the signed update metadata (root, targets, timestamp as CBOR in COSE_Sign,
//!   Ed25519), the signing side `meshctl` uses and the device's TUF-style verification
//!   workflow with rollback, freeze and mix-and-match protection.
//! - [`duration`]: durations as both TOML files spell them (`"30s"`, `"1h 30m"`).
//! - [`tls`]: PEM loading with errors that name the file, and the rustls client and server
//!   configurations (mutual TLS, CRLs) both sides use, all on the `ring` provider.
//!
//! What this crate does not do: networking, or storage beyond the trusted metadata files. It
//! decides what a device may run only through the signed update metadata.

#[cfg(feature = "devpki")]
pub mod devpki;
pub mod digest;
pub mod duration;
pub mod error;
pub mod manifest;
pub mod media_type;
pub mod metadata;
pub mod platform;
pub mod reference;
pub mod tls;
pub mod verify;

pub use digest::{Algorithm, Digest, DigestError};
pub use error::Error;
pub use manifest::{Descriptor, ImageIndex, ImageManifest, Manifest, ManifestError};
pub use metadata::MetadataError;
pub use platform::{Platform, PlatformError};
pub use reference::{Reference, ReferenceError, Registry, Repository, Tag};
pub use tls::TlsError;
pub use verify::{Verifier, VerifyError, VerifyingReader, VerifyingStream, VerifyingWriter};
