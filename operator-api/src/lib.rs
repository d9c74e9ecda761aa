//! # meshanics-operator-api
//!
//! The operator API between the facade and `meshctl`, as both sides see it: the facade's
//! admin server (`meshanics_facade::admin`) answers it on a Unix socket, and `meshctl` calls
//! it with [`OperatorClient`]. Neither side's code lives here, only what they share, so
//! `meshctl` builds without the facade and the facade's modules need not import each other
//! to agree on a body.
//!
//! - [`wire`]: the request and response bodies ([`AddRegistry`], [`TagList`],
//!   [`ImportRequest`], [`ImportResponse`], [`PublishRequest`], the error body).
//! - [`connection`]: what the API shows of a connection ([`ConnectionView`], never a secret)
//!   and its [`ProviderKind`].
//! - [`browse`]: the [`Browser`] seam behind `tags` and `import` (the facade implements it
//!   over its registry clients).
//! - [`client`]: [`OperatorClient`], HTTP/1.1 over the facade's operator socket.
//! - [`percent`]: how a host or repository travels in a path segment or query value.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/registries` | list connections |
//! | `POST /v1/registries` | connect a registry ([`AddRegistry`]) |
//! | `GET /v1/registries/{host}` | show one |
//! | `POST /v1/registries/{host}/approve` | approve it for device traffic |
//! | `POST /v1/registries/{host}/unapprove` | withdraw the approval (device traffic refused at once, cached content included) |
//! | `DELETE /v1/registries/{host}` | remove it (proxying stops at once) |
//! | `GET /v1/tags?repository=R&limit=N` | list tags, newest-likely-first ([`TagList`]) |
//! | `POST /v1/import` | resolve tags to digests, one outcome each ([`ImportRequest`]) |
//! | `POST /v1/metadata` | publish signed metadata, checked against what is published ([`PublishRequest`], [`PublishResponse`]); 409 or 422 naming the file when refused, 413 past the caps |
//!
//! `{host}` is percent-encoded (`localhost%3A5000`).

pub mod browse;
pub mod client;
pub mod connection;
pub mod percent;
pub mod wire;

pub use browse::{BrowseError, Browser, Resolved};
pub use client::{OperatorClient, OperatorClientError};
pub use connection::{ConnectionView, ProviderKind};
pub use wire::{
    AddRegistry, AuditRecord, ClipReason, ErrorBody, ErrorEntry, FileBytes, ImportRequest,
    ImportResponse, ImportResult, Outcome, PublishRequest, PublishResponse, TagList,
};
