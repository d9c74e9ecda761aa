//! Model and file artifacts as OCI image layouts, shaped as their own tools write them, for
//! the agent's files mode:
//!
//! - [`modelpack`]: a CNCF ModelPack model (artifactType
//!   `application/vnd.cncf.model.manifest.v1+json`, a model config, one raw weight layer per
//!   top-level file with its path in `org.cncf.model.filepath`, one `tar+gzip` weight-config
//!   layer per folder);
//! - [`oras`]: what `oras push` writes (an empty config, one layer per file named by
//!   `org.opencontainers.image.title`, one `tar+gzip` layer per folder marked
//!   `io.deis.oras.content.unpack`, its entries under the folder's name);
//! - [`docker_model`]: the Docker model format (a model config, a GGUF layer, a license).
//!
//! Both are built from a list of files (a "source folder"): what a device extracts must equal
//! it byte for byte. The layout's `index.json` names the manifest as `tag`, so
//! `skopeo copy oci:DIR:TAG docker://...` pushes it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use meshanics_shared::manifest::Descriptor;
use meshanics_shared::media_type::OCI_MANIFEST;
use serde_json::json;

use crate::oci_layout::{LayerFile, tar_archive};
use crate::{FixtureError, io_err};

/// ModelPack's artifact type.
pub const MODELPACK_ARTIFACT: &str = "application/vnd.cncf.model.manifest.v1+json";
/// ModelPack's config media type.
pub const MODELPACK_CONFIG: &str = "application/vnd.cncf.model.config.v1+json";
/// A raw ModelPack weight file.
pub const MODELPACK_WEIGHT_RAW: &str = "application/vnd.cncf.model.weight.v1.raw";
/// A gzipped tar of ModelPack weight-config files.
pub const MODELPACK_WEIGHT_CONFIG_GZIP: &str =
    "application/vnd.cncf.model.weight.config.v1.tar+gzip";
/// The Docker model format's config media type.
pub const DOCKER_MODEL_CONFIG: &str = "application/vnd.docker.ai.model.config.v0.1+json";
/// The OCI empty config (`{}`), which ORAS writes for artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// One layer of an artifact.
#[derive(Debug, Clone)]
pub struct ArtifactLayer {
    /// Its media type.
    pub media_type: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct BuiltArtifact {
    /// The layout folder.
    pub dir: PathBuf,
    /// The manifest's descriptor (what a target entry pins).
    pub manifest: Descriptor,
    /// The layers' descriptors, in manifest order.
    pub layers: Vec<Descriptor>,
}

/// Writes an artifact (an image manifest with `artifact_type`, a config and `layers`) as an
/// OCI layout in `dir`, tagged `tag`.
pub fn write_artifact(
    dir: &Path,
    tag: &str,
    artifact_type: Option<&str>,
    config: (&str, &[u8]),
    layers: &[ArtifactLayer],
) -> Result<BuiltArtifact, FixtureError> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
    let put = |media_type: &str, bytes: &[u8]| -> Result<Descriptor, FixtureError> {
        let digest = meshanics_shared::Digest::sha256_of(bytes);
        let path = blobs.join(digest.hex());
        fs::write(&path, bytes).map_err(io_err("writing", &path))?;
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size: bytes.len() as u64,
            platform: None,
            annotations: None,
            artifact_type: None,
        })
    };
    let config = put(config.0, config.1)?;
    let mut descriptors = Vec::new();
    for layer in layers {
        let mut d = put(&layer.media_type, &layer.bytes)?;
        if !layer.annotations.is_empty() {
            d.annotations = Some(layer.annotations.clone());
        }
        descriptors.push(d);
    }
    let mut manifest = serde_json::Map::new();
    manifest.insert("schemaVersion".into(), 2.into());
    manifest.insert("mediaType".into(), OCI_MANIFEST.into());
    if let Some(t) = artifact_type {
        manifest.insert("artifactType".into(), t.into());
    }
    manifest.insert("config".into(), json!(config));
    manifest.insert("layers".into(), json!(descriptors));
    let manifest = serde_json::Value::Object(manifest);
    let manifest = put(OCI_MANIFEST, &to_json(&manifest)?)?;
    let mut named = manifest.clone();
    named.annotations = Some(BTreeMap::from([(
        "org.opencontainers.image.ref.name".to_owned(),
        tag.to_owned(),
    )]));
    let index = json!({"schemaVersion": 2, "manifests": [named]});
    let index_path = dir.join("index.json");
    fs::write(&index_path, to_json(&index)?).map_err(io_err("writing", &index_path))?;
    let layout_path = dir.join("oci-layout");
    fs::write(&layout_path, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io_err("writing", &layout_path))?;
    Ok(BuiltArtifact {
        dir: dir.to_owned(),
        manifest,
        layers: descriptors,
    })
}

/// A ModelPack model of `files`: each top-level file a raw weight layer, each top-level
/// folder a `tar+gzip` weight-config layer (entries keep their full paths).
pub fn modelpack(
    files: &[LayerFile],
    dir: &Path,
    tag: &str,
) -> Result<BuiltArtifact, FixtureError> {
    let config = to_json(&json!({
        "descriptor": {"name": "tiny", "version": "1"},
        "config": {"format": "safetensors"},
        "modelfs": {"type": "layers", "diffIds": []},
    }))?;
    let layers = layers_of(
        files,
        |file| {
            layer(
                MODELPACK_WEIGHT_RAW,
                file.contents.clone(),
                &[("org.cncf.model.filepath", &file.path)],
            )
        },
        |folder, archive| {
            layer(
                MODELPACK_WEIGHT_CONFIG_GZIP,
                archive,
                &[("org.cncf.model.filepath", folder)],
            )
        },
    )?;
    write_artifact(
        dir,
        tag,
        Some(MODELPACK_ARTIFACT),
        (MODELPACK_CONFIG, &config),
        &layers,
    )
}

/// What `oras push` makes of `files`: each top-level file a layer titled with its name, each
/// top-level folder a `tar+gzip` layer titled with the folder's name and marked for
/// unpacking.
pub fn oras(files: &[LayerFile], dir: &Path, tag: &str) -> Result<BuiltArtifact, FixtureError> {
    let layers = layers_of(
        files,
        |file| {
            layer(
                "application/vnd.oci.image.layer.v1.tar",
                file.contents.clone(),
                &[("org.opencontainers.image.title", &file.path)],
            )
        },
        |folder, archive| {
            layer(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                archive,
                &[
                    ("org.opencontainers.image.title", folder),
                    ("io.deis.oras.content.unpack", "true"),
                ],
            )
        },
    )?;
    write_artifact(
        dir,
        tag,
        Some("application/vnd.example.bundle.v1"),
        (OCI_EMPTY, b"{}"),
        &layers,
    )
}

/// A model in the Docker model format: config `application/vnd.docker.ai.model.config.v0.1+json`,
/// a GGUF layer without a name (the device names it after its digest: `sha256-<hex>.gguf`)
/// and a license layer named `LICENSE` by `org.cncf.model.filepath`.
pub fn docker_model(
    gguf: &[u8],
    license: &[u8],
    dir: &Path,
    tag: &str,
) -> Result<BuiltArtifact, FixtureError> {
    let config = to_json(&json!({
        "config": {"format": "gguf", "quantization": "Q4_0", "parameters": "1M"},
        "files": [],
    }))?;
    write_artifact(
        dir,
        tag,
        None,
        (DOCKER_MODEL_CONFIG, &config),
        &[
            layer("application/vnd.docker.ai.gguf.v3", gguf.to_vec(), &[]),
            layer(
                "application/vnd.docker.ai.license",
                license.to_vec(),
                &[("org.cncf.model.filepath", "LICENSE")],
            ),
        ],
    )
}

/// `files` as [`read_tree`] reads them back: what a device's folder must equal.
pub fn source_tree(files: &[LayerFile]) -> BTreeMap<String, Vec<u8>> {
    files
        .iter()
        .map(|f| (f.path.clone(), f.contents.clone()))
        .collect()
}

/// Every regular file under `root`, by relative path, with its bytes (folders are walked,
/// symlinks are an error: files mode writes none for these fixtures).
pub fn read_tree(root: &Path) -> Result<BTreeMap<String, Vec<u8>>, FixtureError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let path = entry.map_err(io_err("listing", &dir))?.path();
            let meta = fs::symlink_metadata(&path).map_err(io_err("reading", &path))?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .map_err(|e| FixtureError::Invalid(e.to_string()))?
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, fs::read(&path).map_err(io_err("reading", &path))?);
            } else {
                return Err(FixtureError::Invalid(format!(
                    "{} is neither a file nor a folder",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}

/// One layer per top-level file (`file`), and per top-level folder one made by `folder`
/// from the folder's name and a gzipped tar of its files (full paths), in first-seen order.
fn layers_of(
    files: &[LayerFile],
    file: impl Fn(&LayerFile) -> ArtifactLayer,
    folder: impl Fn(&str, Vec<u8>) -> ArtifactLayer,
) -> Result<Vec<ArtifactLayer>, FixtureError> {
    let mut layers = Vec::new();
    for (name, group) in grouped(files) {
        match name {
            None => layers.extend(group.iter().map(&file)),
            Some(name) => layers.push(folder(&name, gzip(&tar_archive(&group))?)),
        }
    }
    Ok(layers)
}

/// Files grouped by their top-level folder (`None`: top-level files), in first-seen order.
fn grouped(files: &[LayerFile]) -> Vec<(Option<String>, Vec<LayerFile>)> {
    let mut groups: Vec<(Option<String>, Vec<LayerFile>)> = Vec::new();
    for file in files {
        let folder = file.path.split_once('/').map(|(f, _)| f.to_owned());
        match groups.iter_mut().find(|(f, _)| *f == folder) {
            Some((_, group)) => group.push(file.clone()),
            None => groups.push((folder, vec![file.clone()])),
        }
    }
    groups
}

fn layer(media_type: &str, bytes: Vec<u8>, annotations: &[(&str, &str)]) -> ArtifactLayer {
    ArtifactLayer {
        media_type: media_type.to_owned(),
        bytes,
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>, FixtureError> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .map_err(|e| FixtureError::Invalid(format!("gzip: {e}")))
}

fn to_json(value: &serde_json::Value) -> Result<Vec<u8>, FixtureError> {
    serde_json::to_vec(value).map_err(|e| FixtureError::Invalid(e.to_string()))
}
