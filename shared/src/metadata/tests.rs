//! Tests of the metadata format and workflow. `simulator` is a repository with its own keys
//! that tests drive (and attack); `attacks` has one test per attack, each building its own
//! fixture; `format` covers encoding, keys, matching and the store.

mod attacks;
mod format;
mod simulator;
