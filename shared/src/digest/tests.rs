use super::*;

const HELLO_SHA256: &str =
    "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

#[test]
fn parses_a_sha256_digest_and_exposes_its_parts() {
    let d = Digest::parse(HELLO_SHA256).unwrap();
    assert_eq!(d.algorithm(), Algorithm::Sha256);
    assert_eq!(d.as_str(), HELLO_SHA256);
    assert_eq!(
        d.hex(),
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(d.to_string(), HELLO_SHA256);
}

#[test]
fn parses_a_sha512_digest() {
    let hex = "a".repeat(128);
    let d = Digest::parse(&format!("sha512:{hex}")).unwrap();
    assert_eq!(d.algorithm(), Algorithm::Sha512);
    assert_eq!(d.hex(), hex);
}

#[test]
fn computes_the_sha256_of_bytes() {
    assert_eq!(Digest::sha256_of(b"hello").as_str(), HELLO_SHA256);
}

#[test]
fn computes_sha512_incrementally() {
    let mut h = Hasher::new(Algorithm::Sha512);
    h.update(b"hel");
    h.update(b"lo");
    assert_eq!(
        h.finish().hex(),
        "9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca7\
         2323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043"
    );
}

fn reason(input: &str) -> DigestErrorReason {
    Digest::parse(input).unwrap_err().reason
}

#[test]
fn refuses_empty_input() {
    assert_eq!(reason(""), DigestErrorReason::Empty);
}

#[test]
fn refuses_input_without_separator() {
    assert_eq!(reason("sha256"), DigestErrorReason::MissingSeparator);
}

#[test]
fn refuses_other_algorithms() {
    let hex = "a".repeat(64);
    assert_eq!(
        reason(&format!("md5:{hex}")),
        DigestErrorReason::UnsupportedAlgorithm("md5".into())
    );
    assert_eq!(
        reason(&format!("SHA256:{hex}")),
        DigestErrorReason::UnsupportedAlgorithm("SHA256".into())
    );
    assert_eq!(
        reason(&format!("sha384:{}", "a".repeat(96))),
        DigestErrorReason::UnsupportedAlgorithm("sha384".into())
    );
}

#[test]
fn refuses_uppercase_hex() {
    assert_eq!(
        reason(&HELLO_SHA256.to_uppercase().replace("SHA256", "sha256")),
        DigestErrorReason::NotLowercaseHex
    );
}

#[test]
fn refuses_non_hex_characters() {
    let bad = format!("sha256:{}g", "a".repeat(63));
    assert_eq!(reason(&bad), DigestErrorReason::NotLowercaseHex);
}

#[test]
fn refuses_wrong_lengths() {
    assert_eq!(
        reason(&format!("sha256:{}", "a".repeat(63))),
        DigestErrorReason::WrongLength {
            algorithm: "sha256",
            expected: 64,
            found: 63
        }
    );
    assert_eq!(
        reason(&format!("sha256:{}", "a".repeat(65))),
        DigestErrorReason::WrongLength {
            algorithm: "sha256",
            expected: 64,
            found: 65
        }
    );
    assert_eq!(
        reason(&format!("sha512:{}", "a".repeat(64))),
        DigestErrorReason::WrongLength {
            algorithm: "sha512",
            expected: 128,
            found: 64
        }
    );
    assert_eq!(
        reason("sha256:"),
        DigestErrorReason::WrongLength {
            algorithm: "sha256",
            expected: 64,
            found: 0
        }
    );
}

#[test]
fn error_message_names_the_input() {
    let err = Digest::parse("sha256:xyz").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("\"sha256:xyz\""), "{msg}");
    assert!(msg.contains("needs 64 hex characters, found 3"), "{msg}");
}

#[test]
fn error_message_shortens_long_input() {
    let long = "x".repeat(10_000);
    let err = Digest::parse(&long).unwrap_err();
    assert!(err.input.len() < 120);
    assert!(err.input.ends_with("..."));
}

#[test]
fn error_message_shortens_on_a_char_boundary() {
    let long = "é".repeat(200);
    let err = Digest::parse(&long).unwrap_err();
    assert!(err.input.ends_with("..."));
}

#[test]
fn round_trips_through_serde_and_refuses_bad_strings() {
    let d = Digest::parse(HELLO_SHA256).unwrap();
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(json, format!("\"{HELLO_SHA256}\""));
    assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    assert!(serde_json::from_str::<Digest>("\"sha256:abc\"").is_err());
}
