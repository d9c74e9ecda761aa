use super::*;

fn p(s: &str) -> Platform {
    Platform::parse(s).unwrap()
}

#[test]
fn normalizes_like_containerd() {
    let rows = [
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/arm64/8", "linux/arm64"),
        ("linux/arm64/v9", "linux/arm64/v9"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/7", "linux/arm/v7"),
        ("linux/arm/6", "linux/arm/v6"),
        ("linux/arm/v5", "linux/arm/v5"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/x86-64", "linux/amd64"),
        ("linux/amd64/v1", "linux/amd64"),
        ("linux/amd64/v3", "linux/amd64/v3"),
        ("linux/i386", "linux/386"),
        ("Linux/AMD64", "linux/amd64"),
        ("macos/arm64", "darwin/arm64"),
        ("arm64", "linux/arm64"),
        ("linux/riscv64", "linux/riscv64"),
    ];
    for (input, want) in rows {
        assert_eq!(p(input).to_string(), want, "{input}");
    }
}

#[test]
fn refuses_malformed_platforms() {
    for bad in [
        "",
        "linux/",
        "/arm64",
        "linux/arm/v7/extra",
        "linux/arm 64",
        "linux//v7",
    ] {
        let err = Platform::parse(bad).unwrap_err();
        assert_eq!(err.input, bad, "{bad}");
    }
}

#[test]
fn lists_what_a_platform_can_run_best_first() {
    let names =
        |s: &str| -> Vec<String> { p(s).compatible().iter().map(|p| p.to_string()).collect() };
    assert_eq!(
        names("linux/arm/v7"),
        ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    );
    assert_eq!(names("linux/arm/v5"), ["linux/arm/v5"]);
    assert_eq!(
        names("linux/arm64"),
        [
            "linux/arm64",
            "linux/arm/v8",
            "linux/arm/v7",
            "linux/arm/v6",
            "linux/arm/v5"
        ]
    );
    assert_eq!(names("linux/amd64"), ["linux/amd64", "linux/386"]);
    assert_eq!(
        names("linux/amd64/v3"),
        [
            "linux/amd64/v3",
            "linux/amd64/v2",
            "linux/amd64",
            "linux/386"
        ]
    );
    assert_eq!(names("linux/s390x"), ["linux/s390x"]);
}

#[test]
fn ranks_candidates() {
    assert_eq!(p("linux/arm64").rank(&p("linux/arm64")), Some(0));
    assert_eq!(p("linux/arm64").rank(&p("linux/arm/v7")), Some(2));
    assert_eq!(p("linux/arm64").rank(&p("linux/amd64")), None);
}

#[test]
fn reads_the_arm_variant_from_cpuinfo() {
    let pi_zero = "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\nCPU architecture: 7\n";
    // The Pi Zero's kernel says "7" even on ARMv6 cores; containerd trusts the field too.
    assert_eq!(
        detect_from("linux", "arm", pi_zero).to_string(),
        "linux/arm/v7"
    );
    let armv6 = "CPU architecture: 6\n";
    assert_eq!(
        detect_from("linux", "arm", armv6).to_string(),
        "linux/arm/v6"
    );
    let arm64_userland32 = "CPU architecture: 8\n";
    assert_eq!(
        detect_from("linux", "arm", arm64_userland32).to_string(),
        "linux/arm/v8"
    );
    assert_eq!(detect_from("linux", "arm", "").to_string(), "linux/arm/v7");
    assert_eq!(
        detect_from("linux", "aarch64", "").to_string(),
        "linux/arm64"
    );
    assert_eq!(
        detect_from("linux", "x86_64", "").to_string(),
        "linux/amd64"
    );
}

#[test]
fn detects_the_running_machine() {
    let here = Platform::detect();
    assert_eq!(here.os(), "linux");
    #[cfg(target_arch = "x86_64")]
    assert_eq!(here.architecture(), "amd64");
    #[cfg(target_arch = "aarch64")]
    assert_eq!(here.architecture(), "arm64");
}

#[test]
fn normalizes_platforms_read_from_json() {
    let json = r#"{"architecture":"aarch64","os":"linux","variant":"v8","os.version":"x"}"#;
    let platform: Platform = serde_json::from_str(json).unwrap();
    assert_eq!(platform, p("linux/arm64"));
    let back = serde_json::to_string(&platform).unwrap();
    assert_eq!(back, r#"{"architecture":"arm64","os":"linux"}"#);
}

/// Found by the `platform` fuzz target: a huge variant level made `compatible` list millions
/// of fallbacks (slow, then out of memory).
#[test]
fn bounds_the_fallback_list_whatever_the_variant_level() {
    for input in [
        "im/amd64/v6386664",
        "im/amd64/v638668686",
        "linux/arm/v4294967295",
    ] {
        let platform = p(input);
        assert!(
            platform.compatible().len() <= 8,
            "{input}: {}",
            platform.compatible().len()
        );
        assert_eq!(platform.rank(&platform), Some(0));
    }
    let names: Vec<String> = p("linux/amd64/v9")
        .compatible()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        names,
        [
            "linux/amd64/v9",
            "linux/amd64/v4",
            "linux/amd64/v3",
            "linux/amd64/v2",
            "linux/amd64",
            "linux/386"
        ]
    );
}

/// Found by the `platform` fuzz target: `arm64/8.0` became `v8.0`, which normalizes again to
/// plain `arm64`: normalization must be idempotent.
#[test]
fn normalizes_arm64_8_0_to_plain_arm64_and_stays_there() {
    for input in [
        "i/arm64/8.0",
        "linux/arm64/v8.0",
        "linux/aarch64/8",
        "linux/arm64/8.2",
        "linux/arm64/9.0",
    ] {
        let once = p(input);
        assert_eq!(p(&once.to_string()), once, "{input}");
    }
    assert_eq!(p("linux/arm64/8.0").to_string(), "linux/arm64");
    assert_eq!(p("linux/arm64/8.2").to_string(), "linux/arm64/v8.2");
}

/// Found by the `platform` fuzz target: a 64-character `8.x` variant became a 65-character
/// `v8.x` that no longer parsed.
#[test]
fn refuses_a_variant_that_normalization_would_make_too_long() {
    let input = format!("linux/arm64/8.{}", "t".repeat(62));
    assert!(Platform::parse(&input).is_err());
    let fits = format!("linux/arm64/8.{}", "t".repeat(61));
    let platform = p(&fits);
    assert_eq!(p(&platform.to_string()), platform);
}
