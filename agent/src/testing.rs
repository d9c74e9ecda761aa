//! Helpers for the crate's unit tests: a store in a temp dir, small artifacts in it, and
//! their layouts (the store's own tests get layouts from here, not from `apply`).

use meshanics_shared::digest::Hasher;
use meshanics_shared::media_type::{OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST};
use meshanics_shared::{Algorithm, Descriptor, Repository};

use crate::pull::{PullTarget, Pulled};
use crate::store::{ArtifactRecord, FreeSpace, Store, StoreOptions};

/// A store in a fresh temp dir.
pub(crate) fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = Store::open(dir.path(), StoreOptions::default()).unwrap();
    (dir, store)
}

/// A store whose free space is a fixed figure.
pub(crate) fn store_with_space(bytes: u64) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        free_space: FreeSpace::Fixed(bytes),
        reserve: 0,
    };
    let (store, _) = Store::open(dir.path(), options).unwrap();
    (dir, store)
}

/// A descriptor of `bytes` whose digest uses `algorithm`.
pub(crate) fn descriptor_with(algorithm: Algorithm, media_type: &str, bytes: &[u8]) -> Descriptor {
    let mut hasher = Hasher::new(algorithm);
    hasher.update(bytes);
    Descriptor {
        media_type: media_type.to_owned(),
        digest: hasher.finish(),
        size: bytes.len() as u64,
        platform: None,
        annotations: None,
        artifact_type: None,
    }
}

/// Commits an image (config and the given layers) to the store, as a pull would, and
/// returns what the pull would return.
pub(crate) fn pulled(store: &Store, name: &str, layers: &[&[u8]]) -> Pulled {
    pulled_with(store, name, layers, Algorithm::Sha256)
}

/// [`pulled`], with every digest (config, layers, manifest) computed with `algorithm`.
pub(crate) fn pulled_with(
    store: &Store,
    name: &str,
    layers: &[&[u8]],
    algorithm: Algorithm,
) -> Pulled {
    build(store, name, name, layers, algorithm)
}

/// A release of the target `name` (its slot) labelled `label` in its config, so that two
/// releases of one target differ in every blob but shared layers.
pub(crate) fn release(store: &Store, name: &str, label: &str, layers: &[&[u8]]) -> Pulled {
    build(store, name, label, layers, Algorithm::Sha256)
}

fn build(store: &Store, name: &str, label: &str, layers: &[&[u8]], algorithm: Algorithm) -> Pulled {
    let descriptor = |media_type: &str, bytes: &[u8]| descriptor_with(algorithm, media_type, bytes);
    let config_bytes = format!(r#"{{"architecture":"amd64","os":"linux","name":"{label}"}}"#);
    let config = descriptor(OCI_CONFIG, config_bytes.as_bytes());
    store.put(&config.digest, config_bytes.as_bytes()).unwrap();
    let mut layer_descriptors = Vec::new();
    for layer in layers {
        let d = descriptor(OCI_LAYER_TAR, layer);
        store.put(&d.digest, layer).unwrap();
        layer_descriptors.push(d);
    }
    let manifest_bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layer_descriptors,
    }))
    .unwrap();
    let manifest = descriptor(OCI_MANIFEST, &manifest_bytes);
    store.put(&manifest.digest, &manifest_bytes).unwrap();
    let mut blobs = vec![config];
    blobs.extend(layer_descriptors);
    pulled_of(name, "127.0.0.1_5000/team/app", manifest, blobs)
}

/// What a pull of the image `manifest` (committed, with `blobs`) as target `name` from
/// `repository` returns.
pub(crate) fn pulled_of(
    name: &str,
    repository: &str,
    manifest: Descriptor,
    blobs: Vec<Descriptor>,
) -> Pulled {
    Pulled {
        target: PullTarget {
            name: name.to_owned(),
            repository: Repository::parse(repository).unwrap(),
            digest: manifest.digest.clone(),
            size: manifest.size,
            media_type: manifest.media_type.clone(),
            rollout: None,
            apply: None,
        },
        manifest,
        blobs,
        fetched: 0,
        cached: 0,
        received_bytes: 0,
    }
}

/// Lays `pulled` out as an artifact layout, as the applier does.
pub(crate) fn laid_out(store: &Store, pulled: &Pulled) -> ArtifactRecord {
    crate::apply::lay_out(store, pulled).unwrap()
}

/// Lays `pulled` out and applies it (no hook), so that its slot's `current` points at it;
/// returns the layout's id.
pub(crate) async fn applied(store: &Store, pulled: &Pulled) -> String {
    let record = laid_out(store, pulled);
    crate::apply::apply(store, &record.id, &crate::apply::Checks::default())
        .await
        .unwrap();
    record.id
}
