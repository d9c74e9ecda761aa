//! Every escape the extractor refuses, each with an archive built here (raw headers where the
//! tar crate's `Builder` would refuse to write the hostile name).

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use tar::EntryType;

use super::*;

const LIMITS: Limits = Limits {
    max_bytes: 1024 * 1024,
    max_entries: 1000,
};

/// One entry of a test archive.
enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Link(&'a str, &'a str),
    /// Any type, no data.
    Typed(&'a [u8], EntryType),
}

/// A header with the name and link name written as raw bytes: no validation at all.
fn header(name: &[u8], kind: EntryType, size: u64, mode: u32, link: &[u8]) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_cksum();
    h
}

fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (h, data): (tar::Header, &[u8]) = match entry {
            E::File(name, data, mode) => (
                header(
                    name.as_bytes(),
                    EntryType::Regular,
                    data.len() as u64,
                    *mode,
                    b"",
                ),
                data,
            ),
            E::Dir(name, mode) => (
                header(name.as_bytes(), EntryType::Directory, 0, *mode, b""),
                b"",
            ),
            E::Symlink(name, target) => (
                header(
                    name.as_bytes(),
                    EntryType::Symlink,
                    0,
                    0o777,
                    target.as_bytes(),
                ),
                b"",
            ),
            E::Link(name, target) => (
                header(
                    name.as_bytes(),
                    EntryType::Link,
                    0,
                    0o644,
                    target.as_bytes(),
                ),
                b"",
            ),
            E::Typed(name, kind) => (header(name, *kind, 0, 0o644, b""), b""),
        };
        builder.append(&h, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A folder to extract into, inside a temp dir (so "outside" is observable).
fn folder() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("files");
    std::fs::create_dir(&root).unwrap();
    (dir, root)
}

fn run(entries: &[E<'_>]) -> (tempfile::TempDir, PathBuf, Result<Extracted, ExtractError>) {
    let (dir, root) = folder();
    let result = extract(&tar_of(entries)[..], &root, None, LIMITS);
    (dir, root, result)
}

/// Every path under `dir`, relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            out.push(
                path.strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn files_folders_and_links_inside_the_folder_are_extracted() {
    let (_dir, root, result) = run(&[
        E::Dir("./", 0o755),
        E::Dir("lib/", 0o755),
        E::File("./lib/libx.so.1", b"elf", 0o644),
        E::Symlink("lib/libx.so", "libx.so.1"),
        E::File("bin/tool", b"#!/bin/sh\n", 0o755),
        E::Symlink("bin/lib", "../lib"),
        E::Link("copy-of-tool", "bin/tool"),
    ]);
    let done = result.unwrap();
    assert_eq!(done.entries, 7);
    assert_eq!(done.bytes, 13);
    assert_eq!(std::fs::read(root.join("lib/libx.so")).unwrap(), b"elf");
    assert_eq!(
        std::fs::read(root.join("bin/lib/libx.so.1")).unwrap(),
        b"elf"
    );
    let tool = std::fs::metadata(root.join("bin/tool")).unwrap();
    assert_eq!(tool.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::metadata(root.join("copy-of-tool")).unwrap().ino(),
        tool.ino()
    );
}

#[test]
fn a_dot_dot_name_is_refused_and_nothing_lands_outside() {
    let (dir, root, result) = run(&[E::File("a/../../evil", b"x", 0o644)]);
    assert!(
        matches!(result, Err(ExtractError::Name { reason, .. }) if reason.contains("..")),
        "{result:?}"
    );
    assert!(!dir.path().join("evil").exists());
    assert!(listing(&root).is_empty());
}

#[test]
fn an_absolute_an_empty_and_a_nul_name_are_refused() {
    for name in [&b"/tmp/evil"[..], b""] {
        let (_dir, _root, result) = run(&[E::Typed(name, EntryType::Regular)]);
        assert!(
            matches!(result, Err(ExtractError::Name { .. })),
            "{name:?}: {result:?}"
        );
    }
    // A NUL can only come through a PAX path (the old header's name ends at its first NUL):
    // one record, `<length> path=a<NUL>b\n`, its length counting itself.
    let record = b"12 path=a\0b\n";
    let mut builder = tar::Builder::new(Vec::new());
    builder
        .append(
            &header(b"pax", EntryType::XHeader, record.len() as u64, 0o644, b""),
            &record[..],
        )
        .unwrap();
    builder
        .append(&header(b"a", EntryType::Regular, 0, 0o644, b""), &b""[..])
        .unwrap();
    let tar = builder.into_inner().unwrap();
    let (_dir, root) = folder();
    let result = extract(&tar[..], &root, None, LIMITS);
    assert!(
        matches!(result, Err(ExtractError::Name { reason, .. }) if reason.contains("NUL")),
        "{result:?}"
    );
    assert!(listing(&root).is_empty());
}

#[test]
fn a_symlink_pointing_out_is_refused_absolute_or_relative() {
    for target in ["/etc", "../../outside", "sub/../../..", "../../.."] {
        let (_dir, root, result) = run(&[E::Dir("sub/", 0o755), E::Symlink("sub/l", target)]);
        assert!(
            matches!(result, Err(ExtractError::LinkOutside { .. })),
            "{target}: {result:?}"
        );
        assert!(!root.join("sub/l").exists(), "{target}");
    }
}

#[test]
fn nothing_is_written_through_a_symlink_even_one_pointing_inside() {
    let (_dir, root, result) = run(&[
        E::Dir("real/", 0o755),
        E::Symlink("l", "real"),
        E::File("l/file", b"x", 0o644),
    ]);
    assert!(
        matches!(result, Err(ExtractError::ThroughSymlink { ref component, .. }) if component == "l"),
        "{result:?}"
    );
    assert!(!root.join("real/file").exists());
}

#[test]
fn a_symlink_chain_climbing_through_another_link_is_refused_ghsa_m37j_52j7_pjw7() {
    // `d1/d2/up` points at the folder's root (inside: allowed). Lexically `d1/d2/up/..` is
    // `d1/d2`, inside, but the kernel resolves `up` first and climbs from the root: outside.
    let (dir, root, result) = run(&[
        E::Dir("d1/d2/", 0o755),
        E::Symlink("d1/d2/up", "../.."),
        E::Symlink("escape", "d1/d2/up/.."),
        E::File("escape/pwned", b"x", 0o644),
    ]);
    assert!(
        matches!(result, Err(ExtractError::LinkOutside { ref name, .. }) if name == "escape"),
        "{result:?}"
    );
    assert!(!dir.path().join("pwned").exists());
    assert!(!root.join("escape").exists());
}

#[test]
fn a_chain_of_links_each_climbing_to_the_root_stays_inside() {
    // Two links, each lexically inside: following both never leaves the folder.
    let (_dir, root, result) = run(&[
        E::Dir("a/b/", 0o755),
        E::Symlink("a/b/top", "../.."),
        E::Symlink("a/again", "b/top"),
        E::File("marker", b"m", 0o644),
    ]);
    result.unwrap();
    assert_eq!(std::fs::read(root.join("a/again/marker")).unwrap(), b"m");
    assert_eq!(
        std::fs::canonicalize(root.join("a/again")).unwrap(),
        std::fs::canonicalize(&root).unwrap()
    );
}

#[test]
fn a_hard_link_target_is_resolved_in_the_folder_not_the_working_directory_ghsa_fxhp_mv3v_67qp() {
    // `Cargo.toml` exists in the test's working directory (the crate's folder); oras-go
    // linked to it. Here it is looked up in the folder, where it is not.
    assert!(Path::new("Cargo.toml").exists());
    let (_dir, root, result) = run(&[E::Link("stolen", "Cargo.toml")]);
    assert!(
        matches!(result, Err(ExtractError::HardLinkTarget { .. })),
        "{result:?}"
    );
    assert!(!root.join("stolen").exists());
}

#[test]
fn a_hard_link_to_an_absolute_or_climbing_path_or_to_a_symlink_is_refused() {
    let outside = tempfile::NamedTempFile::new().unwrap();
    let absolute = outside.path().to_str().unwrap().to_owned();
    for entries in [
        vec![E::Link("l", &absolute)],
        vec![E::Link("l", "../secret")],
        vec![E::Symlink("s", "."), E::Link("l", "s")],
        vec![E::Dir("d/", 0o755), E::Link("l", "d")],
    ] {
        let (_dir, root, result) = run(&entries);
        assert!(
            matches!(
                result,
                Err(ExtractError::LinkOutside { .. } | ExtractError::HardLinkTarget { .. })
            ),
            "{result:?}"
        );
        assert!(!root.join("l").exists());
    }
    assert_eq!(std::fs::metadata(outside.path()).unwrap().nlink(), 1);
}

#[test]
fn a_file_never_replaces_a_folder_nor_a_folder_a_file_nor_a_file_a_file() {
    let (_dir, root, result) = run(&[E::Dir("a/", 0o755), E::File("a", b"x", 0o644)]);
    assert!(
        matches!(result, Err(ExtractError::Exists { .. })),
        "{result:?}"
    );
    assert!(root.join("a").is_dir());

    let (_dir, _root, result) = run(&[E::File("a", b"x", 0o644), E::File("a/b", b"y", 0o644)]);
    assert!(
        matches!(result, Err(ExtractError::NotAFolder { .. })),
        "{result:?}"
    );

    let (_dir, root, result) = run(&[
        E::File("a", b"first", 0o644),
        E::File("a", b"second", 0o644),
    ]);
    assert!(
        matches!(result, Err(ExtractError::Exists { .. })),
        "{result:?}"
    );
    assert_eq!(std::fs::read(root.join("a")).unwrap(), b"first");

    let (_dir, root, result) = run(&[E::Symlink("l", "target"), E::File("l", b"x", 0o644)]);
    assert!(
        matches!(result, Err(ExtractError::Exists { .. })),
        "{result:?}"
    );
    assert!(!root.join("target").exists());
}

#[test]
fn setuid_setgid_and_sticky_bits_are_stripped() {
    let (_dir, root, result) = run(&[
        E::File("suid", b"x", 0o4755),
        E::File("sgid", b"x", 0o2755),
        E::Dir("sticky/", 0o1777),
        E::Dir("readonly/", 0o555),
        E::File("readonly/inside", b"x", 0o444),
    ]);
    result.unwrap();
    let mode = |p: &str| {
        std::fs::metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("sgid"), 0o755);
    assert_eq!(mode("sticky"), 0o777);
    // Folders keep u+rwx, so the agent can remove them; files keep their bits.
    assert_eq!(mode("readonly"), 0o755);
    assert_eq!(mode("readonly/inside"), 0o444);
}

#[test]
fn device_files_and_fifos_are_refused() {
    for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
        let (_dir, root, result) = run(&[E::Typed(b"dev", kind)]);
        assert!(
            matches!(result, Err(ExtractError::Unsupported { .. })),
            "{kind:?}: {result:?}"
        );
        assert!(!root.join("dev").exists());
    }
}

#[test]
fn a_decompression_bomb_stops_at_the_cap_before_writing_past_it() {
    // 64 MiB of zeros in one file, 64 KiB gzipped; the cap is 1 MiB.
    let mut builder = tar::Builder::new(Vec::new());
    let big = 64 * 1024 * 1024;
    builder
        .append(
            &header(b"bomb", EntryType::Regular, big, 0o644, b""),
            std::io::repeat(0).take(big),
        )
        .unwrap();
    let tar = builder.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1024 * 1024);

    let (_dir, root) = folder();
    let result = extract(flate2::read::GzDecoder::new(&gz[..]), &root, None, LIMITS);
    assert!(
        matches!(result, Err(ExtractError::TooLarge { limit }) if limit == LIMITS.max_bytes),
        "{result:?}"
    );
    assert!(!root.join("bomb").exists());

    // Files within the cap each, past it together: stopped at the one that passes it.
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let chunk = vec![7u8; 100 * 1024];
    let entries: Vec<E<'_>> = names.iter().map(|n| E::File(n, &chunk, 0o644)).collect();
    let (_dir, root, result) = run(&entries);
    assert!(
        matches!(result, Err(ExtractError::TooLarge { .. })),
        "{result:?}"
    );
    let written: u64 = listing(&root)
        .iter()
        .map(|p| std::fs::metadata(root.join(p)).unwrap().len())
        .sum();
    assert!(written <= LIMITS.max_bytes, "{written}");
}

#[test]
fn a_stream_longer_than_its_cap_is_refused_even_as_skipped_data() {
    // A folder entry claiming 8 MiB of data: nothing is written, but the stream is read.
    let mut builder = tar::Builder::new(Vec::new());
    let size = 8 * 1024 * 1024;
    builder
        .append(
            &header(b"d/", EntryType::Directory, size, 0o755, b""),
            std::io::repeat(0).take(size),
        )
        .unwrap();
    let tar = builder.into_inner().unwrap();
    let (_dir, root) = folder();
    let result = extract(&tar[..], &root, None, LIMITS);
    assert!(
        matches!(result, Err(ExtractError::TooLarge { .. })),
        "{result:?}"
    );
}

#[test]
fn more_entries_than_allowed_are_refused() {
    let names: Vec<String> = (0..20).map(|i| format!("d{i}/")).collect();
    let entries: Vec<E<'_>> = names.iter().map(|n| E::Dir(n, 0o755)).collect();
    let (_dir, root) = folder();
    let limits = Limits {
        max_entries: 10,
        ..LIMITS
    };
    let result = extract(&tar_of(&entries)[..], &root, None, limits);
    assert!(
        matches!(result, Err(ExtractError::TooManyEntries { limit: 10 })),
        "{result:?}"
    );
}

#[test]
fn an_oras_folder_keeps_every_entry_and_link_under_its_prefix() {
    let (_dir, root) = folder();
    let ok = tar_of(&[
        E::Dir("data/", 0o755),
        E::File("data/a.txt", b"a", 0o644),
        E::Symlink("data/b.txt", "a.txt"),
    ]);
    extract(&ok[..], &root, Some("data"), LIMITS).unwrap();
    assert_eq!(std::fs::read(root.join("data/b.txt")).unwrap(), b"a");

    for entries in [
        vec![E::File("other.txt", b"x", 0o644)],
        vec![E::Symlink("data/up", "..")],
        vec![E::File("data2/x", b"x", 0o644)],
    ] {
        let (_dir, root) = folder();
        let result = extract(&tar_of(&entries)[..], &root, Some("data"), LIMITS);
        assert!(
            matches!(
                result,
                Err(ExtractError::OutsidePrefix { .. } | ExtractError::LinkOutside { .. })
            ),
            "{result:?}"
        );
    }
}

#[test]
fn a_corrupt_archive_is_a_read_error() {
    let mut tar = tar_of(&[E::File("a", b"hello", 0o644)]);
    tar[148] ^= 0x55; // the header checksum
    let (_dir, root) = folder();
    let result = extract(&tar[..], &root, None, LIMITS);
    assert!(
        matches!(result, Err(ExtractError::Read { .. })),
        "{result:?}"
    );
}
