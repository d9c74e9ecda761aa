//! The test upstream itself: sample images built by `oci_layout` are accepted by skopeo and
//! the real distribution registry byte for byte, and the shared crate reads what the registry
//! serves. Every later whole-system test stands on these fixtures.

use std::fs;

use meshanics_shared::manifest::Manifest;
use meshanics_shared::{Digest, Platform};
use meshanics_tests::oci_layout::SampleImage;
use meshanics_tests::registry::{Auth, Options, RegistryServer};
use meshanics_tests::skopeo;

const PLATFORMS: [&str; 3] = ["linux/amd64", "linux/arm64", "linux/arm/v7"];

#[test]
fn skopeo_round_trips_a_sample_image_through_the_registry_byte_for_byte() {
    let work = tempfile::tempdir().unwrap();
    let image = SampleImage::multi_arch(&PLATFORMS, 64 * 1024, 16 * 1024).unwrap();
    let built = image.write_layout(&work.path().join("src"), "v1").unwrap();
    let registry = RegistryServer::start(&Options::default()).unwrap();

    skopeo::push_layout(&built.dir, "v1", &registry.host(), "team/app").unwrap();

    // The registry serves the very index we built, under the same digest.
    let raw = skopeo::run(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/team/app:v1", registry.host()),
    ])
    .unwrap();
    assert_eq!(Digest::sha256_of(raw.as_bytes()), built.index.digest);
    let Manifest::Index(index) = Manifest::parse(raw.as_bytes(), None).unwrap() else {
        panic!("the registry did not serve an index");
    };
    let arm64 = index
        .manifest_for(&Platform::parse("linux/arm64").unwrap())
        .unwrap();
    assert_eq!(Some(arm64), built.manifest_for("linux/arm64"));

    // And every blob comes back identical when pulled by digest into a new layout.
    let out = work.path().join("out");
    skopeo::run(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!(
            "docker://{}/team/app@{}",
            registry.host(),
            built.index.digest
        ),
        &format!("oci:{}:pulled", out.display()),
    ])
    .unwrap();
    for (digest, size) in &built.all_blobs {
        let pulled = fs::read(out.join("blobs/sha256").join(digest.hex())).unwrap();
        assert_eq!(pulled.len() as u64, *size, "{digest}");
        assert_eq!(pulled, built.blob(digest).unwrap(), "{digest}");
    }
}

#[test]
fn shared_layers_are_one_blob_in_the_layout() {
    let work = tempfile::tempdir().unwrap();
    let image = SampleImage::multi_arch(&PLATFORMS, 4096, 1024).unwrap();
    let built = image.write_layout(work.path(), "v1").unwrap();
    let first_layers: Vec<_> = built.blobs.iter().map(|b| b[1].digest.clone()).collect();
    assert!(
        first_layers.windows(2).all(|w| w[0] == w[1]),
        "base layer not shared"
    );
    // index + 3 manifests + 3 configs + 1 shared layer + 3 own layers
    assert_eq!(built.all_blobs.len(), 11);
}

#[test]
fn htpasswd_registry_refuses_anonymous_pushes_and_accepts_the_user() {
    let work = tempfile::tempdir().unwrap();
    let built = SampleImage::multi_arch(&PLATFORMS[..1], 1024, 1024)
        .unwrap()
        .write_layout(work.path(), "v1")
        .unwrap();
    let registry = RegistryServer::start(&Options {
        auth: Auth::Htpasswd {
            username: "operator".into(),
            password: "s3cret-token".into(),
        },
        ..Options::default()
    })
    .unwrap();
    let src = format!("oci:{}:v1", built.dir.display());
    let dst = format!("docker://{}/team/app:v1", registry.host());
    let anonymous = skopeo::run(&["copy", "--all", "--dest-tls-verify=false", &src, &dst]);
    assert!(anonymous.is_err(), "anonymous push accepted");
    skopeo::run(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        "operator:s3cret-token",
        &src,
        &dst,
    ])
    .unwrap();
}

#[test]
fn layers_are_real_tar_archives() {
    let image = SampleImage::multi_arch(&PLATFORMS[..1], 700, 300).unwrap();
    let work = tempfile::tempdir().unwrap();
    let built = image.write_layout(work.path(), "v1").unwrap();
    let layer = built.blob(&built.blobs[0][2].digest).unwrap();
    let listing = std::process::Command::new("tar")
        .args(["-tvf", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&layer)?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(listing.status.success());
    let text = String::from_utf8(listing.stdout).unwrap();
    assert!(text.contains("etc/meshanics-platform"), "{text}");
    assert!(text.contains(" 300 "), "{text}");
}
