//! The whole update chain of the end-to-end tests: the real distribution registry, the
//! facade in-process with that registry approved (anonymous, plain HTTP), an operator's
//! [`Release`] signing into the facade's metadata folder, and a work folder for the images
//! pushed. Devices are [`AgentDevice`]s of this facade and release.

use std::path::Path;

use meshanics_agent::metadata::MetadataSource;
use meshanics_agent::progress::Silent;
use meshanics_agent::service::{Agent, CycleOutcome};
use meshanics_agent::store::StoreOptions;
use meshanics_shared::metadata::TargetEntry;

use crate::agent_device::AgentDevice;
use crate::facade::{FacadeFixture, FacadeOptions, UpstreamEntry};
use crate::oci_layout::{BuiltImage, SampleImage};
use crate::registry::{Options, RegistryServer};
use crate::release::{self, Release};
use crate::{FixtureError, io_err, skopeo};

/// The repository every image of the chain is pushed to.
pub const REPOSITORY: &str = "team/app";

/// Registry -> facade -> release; everything stopped and removed on drop.
#[derive(Debug)]
pub struct UpdateChain {
    /// Where the images' layouts are written (and free for the test's own files).
    pub work: tempfile::TempDir,
    /// The upstream.
    pub registry: RegistryServer,
    /// The facade devices talk to.
    pub facade: FacadeFixture,
    /// The operator's keys, signing into the facade's metadata folder.
    pub release: Release,
}

// === impl UpdateChain ===

impl UpdateChain {
    /// Starts the registry and the facade, and writes root version 1.
    pub fn start() -> Result<Self, FixtureError> {
        let registry = RegistryServer::start(&Options::default())?;
        let facade = FacadeFixture::start(&FacadeOptions {
            upstreams: vec![UpstreamEntry::anonymous(&registry.host())],
            ..FacadeOptions::default()
        })?;
        let release = Release::init(&facade.metadata_dir())?;
        let work = tempfile::tempdir().map_err(io_err("creating a temp dir", Path::new("/tmp")))?;
        Ok(UpdateChain {
            work,
            registry,
            facade,
            release,
        })
    }

    /// Writes `image` as an OCI layout in the work folder and pushes it as `tag` of
    /// [`REPOSITORY`].
    pub fn push_image(&self, tag: &str, image: &SampleImage) -> Result<BuiltImage, FixtureError> {
        let built = image.write_layout(&self.work.path().join(tag), tag)?;
        skopeo::push_layout(&built.dir, tag, &self.registry.host(), REPOSITORY)?;
        Ok(built)
    }

    /// [`UpdateChain::push_image`] of a [`SampleImage::multi_arch`] image.
    pub fn push(
        &self,
        tag: &str,
        platforms: &[&str],
        shared: usize,
        own: usize,
    ) -> Result<BuiltImage, FixtureError> {
        self.push_image(tag, &SampleImage::multi_arch(platforms, shared, own)?)
    }

    /// `127.0.0.1:PORT/team/app`: the upstream repository as a target entry names it.
    pub fn upstream(&self) -> String {
        format!("{}/{REPOSITORY}", self.registry.host())
    }

    /// A target entry `name` for `built`'s index, for devices of `class` (all when `None`).
    pub fn entry(
        &self,
        name: &str,
        built: &BuiltImage,
        class: Option<&str>,
    ) -> Result<TargetEntry, FixtureError> {
        release::entry(name, &self.upstream(), &built.index, class)
    }

    /// Signs a release of one target, `app`: `built` for devices of `class` (all when `None`).
    pub fn publish(&mut self, built: &BuiltImage, class: Option<&str>) -> Result<(), FixtureError> {
        let entry = self.entry("app", built, class)?;
        self.release.publish(vec![entry])
    }

    /// A device of hardware class `class` and platform `platform` trusting this release.
    pub fn device(&self, class: &str, platform: &str) -> Result<AgentDevice, FixtureError> {
        AgentDevice::new(&self.facade, self.release.anchor(), class, platform)
    }

    /// One update cycle of `device`, as `sync --once` runs it, on the facade's runtime.
    pub fn sync(&self, device: &AgentDevice) -> Result<CycleOutcome, meshanics_agent::Error> {
        let (agent, _) = Agent::from_config(&device.config, StoreOptions::default())?;
        let mut source = MetadataSource::from_config(&device.config)?;
        self.facade.block_on(agent.cycle(&mut source, &Silent))
    }
}
