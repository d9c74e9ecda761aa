//! # meshanics-facade
//!
//! The device-facing registry facade: a lean, read-only, streaming pull-through proxy behind
//! mutual TLS. A device reaches it only with a certificate chained to the device CA; it
//! serves manifests and blobs **by digest only**, streams them from an upstream registry an
//! operator approved, and verifies every byte on the way: content that does not match its
//! digest is never delivered as a clean response.
//!
//! A tour, in the order a request travels:
//!
//! - [`config`]: the TOML file, checked whole at start (exit 64 on a bad one).
//! - [`server`]: listeners, TLS handshakes (refusals logged and counted), the connection
//!   limit, idle and header timeouts, graceful shutdown; [`device_tls`]: the device TLS
//!   configuration, reloaded on SIGHUP and when its files change (CRLs, expired ones
//!   reported).
//! - [`identity`]: the device's certificate subject, logged with each request.
//! - [`service`] and [`routes`]: a request becomes a [`routes::Route`] or a refusal before any
//!   upstream is asked.
//! - [`approval`]: the approval seam ("is this upstream approved, how do I reach it?"), fed
//!   by the config file or by the connection store; [`providers`]: the credential seam for
//!   static, anonymous and cloud credentials.
//! - [`registry_client`]: the HTTP client to upstream registries (auth challenges from the
//!   upstream's own origin only, the bearer token cache, redirects that never carry
//!   `Authorization` off the origin and, off it, reach only the upstream's storage hosts or
//!   public addresses, pinned to the addresses checked).
//! - [`proxy`] and [`body`]: streaming with verification; [`cache`]: the content-addressed
//!   cache and the one upstream fetch per digest; [`meta`]: `/meta/<file>`.
//! - [`respond`]: the one place errors become HTTP statuses and OCI error JSON.
//! - [`metrics`] and [`metrics_listener`]: Prometheus metrics, and `/healthz` and `/metrics`
//!   on their own plain-HTTP listener (config key `operator_listen`).
//! - `READY=1` and `STOPPING=1` for systemd's `Type=notify` come from
//!   [`meshanics_shared::notify`], the implementation the agent uses too.
//!
//! The operator's half, which `meshctl` (its own crate) drives:
//!
//! - [`admin`]: the operator API's server on a Unix socket. The API's bodies, the
//!   [`Browser`](meshanics_operator_api::Browser) seam and the client live in the
//!   `meshanics-operator-api` crate, shared with `meshctl`.
//! - [`publish`]: the signed metadata served under `/meta/`, published through the operator
//!   API after a check that devices would accept it.
//! - [`connections`]: the registries operators connected, with credentials [`seal`]ed at
//!   rest under the operator's master key; [`connections::pasted`] reduces what an operator
//!   pastes (a host, a reference, a registry's web page) to the registry it is keyed by.
//! - [`cloud`]: cloud credentials (Google service accounts, AWS roles for ECR) exchanged for
//!   short-lived registry tokens, cached per connection (dropped on a 401 and on removal).
//! - [`tags`]: tag listing with `Link` pagination, and the newest-likely-first ordering.
//! - [`http_client`]: the one outbound HTTP client set-up (ring TLS provider), shared by the
//!   registry client and the cloud token client.
//!
//! Beside it, in crates of their own: `meshanics-http` (the serve loop every listener runs
//! on, the OCI error body, `Range` parsing) and `meshanics-layout-registry`, a read-only
//! registry over a folder of OCI layouts, the upstream for air-gapped sites.
//!
//! What it does not do: accept pushes, resolve tags for devices, or decide
//! what a device may run. Trust comes from the signed metadata the device verifies.

pub mod admin;
pub mod approval;
pub mod body;
pub mod budget;
pub mod cache;
pub mod cloud;
pub mod config;
pub mod connections;
pub mod device_tls;
pub mod error;
pub mod http_client;
pub mod identity;
pub mod meta;
pub mod metrics;
pub mod metrics_listener;
pub mod providers;
pub mod proxy;
pub mod publish;
pub mod registry_client;
pub mod respond;
pub mod routes;
pub mod seal;
pub mod server;
pub mod service;
pub mod tags;

pub use approval::{ApprovedUpstreams, ConfiguredUpstreams};
pub use config::{Config, ConfigError};
pub use error::Error;
pub use server::{Running, StartError, start, start_with};
