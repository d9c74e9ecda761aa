//! The operator API: how `meshctl` manages connections, browses tags and imports tags as
//! digests.
//!
//! It listens on a Unix socket in the facade's state dir, mode 0660: file permissions are the
//! authentication, as for the Docker and containerd sockets (operators are members of the
//! facade's group; see docs/systemd.md). JSON in and out; errors as
//! OCI-style `{"errors":[{"code","message"}]}` bodies. No response ever carries a secret:
//! connection views are [`ConnectionView`](crate::connections::ConnectionView)s.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /v1/registries` | list connections |
//! | `POST /v1/registries` | connect a registry ([`api::AddRegistry`]) |
//! | `GET /v1/registries/{host}` | show one |
//! | `POST /v1/registries/{host}/approve` | approve it for device traffic |
//! | `DELETE /v1/registries/{host}` | remove it (proxying stops at once) |
//! | `GET /v1/tags?repository=R&limit=N` | list tags, newest-likely-first ([`api::TagList`]) |
//! | `POST /v1/import` | resolve tags to digests, one outcome each ([`api::ImportRequest`]) |
//!
//! `{host}` is percent-encoded (`localhost%3A5000`).

pub mod api;
pub mod browse;
pub mod client;
mod server;

pub use browse::{BrowseError, Browser};
pub use client::{AdminClient, ClientError};
pub use server::{AdminState, bind, serve};

#[cfg(test)]
mod tests;
