//! The media types a registry speaks for manifests, configs and layers.

/// An OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index (a multi-platform image).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// A Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// A Docker manifest list (a multi-platform image).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// An OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// A Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// An OCI layer, gzip-compressed tar.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// An OCI layer, zstd-compressed tar.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// An OCI layer, uncompressed tar.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// A Docker layer, gzip-compressed tar.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type, for the `Accept` header of a manifest request. A registry that
/// is not offered a type may convert the manifest and answer with a different digest, so
/// all four are always sent.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// What a manifest media type describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// A single-platform image (OCI manifest or Docker schema 2).
    Image,
    /// A multi-platform index (OCI index or Docker manifest list).
    Index,
}

/// Classifies a manifest media type; parameters (`; charset=utf-8`) and case are ignored.
pub fn manifest_kind(media_type: &str) -> Option<ManifestKind> {
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case(OCI_MANIFEST) || essence.eq_ignore_ascii_case(DOCKER_MANIFEST) {
        Some(ManifestKind::Image)
    } else if essence.eq_ignore_ascii_case(OCI_INDEX)
        || essence.eq_ignore_ascii_case(DOCKER_MANIFEST_LIST)
    {
        Some(ManifestKind::Index)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_names_all_four_manifest_types() {
        for t in [
            OCI_MANIFEST,
            OCI_INDEX,
            DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST,
        ] {
            assert!(MANIFEST_ACCEPT.split(", ").any(|a| a == t), "{t} missing");
        }
    }

    #[test]
    fn classifies_manifest_media_types_ignoring_parameters() {
        assert_eq!(manifest_kind(OCI_MANIFEST), Some(ManifestKind::Image));
        assert_eq!(manifest_kind(DOCKER_MANIFEST), Some(ManifestKind::Image));
        assert_eq!(manifest_kind(OCI_INDEX), Some(ManifestKind::Index));
        assert_eq!(
            manifest_kind(&format!("{DOCKER_MANIFEST_LIST}; charset=utf-8")),
            Some(ManifestKind::Index)
        );
        assert_eq!(manifest_kind(OCI_LAYER_GZIP), None);
        assert_eq!(manifest_kind("application/json"), None);
    }
}
