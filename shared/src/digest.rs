//! Content digests: `algorithm:hex`, as OCI descriptors and registries write them.
//!
//! A [`Digest`] is parsed once, at the edge where text comes in, and is valid from then on:
//! a function that takes a `Digest` never re-checks it. Only the algorithms a registry is
//! required to accept and that we can verify are allowed (`sha256`, `sha512`), with lowercase
//! hex of exactly the algorithm's length, so that one content address has exactly one
//! spelling (two spellings of one digest would be two cache entries and two cache keys).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;

/// The longest input echoed back in an error message: inputs come from the network.
const MAX_ECHO: usize = 100;

/// A hash algorithm a [`Digest`] can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// SHA-256, the algorithm every OCI registry supports.
    Sha256,
    /// SHA-512.
    Sha512,
}

/// A validated content digest such as `sha256:2c26b46b...`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    /// The whole text, `algorithm:hex`, kept so that `as_str` costs nothing.
    text: String,
}

/// Why a string is not a [`Digest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: {reason}")]
pub struct DigestError {
    /// The offending input (shortened if long).
    pub input: String,
    /// What is wrong with it.
    pub reason: DigestErrorReason,
}

/// The specific rule a digest string broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestErrorReason {
    /// The input was empty.
    #[error("it is empty")]
    Empty,
    /// There is no `:` between algorithm and hex.
    #[error("expected `algorithm:hex`")]
    MissingSeparator,
    /// The algorithm is not `sha256` or `sha512`.
    #[error("unsupported algorithm {0:?} (expected sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    /// The hex part has the wrong length for the algorithm.
    #[error("{algorithm} needs {expected} hex characters, found {found}")]
    WrongLength {
        /// The algorithm named.
        algorithm: &'static str,
        /// How many hex characters it needs.
        expected: usize,
        /// How many were given.
        found: usize,
    },
    /// The hex part has a character outside `0-9a-f` (uppercase hex is refused).
    #[error("the hex part must be lowercase hexadecimal (0-9, a-f)")]
    NotLowercaseHex,
}

// === impl Algorithm ===

impl Algorithm {
    /// Every algorithm a [`Digest`] may name: what a content store keeps a folder for.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// The name used in digest strings.
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// The number of hex characters a digest of this algorithm has.
    pub const fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl Digest ===

impl Digest {
    /// Parses `algorithm:hex`. Uppercase hex, other algorithms, wrong lengths and empty input
    /// are refused with an error that names the input.
    pub fn parse(input: &str) -> Result<Self, DigestError> {
        let fail = |reason| DigestError {
            input: echo(input),
            reason,
        };
        if input.is_empty() {
            return Err(fail(DigestErrorReason::Empty));
        }
        let (name, hex) = input
            .split_once(':')
            .ok_or_else(|| fail(DigestErrorReason::MissingSeparator))?;
        let algorithm = Algorithm::from_name(name)
            .ok_or_else(|| fail(DigestErrorReason::UnsupportedAlgorithm(echo(name))))?;
        if hex.len() != algorithm.hex_len() {
            return Err(fail(DigestErrorReason::WrongLength {
                algorithm: algorithm.name(),
                expected: algorithm.hex_len(),
                found: hex.len(),
            }));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(fail(DigestErrorReason::NotLowercaseHex));
        }
        Ok(Digest {
            algorithm,
            text: input.to_owned(),
        })
    }

    /// The SHA-256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        let mut hasher = Hasher::new(Algorithm::Sha256);
        hasher.update(bytes);
        hasher.finish()
    }

    /// The algorithm this digest names.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex part, without the algorithm: the file name in a content store.
    pub fn hex(&self) -> &str {
        // The text is `name:hex` by construction; the name is ASCII.
        self.text
            .get(self.algorithm.name().len() + 1..)
            .unwrap_or_default()
    }

    /// The whole digest, `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A fresh hasher for this digest's algorithm.
    pub fn hasher(&self) -> Hasher {
        Hasher::new(self.algorithm)
    }

    fn from_raw(algorithm: Algorithm, raw: &[u8]) -> Self {
        Digest {
            algorithm,
            text: format!("{}:{}", algorithm.name(), hex::encode(raw)),
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.text)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An incremental hash computation for one [`Algorithm`].
///
/// sha2 picks its fastest implementation at run time (SHA-NI on x86_64 where the CPU has it,
/// the ARMv8 crypto extensions on aarch64).
#[derive(Clone)]
pub enum Hasher {
    /// A SHA-256 state.
    Sha256(sha2::Sha256),
    /// A SHA-512 state.
    Sha512(sha2::Sha512),
}

// === impl Hasher ===

impl Hasher {
    /// A fresh state for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds bytes.
    #[inline]
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::from_raw(Algorithm::Sha256, &h.finalize()),
            Hasher::Sha512(h) => Digest::from_raw(Algorithm::Sha512, &h.finalize()),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hasher::Sha256(_) => f.write_str("Hasher(sha256)"),
            Hasher::Sha512(_) => f.write_str("Hasher(sha512)"),
        }
    }
}

/// Shortens untrusted input for an error message, on a character boundary.
pub(crate) fn echo(input: &str) -> String {
    if input.len() <= MAX_ECHO {
        return input.to_owned();
    }
    let mut end = MAX_ECHO;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", input.get(..end).unwrap_or_default())
}

#[cfg(test)]
mod tests;
