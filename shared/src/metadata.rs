//! Signed update metadata: the format, the signing side, and the device's verification
//! workflow. The format is specified in `docs/metadata.md`; this module is one
//! implementation of it.
//!
//! Three roles, after TUF: [`Root`] (keys, and per role the authorized key ids and a
//! threshold), [`Targets`] (the artifacts a device may run) and [`Timestamp`] (freshness,
//! and the exact targets file to use). Each file is a CBOR payload inside a tagged COSE_Sign
//! with one EdDSA (Ed25519) signature per key ([`envelope`]).
//!
//! A device holds a [`TrustedSet`] and runs [`Updater::update`] against a [`Fetch`]
//! source: the root chain (each new root signed by a threshold of the old and of its own
//! root keys, version exactly N+1, at most [`Limits::max_root_rotations`] per update), the
//! final root's expiry, the timestamp (never an older version; the same version means
//! nothing new), then the targets (the exact length and sha256 the timestamp names, its
//! version, never older). Every fetch is size-capped. Expiry is checked against an effective
//! clock that never goes below the newest issue time already trusted, because devices
//! without a real-time clock boot in 1970. What is accepted is persisted in a
//! [`TrustedStore`] with atomic writes; the roots as the chain they were accepted as, which
//! a restart walks again from the pinned anchor.
//!
//! `meshctl` uses the signing side: [`SigningKey`], the payload constructors and
//! [`envelope::sign`].

pub mod envelope;
pub mod error;
pub mod fetch;
pub mod key;
pub mod role;
pub mod rollout;
pub mod root;
pub mod store;
pub mod targets;
pub mod time;
pub mod timestamp;
pub mod trusted;
pub mod update;

pub use envelope::{ALGORITHM, open, open_root, sign};
pub use error::MetadataError;
pub use fetch::{DirectoryFetch, Fetch, FetchError};
pub use key::{KeyId, PublicKey, SigningKey};
pub use role::{Role, RoleKeys, RoleType, SPEC_VERSION};
pub use rollout::{Placement, Position, Rollout, RolloutError, Wave};
pub use root::{Roles, Root};
pub use store::TrustedStore;
pub use targets::{
    ApplyMode, Selectors, TargetEntry, TargetError, TargetName, Targets, UpstreamRepository,
};
pub use time::UnixTime;
pub use timestamp::{TargetsMeta, Timestamp};
pub use trusted::{RootRotation, TimestampUpdate, TrustedSet};
pub use update::{Limits, TIMESTAMP_FILE, UpdateReport, Updater, root_file, targets_file};

#[cfg(test)]
mod tests;
