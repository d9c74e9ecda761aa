//! # meshanics-facade
//!
//! The registry facade and the operator's connection management.
//!
//! - [`admin`]: the operator API on a Unix socket, and its client for `meshctl`.
//! - [`seal`]: secrets sealed at rest under the operator's master key.
//! - [`connections`]: the registries operators connected, with sealed credentials.
//! - [`cloud`]: cloud credentials (Google service accounts, AWS roles for ECR) exchanged
//!   for short-lived registry tokens, cached per host.
//! - [`http_client`]: the outbound HTTP client on the ring TLS provider.
//! - [`tags`]: tag listing with `Link` pagination, and the newest-likely-first ordering.

pub mod admin;
pub mod cloud;
pub mod connections;
pub mod http_client;
pub mod seal;
pub mod tags;
