//! Platforms (`os/arch[/variant]`) normalized as containerd normalizes them, and what each
//! can run, best first. A leaf: the manifest module uses it to pick the manifest for a device
//! out of an index (`ImageIndex::manifest_for`), and it knows nothing of manifests.
//!
//! Normalization (containerd `platforms.Normalize`): `aarch64` is `arm64`, and `arm64/v8` is
//! plain `arm64`; `armhf` is `arm/v7`, `armel` is `arm/v6`, `arm` alone is `arm/v7`;
//! `x86_64`/`x86-64` are `amd64` (and `amd64/v1` is plain `amd64`); `i386` is `386`.
//!
//! Matching (containerd `platforms.Only`): a device runs its own platform first, then what
//! its CPU also runs: `arm/v7` also runs `arm/v6` and `arm/v5`; `arm64` also runs 32-bit
//! `arm/v8` down to `arm/v5`; `amd64/v3` runs `amd64/v2`, `amd64`, then `386`
//! ([`Platform::compatible`]). Among the manifests of an index, the one whose platform comes
//! earliest in that list wins; entries with no platform or another OS (attestation manifests
//! say `unknown/unknown`) never match.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::echo;

/// The highest amd64 microarchitecture level (x86-64-v4).
const AMD64_MAX_LEVEL: u32 = 4;
/// The highest 32-bit ARM architecture version.
const ARM_MAX_LEVEL: u32 = 8;

/// An OCI platform: operating system, CPU architecture and variant, normalized.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// Why a string is not a platform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {input:?}: {reason}")]
pub struct PlatformError {
    /// The offending input.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The raw JSON shape of a platform in an OCI descriptor.
#[derive(Serialize, Deserialize)]
struct RawPlatform {
    architecture: String,
    os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    variant: Option<String>,
}

// === impl Platform ===

impl Platform {
    /// Builds a normalized platform from its parts.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Result<Self, PlatformError> {
        let input = || match variant {
            Some(v) => format!("{os}/{architecture}/{v}"),
            None => format!("{os}/{architecture}"),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        };
        if !valid(os) || !valid(architecture) || variant.is_some_and(|v| !valid(v)) {
            return Err(PlatformError {
                input: echo(&input()),
                reason: "each part must be 1 to 64 of [A-Za-z0-9_.-]",
            });
        }
        let os = normalize_os(os);
        let (architecture, variant) = normalize_arch(architecture, variant.unwrap_or_default());
        // Normalization can lengthen a part (`8.x` becomes `v8.x`): the rule holds for what is
        // kept, so a printed platform always parses again.
        if !valid(&os) || !valid(&architecture) || (!variant.is_empty() && !valid(&variant)) {
            return Err(PlatformError {
                input: echo(&input()),
                reason: "each part must be 1 to 64 of [A-Za-z0-9_.-]",
            });
        }
        Ok(Platform {
            os,
            architecture,
            variant: (!variant.is_empty()).then_some(variant),
        })
    }

    /// Parses `os/arch[/variant]`, or a bare `arch` (meaning Linux), and normalizes it.
    pub fn parse(input: &str) -> Result<Self, PlatformError> {
        let parts: Vec<&str> = input.split('/').collect();
        match parts.as_slice() {
            [arch] => Platform::new("linux", arch, None),
            [os, arch] => Platform::new(os, arch, None),
            [os, arch, variant] => Platform::new(os, arch, Some(variant)),
            _ => Err(PlatformError {
                input: echo(input),
                reason: "expected os/arch or os/arch/variant",
            }),
        }
        .map_err(|e| PlatformError {
            input: echo(input),
            reason: e.reason,
        })
    }

    /// The platform of the machine this runs on (the variant read from `/proc/cpuinfo` on
    /// 32-bit ARM).
    pub fn detect() -> Self {
        let cpuinfo = if std::env::consts::ARCH == "arm" {
            std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()
        } else {
            String::new()
        };
        detect_from(std::env::consts::OS, std::env::consts::ARCH, &cpuinfo)
    }

    /// The operating system (`linux`).
    pub fn os(&self) -> &str {
        &self.os
    }

    /// The architecture (`arm64`, `amd64`, `arm`).
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The variant (`v7`), if any.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// The platforms this one can run, best first (see the module documentation).
    pub fn compatible(&self) -> Vec<Platform> {
        let mut out = vec![self.clone()];
        let with = |arch: &str, variant: Option<String>| Platform {
            os: self.os.clone(),
            architecture: arch.to_owned(),
            variant,
        };
        // Variant levels beyond the ones that exist (amd64 v1-v4, arm v5-v8) fall back like
        // the highest real level: the list stays a handful of entries whatever the input.
        let level = |v: Option<&str>, max: u32| {
            v.and_then(|v| v.strip_prefix('v')?.parse::<u32>().ok())
                .map(|n| n.min(max + 1))
        };
        match self.architecture.as_str() {
            "amd64" => {
                if let Some(n) = level(self.variant(), AMD64_MAX_LEVEL) {
                    for lower in (2..n).rev() {
                        out.push(with("amd64", Some(format!("v{lower}"))));
                    }
                    if n > 1 {
                        out.push(with("amd64", None));
                    }
                }
                out.push(with("386", None));
            }
            "arm" => {
                if let Some(n) = level(self.variant(), ARM_MAX_LEVEL) {
                    for lower in (5..n).rev() {
                        out.push(with("arm", Some(format!("v{lower}"))));
                    }
                }
            }
            "arm64" if matches!(self.variant(), None | Some("v8")) => {
                for lower in (5..=8).rev() {
                    out.push(with("arm", Some(format!("v{lower}"))));
                }
            }
            _ => {}
        }
        out
    }

    /// How well a candidate suits this platform: `Some(0)` is an exact match, higher is a
    /// worse fallback, `None` cannot run here.
    pub fn rank(&self, candidate: &Platform) -> Option<usize> {
        self.compatible().iter().position(|p| p == candidate)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Platform({self})")
    }
}

impl FromStr for Platform {
    type Err = PlatformError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Platform::parse(s)
    }
}

/// Descriptors carry platforms as JSON objects; they are normalized as they are read, so an
/// index that says `aarch64` matches a device that says `arm64`.
impl Serialize for Platform {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        RawPlatform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawPlatform::deserialize(deserializer)?;
        Platform::new(
            &raw.os,
            &raw.architecture,
            raw.variant.as_deref().filter(|v| !v.is_empty()),
        )
        .map_err(serde::de::Error::custom)
    }
}

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    if os == "macos" {
        "darwin".to_owned()
    } else {
        os
    }
}

/// containerd's `normalizeArch`.
fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    let (arch, variant) = match arch.as_str() {
        "i386" => ("386", String::new()),
        "x86_64" | "x86-64" | "amd64" => (
            "amd64",
            if variant == "v1" {
                String::new()
            } else {
                variant
            },
        ),
        "aarch64" | "arm64" => (
            "arm64",
            match variant.as_str() {
                "8" | "v8" | "8.0" | "v8.0" => String::new(),
                "9" | "9.0" | "v9.0" => "v9".to_owned(),
                v if v.starts_with("8.") => format!("v{v}"),
                _ => variant,
            },
        ),
        "armhf" => ("arm", "v7".to_owned()),
        "armel" => ("arm", "v6".to_owned()),
        "arm" => (
            "arm",
            match variant.as_str() {
                "" | "7" => "v7".to_owned(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            },
        ),
        other => return (other.to_owned(), variant),
    };
    (arch.to_owned(), variant)
}

/// The platform for an OS and a Rust `target_arch`, reading the ARM variant from cpuinfo text
/// (containerd's `getCPUVariant`: the `CPU architecture` field).
fn detect_from(os: &str, arch: &str, cpuinfo: &str) -> Platform {
    let variant = if arch == "arm" {
        cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case("cpu architecture")
                    .then(|| value.trim().to_owned())
            })
            .map(|v| match v.as_str() {
                // A 64-bit CPU running a 32-bit userland reports "8" or "AArch64".
                "AArch64" | "8" => "v8".to_owned(),
                "7" => "v7".to_owned(),
                "6" => "v6".to_owned(),
                "5" | "5T" | "5TE" | "5TEJ" => "v5".to_owned(),
                other => other.to_ascii_lowercase(),
            })
    } else {
        None
    };
    let arch = match arch {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    };
    Platform::new(os, arch, variant.as_deref()).unwrap_or_else(|_| Platform {
        os: os.to_owned(),
        architecture: arch.to_owned(),
        variant: None,
    })
}

#[cfg(test)]
mod tests;
