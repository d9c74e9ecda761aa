//! Key files (docs/metadata.md, "Key files"): `NAME.key` holds the private key as PEM
//! PKCS#8 (mode 0600), `NAME.pub` the public key as PEM SubjectPublicKeyInfo.

use std::path::{Path, PathBuf};

use anyhow::bail;
use meshanics_shared::fs::write_new;
use meshanics_shared::metadata::{PublicKey, SigningKey};
use serde_json::json;

use crate::output::Output;

/// A key named on the command line: a private key file, or only the public half.
#[derive(Debug, Clone)]
pub(crate) enum KeyFile {
    /// A `PRIVATE KEY` file: can sign.
    Private(SigningKey),
    /// A `PUBLIC KEY` file: can be listed in a root, cannot sign.
    Public(PublicKey),
}

impl KeyFile {
    pub(crate) fn public(&self) -> PublicKey {
        match self {
            KeyFile::Private(key) => key.public(),
            KeyFile::Public(key) => *key,
        }
    }
}

/// `meshctl key generate --out DIR/NAME`.
pub(crate) fn generate(out: &Path, output: &Output) -> anyhow::Result<()> {
    let private_path = with_suffix(out, ".key");
    let public_path = with_suffix(out, ".pub");
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs_err::create_dir_all(dir)?;
    }
    let key = SigningKey::generate()?;
    // Both files are created fresh: overwriting a signing key by accident is not undoable.
    write_new(&private_path, key.to_pem()?.as_bytes(), 0o600)?;
    write_new(&public_path, key.public().to_pem()?.as_bytes(), 0o644)?;
    let id = key.id().to_string();
    output.result(
        &format!(
            "private key: {}\npublic key:  {}\nkey id:      {id}\n",
            private_path.display(),
            public_path.display()
        ),
        &json!({
            "private_key": private_path,
            "public_key": public_path,
            "key_id": id,
        }),
    );
    Ok(())
}

/// Reads a private or public key file.
pub(crate) fn load(path: &Path) -> anyhow::Result<KeyFile> {
    let text = fs_err::read_to_string(path)?;
    let what = path.display().to_string();
    if text.contains("-----BEGIN PRIVATE KEY-----") {
        Ok(KeyFile::Private(SigningKey::from_pem(&text, &what)?))
    } else if text.contains("-----BEGIN PUBLIC KEY-----") {
        Ok(KeyFile::Public(PublicKey::from_pem(&text, &what)?))
    } else {
        bail!("{what}: not a PEM PRIVATE KEY or PUBLIC KEY file")
    }
}

/// Reads private key files, which signing needs.
pub(crate) fn load_signing(paths: &[PathBuf]) -> anyhow::Result<Vec<SigningKey>> {
    paths
        .iter()
        .map(|path| match load(path)? {
            KeyFile::Private(key) => Ok(key),
            KeyFile::Public(_) => bail!(
                "{}: a public key, but signing needs the private key file",
                path.display()
            ),
        })
        .collect()
}

/// Reads key files of either kind.
pub(crate) fn load_any(paths: &[PathBuf]) -> anyhow::Result<Vec<KeyFile>> {
    paths.iter().map(|p| load(p)).collect()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}
