//! Which kind of artifact a target is, and so how it is applied: an image is laid out as an
//! OCI image layout; a model or file artifact is materialized as files into a folder
//! ([`super::files`]). The manifest decides, unless the signed target entry says otherwise
//! (`apply = "layout" | "files"`).
//!
//! Files, in this order of evidence:
//! 1. `artifactType` is a CNCF ModelPack manifest (`application/vnd.cncf.model.manifest.v1+json`,
//!    or the older `application/vnd.cnai.model.manifest.v1+json`);
//! 2. the config is a model config: ModelPack (`application/vnd.cncf.model.config.v1+json`,
//!    `application/vnd.cnai.model.config.v1+json`) or the Docker model format
//!    (`application/vnd.docker.ai.model.config.*`);
//! 3. the config is not an image config and every layer is a file: a ModelPack or Docker
//!    model layer, or a layer with an `org.opencontainers.image.title` (what ORAS pushes).
//!
//! Anything else (an OCI or Docker image config, or an artifact whose layers have no names)
//! is an image, laid out as before.

use std::path::Path;

use meshanics_shared::Descriptor;
use meshanics_shared::manifest::ImageManifest;
use meshanics_shared::media_type::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD,
};
use meshanics_shared::metadata::ApplyMode;

/// The folder inside an artifact's layout that holds its files (files mode only).
pub const FILES_DIR: &str = "files";

/// The ORAS annotation naming a layer's file (or, with [`ORAS_UNPACK`], folder).
pub const TITLE: &str = "org.opencontainers.image.title";
/// The ORAS annotation marking a layer as a packed folder to extract (`"true"`).
pub const ORAS_UNPACK: &str = "io.deis.oras.content.unpack";
/// The ModelPack annotation giving a layer's path in the model folder.
pub const MODEL_FILEPATH: &str = "org.cncf.model.filepath";
/// The same, under the older CNAI name.
pub const CNAI_FILEPATH: &str = "org.cnai.model.filepath";

/// ModelPack's artifact type, and its older CNAI name.
const MODEL_MANIFESTS: [&str; 2] = [
    "application/vnd.cncf.model.manifest.v1+json",
    "application/vnd.cnai.model.manifest.v1+json",
];
/// ModelPack's config, and its older CNAI name.
const MODEL_CONFIGS: [&str; 2] = [
    "application/vnd.cncf.model.config.v1+json",
    "application/vnd.cnai.model.config.v1+json",
];
/// The Docker model format's config media types start so (`v0.1+json`, `v0.2+json`).
const DOCKER_MODEL_CONFIG_PREFIX: &str = "application/vnd.docker.ai.model.config.";
/// ModelPack layer media types start so (`.weight.v1.raw`, `.doc.v1.tar+gzip`...).
const MODEL_LAYER_PREFIXES: [&str; 2] =
    ["application/vnd.cncf.model.", "application/vnd.cnai.model."];
/// Docker model format layer media types start so.
const DOCKER_AI_PREFIX: &str = "application/vnd.docker.ai.";

/// How a target is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    /// An image: laid out as an OCI image layout (`current` is the layout).
    Image,
    /// A model or file artifact: materialized as files in `<layout>/files/`.
    Files,
}

/// How a layer becomes files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// One file, the blob itself.
    Raw,
    /// A tar archive, extracted.
    Tar(Compression),
}

/// An archive layer's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

// === impl ArtifactKind ===

impl ArtifactKind {
    /// `"image"` or `"files"`, as the hook and `status` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Image => "image",
            ArtifactKind::Files => "files",
        }
    }

    /// The kind of a parsed image manifest, with the signed entry's override if any.
    pub fn of(manifest: &ImageManifest, apply: Option<ApplyMode>) -> ArtifactKind {
        match apply {
            Some(ApplyMode::Layout) => return ArtifactKind::Image,
            Some(ApplyMode::Files) => return ArtifactKind::Files,
            None => {}
        }
        if manifest
            .artifact_type
            .as_deref()
            .is_some_and(|t| MODEL_MANIFESTS.contains(&base(t)))
        {
            return ArtifactKind::Files;
        }
        let config = base(&manifest.config.media_type);
        if MODEL_CONFIGS.contains(&config) || config.starts_with(DOCKER_MODEL_CONFIG_PREFIX) {
            return ArtifactKind::Files;
        }
        let image_config = config == OCI_CONFIG || config == DOCKER_CONFIG;
        if !image_config && !manifest.layers.is_empty() && manifest.layers.iter().all(is_file_layer)
        {
            return ArtifactKind::Files;
        }
        ArtifactKind::Image
    }

    /// The kind of an artifact already laid out in `layout_dir`: files when it has a
    /// [`FILES_DIR`] (the folder is renamed into place whole, so it is there or not).
    pub fn of_layout(layout_dir: &Path) -> ArtifactKind {
        if layout_dir.join(FILES_DIR).is_dir() {
            ArtifactKind::Files
        } else {
            ArtifactKind::Image
        }
    }

    /// The folder the hook works on: the layout for an image, its files for files.
    pub fn folder(self, layout_dir: &Path) -> std::path::PathBuf {
        match self {
            ArtifactKind::Image => layout_dir.to_owned(),
            ArtifactKind::Files => layout_dir.join(FILES_DIR),
        }
    }
}

impl std::fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a layer is a file of a model or file artifact.
fn is_file_layer(layer: &Descriptor) -> bool {
    let media_type = base(&layer.media_type);
    is_model_layer(media_type) || annotation(layer, TITLE).is_some()
}

/// Whether a media type is a ModelPack or Docker model layer type.
pub(crate) fn is_model_layer(media_type: &str) -> bool {
    MODEL_LAYER_PREFIXES
        .iter()
        .chain([&DOCKER_AI_PREFIX])
        .any(|p| media_type.starts_with(p))
}

/// How a layer of this media type becomes files when it has no ORAS annotations: archives
/// (the OCI layer types, ModelPack `.tar`, `.tar+gzip`, `.tar+zstd`, Docker's
/// `vnd.docker.ai.*.tar`) are extracted; anything else is one file.
pub fn layer_format(media_type: &str) -> LayerFormat {
    let media_type = base(media_type);
    match media_type {
        OCI_LAYER_TAR => return LayerFormat::Tar(Compression::None),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => return LayerFormat::Tar(Compression::Gzip),
        OCI_LAYER_ZSTD => return LayerFormat::Tar(Compression::Zstd),
        _ => {}
    }
    if !is_model_layer(media_type) {
        return LayerFormat::Raw;
    }
    if media_type.ends_with(".tar") {
        LayerFormat::Tar(Compression::None)
    } else if media_type.ends_with(".tar+gzip") {
        LayerFormat::Tar(Compression::Gzip)
    } else if media_type.ends_with(".tar+zstd") {
        LayerFormat::Tar(Compression::Zstd)
    } else {
        LayerFormat::Raw
    }
}

/// The compression of an ORAS packed folder: its media type's suffix, gzip by default
/// (what ORAS writes).
pub fn packed_folder_compression(media_type: &str) -> Compression {
    let media_type = base(media_type);
    if media_type.ends_with("+zstd") {
        Compression::Zstd
    } else if media_type.ends_with(".tar") || media_type == "application/x-tar" {
        Compression::None
    } else {
        Compression::Gzip
    }
}

/// The suffix of a file named after its digest, from a Docker model layer's media type
/// (`.gguf`, `.safetensors`...; none for other types).
pub fn derived_suffix(media_type: &str) -> &'static str {
    match base(media_type).strip_prefix(DOCKER_AI_PREFIX) {
        Some("gguf.v3") => ".gguf",
        Some("gguf.v3.lora") => ".lora.gguf",
        Some("gguf.v3.mmproj" | "mmproj") => ".mmproj.gguf",
        Some("safetensors") => ".safetensors",
        Some("dduf") => ".dduf",
        Some("license") => ".license",
        Some("chat.template.jinja") => ".jinja",
        _ => "",
    }
}

/// A layer annotation's value.
pub(crate) fn annotation<'a>(layer: &'a Descriptor, key: &str) -> Option<&'a str> {
    layer
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// A media type without its parameters (`; name=...`).
fn base(media_type: &str) -> &str {
    media_type.split(';').next().unwrap_or(media_type).trim()
}

#[cfg(test)]
mod tests {
    use meshanics_shared::media_type::OCI_MANIFEST;

    use super::*;

    fn layer(media_type: &str, title: Option<&str>) -> Descriptor {
        let mut d =
            crate::testing::descriptor_with(meshanics_shared::Algorithm::Sha256, media_type, b"x");
        d.annotations = title.map(|t| [(TITLE.to_owned(), t.to_owned())].into());
        d
    }

    fn manifest(
        artifact_type: Option<&str>,
        config: &str,
        layers: Vec<Descriptor>,
    ) -> ImageManifest {
        ImageManifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.to_owned()),
            artifact_type: artifact_type.map(str::to_owned),
            config: layer(config, None),
            layers,
            subject: None,
            annotations: None,
        }
    }

    #[test]
    fn an_image_config_is_an_image_and_a_modelpack_artifact_is_files() {
        let image = manifest(None, OCI_CONFIG, vec![layer(OCI_LAYER_GZIP, None)]);
        assert_eq!(ArtifactKind::of(&image, None), ArtifactKind::Image);
        let model = manifest(
            Some("application/vnd.cncf.model.manifest.v1+json"),
            "application/vnd.cncf.model.config.v1+json",
            vec![layer("application/vnd.cncf.model.weight.v1.raw", None)],
        );
        assert_eq!(ArtifactKind::of(&model, None), ArtifactKind::Files);
        let cnai = manifest(
            None,
            "application/vnd.cnai.model.config.v1+json",
            vec![layer("application/vnd.cnai.model.weight.v1.tar", None)],
        );
        assert_eq!(ArtifactKind::of(&cnai, None), ArtifactKind::Files);
    }

    #[test]
    fn a_docker_model_and_an_oras_artifact_are_files_but_untitled_unknown_layers_are_not() {
        let docker = manifest(
            None,
            "application/vnd.docker.ai.model.config.v0.1+json",
            vec![layer("application/vnd.docker.ai.gguf.v3", None)],
        );
        assert_eq!(ArtifactKind::of(&docker, None), ArtifactKind::Files);
        let oras = manifest(
            Some("application/vnd.example.thing"),
            "application/vnd.oci.empty.v1+json",
            vec![layer("text/plain", Some("hello.txt"))],
        );
        assert_eq!(ArtifactKind::of(&oras, None), ArtifactKind::Files);
        let helm_like = manifest(
            None,
            "application/vnd.cncf.helm.config.v1+json",
            vec![layer(
                "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                None,
            )],
        );
        assert_eq!(ArtifactKind::of(&helm_like, None), ArtifactKind::Image);
    }

    #[test]
    fn the_signed_entry_overrides_the_manifest() {
        let image = manifest(None, OCI_CONFIG, vec![layer(OCI_LAYER_GZIP, None)]);
        assert_eq!(
            ArtifactKind::of(&image, Some(ApplyMode::Files)),
            ArtifactKind::Files
        );
        let oras = manifest(
            None,
            "application/vnd.oci.empty.v1+json",
            vec![layer("text/plain", Some("a"))],
        );
        assert_eq!(
            ArtifactKind::of(&oras, Some(ApplyMode::Layout)),
            ArtifactKind::Image
        );
    }

    #[test]
    fn layer_formats_follow_the_media_type_suffixes() {
        for (media_type, format) in [
            ("application/vnd.cncf.model.weight.v1.raw", LayerFormat::Raw),
            (
                "application/vnd.cncf.model.weight.config.v1.tar",
                LayerFormat::Tar(Compression::None),
            ),
            (
                "application/vnd.cncf.model.doc.v1.tar+gzip",
                LayerFormat::Tar(Compression::Gzip),
            ),
            (
                "application/vnd.cnai.model.dataset.v1.tar+zstd",
                LayerFormat::Tar(Compression::Zstd),
            ),
            (
                "application/vnd.docker.ai.vllm.config.tar",
                LayerFormat::Tar(Compression::None),
            ),
            ("application/vnd.docker.ai.gguf.v3", LayerFormat::Raw),
            (OCI_LAYER_GZIP, LayerFormat::Tar(Compression::Gzip)),
            ("text/plain", LayerFormat::Raw),
        ] {
            assert_eq!(layer_format(media_type), format, "{media_type}");
        }
        assert_eq!(derived_suffix("application/vnd.docker.ai.gguf.v3"), ".gguf");
        assert_eq!(derived_suffix("text/plain"), "");
    }
}
