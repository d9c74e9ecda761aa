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
pub(crate) fn materialize(
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
                source,
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
    use super::*;

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
        let oras_dir = layer(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &[(TITLE, "data"), (ORAS_UNPACK, "true")],
        );
        assert_eq!(
            plan(&oras_dir),
            Plan::Extract {
                compression: Compression::Gzip,
                prefix: Some("data"),
            }
        );
        let oras_file = layer(
            "application/vnd.oci.image.layer.v1.tar",
            &[(TITLE, "backup.tar")],
        );
        assert_eq!(plan(&oras_file), Plan::File("backup.tar".into()));
        let weight = layer(
            "application/vnd.cncf.model.weight.v1.raw",
            &[(MODEL_FILEPATH, "model/w.safetensors")],
        );
        assert_eq!(plan(&weight), Plan::File("model/w.safetensors".into()));
        let cnai = layer(
            "application/vnd.cnai.model.doc.v1.raw",
            &[(CNAI_FILEPATH, "README.md")],
        );
        assert_eq!(plan(&cnai), Plan::File("README.md".into()));
        let code = layer(
            "application/vnd.cncf.model.code.v1.tar+zstd",
            &[(MODEL_FILEPATH, "src")],
        );
        assert_eq!(
            plan(&code),
            Plan::Extract {
                compression: Compression::Zstd,
                prefix: None,
            }
        );
        let gguf = layer("application/vnd.docker.ai.gguf.v3", &[]);
        assert_eq!(
            plan(&gguf),
            Plan::File(format!("sha256-{}.gguf", gguf.digest.hex()))
        );
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
