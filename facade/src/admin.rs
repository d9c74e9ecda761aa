//! The operator API: how `meshctl` manages connections, browses tags and imports tags as
//! digests.
//!
//! It listens on a Unix socket in the facade's state dir, mode 0660: file permissions are the
//! authentication, as for the Docker and containerd sockets (operators are members of the
//! facade's group; see docs/systemd.md). JSON in and out; errors as
//! OCI-style `{"errors":[{"code","message"}]}` bodies. No response ever carries a secret:
//! connection views are [`ConnectionView`](meshanics_operator_api::ConnectionView)s.
//!
//! The routes, the bodies, the [`Browser`](meshanics_operator_api::Browser) seam and the
//! client `meshctl` calls them with live in the `meshanics-operator-api` crate, which both
//! sides depend on; this module is the server.

mod server;

pub use server::{AdminState, bind, serve};

#[cfg(test)]
mod tests;
