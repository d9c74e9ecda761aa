use std::convert::Infallible;

use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};

use super::*;

type Chunks = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn chunks(parts: &[&[u8]]) -> Chunks {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = parts
        .iter()
        .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p))))
        .collect();
    StreamBody::new(stream::iter(frames))
}

fn origin(digest: &Digest) -> Origin {
    Origin {
        registry: Registry::parse("r.example").unwrap(),
        digest: digest.clone(),
        device: crate::identity::DeviceIdentity::unknown(),
    }
}

/// Collects what a device would receive before the body ends or fails.
async fn drain(body: CheckedBody<Chunks>) -> (Vec<u8>, Result<(), String>) {
    let mut body = std::pin::pin!(body);
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => received.extend_from_slice(&frame.into_data().unwrap()),
            Err(e) => return (received, Err(e.to_string())),
        }
    }
    (received, Ok(()))
}

fn checked(
    parts: &[&[u8]],
    check: Check,
    digest: &Digest,
    metrics: &Arc<Metrics>,
) -> CheckedBody<Chunks> {
    CheckedBody::new(chunks(parts), check, origin(digest), metrics.clone())
}

#[tokio::test]
async fn passes_content_that_matches_its_digest_and_size() {
    let digest = Digest::sha256_of(b"hello world");
    let metrics = Arc::new(Metrics::default());
    let body = checked(
        &[b"hello ", b"world"],
        Check::full(digest.clone(), Some(11), u64::MAX),
        &digest,
        &metrics,
    );
    let (received, end) = drain(body).await;
    assert_eq!(received, b"hello world");
    assert_eq!(end, Ok(()));
    assert!(
        metrics
            .render()
            .contains("facade_bytes_streamed_total 11\n")
    );
}

#[tokio::test]
async fn withholds_the_last_chunk_of_content_with_a_wrong_digest() {
    let digest = Digest::sha256_of(b"hello world");
    let metrics = Arc::new(Metrics::default());
    let body = checked(
        &[b"hello ", b"WORLD"],
        Check::full(digest.clone(), Some(11), u64::MAX),
        &digest,
        &metrics,
    );
    let (received, end) = drain(body).await;
    assert_eq!(
        received, b"hello ",
        "the completing chunk must not be released"
    );
    assert!(end.unwrap_err().contains("hashes to"));
    assert!(metrics.render().contains("kind=\"mismatch\"} 1"));
}

#[tokio::test]
async fn refuses_bytes_beyond_the_announced_size() {
    let digest = Digest::sha256_of(b"hello");
    let metrics = Arc::new(Metrics::default());
    let body = checked(
        &[b"hel", b"lo world"],
        Check::full(digest.clone(), Some(5), u64::MAX),
        &digest,
        &metrics,
    );
    let (received, end) = drain(body).await;
    assert_eq!(received, b"hel");
    assert!(end.unwrap_err().contains("longer"));
}

#[tokio::test]
async fn fails_a_short_body_at_its_end() {
    let digest = Digest::sha256_of(b"hello");
    let metrics = Arc::new(Metrics::default());
    let body = checked(
        &[b"hel"],
        Check::full(digest.clone(), Some(5), u64::MAX),
        &digest,
        &metrics,
    );
    let (_, end) = drain(body).await;
    assert!(end.unwrap_err().contains("ended after 3 of 5"));
}

#[tokio::test]
async fn fails_unsized_content_with_a_wrong_digest_at_its_end() {
    let digest = Digest::sha256_of(b"hello");
    let metrics = Arc::new(Metrics::default());
    let good = checked(
        &[b"he", b"llo"],
        Check::full(digest.clone(), None, u64::MAX),
        &digest,
        &metrics,
    );
    assert_eq!(drain(good).await.1, Ok(()));
    let bad = checked(
        &[b"he", b"LLO"],
        Check::full(digest.clone(), None, u64::MAX),
        &digest,
        &metrics,
    );
    assert!(drain(bad).await.1.is_err());
}

#[tokio::test]
async fn checks_the_length_of_partial_content() {
    let digest = Digest::sha256_of(b"whatever");
    let metrics = Arc::new(Metrics::default());
    let three = || Check::Length {
        remaining: 3,
        expected: 3,
    };
    let exact = checked(&[b"ab", b"c"], three(), &digest, &metrics);
    assert_eq!(drain(exact).await, (b"abc".to_vec(), Ok(())));
    let short = checked(&[b"ab"], three(), &digest, &metrics);
    assert!(drain(short).await.1.unwrap_err().contains("shorter"));
    let long = checked(&[b"ab", b"cd"], three(), &digest, &metrics);
    assert_eq!(drain(long).await.0, b"ab");
}

#[tokio::test]
async fn cuts_unsized_content_at_the_cap() {
    let digest = Digest::sha256_of(b"hello");
    let metrics = Arc::new(Metrics::default());
    let endless = checked(
        &[b"aaaa", b"bbbb", b"cccc"],
        Check::full(digest.clone(), None, 8),
        &digest,
        &metrics,
    );
    let (received, end) = drain(endless).await;
    assert_eq!(received, b"aaaabbbb");
    assert!(end.is_err());
}
