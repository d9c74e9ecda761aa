//! The device listener's budgets, taken from `[limits]` (see [`crate::config`]): what one
//! client, one device, and all of them together may hold at once.
//!
//! - **Handshakes** ([`Budgets::handshake_turn`]): a TLS handshake needs a turn, of
//!   `max_handshakes`; with none free, a socket waits up to `handshake_timeout` for one, then
//!   is closed. A source address (an IPv4 address, or an IPv6 /64: one host's share of
//!   addresses) has `max_handshakes_per_source` turns of its own; past them it may take more
//!   only while fewer than half the turns are in use, and is closed at once otherwise. So
//!   turns are shared by source only when they are scarce (devices behind one NAT address,
//!   or a fleet test from one machine, are not held to a few at a time on a quiet facade),
//!   one source never holds more than half the turns plus its own, and a client without a
//!   certificate never holds a connection slot.
//! - **Connections** ([`Budgets::device_connection`], [`Budgets::connection_slot`]): once a
//!   certificate verified, the connection needs a share of its device's
//!   `max_connections_per_device` (none: closed at once) and then a slot of
//!   `max_connections` (waited for).
//! - **Streams** ([`Budgets::stream`]): a request needs a share of its device's
//!   `max_streams_per_device`, over all its connections; none: 429 with `Retry-After`.
//! - **Manifest memory** ([`Budgets::manifest_room`]): a manifest read whole holds its size
//!   (announced, or the 4 MiB maximum) of `manifest_buffer_bytes` until its body is dropped;
//!   none within [`MANIFEST_WAIT`]: 503 with `Retry-After`.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use meshanics_http::{Budget, KeyShare, PerKey, Share, oci_error};
use pin_project_lite::pin_project;

use crate::body::Body;
use crate::config::Limits;
use crate::identity::DeviceIdentity;
use crate::metrics::{InProgress, Metrics, Work};
use crate::respond;

/// How long a manifest waits for room in `manifest_buffer_bytes` before its request is
/// answered 503.
pub const MANIFEST_WAIT: Duration = Duration::from_secs(2);

/// The `Retry-After` (seconds) of an answer refused for want of budget.
const RETRY_AFTER_SECONDS: u32 = 1;

/// The device listener's budgets, shared by all its connections.
#[derive(Debug)]
pub struct Budgets {
    handshakes: Budget,
    handshakes_per_source: PerKey<IpAddr>,
    handshake_wait: Duration,
    connections: Budget,
    connections_per_device: PerKey<DeviceIdentity>,
    streams_per_device: PerKey<DeviceIdentity>,
    /// In KiB: a semaphore counts in `u32`.
    manifest_kib: Budget,
    metrics: Arc<Metrics>,
}

/// Why a socket got no handshake turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTurn {
    /// Its source address has `max_handshakes_per_source` in progress.
    SourceCap,
    /// `max_handshakes` stayed in progress for as long as it could wait.
    Busy,
}

/// A handshake turn: held while the handshake runs, counted in
/// `facade_handshakes_in_progress`.
#[derive(Debug)]
pub struct HandshakeTurn {
    _source: Option<KeyShare<IpAddr>>,
    _turn: Share,
    _gauge: InProgress,
}

/// Room for one manifest in memory, counted in `facade_manifest_buffer_bytes` until dropped.
#[derive(Debug)]
pub struct ManifestRoom {
    _share: Share,
    _gauge: InProgress,
}

/// What a [`Holding`] body holds: it lives as long as the body, and hears of each frame.
pub trait Hold {
    /// The body yielded a frame (to be sent).
    fn frame_sent(&self) {}
}

pin_project! {
    /// A body that holds `guard` until it is dropped (after its last frame was sent, or when
    /// the stream is reset), so that what the guard counts lives exactly as long as the body.
    #[derive(Debug)]
    pub struct Holding<B, G> {
        #[pin]
        inner: B,
        guard: G,
    }
}

// === impl Budgets ===

impl Budgets {
    /// The budgets of `limits`, reporting to `metrics`.
    pub fn new(limits: &Limits, metrics: Arc<Metrics>) -> Self {
        let units = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let manifest_kib = u32::try_from(limits.manifest_buffer_bytes / 1024).unwrap_or(u32::MAX);
        Budgets {
            handshakes: Budget::new(units(limits.max_handshakes)),
            handshakes_per_source: PerKey::new(limits.max_handshakes_per_source),
            handshake_wait: limits.handshake(),
            connections: Budget::new(units(limits.max_connections)),
            connections_per_device: PerKey::new(limits.max_connections_per_device),
            streams_per_device: PerKey::new(limits.max_streams_per_device as usize),
            manifest_kib: Budget::new(manifest_kib),
            metrics,
        }
    }

    /// A handshake turn for a socket from `source` (see the [module](self) overview).
    pub async fn handshake_turn(&self, source: IpAddr) -> Result<HandshakeTurn, NoTurn> {
        let source_share = self.handshakes_per_source.try_take(&source_key(source));
        if source_share.is_none() {
            // Past its own turns: only from the half of the budget that is free.
            let half = self.handshakes.capacity() / 2;
            if self.handshakes.in_use() >= half {
                return Err(NoTurn::SourceCap);
            }
            let turn = self.handshakes.try_take().ok_or(NoTurn::SourceCap)?;
            return Ok(HandshakeTurn {
                _source: None,
                _turn: turn,
                _gauge: self.metrics.in_progress(Work::Handshake),
            });
        }
        let turn = match self.handshakes.try_take() {
            Some(turn) => turn,
            None => self
                .handshakes
                .take_within(1, self.handshake_wait)
                .await
                .ok_or(NoTurn::Busy)?,
        };
        Ok(HandshakeTurn {
            _source: source_share,
            _turn: turn,
            _gauge: self.metrics.in_progress(Work::Handshake),
        })
    }

    /// A share of `device`'s connections, if it has fewer than `max_connections_per_device`.
    pub fn device_connection(&self, device: &DeviceIdentity) -> Option<KeyShare<DeviceIdentity>> {
        self.connections_per_device.try_take(device)
    }

    /// A connection slot, waiting for one to free up.
    pub async fn connection_slot(&self) -> Share {
        if let Some(slot) = self.connections.try_take() {
            return slot;
        }
        let _waiting = self.metrics.in_progress(Work::SlotWait);
        self.connections.take().await
    }

    /// A share of `device`'s streams, if it has fewer than `max_streams_per_device` in
    /// progress.
    pub fn stream(&self, device: &DeviceIdentity) -> Option<KeyShare<DeviceIdentity>> {
        self.streams_per_device.try_take(device)
    }

    /// Room for a manifest of `bytes` (at most the 4 MiB maximum), waiting up to
    /// [`MANIFEST_WAIT`].
    pub async fn manifest_room(&self, bytes: u64) -> Option<ManifestRoom> {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let share = match self.manifest_kib.take_within(kib, Duration::ZERO).await {
            Some(share) => share,
            None => {
                let share = self.manifest_kib.take_within(kib, MANIFEST_WAIT).await;
                self.metrics.manifest_wait(share.is_some());
                share?
            }
        };
        let gauge = self
            .metrics
            .in_progress_by(Work::ManifestBytes, i64::from(kib) * 1024);
        Some(ManifestRoom {
            _share: share,
            _gauge: gauge,
        })
    }
}

/// What the per-source cap counts `address` under: an IPv4 address (also when mapped into
/// IPv6) as itself, an IPv6 address by its /64, which one host or site is usually given
/// whole (so that it cannot take a fresh cap with each of its addresses).
fn source_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// The answer to a request refused for want of budget: `status` with `Retry-After`, and the
/// OCI error body (`TOOMANYREQUESTS` for 429, `UNAVAILABLE` otherwise).
pub fn refusal(status: StatusCode, message: &str) -> Response<Body> {
    let code = if status == StatusCode::TOO_MANY_REQUESTS {
        "TOOMANYREQUESTS"
    } else {
        "UNAVAILABLE"
    };
    let json = oci_error::body(code, message);
    let length = json.len();
    let mut response = Response::new(respond::full(json));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(oci_error::CONTENT_TYPE),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

// === impl ManifestRoom ===

impl Hold for ManifestRoom {}

// === impl Holding ===

impl<B, G> Holding<B, G> {
    /// `inner`, holding `guard` until dropped.
    pub fn new(inner: B, guard: G) -> Self {
        Holding { inner, guard }
    }
}

impl<B, G> HttpBody for Holding<B, G>
where
    B: HttpBody<Data = Bytes>,
    G: Hold,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            this.guard.frame_sent();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use http_body_util::BodyExt as _;

    use super::*;

    fn budgets(extra: impl FnOnce(&mut Limits)) -> (Budgets, Arc<Metrics>) {
        let mut limits = Limits::default();
        extra(&mut limits);
        let metrics = Arc::new(Metrics::default());
        (Budgets::new(&limits, metrics.clone()), metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_over_its_cap_is_refused_at_once_and_others_still_get_turns() {
        let (budgets, metrics) = budgets(|l| {
            l.max_handshakes = 3;
            l.max_handshakes_per_source = 2;
        });
        let flood = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let device = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let _first = budgets.handshake_turn(flood).await.unwrap();
        let _second = budgets.handshake_turn(flood).await.unwrap();
        assert_eq!(
            budgets.handshake_turn(flood).await.unwrap_err(),
            NoTurn::SourceCap
        );
        let third = budgets.handshake_turn(device).await.unwrap();
        assert!(
            metrics
                .render()
                .contains("facade_handshakes_in_progress 3\n")
        );
        // All turns taken: a fourth waits for the handshake timeout, then gives up.
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
        assert_eq!(
            budgets.handshake_turn(other).await.unwrap_err(),
            NoTurn::Busy
        );
        drop(third);
        assert!(budgets.handshake_turn(other).await.is_ok());
    }

    #[tokio::test]
    async fn a_source_past_its_cap_takes_turns_only_from_the_free_half() {
        let (budgets, _) = budgets(|l| {
            l.max_handshakes = 8;
            l.max_handshakes_per_source = 1;
        });
        let nat = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
        let mut turns = Vec::new();
        // Its own turn, then more while fewer than 4 of the 8 are in use.
        for _ in 0..4 {
            turns.push(budgets.handshake_turn(nat).await.unwrap());
        }
        assert_eq!(
            budgets.handshake_turn(nat).await.unwrap_err(),
            NoTurn::SourceCap
        );
        // Others still have the other half.
        let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
        assert!(budgets.handshake_turn(other).await.is_ok());
        turns.clear();
        assert!(budgets.handshake_turn(nat).await.is_ok());
    }

    #[test]
    fn sources_are_counted_by_ipv4_address_and_ipv6_prefix() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(other));
    }

    #[test]
    fn a_device_over_its_connection_or_stream_cap_gets_no_share() {
        let (budgets, _) = budgets(|l| {
            l.max_connections_per_device = 1;
            l.max_streams_per_device = 2;
        });
        let device = DeviceIdentity::unknown();
        let connection = budgets.device_connection(&device).unwrap();
        assert!(budgets.device_connection(&device).is_none());
        drop(connection);
        assert!(budgets.device_connection(&device).is_some());
        let streams = (budgets.stream(&device), budgets.stream(&device));
        assert!(streams.0.is_some() && streams.1.is_some());
        assert!(budgets.stream(&device).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn manifest_room_is_held_by_the_body_and_refused_when_full() {
        let (budgets, metrics) = budgets(|l| l.manifest_buffer_bytes = 8 * 1024 * 1024);
        let four = 4 * 1024 * 1024;
        let first = budgets.manifest_room(four).await.unwrap();
        let body = Holding::new(respond::full(Bytes::from_static(b"{}")), first);
        let _second = budgets.manifest_room(four).await.unwrap();
        let text = metrics.render();
        assert!(
            text.contains("facade_manifest_buffer_bytes 8388608\n"),
            "{text}"
        );
        // Full: waits, then gives up.
        assert!(budgets.manifest_room(1).await.is_none());
        assert!(
            metrics
                .render()
                .contains("facade_manifest_buffer_waits_total{outcome=\"refused\"} 1\n")
        );
        // The body sent and dropped gives its room back.
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"{}");
        assert!(budgets.manifest_room(1000).await.is_some());
    }

    #[tokio::test]
    async fn a_refusal_says_when_to_retry() {
        let response = refusal(StatusCode::TOO_MANY_REQUESTS, "too many streams");
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["errors"][0]["code"], "TOOMANYREQUESTS");
    }
}
