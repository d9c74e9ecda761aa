//! Sample images as OCI image layouts.
//!
//! A [`SampleImage`] is a multi-platform image: per platform, a config and layers, where
//! layers can be shared between platforms (so tests can see a shared blob stored once). Layers
//! are real uncompressed tar archives (`application/vnd.oci.image.layer.v1.tar`) holding the
//! files given, so that skopeo, podman and containerd take the result as a normal image.
//! Contents are deterministic: the same spec always gives the same digests.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use meshanics_shared::manifest::Descriptor;
use meshanics_shared::media_type::{OCI_CONFIG, OCI_INDEX, OCI_LAYER_TAR, OCI_MANIFEST};
use meshanics_shared::{Digest, Platform};
use serde_json::json;

use crate::{FixtureError, io_err};

/// One file inside a layer.
#[derive(Debug, Clone)]
pub struct LayerFile {
    /// The path inside the image (`etc/motd`).
    pub path: String,
    /// The contents.
    pub contents: Vec<u8>,
}

/// A layer: files in a tar archive.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The files, in order.
    pub files: Vec<LayerFile>,
}

/// A multi-platform image to build.
#[derive(Debug, Clone)]
pub struct SampleImage {
    /// Per platform: the layers, base first.
    pub platforms: Vec<(Platform, Vec<Layer>)>,
}

/// What was built: digests and descriptors of everything in the layout.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The layout folder.
    pub dir: PathBuf,
    /// The index's descriptor.
    pub index: Descriptor,
    /// The per-platform manifests' descriptors, in spec order (with platform set).
    pub manifests: Vec<Descriptor>,
    /// Per manifest (same order): config then layers.
    pub blobs: Vec<Vec<Descriptor>>,
    /// Every blob in the layout (index, manifests, configs, layers) by digest, with its size.
    pub all_blobs: BTreeMap<Digest, u64>,
}

// === impl SampleImage ===

impl SampleImage {
    /// A small image for `platforms`: one layer shared by all platforms (`shared_bytes` of
    /// pseudo-random data) and one layer of its own per platform (`own_bytes`).
    pub fn multi_arch(
        platforms: &[&str],
        shared_bytes: usize,
        own_bytes: usize,
    ) -> Result<Self, FixtureError> {
        let shared = Layer {
            files: vec![LayerFile {
                path: "usr/share/meshanics/shared.bin".into(),
                contents: pseudo_random(0x5eed, shared_bytes),
            }],
        };
        let mut out = Vec::new();
        for (i, name) in platforms.iter().enumerate() {
            let platform =
                Platform::parse(name).map_err(|e| FixtureError::Invalid(e.to_string()))?;
            let own = Layer {
                files: vec![
                    LayerFile {
                        path: "etc/meshanics-platform".into(),
                        contents: format!("{platform}\n").into_bytes(),
                    },
                    LayerFile {
                        path: "usr/bin/app".into(),
                        contents: pseudo_random(i as u64 + 1, own_bytes),
                    },
                ],
            };
            out.push((platform, vec![shared.clone(), own]));
        }
        Ok(SampleImage { platforms: out })
    }

    /// Writes the image as an OCI layout in `dir` (created if missing), tagged `tag` in
    /// `index.json`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<BuiltImage, FixtureError> {
        let blobs_dir = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs_dir).map_err(io_err("creating", &blobs_dir))?;
        let mut all_blobs = BTreeMap::new();
        let mut put = |bytes: &[u8]| -> Result<(Digest, u64), FixtureError> {
            let digest = Digest::sha256_of(bytes);
            let path = blobs_dir.join(digest.hex());
            fs::write(&path, bytes).map_err(io_err("writing", &path))?;
            all_blobs.insert(digest.clone(), bytes.len() as u64);
            Ok((digest, bytes.len() as u64))
        };
        let mut manifests = Vec::new();
        let mut blobs = Vec::new();
        for (platform, layers) in &self.platforms {
            let mut layer_descriptors = Vec::new();
            let mut diff_ids = Vec::new();
            for layer in layers {
                let tar = tar_archive(&layer.files);
                let (digest, size) = put(&tar)?;
                diff_ids.push(digest.to_string());
                layer_descriptors.push(descriptor(OCI_LAYER_TAR, digest, size, None));
            }
            let config = json!({
                "architecture": platform.architecture(),
                "os": platform.os(),
                "variant": platform.variant(),
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "config": {"Entrypoint": ["/usr/bin/app"]},
            });
            let config_bytes = to_json(&config)?;
            let (digest, size) = put(&config_bytes)?;
            let config_descriptor = descriptor(OCI_CONFIG, digest, size, None);
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config_descriptor,
                "layers": layer_descriptors,
            });
            let manifest_bytes = to_json(&manifest)?;
            let (digest, size) = put(&manifest_bytes)?;
            manifests.push(descriptor(
                OCI_MANIFEST,
                digest,
                size,
                Some(platform.clone()),
            ));
            let mut these = vec![config_descriptor];
            these.extend(layer_descriptors);
            blobs.push(these);
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        });
        let index_bytes = to_json(&index)?;
        let (digest, size) = put(&index_bytes)?;
        let mut annotations = BTreeMap::new();
        annotations.insert(
            "org.opencontainers.image.ref.name".to_owned(),
            tag.to_owned(),
        );
        let mut index_descriptor = descriptor(OCI_INDEX, digest, size, None);
        index_descriptor.annotations = Some(annotations);
        let top = json!({"schemaVersion": 2, "manifests": [index_descriptor]});
        let top_path = dir.join("index.json");
        fs::write(&top_path, to_json(&top)?).map_err(io_err("writing", &top_path))?;
        let layout_path = dir.join("oci-layout");
        fs::write(&layout_path, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(io_err("writing", &layout_path))?;
        index_descriptor.annotations = None;
        Ok(BuiltImage {
            dir: dir.to_owned(),
            index: index_descriptor,
            manifests,
            blobs,
            all_blobs,
        })
    }
}

// === impl BuiltImage ===

impl BuiltImage {
    /// The bytes of a blob in the layout.
    pub fn blob(&self, digest: &Digest) -> Result<Vec<u8>, FixtureError> {
        let path = self.dir.join("blobs").join("sha256").join(digest.hex());
        fs::read(&path).map_err(io_err("reading", &path))
    }

    /// The bytes of this image's blobs that `other` does not have: what a device holding
    /// `other` still has to fetch.
    pub fn bytes_not_in(&self, other: &BuiltImage) -> u64 {
        self.all_blobs
            .iter()
            .filter(|(digest, _)| !other.all_blobs.contains_key(*digest))
            .map(|(_, size)| size)
            .sum()
    }

    /// The manifest descriptor for a platform.
    pub fn manifest_for(&self, platform: &str) -> Option<&Descriptor> {
        let platform = Platform::parse(platform).ok()?;
        self.manifests
            .iter()
            .find(|d| d.platform.as_ref() == Some(&platform))
    }
}

fn descriptor(
    media_type: &str,
    digest: Digest,
    size: u64,
    platform: Option<Platform>,
) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        platform,
        annotations: None,
        artifact_type: None,
    }
}

fn to_json(value: &serde_json::Value) -> Result<Vec<u8>, FixtureError> {
    serde_json::to_vec(value).map_err(|e| FixtureError::Invalid(e.to_string()))
}

/// Deterministic pseudo-random bytes (xorshift64*), so that layers do not compress away and
/// the same seed always gives the same digest.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A POSIX ustar archive of regular files (mode 0644, owner 0, mtime 0), with the two zero
/// blocks that end it.
#[expect(
    clippy::indexing_slicing,
    reason = "fixed offsets into a 512-byte tar header"
)]
pub fn tar_archive(files: &[LayerFile]) -> Vec<u8> {
    let mut out = Vec::new();
    for file in files {
        let mut header = [0u8; 512];
        let name = file.path.as_bytes();
        let name_len = name.len().min(100);
        header[..name_len].copy_from_slice(&name[..name_len]);
        put_octal(&mut header[100..108], 0o644);
        put_octal(&mut header[108..116], 0);
        put_octal(&mut header[116..124], 0);
        put_octal(&mut header[124..136], file.contents.len() as u64);
        put_octal(&mut header[136..148], 0);
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        // The checksum is computed with its own field as spaces.
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        let checksum = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(checksum.as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&file.contents);
        let pad = (512 - file.contents.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// Writes `value` as zero-padded octal with a trailing NUL into `field`.
#[expect(
    clippy::indexing_slicing,
    reason = "fixed-size tar header fields, lengths checked by the format"
)]
fn put_octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    field[..width].copy_from_slice(&text.as_bytes()[text.len() - width..]);
    field[width] = 0;
}
