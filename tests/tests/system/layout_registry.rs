//! meshanics-layout-registry as a standard client sees it: skopeo copies a multi-arch image
//! out of a layout folder, byte for byte, through the binary on 127.0.0.1:0.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use meshanics_shared::Digest;
use meshanics_tests::binaries::workspace_binary;
use meshanics_tests::oci_layout::SampleImage;
use meshanics_tests::skopeo;

#[test]
fn skopeo_copies_every_platform_out_of_a_layout_folder_byte_for_byte() {
    let work = tempfile::tempdir().unwrap();
    let image = SampleImage::multi_arch(&["linux/amd64", "linux/arm64"], 300_000, 20_000).unwrap();
    let built = image
        .write_layout(&work.path().join("images/team/app"), "v1")
        .unwrap();
    let binary =
        workspace_binary("meshanics-layout-registry", "meshanics-layout-registry").unwrap();
    let mut child = Command::new(binary)
        .arg("--dir")
        .arg(work.path().join("images"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let host = loop {
        let line = lines
            .next()
            .expect("the registry exited before listening")
            .unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());

    let source = format!("docker://{host}/team/app:v1");
    let raw = skopeo::run(&["inspect", "--raw", "--tls-verify=false", &source]).unwrap();
    assert_eq!(Digest::sha256_of(raw.as_bytes()), built.index.digest);
    let tags = skopeo::run(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{host}/team/app"),
    ])
    .unwrap();
    assert!(tags.contains("\"v1\""), "{tags}");

    let out = work.path().join("copy");
    skopeo::run(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        &source,
        &format!("oci:{}:v1", out.display()),
    ])
    .unwrap();
    for (digest, size) in &built.all_blobs {
        let path = out.join("blobs/sha256").join(digest.hex());
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, *size, "{digest}");
        assert_eq!(&Digest::sha256_of(&bytes), digest);
    }

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    drain.join().unwrap();
}
