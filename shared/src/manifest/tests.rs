use super::*;
use crate::media_type::{DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const D3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

fn image_json(media_type: Option<&str>) -> String {
    let mt = media_type
        .map(|m| format!(r#""mediaType":"{m}","#))
        .unwrap_or_default();
    format!(
        r#"{{"schemaVersion":2,{mt}
        "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":7023}},
        "layers":[
          {{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":32654}},
          {{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D3}","size":16724}}
        ],
        "annotations":{{"org.opencontainers.image.created":"2026-01-01T00:00:00Z"}}}}"#
    )
}

fn index_json() -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
          {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":500,"platform":{{"architecture":"amd64","os":"linux"}}}},
          {{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":501,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
          {{"mediaType":"{OCI_MANIFEST}","digest":"{D3}","size":502,"platform":{{"architecture":"unknown","os":"unknown"}},
            "annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}
        ]}}"#
    )
}

#[test]
fn parses_an_image_manifest_and_lists_its_blobs() {
    let m = Manifest::parse(
        image_json(Some(OCI_MANIFEST)).as_bytes(),
        Some(OCI_MANIFEST),
    )
    .unwrap();
    let blobs: Vec<&str> = m.blobs().iter().map(|d| d.digest.as_str()).collect();
    assert_eq!(blobs, [D1, D2, D3]);
    assert!(!m.is_index());
    let Manifest::Image(image) = m else {
        panic!("not an image")
    };
    assert_eq!(image.config.size, 7023);
    assert_eq!(image.layers[1].size, 16724);
}

#[test]
fn parses_an_index_and_picks_a_platform() {
    let m = Manifest::parse(index_json().as_bytes(), None).unwrap();
    let Manifest::Index(index) = &m else {
        panic!("not an index")
    };
    assert_eq!(index.manifests.len(), 3);
    let chosen = index.manifest_for(&p("linux/arm64")).unwrap();
    assert_eq!(chosen.digest.as_str(), D2);
    assert!(m.blobs().is_empty());
}

#[test]
fn tells_the_kind_from_the_body_when_nothing_is_declared() {
    assert!(
        !Manifest::parse(image_json(None).as_bytes(), None)
            .unwrap()
            .is_index()
    );
    let list = index_json().replace(OCI_INDEX, DOCKER_MANIFEST_LIST);
    assert!(Manifest::parse(list.as_bytes(), None).unwrap().is_index());
}

#[test]
fn accepts_a_declared_type_with_parameters() {
    let declared = format!("{OCI_MANIFEST}; charset=utf-8");
    Manifest::parse(image_json(Some(OCI_MANIFEST)).as_bytes(), Some(&declared)).unwrap();
}

#[test]
fn refuses_a_body_that_contradicts_its_declared_type() {
    let err =
        Manifest::parse(image_json(Some(OCI_MANIFEST)).as_bytes(), Some(OCI_INDEX)).unwrap_err();
    assert!(
        matches!(err, ManifestError::MediaTypeMismatch { .. }),
        "{err}"
    );
}

#[test]
fn refuses_manifests_over_four_mebibytes() {
    let mut big = image_json(None).into_bytes();
    big.resize(4 * 1024 * 1024 + 1, b' ');
    let err = Manifest::parse(&big, None).unwrap_err();
    assert_eq!(
        err,
        ManifestError::TooLarge {
            size: 4 * 1024 * 1024 + 1,
            limit: MAX_MANIFEST_SIZE
        }
    );
}

#[test]
fn refuses_other_schema_versions() {
    let v1 = image_json(None).replace("\"schemaVersion\":2", "\"schemaVersion\":1");
    assert_eq!(
        Manifest::parse(v1.as_bytes(), None).unwrap_err(),
        ManifestError::SchemaVersion(1)
    );
}

#[test]
fn refuses_unknown_media_types_and_shapes() {
    assert!(matches!(
        Manifest::parse(image_json(None).as_bytes(), Some("application/json")).unwrap_err(),
        ManifestError::UnsupportedMediaType(_)
    ));
    assert_eq!(
        Manifest::parse(br#"{"schemaVersion":2}"#, None).unwrap_err(),
        ManifestError::UnknownKind
    );
}

#[test]
fn refuses_malformed_json_and_bad_digests() {
    assert!(matches!(
        Manifest::parse(b"{", None).unwrap_err(),
        ManifestError::Json(_)
    ));
    let bad = image_json(None).replace(D2, "sha256:ABC");
    assert!(matches!(
        Manifest::parse(bad.as_bytes(), None).unwrap_err(),
        ManifestError::Json(_)
    ));
    let negative = image_json(None).replace("32654", "-1");
    assert!(matches!(
        Manifest::parse(negative.as_bytes(), None).unwrap_err(),
        ManifestError::Json(_)
    ));
}

fn p(s: &str) -> Platform {
    Platform::parse(s).unwrap()
}

fn index_of(manifests: Vec<Descriptor>) -> ImageIndex {
    ImageIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.to_owned()),
        manifests,
        annotations: None,
    }
}

fn descriptor(platform: Option<&str>, n: u8) -> Descriptor {
    Descriptor {
        media_type: crate::media_type::OCI_MANIFEST.into(),
        digest: crate::Digest::sha256_of(&[n]),
        size: 100 + u64::from(n),
        platform: platform.map(p),
        annotations: None,
        artifact_type: None,
    }
}

#[test]
fn selects_the_exact_platform_from_an_index() {
    let index = index_of(vec![
        descriptor(Some("linux/amd64"), 1),
        descriptor(Some("linux/arm/v7"), 2),
        descriptor(Some("linux/arm64"), 3),
        descriptor(Some("unknown/unknown"), 4),
    ]);
    assert_eq!(
        index.manifest_for(&p("linux/arm64")),
        Some(&index.manifests[2])
    );
    assert_eq!(
        index.manifest_for(&p("linux/aarch64")),
        Some(&index.manifests[2])
    );
    assert_eq!(
        index.manifest_for(&p("linux/amd64")),
        Some(&index.manifests[0])
    );
    assert_eq!(
        index.manifest_for(&p("linux/armhf")),
        Some(&index.manifests[1])
    );
}

#[test]
fn falls_back_to_the_best_compatible_platform() {
    let index = index_of(vec![
        descriptor(Some("linux/arm/v5"), 1),
        descriptor(Some("linux/arm/v6"), 2),
        descriptor(Some("linux/386"), 3),
    ]);
    assert_eq!(
        index.manifest_for(&p("linux/arm/v7")),
        Some(&index.manifests[1])
    );
    assert_eq!(
        index.manifest_for(&p("linux/arm64")),
        Some(&index.manifests[1])
    );
    assert_eq!(
        index.manifest_for(&p("linux/amd64")),
        Some(&index.manifests[2])
    );
}

#[test]
fn never_selects_another_os_an_unrunnable_arch_or_an_entry_without_platform() {
    let index = index_of(vec![
        descriptor(None, 1),
        descriptor(Some("unknown/unknown"), 2),
        descriptor(Some("windows/arm64"), 3),
        descriptor(Some("linux/amd64"), 4),
    ]);
    assert_eq!(index.manifest_for(&p("linux/arm64")), None);
    assert_eq!(
        index_of(vec![descriptor(Some("linux/arm/v7"), 9)]).manifest_for(&p("linux/arm/v6")),
        None
    );
}
