//! Rollout waves: a target released to a growing share of the fleet over time, decided on
//! each device and signed with the release.
//!
//! A [`Rollout`] is a start time and waves, each a fleet share and a delay after the start
//! (1 % at once, 10 % after 2 h, 100 % after 24 h). Each device places itself at a stable
//! [`Position`] in [0, 1) computed from its identity and the target's name, and belongs to
//! the first wave whose share is above its position; its wave opens at `start + delay`.
//! The waves are part of the signed target entry, so a registry or facade in between cannot
//! change them, and a device needs nobody's answer to know when it may apply.
//!
//! Shares are whole millionths ([`WHOLE`] is 100 %) and positions 64-bit fractions, so
//! every implementation places every device in the same wave with integer arithmetic
//! alone: docs/metadata.md section 4.4.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::targets::TargetName;
use super::time::UnixTime;

/// The whole fleet as a share: one million millionths.
pub const WHOLE: u32 = 1_000_000;

/// The most waves a rollout may have.
pub const WAVES_MAX: usize = 32;

/// A target's rollout: when it starts and the waves that open after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// When the rollout starts: every delay counts from here.
    pub start: UnixTime,
    /// The waves, in order: shares and delays both strictly increasing, the last share
    /// [`WHOLE`].
    pub waves: Vec<Wave>,
}

/// One wave: once `start + delay` has come, devices below `share` of the fleet apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// The share of the fleet that may apply once this wave has opened, in millionths of
    /// the fleet (1 % is 10,000; [`WHOLE`] is everyone). Cumulative: it includes the
    /// earlier waves.
    pub share: u32,
    /// Seconds after the rollout's start at which this wave opens.
    pub delay: u64,
}

/// A device's place in a target's rollout: a fraction in [0, 1), as the 64-bit numerator
/// over 2^64.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Position(u64);

/// Where one device stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The index of its wave (0 for the first).
    pub wave: usize,
    /// That wave's cumulative share, in millionths.
    pub share: u32,
    /// When that wave opens.
    pub opens: UnixTime,
}

/// Why a rollout was refused. Waves are numbered from 1, as an operator writes them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// No wave at all.
    #[error("rollout has no waves")]
    NoWaves,
    /// More waves than [`WAVES_MAX`].
    #[error("rollout has {count} waves, more than {max}")]
    TooManyWaves {
        /// How many there are.
        count: usize,
        /// The most allowed.
        max: usize,
    },
    /// A share of zero or above the whole fleet.
    #[error("rollout wave {wave}: share {share} is not in (0, {WHOLE}] millionths")]
    ShareRange {
        /// The wave (from 1).
        wave: usize,
        /// Its share.
        share: u32,
    },
    /// A share not above the wave before it.
    #[error("rollout wave {wave}: share {share} is not above the previous wave's {previous}")]
    ShareNotIncreasing {
        /// The wave (from 1).
        wave: usize,
        /// Its share.
        share: u32,
        /// The previous wave's.
        previous: u32,
    },
    /// A delay not after the wave before it.
    #[error("rollout wave {wave}: delay {delay}s is not after the previous wave's {previous}s")]
    DelayNotIncreasing {
        /// The wave (from 1).
        wave: usize,
        /// Its delay.
        delay: u64,
        /// The previous wave's.
        previous: u64,
    },
    /// The last wave leaves part of the fleet out.
    #[error("rollout's last wave has share {share}: it must be {WHOLE} (the whole fleet)")]
    LastNotWhole {
        /// The last wave's share.
        share: u32,
    },
    /// A wave that would open past the end of time (`start + delay` overflows).
    #[error("rollout wave {wave}: start {start} plus delay {delay}s is past the largest time")]
    Overflow {
        /// The wave (from 1).
        wave: usize,
        /// The rollout's start.
        start: UnixTime,
        /// The wave's delay.
        delay: u64,
    },
}

// === impl Rollout ===

impl Rollout {
    /// The rules decoding alone does not enforce: 1 to [`WAVES_MAX`] waves, shares in
    /// (0, [`WHOLE`]] and strictly increasing, delays strictly increasing, the last share
    /// [`WHOLE`], every opening time representable.
    pub fn check(&self) -> Result<(), RolloutError> {
        if self.waves.is_empty() {
            return Err(RolloutError::NoWaves);
        }
        if self.waves.len() > WAVES_MAX {
            return Err(RolloutError::TooManyWaves {
                count: self.waves.len(),
                max: WAVES_MAX,
            });
        }
        let mut previous: Option<Wave> = None;
        for (index, wave) in self.waves.iter().enumerate() {
            let number = index + 1;
            if wave.share == 0 || wave.share > WHOLE {
                return Err(RolloutError::ShareRange {
                    wave: number,
                    share: wave.share,
                });
            }
            if let Some(before) = previous {
                if wave.share <= before.share {
                    return Err(RolloutError::ShareNotIncreasing {
                        wave: number,
                        share: wave.share,
                        previous: before.share,
                    });
                }
                if wave.delay <= before.delay {
                    return Err(RolloutError::DelayNotIncreasing {
                        wave: number,
                        delay: wave.delay,
                        previous: before.delay,
                    });
                }
            }
            if self.start.as_secs().checked_add(wave.delay).is_none() {
                return Err(RolloutError::Overflow {
                    wave: number,
                    start: self.start,
                    delay: wave.delay,
                });
            }
            previous = Some(*wave);
        }
        match previous {
            Some(last) if last.share != WHOLE => {
                Err(RolloutError::LastNotWhole { share: last.share })
            }
            _ => Ok(()),
        }
    }

    /// The wave a device at `position` belongs to and when it opens: the first wave whose
    /// share is above the position. `None` only for a rollout that fails [`Rollout::check`].
    pub fn place(&self, position: Position) -> Option<Placement> {
        let (wave, found) = self
            .waves
            .iter()
            .enumerate()
            .find(|(_, w)| position.is_below(w.share))?;
        Some(Placement {
            wave,
            share: found.share,
            opens: UnixTime::from_secs(self.start.as_secs().checked_add(found.delay)?),
        })
    }

    /// The share of the fleet (millionths) whose wave has opened at `now`: the share of the
    /// last wave opened, 0 before the first.
    pub fn open_share(&self, now: UnixTime) -> u32 {
        self.waves
            .iter()
            .take_while(|w| {
                self.start
                    .as_secs()
                    .checked_add(w.delay)
                    .is_some_and(|opens| opens <= now.as_secs())
            })
            .last()
            .map_or(0, |w| w.share)
    }
}

/// A device certificate that could not be read for its public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading the public key of the device certificate: {reason}")]
pub struct CertificateError {
    /// Why.
    pub reason: String,
}

/// The SubjectPublicKeyInfo (DER, outer SEQUENCE included) of a DER X.509 certificate: what
/// [`Position::of`] hashes.
pub fn certificate_spki(der: &[u8]) -> Result<Vec<u8>, CertificateError> {
    let der = rustls_pki_types::CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| CertificateError {
        reason: e.to_string(),
    })?;
    Ok(cert.subject_public_key_info().as_ref().to_vec())
}

/// The rollout docs/metadata.md uses as its example, starting at `start`: 1 % of the fleet
/// at once, 10 % after 2 h, everyone after 24 h. For tests.
#[cfg(any(test, feature = "devpki"))]
pub fn example(start: UnixTime) -> Rollout {
    let wave = |share, hours: u64| Wave {
        share,
        delay: hours * 3600,
    };
    Rollout {
        start,
        waves: vec![wave(10_000, 0), wave(100_000, 2), wave(WHOLE, 24)],
    }
}

// === impl Position ===

impl Position {
    /// The position of the device whose certificate has this SubjectPublicKeyInfo (its DER,
    /// outer SEQUENCE included) in the rollout of `target`: the first 8 bytes of
    /// `SHA-256(spki || target name)`, big-endian, over 2^64. Stable for the life of the
    /// device's key, independent between targets.
    pub fn of(spki: &[u8], target: &TargetName) -> Self {
        let mut hash = Sha256::new();
        hash.update(spki);
        hash.update(target.as_str().as_bytes());
        let digest = hash.finalize();
        let mut first = [0u8; 8];
        for (to, from) in first.iter_mut().zip(digest.iter()) {
            *to = *from;
        }
        Position(u64::from_be_bytes(first))
    }

    /// A position from its 64-bit numerator (the fraction `bits / 2^64`).
    pub const fn from_bits(bits: u64) -> Self {
        Position(bits)
    }

    /// The 64-bit numerator.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The position as a fraction in [0, 1), for display.
    pub fn fraction(self) -> f64 {
        // 2^64 as f64 is exact; the quotient rounds, which is fine for showing it.
        self.0 as f64 / 18_446_744_073_709_551_616.0
    }

    /// Whether the position is below `share` millionths: `bits / 2^64 < share / 10^6`,
    /// compared exactly as `bits * 10^6 < share * 2^64`.
    pub fn is_below(self, share: u32) -> bool {
        u128::from(self.0) * u128::from(WHOLE) < u128::from(share) << 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;

    fn rollout(waves: &[(u32, u64)]) -> Rollout {
        Rollout {
            start: UnixTime::from_secs(1_000_000),
            waves: waves
                .iter()
                .map(|&(share, delay)| Wave { share, delay })
                .collect(),
        }
    }

    fn standard() -> Rollout {
        example(UnixTime::from_secs(1_000_000))
    }

    #[test]
    fn a_well_formed_rollout_passes_and_one_wave_for_everyone_is_well_formed() {
        assert_eq!(standard().check(), Ok(()));
        assert_eq!(rollout(&[(WHOLE, 0)]).check(), Ok(()));
        assert_eq!(rollout(&[(WHOLE, 7 * HOUR)]).check(), Ok(()));
    }

    #[test]
    fn malformed_rollouts_are_refused_naming_the_wave() {
        let rows: [(Rollout, RolloutError); 8] = [
            (rollout(&[]), RolloutError::NoWaves),
            (
                rollout(&[(0, 0), (WHOLE, 1)]),
                RolloutError::ShareRange { wave: 1, share: 0 },
            ),
            (
                rollout(&[(10, 0), (WHOLE + 1, 1)]),
                RolloutError::ShareRange {
                    wave: 2,
                    share: WHOLE + 1,
                },
            ),
            (
                rollout(&[(500, 0), (500, 10), (WHOLE, 20)]),
                RolloutError::ShareNotIncreasing {
                    wave: 2,
                    share: 500,
                    previous: 500,
                },
            ),
            (
                rollout(&[(500, 10), (600, 10), (WHOLE, 20)]),
                RolloutError::DelayNotIncreasing {
                    wave: 2,
                    delay: 10,
                    previous: 10,
                },
            ),
            (
                rollout(&[(500, 10), (600, 5), (WHOLE, 20)]),
                RolloutError::DelayNotIncreasing {
                    wave: 2,
                    delay: 5,
                    previous: 10,
                },
            ),
            (
                rollout(&[(500, 0), (999_999, 10)]),
                RolloutError::LastNotWhole { share: 999_999 },
            ),
            (
                Rollout {
                    start: UnixTime::from_secs(u64::MAX - 5),
                    waves: vec![Wave {
                        share: WHOLE,
                        delay: 6,
                    }],
                },
                RolloutError::Overflow {
                    wave: 1,
                    start: UnixTime::from_secs(u64::MAX - 5),
                    delay: 6,
                },
            ),
        ];
        for (rollout, want) in rows {
            assert_eq!(rollout.check(), Err(want), "{rollout:?}");
        }
        let many = rollout(
            &(1..=33)
                .map(|i| (i * 30_303, u64::from(i)))
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            many.check(),
            Err(RolloutError::TooManyWaves {
                count: 33,
                max: WAVES_MAX
            })
        );
    }

    #[test]
    fn a_position_belongs_to_the_first_wave_whose_share_is_above_it() {
        let r = standard();
        let start = r.start.as_secs();
        // 1 % of 2^64 is 184467440737095516.16, 10 % is 1844674407370955161.6: the last
        // position of each wave is its share of 2^64, rounded down.
        let one_percent_edge = 184_467_440_737_095_516;
        let rows = [
            (0, 0, start),
            (one_percent_edge, 0, start),
            (one_percent_edge + 1, 1, start + 2 * HOUR),
            (u64::MAX / 10, 1, start + 2 * HOUR),
            (u64::MAX / 10 + 1, 2, start + 24 * HOUR),
            (u64::MAX, 2, start + 24 * HOUR),
        ];
        for (bits, wave, opens) in rows {
            let placed = r.place(Position::from_bits(bits));
            assert_eq!(
                placed.map(|p| (p.wave, p.opens.as_secs())),
                Some((wave, opens)),
                "{bits}"
            );
        }
    }

    #[test]
    fn the_open_share_grows_at_each_wave_boundary() {
        let r = standard();
        let at = |offset: i64| {
            r.open_share(UnixTime::from_secs(
                r.start.as_secs().saturating_add_signed(offset),
            ))
        };
        assert_eq!(at(-1), 0);
        assert_eq!(at(0), 10_000);
        assert_eq!(at(2 * 3600 - 1), 10_000);
        assert_eq!(at(2 * 3600), 100_000);
        assert_eq!(at(24 * 3600 - 1), 100_000);
        assert_eq!(at(24 * 3600), WHOLE);
    }

    #[test]
    fn positions_are_stable_per_key_and_differ_between_targets() {
        let app = TargetName::parse("app").ok();
        let model = TargetName::parse("model").ok();
        let (Some(app), Some(model)) = (app, model) else {
            unreachable!("valid names")
        };
        let spki =
            b"\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00 thirty-two bytes of key.......";
        assert_eq!(Position::of(spki, &app), Position::of(spki, &app));
        assert_ne!(Position::of(spki, &app), Position::of(spki, &model));
        // SHA-256(spki || "app"), first 8 bytes: the value the Python interop test computes.
        let digest = Sha256::digest([&spki[..], b"app"].concat());
        let mut want = [0u8; 8];
        want.copy_from_slice(&digest[..8]);
        assert_eq!(Position::of(spki, &app).bits(), u64::from_be_bytes(want));
    }
}
