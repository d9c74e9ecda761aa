//! Offline signing of the update metadata (docs/metadata.md): everything here runs on the
//! operator's machine and never talks to the facade, so signing keys stay where they are.
//!
//! - [`keys`]: `meshctl key generate`, and reading key files.
//! - [`repo`]: a metadata folder (root versions, targets versions, the timestamp).
//! - [`root`]: `meshctl root init` and `meshctl root rotate`.
//! - [`release`]: `meshctl release` (targets from a pins file, then a timestamp) and
//!   `meshctl timestamp refresh`.
//! - [`verify`]: `meshctl verify`, the device's verification workflow on a folder.
//! - [`waves`]: the `--waves` and `--rollout-start` of `meshctl release`.

pub(crate) mod keys;
pub(crate) mod release;
pub(crate) mod repo;
pub(crate) mod root;
pub(crate) mod verify;
pub(crate) mod waves;
