//! # meshanics-agent
//!
//! The device agent: it trusts only its pinned root metadata, fetches OCI content by digest
//! through the facade with its device certificate, keeps that content in a cache that
//! survives power loss, and applies only what verified.
//!
//! A short tour, in the order an update flows:
//!
//! - [`config`]: the TOML file, parsed once into typed structs and checked whole (a bad key
//!   is exit code 64 with the key's name).
//! - [`client`]: the facade client: mutual TLS, retries with backoff and jitter, a speed
//!   floor, `Range` resume, a size cap on everything it reads, and failover between facade
//!   replicas (tried in order, sticky).
//! - [`pull`]: one target by digest: the manifest (an index resolved to this device's
//!   platform), then config and layers, with bounded parallelism, skipping cached blobs.
//! - [`store`]: the content-addressed cache (`blobs/<sha256|sha512>/<hex>`, committed only
//!   when size and digest match), its ingest files, its rebuildable sled index, `fsck` and `gc`,
//!   ([`store::artifacts`]) the artifact layouts as they lie on disk, and ([`store::slots`])
//!   one slot per target: its `current`/`previous` links and its state (pending health
//!   check, held-back release). It depends on nothing above it.
//! - [`apply`]: materializing an artifact (the OCI image layout writer, [`apply::layout`]),
//!   the atomic switch of a slot's `current`/`previous`, the apply hook, the health check,
//!   rollback, recovery of an apply a stop interrupted, and retiring a slot.
//! - [`service`]: the update cycle (targets from a [`service::TargetSource`], each pulled
//!   and applied to its own slot, unlisted slots retired) and the loop around it, with
//!   [`notify`] for systemd (`READY`, `STATUS` naming every slot, `WATCHDOG`; the protocol
//!   itself is `meshanics_shared::notify`).
//! - [`rollout`]: signed rollout waves: this device's place in a target's rollout and the
//!   one decision whether to apply it now.
//! - [`status`]: what `status` shows, read from files alone (it works while the service
//!   runs).
//! - [`progress`]: bars on a terminal, log lines for journald.
//!
//! - [`metadata`]: the signed metadata workflow against the facade, the
//!   [`service::TargetSource`] that turns verified target entries matching this device into
//!   [`pull::PullTarget`]s.
//!
//! The binary's `run` and `sync --once` drive the service with that source.
//!
//! [`failpoint`] holds the crash points of the power-loss campaign, compiled in only with the
//! `failpoints` feature.

pub mod apply;
pub mod client;
pub mod config;
pub mod error;
pub mod failpoint;
pub mod metadata;
pub mod notify;
pub mod progress;
pub mod pull;
pub mod rollout;
pub mod service;
pub mod status;
pub mod store;

pub use error::{Error, Result};

#[cfg(test)]
mod testing;
