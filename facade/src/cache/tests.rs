//! The store (commit after verification, rebuild, eviction, resume) and the fill (readers at
//! their own pace, failure, the last byte held until verified). Byte counts, never clocks.

use bytes::Bytes;
use futures_util::FutureExt as _;
use tokio::sync::mpsc;

use super::reader::Reader;
use super::*;

type Chunk = Result<Bytes, String>;

fn pair() -> Pair {
    (
        Registry::parse("r.example").unwrap(),
        Repository::parse("team/app").unwrap(),
    )
}

fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn open(dir: &Path, max_bytes: u64) -> Arc<Cache> {
    Arc::new(Cache::open(dir, max_bytes, Arc::new(Metrics::default())).unwrap())
}

fn start(cache: &Arc<Cache>, digest: &Digest) -> Filler {
    match cache.lookup(digest, ContentKind::Blob, &pair(), true) {
        Lookup::Start(filler) => filler,
        other => panic!("expected a new fill, got {other:?}"),
    }
}

/// A fill fed by a channel: the test decides when each chunk arrives and when the body ends.
fn fed_fill(
    cache: &Arc<Cache>,
    digest: &Digest,
    size: u64,
) -> (
    Arc<Fill>,
    mpsc::UnboundedSender<Chunk>,
    tokio::task::JoinHandle<()>,
) {
    let mut filler = start(cache, digest);
    assert!(filler.reserve(size));
    let fill = filler.fill().clone();
    let (feed, chunks) = mpsc::unbounded_channel::<Chunk>();
    let body = futures_util::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (chunk, chunks))
    });
    let head = Head {
        size,
        media_type: None,
        resume: None,
    };
    let task = tokio::spawn(filler.run(head, Box::pin(body)));
    (fill, feed, task)
}

/// Fills `bytes` whole in chunks of `chunk` bytes.
async fn fill_whole(cache: &Arc<Cache>, bytes: &[u8], chunk: usize) {
    let digest = Digest::sha256_of(bytes);
    let (_, feed, task) = fed_fill(cache, &digest, bytes.len() as u64);
    for part in bytes.chunks(chunk) {
        feed.send(Ok(Bytes::copy_from_slice(part))).unwrap();
    }
    drop(feed);
    task.await.unwrap();
}

/// A reader of the whole content of `fill`, once it streams.
async fn reader_of(fill: &Fill) -> Reader {
    let mut progress = fill.subscribe();
    let state = progress
        .wait_for(|p| !matches!(p, Progress::Starting))
        .await
        .unwrap()
        .clone();
    let (file, size) = match state {
        Progress::Streaming { file, size, .. } | Progress::Done { file, size, .. } => (file, size),
        other => panic!("no content: {other:?}"),
    };
    let metrics = Arc::new(Metrics::default());
    Reader::new(
        file,
        Some(progress),
        fill.digest().clone(),
        (0, size),
        size,
        metrics,
    )
}

/// Reads until the reader ends: the bytes, and whether it ended cleanly.
async fn drain(reader: &mut Reader, received: &mut Vec<u8>) -> Result<(), String> {
    while let Some(chunk) = reader.next().await {
        received.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
    }
    Ok(())
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            names.extend(files_in(&path));
        } else {
            names.push(path.display().to_string());
        }
    }
    names.sort();
    names
}

#[tokio::test]
async fn content_is_committed_only_after_its_size_and_digest_verified() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let good = content(200_000, 1);
    let digest = Digest::sha256_of(&good);
    let (fill, feed, task) = fed_fill(&cache, &digest, good.len() as u64);
    feed.send(Ok(Bytes::copy_from_slice(&good[..150_000])))
        .unwrap();
    let mut progress = fill.subscribe();
    progress
        .wait_for(|p| matches!(p, Progress::Streaming { written, .. } if *written == 150_000))
        .await
        .unwrap();
    assert!(
        !cache.contains(&digest),
        "committed before the whole arrived"
    );
    assert!(!cache.content_path(&digest).exists());
    feed.send(Ok(Bytes::copy_from_slice(&good[150_000..])))
        .unwrap();
    drop(feed);
    task.await.unwrap();
    assert!(cache.contains(&digest));
    assert_eq!(std::fs::read(cache.content_path(&digest)).unwrap(), good);
    assert_eq!(cache.bytes(), good.len() as u64);
    assert!(files_in(&dir.path().join("ingest")).is_empty());
}

#[tokio::test]
async fn a_failed_fill_resets_every_reader_and_leaves_no_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let good = content(300_000, 2);
    let digest = Digest::sha256_of(&good);
    let (fill, feed, task) = fed_fill(&cache, &digest, good.len() as u64);
    let mut first = reader_of(&fill).await;
    let mut second = reader_of(&fill).await;
    let mut wrong = good.clone();
    wrong[299_999] ^= 1;
    feed.send(Ok(Bytes::from(wrong))).unwrap();
    drop(feed);
    task.await.unwrap();
    for reader in [&mut first, &mut second] {
        let mut received = Vec::new();
        let ended = drain(reader, &mut received).await;
        assert!(ended.is_err(), "a clean end after wrong bytes");
        assert!(
            received.len() < good.len(),
            "the whole length was delivered"
        );
    }
    assert!(!cache.contains(&digest));
    assert!(!cache.content_path(&digest).exists());
    assert!(files_in(&dir.path().join("ingest")).is_empty());
    assert_eq!(cache.bytes(), 0);
    // The next request starts a new fill.
    assert!(matches!(
        cache.lookup(&digest, ContentKind::Blob, &pair(), true),
        Lookup::Start(_)
    ));
}

#[tokio::test]
async fn the_last_byte_waits_for_the_verification_of_the_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let good = content(100_000, 3);
    let digest = Digest::sha256_of(&good);
    let (fill, feed, task) = fed_fill(&cache, &digest, good.len() as u64);
    let mut reader = reader_of(&fill).await;
    feed.send(Ok(Bytes::copy_from_slice(&good))).unwrap();
    let mut progress = fill.subscribe();
    progress
        .wait_for(|p| matches!(p, Progress::Streaming { written, .. } if *written == 100_000))
        .await
        .unwrap();
    // Every byte is written, but the upstream body has not ended: not verified yet.
    let mut received = Vec::new();
    while received.len() < good.len() - 1 {
        received.extend_from_slice(&reader.next().await.unwrap().unwrap());
    }
    assert_eq!(received.len(), good.len() - 1);
    assert!(
        reader.next().now_or_never().is_none(),
        "the last byte went out before verification"
    );
    drop(feed);
    task.await.unwrap();
    drain(&mut reader, &mut received).await.unwrap();
    assert_eq!(received, good);
}

#[tokio::test]
async fn a_fast_reader_gets_everything_while_a_slow_one_has_read_little() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 16 << 20);
    let good = content(4 << 20, 4);
    let digest = Digest::sha256_of(&good);
    let (fill, feed, task) = fed_fill(&cache, &digest, good.len() as u64);
    let mut slow = reader_of(&fill).await;
    let mut fast = reader_of(&fill).await;
    let fast_task = tokio::spawn(async move {
        let mut received = Vec::new();
        drain(&mut fast, &mut received).await.map(|()| received)
    });
    feed.send(Ok(Bytes::copy_from_slice(&good[..1000])))
        .unwrap();
    let mut slow_received = slow.next().await.unwrap().unwrap().to_vec();
    for part in good[1000..].chunks(100_000) {
        feed.send(Ok(Bytes::copy_from_slice(part))).unwrap();
    }
    drop(feed);
    // The fill finishes and the fast reader gets everything while the slow one waits.
    task.await.unwrap();
    let fast_received = fast_task.await.unwrap().unwrap();
    assert_eq!(fast_received, good);
    assert!(slow_received.len() <= READ_CHUNK, "{}", slow_received.len());
    assert!(cache.contains(&digest));
    // The slow one then reads the rest at its own pace.
    drain(&mut slow, &mut slow_received).await.unwrap();
    assert_eq!(slow_received, good);
}

#[tokio::test]
async fn concurrent_requests_for_a_digest_join_one_fill_then_hit() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let good = content(10_000, 5);
    let digest = Digest::sha256_of(&good);
    let (fill, feed, task) = fed_fill(&cache, &digest, good.len() as u64);
    match cache.lookup(&digest, ContentKind::Blob, &pair(), true) {
        Lookup::Join(joined) => assert!(Arc::ptr_eq(&joined, &fill)),
        other => panic!("expected to join the fill, got {other:?}"),
    }
    // A request under another repository joined, confirmed by the upstream.
    let confirmed = (
        Registry::parse("r.example").unwrap(),
        Repository::parse("team/other").unwrap(),
    );
    fill.confirm(confirmed.clone());
    feed.send(Ok(Bytes::from(good.clone()))).unwrap();
    drop(feed);
    task.await.unwrap();
    match cache.lookup(&digest, ContentKind::Blob, &confirmed, true) {
        Lookup::Hit(hit) => assert!(hit.pair_known, "the confirmed pair was not committed"),
        other => panic!("expected a hit, got {other:?}"),
    }
    let other = (
        Registry::parse("other.example").unwrap(),
        Repository::parse("app").unwrap(),
    );
    match cache.lookup(&digest, ContentKind::Blob, &other, true) {
        Lookup::Hit(hit) => {
            assert!(!hit.pair_known, "a pair it was never fetched under");
            assert_eq!(hit.entry.size, good.len() as u64);
        }
        other => panic!("expected a hit, got {other:?}"),
    }
    match cache.lookup(&digest, ContentKind::Blob, &pair(), true) {
        Lookup::Hit(hit) => assert!(hit.pair_known),
        other => panic!("expected a hit, got {other:?}"),
    }
}

#[tokio::test]
async fn the_index_is_rebuilt_from_its_files_and_leftovers_are_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let good = content(5_000, 6);
    let digest = Digest::sha256_of(&good);
    {
        let cache = open(dir.path(), 1 << 20);
        fill_whole(&cache, &good, 1000).await;
        let other = (
            Registry::parse("other.example").unwrap(),
            Repository::parse("app").unwrap(),
        );
        cache.confirm(&digest, &other).unwrap().await.unwrap();
    }
    // What a facade killed mid-way leaves: an ingest file, content without a description,
    // a description whose size does not match its content.
    let half = content(4_000, 7);
    let half_digest = Digest::sha256_of(&half);
    let ingest = dir
        .path()
        .join("ingest")
        .join(format!("sha256-{}", half_digest.hex()));
    std::fs::write(&ingest, &half[..2000]).unwrap();
    let sha = dir.path().join("sha256");
    let orphan = Digest::sha256_of(b"orphan");
    std::fs::write(sha.join(orphan.hex()), b"orphan").unwrap();
    let short = Digest::sha256_of(b"short content");
    std::fs::write(sha.join(short.hex()), b"short").unwrap();
    std::fs::write(
        sha.join(format!("{}.json", short.hex())),
        br#"{"size":13,"manifest":false,"media_type":null,"pairs":[]}"#,
    )
    .unwrap();

    // Nothing but the algorithms' folders and `ingest` is the cache's to clean.
    std::fs::create_dir(dir.path().join("other")).unwrap();
    std::fs::write(dir.path().join("other/keep"), b"not cache content").unwrap();
    std::fs::write(dir.path().join("keep"), b"not cache content").unwrap();

    let cache = open(dir.path(), 1 << 20);
    assert!(dir.path().join("other/keep").exists());
    assert!(dir.path().join("keep").exists());
    match cache.lookup(
        &digest,
        ContentKind::Blob,
        &(
            Registry::parse("other.example").unwrap(),
            Repository::parse("app").unwrap(),
        ),
        false,
    ) {
        Lookup::Hit(hit) => {
            assert_eq!(hit.entry.size, good.len() as u64);
            assert!(hit.pair_known, "a confirmed pair is remembered");
            assert_eq!(std::fs::read(hit.path).unwrap(), good);
        }
        other => panic!("expected a hit, got {other:?}"),
    }
    for gone in [&half_digest, &orphan, &short] {
        assert!(!cache.contains(gone), "{gone}");
        assert!(!cache.content_path(gone).exists(), "{gone}");
    }
    assert!(!ingest.exists());
    assert_eq!(cache.bytes(), good.len() as u64);
}

#[tokio::test]
async fn eviction_keeps_the_cap_and_takes_the_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 10_000);
    let [a, b, c] = [content(4_000, 10), content(4_000, 11), content(4_000, 12)];
    let digests = [&a, &b, &c].map(|bytes| Digest::sha256_of(bytes));
    fill_whole(&cache, &a, 1000).await;
    fill_whole(&cache, &b, 1000).await;
    // `a` is used again: `b` is now the least recently used.
    assert!(matches!(
        cache.lookup(&digests[0], ContentKind::Blob, &pair(), false),
        Lookup::Hit(_)
    ));
    fill_whole(&cache, &c, 1000).await;
    assert!(cache.contains(&digests[0]));
    assert!(
        !cache.contains(&digests[1]),
        "the least recently used stays"
    );
    assert!(!cache.content_path(&digests[1]).exists());
    assert!(cache.contains(&digests[2]));
    assert_eq!(cache.bytes(), 8_000);
    // Content bigger than the cap is not taken.
    let mut big = start(&cache, &Digest::sha256_of(&content(10_001, 13)));
    assert!(!big.reserve(10_001));
    big.uncacheable(None);
    assert_eq!(cache.bytes(), 8_000);
}

#[tokio::test]
async fn a_read_error_keeps_what_was_written_and_the_next_fill_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let good = content(50_000, 14);
    let digest = Digest::sha256_of(&good);
    let (fill, feed, task) = fed_fill(&cache, &digest, good.len() as u64);
    let mut reader = reader_of(&fill).await;
    feed.send(Ok(Bytes::copy_from_slice(&good[..20_000])))
        .unwrap();
    feed.send(Err("connection reset".into())).unwrap();
    task.await.unwrap();
    let mut received = Vec::new();
    assert!(drain(&mut reader, &mut received).await.is_err());
    assert!(!cache.contains(&digest));

    let filler = start(&cache, &digest);
    assert_eq!(filler.partial(), Some((20_000, 50_000)));
    let (file, verifier) = filler.resume_point(50_000).await.unwrap();
    assert_eq!(verifier.received(), 20_000);
    let mut filler = filler;
    assert!(filler.reserve(50_000));
    let rest = Bytes::copy_from_slice(&good[20_000..]);
    let body = futures_util::stream::iter([Ok::<_, String>(rest)]);
    let head = Head {
        size: 50_000,
        media_type: None,
        resume: Some((file, verifier)),
    };
    filler.run(head, body).await;
    assert!(cache.contains(&digest));
    assert_eq!(std::fs::read(cache.content_path(&digest)).unwrap(), good);
}

#[tokio::test]
async fn wrong_bytes_are_never_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), 1 << 20);
    let good = content(50_000, 15);
    let digest = Digest::sha256_of(&good);
    let (_, feed, task) = fed_fill(&cache, &digest, good.len() as u64);
    feed.send(Ok(Bytes::from(content(50_001, 16)))).unwrap();
    task.await.unwrap();
    let filler = start(&cache, &digest);
    assert_eq!(filler.partial(), None);
    assert!(!cache.ingest_path(&digest).exists());
}
