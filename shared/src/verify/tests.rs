use std::io::Write;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use super::*;

fn content() -> (Vec<u8>, Digest) {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::sha256_of(&data);
    (data, digest)
}

#[test]
fn verifier_accepts_exact_content() {
    let (data, digest) = content();
    let mut v = Verifier::new(digest.clone(), data.len() as u64);
    for chunk in data.chunks(7_777) {
        v.update(chunk).unwrap();
    }
    assert_eq!(v.finish().unwrap(), digest);
}

#[test]
fn verifier_refuses_the_first_byte_past_the_size_and_hashes_none_of_it() {
    let (data, digest) = content();
    let mut v = Verifier::new(digest, data.len() as u64 - 1);
    let (head, tail) = data.split_at(data.len() - 10);
    v.update(head).unwrap();
    let err = v.update(tail).unwrap_err();
    assert!(
        matches!(err, VerifyError::TooLong { expected, .. } if expected == data.len() as u64 - 1)
    );
    assert_eq!(v.received(), head.len() as u64);
}

#[test]
fn verifier_refuses_short_content() {
    let (data, digest) = content();
    let mut v = Verifier::new(digest, data.len() as u64);
    v.update(&data[..10]).unwrap();
    assert!(matches!(
        v.finish(),
        Err(VerifyError::TooShort { received: 10, .. })
    ));
}

#[test]
fn verifier_refuses_wrong_bytes_of_the_right_size() {
    let (mut data, digest) = content();
    data[500] ^= 1;
    let mut v = Verifier::new(digest.clone(), data.len() as u64);
    v.update(&data).unwrap();
    let err = v.finish().unwrap_err();
    assert_eq!(
        err,
        VerifyError::Mismatch {
            expected: digest,
            actual: Digest::sha256_of(&data)
        }
    );
}

#[test]
fn verifier_resumes_after_a_prefix() {
    let (data, digest) = content();
    let mut v = Verifier::resume(digest.clone(), data.len() as u64, &data[..4096]).unwrap();
    assert_eq!(v.received(), 4096);
    v.update(&data[4096..]).unwrap();
    assert_eq!(v.finish().unwrap(), digest);
}

#[test]
fn verifier_refuses_a_prefix_longer_than_the_size() {
    let (data, digest) = content();
    assert!(Verifier::resume(digest, 10, &data[..11]).is_err());
}

#[test]
fn writer_passes_exact_content_to_inner() {
    let (data, digest) = content();
    let mut w = VerifyingWriter::new(Vec::new(), digest, data.len() as u64);
    for chunk in data.chunks(1000) {
        w.write_all(chunk).unwrap();
    }
    assert_eq!(w.finish().unwrap(), data);
}

#[test]
fn writer_never_writes_past_the_expected_size() {
    let (data, digest) = content();
    let limit = data.len() as u64 - 100;
    let mut w = VerifyingWriter::new(Vec::new(), digest, limit);
    let mut result = Ok(());
    for chunk in data.chunks(1000) {
        result = w.write_all(chunk);
        if result.is_err() {
            break;
        }
    }
    let err = result.unwrap_err();
    assert!(matches!(
        VerifyError::from_io(&err),
        Some(VerifyError::TooLong { .. })
    ));
    assert!(w.verifier().received() <= limit);
}

/// A writer that accepts at most 3 bytes a call, like a slow pipe.
struct Dribble(Vec<u8>);

impl Write for Dribble {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(3);
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn writer_hashes_only_what_inner_accepted() {
    let (data, digest) = content();
    let mut w = VerifyingWriter::new(Dribble(Vec::new()), digest, data.len() as u64);
    w.write_all(&data).unwrap();
    assert_eq!(w.finish().unwrap().0, data);
}

#[test]
fn writer_finish_reports_a_mismatch() {
    let (mut data, digest) = content();
    data[0] ^= 0xff;
    let mut w = VerifyingWriter::new(Vec::new(), digest, data.len() as u64);
    w.write_all(&data).unwrap();
    assert!(matches!(
        w.finish(),
        Err(FinishError::Verify(VerifyError::Mismatch { .. }))
    ));
}

#[tokio::test]
async fn reader_delivers_exact_content_and_ends_cleanly() {
    let (data, digest) = content();
    let mut r = VerifyingReader::new(&data[..], digest.clone(), data.len() as u64);
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, data);
    assert_eq!(r.verified(), Some(&digest));
}

#[tokio::test]
async fn reader_fails_at_end_on_a_digest_mismatch() {
    let (mut data, digest) = content();
    data[99_999] ^= 1;
    let mut r = VerifyingReader::new(&data[..], digest, data.len() as u64);
    let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(matches!(
        VerifyError::from_io(&err),
        Some(VerifyError::Mismatch { .. })
    ));
    assert_eq!(r.verified(), None);
}

#[tokio::test]
async fn reader_fails_at_end_on_a_short_body() {
    let (data, digest) = content();
    let mut r = VerifyingReader::new(&data[..50], digest, data.len() as u64);
    let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
    assert!(matches!(
        VerifyError::from_io(&err),
        Some(VerifyError::TooShort { received: 50, .. })
    ));
}

#[tokio::test]
async fn reader_fails_as_soon_as_an_endless_body_passes_the_size() {
    let (_, digest) = content();
    // An endless source: tokio's `repeat` never ends.
    let mut r = VerifyingReader::new(tokio::io::repeat(0x41), digest, 1_000_000);
    let mut out = Vec::new();
    let err = r.read_to_end(&mut out).await.unwrap_err();
    assert!(matches!(
        VerifyError::from_io(&err),
        Some(VerifyError::TooLong { .. })
    ));
    assert!(out.len() <= 1_000_000, "handed out {} bytes", out.len());
    // And it keeps failing rather than pretending to end.
    assert!(r.read(&mut [0u8; 16]).await.is_err());
}

fn chunks(data: &[u8], size: usize) -> Vec<Result<Bytes, std::io::Error>> {
    data.chunks(size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

#[tokio::test]
async fn stream_yields_exact_content_then_ends() {
    let (data, digest) = content();
    let mut s = VerifyingStream::new(
        futures_util::stream::iter(chunks(&data, 4096)),
        digest.clone(),
        data.len() as u64,
    );
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(out, data);
    assert_eq!(s.verified(), Some(&digest));
}

#[tokio::test]
async fn stream_refuses_a_chunk_past_the_size_without_yielding_it() {
    let (data, digest) = content();
    let mut s = VerifyingStream::new(
        futures_util::stream::iter(chunks(&data, 4096)),
        digest,
        10_000,
    );
    let mut out = Vec::new();
    let mut failure = None;
    while let Some(item) = s.next().await {
        match item {
            Ok(chunk) => out.extend_from_slice(&chunk),
            Err(err) => failure = Some(err),
        }
    }
    assert!(matches!(
        failure,
        Some(StreamError::Verify(VerifyError::TooLong {
            expected: 10_000,
            ..
        }))
    ));
    assert_eq!(out.len(), 8192);
}

#[tokio::test]
async fn stream_yields_an_error_before_ending_on_a_mismatch() {
    let (mut data, digest) = content();
    data[3] ^= 1;
    let mut s = VerifyingStream::new(
        futures_util::stream::iter(chunks(&data, 4096)),
        digest,
        data.len() as u64,
    );
    let mut last = None;
    while let Some(item) = s.next().await {
        last = Some(item);
    }
    assert!(matches!(
        last,
        Some(Err(StreamError::Verify(VerifyError::Mismatch { .. })))
    ));
    assert_eq!(s.verified(), None);
}

#[tokio::test]
async fn stream_passes_source_errors_through_and_stops() {
    let (data, digest) = content();
    let items: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::copy_from_slice(&data[..10])),
        Err(std::io::Error::other("connection reset")),
        Ok(Bytes::copy_from_slice(&data[10..])),
    ];
    let mut s = VerifyingStream::new(futures_util::stream::iter(items), digest, data.len() as u64);
    assert!(s.next().await.unwrap().is_ok());
    assert!(matches!(s.next().await, Some(Err(StreamError::Source(_)))));
    assert!(s.next().await.is_none());
}
