//! Registry connections: which upstream registries operators connected, and the sealed
//! credentials the facade uses for them.
//!
//! A connection is keyed by its registry host, normalized with the shared reference rules (a
//! pasted URL is reduced to its host, Docker Hub's names are one connection, a port is kept).
//! Each connection is one JSON file in `<state>/connections/`, written atomically; its secret
//! (a token, a service-account key, a role configuration) is sealed under the master key with
//! the host as associated data (see [`crate::seal`]). Nothing here returns a secret to a
//! caller outside the facade: [`ConnectionView`] is what lists and shows are made of.
//!
//! An anonymous connection needs an operator's approval before the facade proxies it; static
//! and cloud connections are usable at once. Removing a connection stops proxying at once,
//! because the proxy asks the store on every request.

mod record;
mod store;

pub use record::{ConnectionView, Credentials, EcrRole, NewConnection, ProviderKind};
pub use store::{Connection, ConnectionError, Store};

#[cfg(test)]
mod tests;
