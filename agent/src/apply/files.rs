//! Files mode: a model or file artifact materialized as a folder of files.
//!
//! The artifact is laid out as an image is ([`super::layout`]: `oci-layout`, `index.json`,
//! `blobs/`, so the cache, `fsck`, `gc` and `status` treat it as any other), and its layers
//! become files in `files/` inside it, built in the same temporary folder and renamed into
//! place with it: the folder is complete or absent. Layer by layer, in manifest order:
//!
//! | layer | becomes |
//! | --- | --- |
//! | `org.opencontainers.image.title` + `io.deis.oras.content.unpack: true` (ORAS folder) | the tar (gzip unless the media type says otherwise) extracted; every entry must lie under the title |
//! | `org.opencontainers.image.title` (ORAS file) | one file of that name |
//! | an archive media type: ModelPack `*.v1.tar`, `*.v1.tar+gzip`, `*.v1.tar+zstd`, Docker `vnd.docker.ai.*.tar`, the OCI layer types | the tar extracted into `files/` |
//! | anything else: ModelPack `*.v1.raw`, Docker `gguf.v3`, `safetensors`, `license`, ... | one file, named by `org.cncf.model.filepath` (or `org.cnai.model.filepath`), else the title, else `<algorithm>-<hex><suffix>` ([`super::kind::derived_suffix`]: `.gguf`, `.safetensors`...) |
//!
//! One-file layers are hard links to the verified cache blob (no copy; a copy only where a
//! link cannot be made): they are read-only, as the cache is, and a workload that must write
//! copies first. Archives are hostile input ([`super::extract`]); their expansion is capped
//! at [`EXPANSION`] times the compressed size (at least [`EXPANSION_FLOOR`]), an
//! uncompressed tar at its own size. Two layers may not write the same path.

use std::io::BufReader;

use meshanics_shared::manifest::{ImageManifest, Manifest};
use meshanics_shared::{Descriptor, ManifestError};

use super::extract::{self, ExtractError, Limits, RelPath};
use super::kind::{
    self, CNAI_FILEPATH, Compression, FILES_DIR, LayerFormat, MODEL_FILEPATH, ORAS_UNPACK, TITLE,
};
use super::layout::lay_out_with;
use crate::error::{Error, Result};
use crate::pull::Pulled;
use crate::store::{ArtifactRecord, Store};

/// How many times its compressed size a compressed archive layer may expand to.
pub const EXPANSION: u64 = 32;
/// The least a compressed archive layer may expand to, whatever its size (small text
/// archives compress far better than [`EXPANSION`]).
pub const EXPANSION_FLOOR: u64 = 16 * 1024 * 1024;
/// The most entries an archive layer may have.
pub const MAX_ENTRIES: u64 = 100_000;

/// What one layer becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan<'a> {
    /// One file of this name (a relative path).
    File(String),
    /// An archive, extracted, its entries under `prefix` when set.
    Extract {
        compression: Compression,
        prefix: Option<&'a str>,
    },
}

/// The image manifest of a pulled artifact, read back from the cache.
pub(crate) fn read_manifest(store: &Store, pulled: &Pulled) -> Result<ImageManifest> {
    let digest = &pulled.manifest.digest;
    let bytes = store.read(digest)?;
    match Manifest::parse(&bytes, Some(&pulled.manifest.media_type)) {
        Ok(Manifest::Image(image)) => Ok(*image),
        Ok(Manifest::Index(_)) => Err(Error::Manifest {
            digest: digest.clone(),
            source: ManifestError::UnknownKind,
        }),
        Err(source) => Err(Error::Manifest {
            digest: digest.clone(),
            source,
        }),
    }
}

/// Lays a pulled model or file artifact out with its files in `files/`, and records it
/// (state `Pulled`). Its blobs must be in the cache.
pub(crate) fn lay_out_files(
    store: &Store,
    pulled: &Pulled,
    manifest: &ImageManifest,
) -> Result<ArtifactRecord> {
    lay_out_with(store, pulled, |tmp| {
        let root = tmp.join(FILES_DIR);
        fs_err::create_dir(&root).map_err(Error::io("creating", &root))?;
        for layer in &manifest.layers {
            write_layer(store, layer, &root).map_err(|source| Error::Files {
                target: pulled.target.name.clone(),
                digest: layer.digest.clone(),
                source: Box::new(source),
            })?;
        }
        Ok(())
    })
}

fn write_layer(
    store: &Store,
    layer: &Descriptor,
    root: &std::path::Path,
) -> std::result::Result<(), ExtractError> {
    let blob = store.blob_path(&layer.digest);
    match plan(layer) {
        Plan::File(name) => {
            let rel = RelPath::parse(name.as_bytes(), false)?;
            let path = extract::place(root, &rel)?;
            extract::link_or_copy(&blob, &path, rel.shown())
        }
        Plan::Extract {
            compression,
            prefix,
        } => {
            let file = std::fs::File::open(&blob).map_err(|source| ExtractError::Write {
                action: "opening",
                path: blob.clone(),
                source,
            })?;
            let reader = BufReader::new(file);
            let limits = limits(layer.size, compression);
            match compression {
                Compression::None => extract::extract(reader, root, prefix, limits),
                Compression::Gzip => extract::extract(
                    flate2::read::MultiGzDecoder::new(reader),
                    root,
                    prefix,
                    limits,
                ),
                Compression::Zstd => {
                    let decoder = ruzstd::decoding::StreamingDecoder::new(reader).map_err(|e| {
                        ExtractError::Read {
                            source: std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                e.to_string(),
                            ),
                        }
                    })?;
                    extract::extract(decoder, root, prefix, limits)
                }
            }
            .map(|_| ())
        }
    }
}

/// What a layer becomes (the table in this module's documentation).
fn plan(layer: &Descriptor) -> Plan<'_> {
    let title = kind::annotation(layer, TITLE);
    if let Some(title) = title
        && kind::annotation(layer, ORAS_UNPACK) == Some("true")
    {
        return Plan::Extract {
            compression: kind::packed_folder_compression(&layer.media_type),
            prefix: Some(title),
        };
    }
    let filepath =
        kind::annotation(layer, MODEL_FILEPATH).or_else(|| kind::annotation(layer, CNAI_FILEPATH));
    match kind::layer_format(&layer.media_type) {
        LayerFormat::Tar(compression) if title.is_none() => Plan::Extract {
            compression,
            prefix: None,
        },
        _ => Plan::File(
            filepath
                .or(title)
                .map(str::to_owned)
                .unwrap_or_else(|| derived_name(layer)),
        ),
    }
}

/// `<algorithm>-<hex><suffix>`: the name of a file layer that carries none.
fn derived_name(layer: &Descriptor) -> String {
    format!(
        "{}-{}{}",
        layer.digest.algorithm().name(),
        layer.digest.hex(),
        kind::derived_suffix(&layer.media_type)
    )
}

/// The caps for an archive layer of `size` bytes.
fn limits(size: u64, compression: Compression) -> Limits {
    let max_bytes = match compression {
        Compression::None => size,
        Compression::Gzip | Compression::Zstd => {
            size.saturating_mul(EXPANSION).max(EXPANSION_FLOOR)
        }
    };
    Limits {
        max_bytes,
        max_entries: MAX_ENTRIES,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::os::unix::fs::MetadataExt as _;

    use meshanics_shared::Algorithm;
    use meshanics_shared::media_type::OCI_MANIFEST;

    use super::*;
    use crate::apply::{ArtifactKind, Checks, apply, materialize};
    use crate::testing::{descriptor_with, pulled_of, store};

    /// A layer: media type, bytes, annotations.
    type TestLayer<'a> = (&'a str, &'a [u8], &'a [(&'a str, &'a str)]);

    /// Commits an artifact (config, then layers with their annotations) as a pull would.
    fn pulled_artifact(
        store: &Store,
        artifact_type: Option<&str>,
        config_type: &str,
        layers: &[TestLayer<'_>],
    ) -> Pulled {
        let config = descriptor_with(Algorithm::Sha256, config_type, b"{}");
        store.put(&config.digest, b"{}").unwrap();
        let mut descriptors = Vec::new();
        for (media_type, bytes, annotations) in layers {
            let mut d = descriptor_with(Algorithm::Sha256, media_type, bytes);
            store.put(&d.digest, bytes).unwrap();
            if !annotations.is_empty() {
                d.annotations = Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                );
            }
            descriptors.push(d);
        }
        let mut manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": descriptors,
        });
        if let Some(t) = artifact_type {
            manifest["artifactType"] = t.into();
        }
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let manifest = descriptor_with(Algorithm::Sha256, OCI_MANIFEST, &bytes);
        store.put(&manifest.digest, &bytes).unwrap();
        let mut blobs = vec![config];
        blobs.extend(descriptors);
        pulled_of("model", "127.0.0.1_5000/team/model", manifest, blobs)
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            builder.append_data(&mut h, name, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }

    #[tokio::test]
    async fn a_modelpack_artifact_becomes_files_raw_layers_hard_linked_to_the_cache() {
        let (_dir, store) = store();
        let weights = b"GGUF weights".repeat(100);
        let config_tar = tar_of(&[("config.json", b"{\"a\":1}"), ("tok/t.json", b"[]")]);
        let docs = gzip(&tar_of(&[("docs/README.md", b"# model")]));
        let code = ruzstd::encoding::compress_to_vec(
            &tar_of(&[("src/run.py", b"print(1)")])[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let pulled = pulled_artifact(
            &store,
            Some("application/vnd.cncf.model.manifest.v1+json"),
            "application/vnd.cncf.model.config.v1+json",
            &[
                (
                    "application/vnd.cncf.model.weight.v1.raw",
                    &weights,
                    &[(MODEL_FILEPATH, "weights/model.gguf")],
                ),
                (
                    "application/vnd.cncf.model.weight.config.v1.tar",
                    &config_tar,
                    &[],
                ),
                ("application/vnd.cncf.model.doc.v1.tar+gzip", &docs, &[]),
                ("application/vnd.cncf.model.code.v1.tar+zstd", &code, &[]),
            ],
        );
        let record = materialize(&store, &pulled).unwrap();
        let layout = store.layout_dir(&record.id);
        assert_eq!(ArtifactKind::of_layout(&layout), ArtifactKind::Files);
        let files = ArtifactKind::Files.folder(&layout);
        let weights_file = files.join("weights/model.gguf");
        assert_eq!(fs_err::read(&weights_file).unwrap(), weights);
        assert_eq!(
            fs_err::metadata(&weights_file).unwrap().ino(),
            fs_err::metadata(store.blob_path(&pulled.blobs[1].digest))
                .unwrap()
                .ino(),
            "a raw layer is a hard link to the cache blob"
        );
        assert_eq!(
            fs_err::read(files.join("config.json")).unwrap(),
            b"{\"a\":1}"
        );
        assert_eq!(fs_err::read(files.join("tok/t.json")).unwrap(), b"[]");
        assert_eq!(
            fs_err::read(files.join("docs/README.md")).unwrap(),
            b"# model"
        );
        assert_eq!(fs_err::read(files.join("src/run.py")).unwrap(), b"print(1)");
        // Still an OCI layout, so the cache's bookkeeping sees its blobs.
        assert!(layout.join("index.json").is_file());
        assert_eq!(
            store
                .scan_layout(&record.id, record.state)
                .unwrap()
                .blobs
                .len(),
            6
        );

        apply(&store, &record.id, &Checks::default()).await.unwrap();
        assert_eq!(
            fs_err::read(store.root().join("current/files/weights/model.gguf")).unwrap(),
            weights
        );
    }

    #[test]
    fn a_docker_model_without_names_gets_names_from_digests_and_an_image_gets_no_files() {
        let (_dir, store) = store();
        let pulled = pulled_artifact(
            &store,
            None,
            "application/vnd.docker.ai.model.config.v0.1+json",
            &[
                ("application/vnd.docker.ai.gguf.v3", b"gguf", &[]),
                (
                    "application/vnd.docker.ai.license",
                    b"MIT",
                    &[(TITLE, "LICENSE")],
                ),
            ],
        );
        let record = materialize(&store, &pulled).unwrap();
        let files = store.layout_dir(&record.id).join(FILES_DIR);
        let gguf = &pulled.blobs[1].digest;
        assert_eq!(
            fs_err::read(files.join(format!("sha256-{}.gguf", gguf.hex()))).unwrap(),
            b"gguf"
        );
        assert_eq!(fs_err::read(files.join("LICENSE")).unwrap(), b"MIT");

        let image = crate::testing::pulled(&store, "app", &[b"layer"]);
        let record = materialize(&store, &image).unwrap();
        let layout = store.layout_dir(&record.id);
        assert_eq!(ArtifactKind::of_layout(&layout), ArtifactKind::Image);
        assert!(!layout.join(FILES_DIR).exists());
    }

    #[test]
    fn a_hostile_layer_fails_the_apply_and_leaves_no_folder_behind() {
        let (dir, store) = store();
        let mut evil = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..10].copy_from_slice(b"../../evil");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        evil.append(&h, &b"x"[..]).unwrap();
        let evil = evil.into_inner().unwrap();
        let pulled = pulled_artifact(
            &store,
            Some("application/vnd.cncf.model.manifest.v1+json"),
            "application/vnd.cncf.model.config.v1+json",
            &[
                (
                    "application/vnd.cncf.model.weight.v1.raw",
                    b"w",
                    &[(MODEL_FILEPATH, "w")],
                ),
                ("application/vnd.cncf.model.code.v1.tar", &evil, &[]),
            ],
        );
        let err = materialize(&store, &pulled).unwrap_err();
        assert!(
            matches!(&err, Error::Files { digest, source, .. } if *digest == pulled.blobs[2].digest && matches!(**source, ExtractError::Name { .. })),
            "{err}"
        );
        assert!(err.to_string().contains("../../evil"), "{err}");
        assert_eq!(fs_err::read_dir(store.artifacts_dir()).unwrap().count(), 0);
        assert!(!dir.path().join("evil").exists());
        assert!(!store.root().join("evil").exists());
    }

    #[test]
    fn two_layers_writing_one_path_are_refused() {
        let (_dir, store) = store();
        let pulled = pulled_artifact(
            &store,
            None,
            "application/vnd.oci.empty.v1+json",
            &[
                ("text/plain", b"one", &[(TITLE, "a.txt")]),
                ("text/plain", b"two", &[(TITLE, "./a.txt")]),
            ],
        );
        let err = materialize(&store, &pulled).unwrap_err();
        assert!(
            matches!(&err, Error::Files { source, .. } if matches!(**source, ExtractError::Exists { .. })),
            "{err}"
        );
    }

    fn layer(media_type: &str, annotations: &[(&str, &str)]) -> Descriptor {
        let mut d =
            crate::testing::descriptor_with(meshanics_shared::Algorithm::Sha256, media_type, b"x");
        if !annotations.is_empty() {
            d.annotations = Some(
                annotations
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            );
        }
        d
    }

    #[test]
    fn layers_are_planned_as_oras_modelpack_and_docker_name_them() {
        let gguf = layer("application/vnd.docker.ai.gguf.v3", &[]);
        let derived = Plan::File(format!("sha256-{}.gguf", gguf.digest.hex()));
        let extract = |compression, prefix| Plan::Extract {
            compression,
            prefix,
        };
        for (media_type, annotations, expected) in [
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &[(TITLE, "data"), (ORAS_UNPACK, "true")][..],
                extract(Compression::Gzip, Some("data")),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar",
                &[(TITLE, "backup.tar")],
                Plan::File("backup.tar".into()),
            ),
            (
                "application/vnd.cncf.model.weight.v1.raw",
                &[(MODEL_FILEPATH, "model/w.safetensors")],
                Plan::File("model/w.safetensors".into()),
            ),
            (
                "application/vnd.cnai.model.doc.v1.raw",
                &[(CNAI_FILEPATH, "README.md")],
                Plan::File("README.md".into()),
            ),
            (
                "application/vnd.cncf.model.code.v1.tar+zstd",
                &[(MODEL_FILEPATH, "src")],
                extract(Compression::Zstd, None),
            ),
            ("application/vnd.docker.ai.gguf.v3", &[], derived),
        ] {
            assert_eq!(
                plan(&layer(media_type, annotations)),
                expected,
                "{media_type}"
            );
        }
    }

    #[test]
    fn compressed_archives_may_expand_a_bounded_amount_and_plain_tars_not_at_all() {
        assert_eq!(limits(1000, Compression::None).max_bytes, 1000);
        assert_eq!(limits(1000, Compression::Gzip).max_bytes, EXPANSION_FLOOR);
        assert_eq!(
            limits(1 << 30, Compression::Zstd).max_bytes,
            (1 << 30) * EXPANSION
        );
    }
}
