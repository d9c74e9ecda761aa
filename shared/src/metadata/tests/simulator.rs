//! A repository simulator: signing keys for each role, the files a repository serves, and
//! the bytes of target manifests. It plays the honest operator (`publish_*`) and the
//! attacker (`serve`, `serve_target`) alike. It answers with every byte it has whatever the
//! limit, like a malicious server, so the workflow's own caps are what gets tested.

use std::collections::HashMap;
use std::time::Duration;

use crate::digest::Digest;
use crate::media_type::OCI_MANIFEST;
use crate::metadata::fetch::{Fetch, FetchError};
use crate::metadata::{
    Limits, RoleKeys, Roles, Root, SigningKey, TargetEntry, TargetName, Targets, TargetsMeta,
    Timestamp, TrustedSet, UnixTime, Updater, UpstreamRepository, root_file, sign, targets_file,
};

/// The simulated "now" of the repository: 2026-11-18.
pub(super) const T0: UnixTime = UnixTime::from_secs(1_795_000_000);
pub(super) const DAY: Duration = Duration::from_secs(86_400);

/// Keys and thresholds of one root version.
#[derive(Clone)]
pub(super) struct RootSpec {
    pub root: Vec<SigningKey>,
    pub root_threshold: u32,
    pub targets: Vec<SigningKey>,
    pub targets_threshold: u32,
    pub timestamp: Vec<SigningKey>,
    pub timestamp_threshold: u32,
    pub expires: UnixTime,
}

pub(super) struct Simulator {
    pub files: HashMap<String, Vec<u8>>,
    pub blobs: HashMap<String, Vec<u8>>,
    pub requests: Vec<String>,
    pub spec: RootSpec,
    pub root_version: u64,
    pub targets_version: u64,
    pub timestamp_version: u64,
    pub now: UnixTime,
    next_seed: u8,
    /// The signed bytes of the current targets file.
    pub current_targets: Vec<u8>,
}

impl Simulator {
    /// A repository with one key per role, root version 1 published, no targets yet.
    pub(super) fn new() -> Self {
        let mut sim = Simulator {
            files: HashMap::new(),
            blobs: HashMap::new(),
            requests: Vec::new(),
            spec: RootSpec {
                root: vec![],
                root_threshold: 1,
                targets: vec![],
                targets_threshold: 1,
                timestamp: vec![],
                timestamp_threshold: 1,
                expires: T0.saturating_add(365 * DAY),
            },
            root_version: 0,
            targets_version: 0,
            timestamp_version: 0,
            now: T0,
            next_seed: 1,
            current_targets: Vec::new(),
        };
        sim.spec.root = vec![sim.key()];
        sim.spec.targets = vec![sim.key()];
        sim.spec.timestamp = vec![sim.key()];
        let spec = sim.spec.clone();
        sim.publish_root(spec);
        sim
    }

    /// A repository with root, one target (`app`) and a timestamp published.
    pub(super) fn with_release() -> Self {
        let mut sim = Simulator::new();
        let entry = sim.entry("app", b"manifest one");
        sim.publish_release(vec![entry]);
        sim
    }

    /// A fresh deterministic key.
    pub(super) fn key(&mut self) -> SigningKey {
        let seed = [self.next_seed; 32];
        self.next_seed += 1;
        SigningKey::from_seed(&seed)
    }

    /// The pinned root a device starts from.
    pub(super) fn anchor(&self) -> Vec<u8> {
        self.files[&root_file(1)].clone()
    }

    /// A device that trusts the anchor and persists nothing.
    pub(super) fn device(&self) -> Updater {
        Updater::new(TrustedSet::from_anchor(&self.anchor()).unwrap())
    }

    /// A device with small limits for rotation tests.
    pub(super) fn device_with_limits(&self, limits: Limits) -> Updater {
        self.device().with_limits(limits)
    }

    /// Builds (does not publish) the root payload for a spec.
    pub(super) fn root_payload(&self, spec: &RootSpec, version: u64) -> Root {
        let mut keys = Vec::new();
        for key in spec.root.iter().chain(&spec.targets).chain(&spec.timestamp) {
            if !keys.contains(&key.public()) {
                keys.push(key.public());
            }
        }
        let ids = |keys: &[SigningKey]| keys.iter().map(SigningKey::id).collect::<Vec<_>>();
        Root::new(
            version,
            self.now,
            spec.expires,
            &keys,
            Roles {
                root: RoleKeys::new(ids(&spec.root), spec.root_threshold),
                targets: RoleKeys::new(ids(&spec.targets), spec.targets_threshold),
                timestamp: RoleKeys::new(ids(&spec.timestamp), spec.timestamp_threshold),
            },
        )
    }

    /// Publishes the next root, signed by the old root keys and the new ones.
    pub(super) fn publish_root(&mut self, spec: RootSpec) {
        let version = self.root_version + 1;
        let payload = self.root_payload(&spec, version);
        let mut signers: Vec<&SigningKey> = self.spec.root.iter().collect();
        for key in &spec.root {
            if !signers.iter().any(|k| k.id() == key.id()) {
                signers.push(key);
            }
        }
        let bytes = sign(&payload, &signers).unwrap();
        self.files.insert(root_file(version), bytes);
        self.root_version = version;
        self.spec = spec;
    }

    /// A target entry for `content`, with the content served by digest.
    pub(super) fn entry(&mut self, name: &str, content: &[u8]) -> TargetEntry {
        let digest = Digest::sha256_of(content);
        self.blobs.insert(digest.to_string(), content.to_vec());
        TargetEntry {
            name: TargetName::parse(name).unwrap(),
            repository: UpstreamRepository::parse("ghcr.io/org/app").unwrap(),
            digest,
            size: content.len() as u64,
            media_type: OCI_MANIFEST.to_owned(),
            selectors: Default::default(),
            custom: Default::default(),
            rollout: None,
            apply: None,
        }
    }

    /// Signs a targets payload with the current targets keys.
    pub(super) fn sign_targets(
        &self,
        version: u64,
        expires: UnixTime,
        entries: Vec<TargetEntry>,
    ) -> Vec<u8> {
        let payload = Targets::new(version, self.now, expires, entries);
        sign(&payload, &self.spec.targets.iter().collect::<Vec<_>>()).unwrap()
    }

    /// Signs a timestamp with the current timestamp keys.
    pub(super) fn sign_timestamp(
        &self,
        version: u64,
        expires: UnixTime,
        targets: TargetsMeta,
    ) -> Vec<u8> {
        let payload = Timestamp::new(version, self.now, expires, targets);
        sign(&payload, &self.spec.timestamp.iter().collect::<Vec<_>>()).unwrap()
    }

    /// Publishes new targets (expiring in 30 days) and a timestamp (1 day) naming them.
    pub(super) fn publish_release(&mut self, entries: Vec<TargetEntry>) {
        self.targets_version += 1;
        let bytes = self.sign_targets(
            self.targets_version,
            self.now.saturating_add(30 * DAY),
            entries,
        );
        self.files
            .insert(targets_file(self.targets_version), bytes.clone());
        self.current_targets = bytes;
        self.publish_timestamp();
    }

    /// Re-signs a fresh timestamp naming the current targets.
    pub(super) fn publish_timestamp(&mut self) {
        self.timestamp_version += 1;
        let meta = TargetsMeta::new(self.targets_version, &self.current_targets);
        let bytes = self.sign_timestamp(self.timestamp_version, self.now.saturating_add(DAY), meta);
        self.serve("timestamp.cose", bytes);
    }

    /// Serves any bytes under any name (the attacker's move).
    pub(super) fn serve(&mut self, file: &str, bytes: Vec<u8>) {
        self.files.insert(file.to_owned(), bytes);
    }

    /// Serves other bytes for a target digest (the attacker's move).
    pub(super) fn serve_target(&mut self, digest: &Digest, bytes: Vec<u8>) {
        self.blobs.insert(digest.to_string(), bytes);
    }
}

impl Fetch for Simulator {
    async fn fetch_metadata(&mut self, file: &str, _limit: u64) -> Result<Vec<u8>, FetchError> {
        self.requests.push(file.to_owned());
        self.files.get(file).cloned().ok_or(FetchError::NotFound)
    }

    async fn fetch_target(
        &mut self,
        entry: &TargetEntry,
        _limit: u64,
    ) -> Result<Vec<u8>, FetchError> {
        self.requests.push(entry.digest.to_string());
        self.blobs
            .get(entry.digest.as_str())
            .cloned()
            .ok_or(FetchError::NotFound)
    }
}
