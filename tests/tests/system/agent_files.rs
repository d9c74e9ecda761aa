//! Files mode end to end: a CNCF ModelPack model and an ORAS artifact, written as OCI layouts,
//! pushed to the real distribution registry with skopeo, released in signed metadata, pulled
//! through the facade by the agent's own update cycle and applied as a folder of files that
//! equals the source byte for byte, its raw layers hard links into the agent's cache; and a
//! Docker model, whose unnamed layers are named after their digests.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a setup that fails is a failing test"
)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;

use meshanics_agent::apply::ArtifactKind;
use meshanics_agent::service::SlotAction;
use meshanics_shared::metadata::ApplyMode;
use meshanics_tests::artifacts::{self, BuiltArtifact, read_tree, source_tree};
use meshanics_tests::oci_layout::{LayerFile, pseudo_random};
use meshanics_tests::release;
use meshanics_tests::skopeo;
use meshanics_tests::update_chain::{REPOSITORY, UpdateChain};

/// A small model's folder: weights at the top, a folder of tokenizer and config files.
fn model_files() -> Vec<LayerFile> {
    vec![
        file("model.safetensors", pseudo_random(1, 300 * 1024)),
        file(
            "tokenizer/tokenizer.json",
            br#"{"vocab": {"a": 0}}"#.to_vec(),
        ),
        file("tokenizer/config.json", br#"{"hidden": 64}"#.to_vec()),
        file("adapter.gguf", pseudo_random(2, 40 * 1024)),
    ]
}

fn file(path: &str, contents: Vec<u8>) -> LayerFile {
    LayerFile {
        path: path.to_owned(),
        contents,
    }
}

/// Pushes `built` as `tag` and releases it as target `name`, with the entry's `apply`.
fn release(s: &mut UpdateChain, built: &BuiltArtifact, tag: &str, apply: Option<ApplyMode>) {
    skopeo::push_layout(&built.dir, tag, &s.registry.host(), REPOSITORY).unwrap();
    let mut entry = release::entry("model", &s.upstream(), &built.manifest, None).unwrap();
    entry.apply = apply;
    s.release.publish(vec![entry]).unwrap();
}

#[test]
fn a_modelpack_model_is_applied_as_files_equal_to_the_source_its_weights_hard_linked() {
    let mut s = UpdateChain::start().unwrap();
    let files = model_files();
    let built = artifacts::modelpack(&files, &s.work.path().join("model"), "m1").unwrap();
    release(&mut s, &built, "m1", None);
    let device = s.device("gateway", "linux/arm64").unwrap();

    let outcome = s.sync(&device).unwrap();

    assert!(
        matches!(outcome.action("model"), Some(SlotAction::Applied { .. })),
        "{outcome:?}"
    );
    let current = device.current();
    assert_eq!(ArtifactKind::of_layout(&current), ArtifactKind::Files);
    let folder = ArtifactKind::Files.folder(&current);
    assert_eq!(read_tree(&folder).unwrap(), source_tree(&files));
    // Raw layers are the cache's blobs, not copies.
    for name in ["model.safetensors", "adapter.gguf"] {
        let layer = built
            .layers
            .iter()
            .find(|l| l.annotations.as_ref().unwrap()["org.cncf.model.filepath"].as_str() == name)
            .unwrap();
        let digest = &layer.digest;
        let blob = device
            .state_dir()
            .join("cache/blobs/sha256")
            .join(digest.hex());
        assert_eq!(
            std::fs::metadata(folder.join(name)).unwrap().ino(),
            std::fs::metadata(&blob).unwrap().ino(),
            "{name} is not a hard link to {digest}"
        );
    }

    let next = s.sync(&device).unwrap();
    assert_eq!(
        next.action("model"),
        Some(&SlotAction::UpToDate),
        "{next:?}"
    );
}

#[test]
fn an_oras_artifact_is_applied_as_files_its_folder_layer_extracted() {
    let mut s = UpdateChain::start().unwrap();
    let files = vec![
        file("hello.txt", b"hello from oras\n".to_vec()),
        file("site/index.html", b"<h1>edge</h1>".to_vec()),
        file("site/assets/app.js", pseudo_random(3, 20 * 1024)),
        file("data.bin", pseudo_random(4, 64 * 1024)),
    ];
    let built = artifacts::oras(&files, &s.work.path().join("oras"), "o1").unwrap();
    release(&mut s, &built, "o1", None);
    let device = s.device("gateway", "linux/amd64").unwrap();

    let outcome = s.sync(&device).unwrap();

    assert!(
        matches!(outcome.action("model"), Some(SlotAction::Applied { .. })),
        "{outcome:?}"
    );
    let folder = ArtifactKind::Files.folder(&device.current());
    assert_eq!(read_tree(&folder).unwrap(), source_tree(&files));
}

#[test]
fn the_signed_entry_overrides_the_artifact_a_model_released_as_layout_is_laid_out() {
    let mut s = UpdateChain::start().unwrap();
    let built = artifacts::modelpack(&model_files(), &s.work.path().join("model"), "m1").unwrap();
    release(&mut s, &built, "m1", Some(ApplyMode::Layout));
    let device = s.device("gateway", "linux/arm64").unwrap();

    s.sync(&device).unwrap();

    let current = device.current();
    assert_eq!(ArtifactKind::of_layout(&current), ArtifactKind::Image);
    assert!(!current.join("files").exists());
    assert!(
        current
            .join("blobs/sha256")
            .join(built.manifest.digest.hex())
            .is_file()
    );
}

#[test]
fn a_docker_model_is_applied_as_files_its_unnamed_gguf_named_after_its_digest() {
    let mut s = UpdateChain::start().unwrap();
    let gguf = pseudo_random(5, 128 * 1024);
    let built =
        artifacts::docker_model(&gguf, b"MIT\n", &s.work.path().join("docker"), "d1").unwrap();
    release(&mut s, &built, "d1", None);
    let device = s.device("gateway", "linux/amd64").unwrap();

    s.sync(&device).unwrap();

    let folder = ArtifactKind::Files.folder(&device.current());
    let gguf_name = format!("sha256-{}.gguf", built.layers[0].digest.hex());
    assert_eq!(
        read_tree(&folder).unwrap(),
        BTreeMap::from([(gguf_name, gguf), ("LICENSE".to_owned(), b"MIT\n".to_vec())])
    );
}
