//! Streaming verifier throughput against raw sha2, on the same 1 GiB of bytes.
//!
//! ```text
//! cargo bench -p meshanics-shared --bench verifier [-- --gib N --runs R]
//! ```
//!
//! Each run hashes 1 GiB (1024 chunks of one 1 MiB pseudo-random buffer) five ways, in
//! rotation so that machine noise hits all of them alike:
//!
//! - `raw sha2`: `Sha256::update` on each chunk: the ceiling.
//! - `VerifyingWriter`: the `io::Write` wrapper over `io::sink()`.
//! - `VerifyingStream`: the `Stream` adapter over `Bytes` chunks (zero-copy, as hyper yields).
//! - `raw sha2 + copy`: each chunk copied into a 64 KiB read buffer, then hashed: the ceiling
//!   for anything read through `AsyncRead`, which copies by contract.
//! - `VerifyingReader`: the `AsyncRead` adapter over an in-memory reader (same copies).
//!
//! It prints the median MB/s of each and the ratios (adapter / its ceiling). Target: >= 0.95.
#![expect(
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a benchmark program over its own in-memory data: a failure should stop it loudly"
)]

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use meshanics_shared::digest::{Algorithm, Hasher};
use meshanics_shared::{Digest, VerifyingReader, VerifyingStream, VerifyingWriter};
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const CHUNK: usize = 1024 * 1024;
const READ_BUF: usize = 64 * 1024;

/// Serves `chunks` copies of one buffer through `AsyncRead`, copying like a socket would.
struct Repeat {
    data: Bytes,
    offset: usize,
    left: usize,
}

impl AsyncRead for Repeat {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Ok(()));
        }
        let n = buf.remaining().min(self.data.len() - self.offset);
        let start = self.offset;
        buf.put_slice(&self.data[start..start + n]);
        self.offset += n;
        if self.offset == self.data.len() {
            self.offset = 0;
            self.left -= 1;
        }
        Poll::Ready(Ok(()))
    }
}

fn main() {
    let mut gib = 1usize;
    let mut runs = 5usize;
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        match pair[0].as_str() {
            "--gib" => gib = pair[1].parse().expect("--gib takes a number"),
            "--runs" => runs = pair[1].parse().expect("--runs takes a number"),
            _ => {}
        }
    }
    let chunks = gib * 1024;
    let total = (chunks * CHUNK) as u64;
    let data: Bytes = {
        let mut v = Vec::with_capacity(CHUNK);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while v.len() < CHUNK {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        Bytes::from(v)
    };
    let expected = {
        let mut h = Hasher::new(Algorithm::Sha256);
        for _ in 0..chunks {
            h.update(&data);
        }
        h.finish()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");

    let mut results: Vec<(&str, Vec<f64>)> = vec![
        ("raw sha2", vec![]),
        ("VerifyingWriter", vec![]),
        ("VerifyingStream", vec![]),
        ("raw sha2 + copy", vec![]),
        ("VerifyingReader", vec![]),
    ];
    for run in 0..runs {
        for (name, samples) in results.iter_mut() {
            let start = Instant::now();
            let got: Digest = match *name {
                "raw sha2" => {
                    let mut h = sha2::Sha256::new();
                    for _ in 0..chunks {
                        h.update(&data);
                    }
                    Digest::parse(&format!("sha256:{}", hex::encode(h.finalize()))).expect("digest")
                }
                "VerifyingWriter" => {
                    let mut w = VerifyingWriter::new(std::io::sink(), expected.clone(), total);
                    for _ in 0..chunks {
                        w.write_all(&data).expect("write");
                    }
                    w.finish().expect("verified");
                    expected.clone()
                }
                "VerifyingStream" => rt.block_on(async {
                    let source = futures_util::stream::iter(
                        (0..chunks).map(|_| Ok::<_, std::io::Error>(data.clone())),
                    );
                    let mut s = VerifyingStream::new(source, expected.clone(), total);
                    while let Some(chunk) = s.next().await {
                        chunk.expect("chunk");
                    }
                    s.verified().cloned().expect("verified")
                }),
                "raw sha2 + copy" => rt.block_on(async {
                    let mut reader = Repeat {
                        data: data.clone(),
                        offset: 0,
                        left: chunks,
                    };
                    let mut buf = vec![0u8; READ_BUF];
                    let mut h = sha2::Sha256::new();
                    loop {
                        let n = reader.read(&mut buf).await.expect("read");
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                    Digest::parse(&format!("sha256:{}", hex::encode(h.finalize()))).expect("digest")
                }),
                _ => rt.block_on(async {
                    let reader = Repeat {
                        data: data.clone(),
                        offset: 0,
                        left: chunks,
                    };
                    let mut r = VerifyingReader::new(reader, expected.clone(), total);
                    let mut buf = vec![0u8; READ_BUF];
                    while r.read(&mut buf).await.expect("read") > 0 {}
                    r.verified().cloned().expect("verified")
                }),
            };
            let secs = start.elapsed().as_secs_f64();
            assert_eq!(got, expected, "{name} computed another digest");
            samples.push(total as f64 / secs / 1e6);
        }
        eprintln!("run {}/{runs} done", run + 1);
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        v[v.len() / 2]
    };
    let m: Vec<f64> = results.iter().map(|(_, s)| median(s)).collect();
    println!("streaming verifier, {gib} GiB per run, median of {runs} runs (MB/s = 10^6 bytes/s)");
    println!("{:<18} {:>10}", "path", "MB/s");
    for ((name, _), mbs) in results.iter().zip(&m) {
        println!("{name:<18} {mbs:>10.0}");
    }
    println!(
        "ratio VerifyingWriter / raw sha2        = {:.3}",
        m[1] / m[0]
    );
    println!(
        "ratio VerifyingStream / raw sha2        = {:.3}",
        m[2] / m[0]
    );
    println!(
        "ratio VerifyingReader / raw sha2 + copy = {:.3}",
        m[4] / m[3]
    );
    println!(
        "ratio VerifyingReader / raw sha2        = {:.3}",
        m[4] / m[0]
    );
}
