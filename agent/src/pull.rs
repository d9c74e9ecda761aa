//! Pulling one target by digest into the cache: the manifest (an index resolved to this
//! device's platform), then config and layers with bounded parallelism, each verified as it
//! streams to disk. Blobs already in the cache are not fetched again.
//!
//! The input is a [`PullTarget`]: the few fields of a signed target entry that pulling
//! needs. The metadata workflow turns its verified target entries into these.

use std::collections::BTreeSet;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use meshanics_shared::manifest::{ImageManifest, Manifest};
use meshanics_shared::media_type::{self, ManifestKind};
use meshanics_shared::metadata::ApplyMode;
use meshanics_shared::{Descriptor, Digest, ManifestError, Platform, Repository};
use tracing::{info, warn};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::store::Store;

/// What to pull: a manifest (or index) by digest, with its exact size and media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullTarget {
    /// The target's name (for layouts, logs and the hook).
    pub name: String,
    /// The repository on the facade: `<upstream path form>/<repository>`
    /// (`docker.io/library/nginx`, `127.0.0.1_5000/team/app`).
    pub repository: Repository,
    /// The manifest or index digest.
    pub digest: Digest,
    /// Its exact size.
    pub size: u64,
    /// Its media type (an OCI or Docker manifest or index).
    pub media_type: String,
    /// Its signed rollout as this device sees it; `None`: apply at once.
    pub rollout: Option<crate::rollout::Gate>,
    /// How the signed entry says to apply it; `None`: as the artifact says
    /// ([`crate::apply::kind`]).
    pub apply: Option<ApplyMode>,
}

/// A pulled target: everything it needs is in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// What was asked for.
    pub target: PullTarget,
    /// The image manifest for this device (the target itself, or its index's choice; with
    /// the platform set when it came from an index).
    pub manifest: Descriptor,
    /// The config and layers, config first, each once.
    pub blobs: Vec<Descriptor>,
    /// Blobs downloaded (manifests included).
    pub fetched: usize,
    /// Blobs found in the cache.
    pub cached: usize,
    /// Body bytes received from the network for this pull.
    pub received_bytes: u64,
}

/// Pulls targets with one client into one store.
#[derive(Clone, Copy)]
pub struct Puller<'a> {
    /// The facade client.
    pub client: &'a Client,
    /// The cache.
    pub store: &'a Store,
    /// The device's platform.
    pub platform: &'a Platform,
    /// How many blobs to download at once (at least 1).
    pub concurrency: usize,
    /// Where progress goes.
    pub progress: &'a dyn Progress,
}

#[derive(Default)]
struct Tally {
    fetched: usize,
    cached: usize,
    received: u64,
}

// === impl PullTarget ===

impl PullTarget {
    /// Checks that the media type is a manifest or index type.
    pub fn check(&self) -> Result<()> {
        if media_type::manifest_kind(&self.media_type).is_none() {
            return Err(Error::Manifest {
                digest: self.digest.clone(),
                source: ManifestError::UnsupportedMediaType(self.media_type.clone()),
            });
        }
        Ok(())
    }
}

// === impl Puller ===

impl Puller<'_> {
    /// Pulls `target`: afterwards its manifest, config and layers are all committed blobs.
    pub async fn pull(&self, target: &PullTarget) -> Result<Pulled> {
        target.check()?;
        let mut tally = Tally::default();
        let top = self
            .manifest(
                target,
                &target.digest,
                target.size,
                &target.media_type,
                &mut tally,
            )
            .await?;
        let (manifest, image) = match top {
            Manifest::Image(image) => (
                Descriptor {
                    media_type: target.media_type.clone(),
                    digest: target.digest.clone(),
                    size: target.size,
                    platform: None,
                    annotations: None,
                    artifact_type: None,
                },
                image,
            ),
            Manifest::Index(index) => {
                let chosen =
                    index
                        .manifest_for(self.platform)
                        .ok_or_else(|| Error::NoPlatform {
                            digest: target.digest.clone(),
                            platform: self.platform.clone(),
                        })?;
                info!(target = %target.name, platform = %self.platform, manifest = %chosen.digest, "chose the manifest for this platform");
                let inner = self
                    .manifest(
                        target,
                        &chosen.digest,
                        chosen.size,
                        &chosen.media_type,
                        &mut tally,
                    )
                    .await?;
                let Manifest::Image(image) = inner else {
                    return Err(Error::Manifest {
                        digest: chosen.digest.clone(),
                        source: ManifestError::UnsupportedMediaType(
                            "an index inside an index".into(),
                        ),
                    });
                };
                let mut chosen = chosen.clone();
                chosen.annotations = None;
                (chosen, image)
            }
        };
        let blobs = unique_blobs(&image);
        self.fetch_blobs(target, &blobs, &mut tally).await?;
        info!(
            target = %target.name,
            fetched = tally.fetched,
            cached = tally.cached,
            bytes = tally.received,
            "pulled"
        );
        Ok(Pulled {
            target: target.clone(),
            manifest,
            blobs,
            fetched: tally.fetched,
            cached: tally.cached,
            received_bytes: tally.received,
        })
    }

    /// A manifest from the cache or the facade (then committed to the cache), parsed as the
    /// media type its descriptor gives.
    async fn manifest(
        &self,
        target: &PullTarget,
        digest: &Digest,
        size: u64,
        media_type: &str,
        tally: &mut Tally,
    ) -> Result<Manifest> {
        let kind = media_type::manifest_kind(media_type);
        let bytes = if self.store.has(digest, size)? {
            tally.cached += 1;
            self.store.read(digest)?
        } else {
            if size > meshanics_shared::manifest::MAX_MANIFEST_SIZE {
                return Err(Error::Manifest {
                    digest: digest.clone(),
                    source: ManifestError::TooLarge {
                        size,
                        limit: meshanics_shared::manifest::MAX_MANIFEST_SIZE,
                    },
                });
            }
            self.store.ensure_space(size)?;
            let (bytes, _content_type) = self
                .client
                .fetch_manifest(&target.repository, digest, size)
                .await?;
            self.store.put(digest, &bytes)?;
            tally.fetched += 1;
            tally.received += size;
            bytes
        };
        let manifest = Manifest::parse(&bytes, kind.map(|_| media_type)).map_err(|source| {
            Error::Manifest {
                digest: digest.clone(),
                source,
            }
        })?;
        if kind == Some(ManifestKind::Index) && !manifest.is_index() {
            return Err(Error::Manifest {
                digest: digest.clone(),
                source: ManifestError::UnknownKind,
            });
        }
        Ok(manifest)
    }

    async fn fetch_blobs(
        &self,
        target: &PullTarget,
        blobs: &[Descriptor],
        tally: &mut Tally,
    ) -> Result<()> {
        let mut missing = Vec::new();
        for blob in blobs {
            if self.store.has(&blob.digest, blob.size)? {
                tally.cached += 1;
            } else {
                missing.push(blob);
            }
        }
        let needed: u64 = missing
            .iter()
            .map(|b| b.size.saturating_sub(self.store.partial_len(&b.digest)))
            .sum();
        self.store.ensure_space(needed)?;
        self.progress.plan(needed);
        let received: Vec<u64> =
            stream::iter(missing.iter().map(|blob| self.fetch_blob(target, blob)))
                .buffer_unordered(self.concurrency.max(1))
                .try_collect()
                .await?;
        tally.fetched += received.len();
        tally.received += received.iter().sum::<u64>();
        Ok(())
    }

    /// Downloads one blob into the cache. If it was resumed from a partial file and does not
    /// verify, the prefix may have been the bad part: it is fetched once more from zero.
    async fn fetch_blob(&self, target: &PullTarget, blob: &Descriptor) -> Result<u64> {
        let mut received = 0;
        let mut round = 0;
        loop {
            round += 1;
            let mut ingest = self.store.ingest(&blob.digest, blob.size)?;
            let resumed = ingest.offset() > 0;
            self.progress
                .start(&blob.digest, blob.size, ingest.offset());
            received += self
                .client
                .fetch_blob(&target.repository, &mut ingest, self.progress)
                .await?;
            match ingest.commit() {
                Ok(()) => {
                    self.progress.finish(&blob.digest);
                    return Ok(received);
                }
                Err(err @ Error::Verify { .. }) if resumed && round == 1 => {
                    warn!(error = %err, "a resumed blob did not verify; fetching it again from the start");
                }
                Err(err) => return Err(err),
            }
        }
    }
}

impl std::fmt::Debug for Puller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("platform", self.platform)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// Config then layers, each digest once (an image may repeat a layer).
fn unique_blobs(image: &ImageManifest) -> Vec<Descriptor> {
    let mut seen = BTreeSet::new();
    std::iter::once(&image.config)
        .chain(&image.layers)
        .filter(|d| seen.insert(d.digest.clone()))
        .cloned()
        .collect()
}
