//! `skopeo`, the standard OCI client, run as a subprocess.

use std::process::Command;

use crate::FixtureError;

/// Runs `skopeo` with `args`; returns its stdout, or an error with its exit status and
/// stderr.
pub fn run(args: &[&str]) -> Result<String, FixtureError> {
    let output = Command::new("skopeo")
        .args(["--insecure-policy"])
        .args(args)
        .output()
        .map_err(|e| FixtureError::Program {
            program: "skopeo".into(),
            detail: format!("cannot start it ({e}); install the Debian package skopeo"),
        })?;
    if !output.status.success() {
        return Err(FixtureError::Program {
            program: format!("skopeo {}", args.join(" ")),
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Pushes every platform of an OCI layout to a plain-HTTP registry:
/// `skopeo copy --all oci:LAYOUT:TAG docker://HOST/REPO:TAG`.
pub fn push_layout(
    layout: &std::path::Path,
    tag: &str,
    host: &str,
    repository: &str,
) -> Result<(), FixtureError> {
    push_layout_as(layout, tag, &format!("{host}/{repository}:{tag}"), None)
}

/// [`push_layout`] to another reference (`HOST/REPO:TAG`), with `--dest-creds USER:PASSWORD`
/// when `credentials` are given.
pub fn push_layout_as(
    layout: &std::path::Path,
    tag: &str,
    reference: &str,
    credentials: Option<&str>,
) -> Result<(), FixtureError> {
    let src = format!("oci:{}:{tag}", layout.display());
    let dst = format!("docker://{reference}");
    let mut args = vec![
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ];
    if let Some(credentials) = credentials {
        args.extend(["--dest-creds", credentials]);
    }
    args.extend([src.as_str(), dst.as_str()]);
    run(&args).map(|_| ())
}
