//! `meshctl root init` and `meshctl root rotate`: the root of trust, written and signed
//! offline. Before a root is written, it is checked exactly as a device would check it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use meshanics_shared::metadata::{
    KeyId, PublicKey, Role, RoleKeys, RoleType, Roles, Root, SigningKey, open_root, root_file, sign,
};
use serde_json::json;

use super::keys::{self, KeyFile};
use super::repo::{Repo, now};
use crate::durations;
use crate::output::Output;

/// `meshctl root init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// The metadata folder.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// A root private key file (repeat for several).
    #[arg(long = "root-key", required = true, value_name = "FILE")]
    root_keys: Vec<PathBuf>,
    /// A targets key file, private or public (repeat for several).
    #[arg(long = "targets-key", required = true, value_name = "FILE")]
    targets_keys: Vec<PathBuf>,
    /// A timestamp key file, private or public (repeat for several).
    #[arg(long = "timestamp-key", required = true, value_name = "FILE")]
    timestamp_keys: Vec<PathBuf>,
    /// How many keys of each role must sign.
    #[arg(long, default_value_t = 1)]
    threshold: u32,
    /// How long the root is valid.
    #[arg(long, default_value = "365d", value_parser = durations::parse)]
    expires: Duration,
}

/// `meshctl root rotate`.
#[derive(Debug, Args)]
pub(crate) struct RotateArgs {
    /// The metadata folder.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// A private key of the current root role (repeat until its threshold is met).
    #[arg(long = "old-root-key", required = true, value_name = "FILE")]
    old_root_keys: Vec<PathBuf>,
    /// The new root private keys (default: keep the current ones).
    #[arg(long = "root-key", value_name = "FILE")]
    root_keys: Vec<PathBuf>,
    /// The new targets keys, private or public (default: keep).
    #[arg(long = "targets-key", value_name = "FILE")]
    targets_keys: Vec<PathBuf>,
    /// The new timestamp keys, private or public (default: keep).
    #[arg(long = "timestamp-key", value_name = "FILE")]
    timestamp_keys: Vec<PathBuf>,
    /// The threshold of every role whose keys are given here (others keep theirs).
    #[arg(long)]
    threshold: Option<u32>,
    /// How long the new root is valid.
    #[arg(long, default_value = "365d", value_parser = durations::parse)]
    expires: Duration,
}

pub(crate) fn init(args: &InitArgs, out: &Output) -> anyhow::Result<()> {
    let repo = Repo::new(&args.dir);
    if let Some(version) = repo.latest_version("root")? {
        bail!(
            "{}: already holds root version {version}; use `meshctl root rotate`",
            args.dir.display()
        );
    }
    let root_keys = keys::load_signing(&args.root_keys)?;
    let targets_keys = public_keys(&keys::load_any(&args.targets_keys)?);
    let timestamp_keys = public_keys(&keys::load_any(&args.timestamp_keys)?);
    let root_public: Vec<PublicKey> = root_keys.iter().map(SigningKey::public).collect();
    let roles = Roles {
        root: role_keys(&root_public, args.threshold),
        targets: role_keys(&targets_keys, args.threshold),
        timestamp: role_keys(&timestamp_keys, args.threshold),
    };
    let issued = now();
    let all: Vec<PublicKey> = union(&[&root_public, &targets_keys, &timestamp_keys]);
    let root = Root::new(1, issued, issued.saturating_add(args.expires), &all, roles);
    let signers: Vec<&SigningKey> = root_keys.iter().collect();
    let bytes = sign(&root, &signers)?;
    let file = root_file(1);
    open_root(&file, &bytes, None).context("the new root does not verify")?;
    let path = repo.write(&file, &bytes)?;
    report(out, &path, &root);
    Ok(())
}

pub(crate) fn rotate(args: &RotateArgs, out: &Output) -> anyhow::Result<()> {
    let repo = Repo::new(&args.dir);
    let old = repo.latest_root()?;
    let old_keys = keys::load_signing(&args.old_root_keys)?;
    let new_root_keys = keys::load_signing(&args.root_keys)?;

    let keep = |role: RoleType| -> (Vec<PublicKey>, u32) {
        let keys = old.role_keys(role);
        let public = keys.keyids().iter().filter_map(|id| old.key(id)).collect();
        (public, keys.threshold())
    };
    let choose = |given: Vec<PublicKey>, role: RoleType| -> (Vec<PublicKey>, u32) {
        if given.is_empty() {
            let (public, threshold) = keep(role);
            (public, threshold)
        } else {
            let threshold = args.threshold.unwrap_or(1);
            (given, threshold)
        }
    };
    let (root_public, root_threshold) = choose(
        new_root_keys.iter().map(SigningKey::public).collect(),
        RoleType::Root,
    );
    let (targets_public, targets_threshold) = choose(
        public_keys(&keys::load_any(&args.targets_keys)?),
        RoleType::Targets,
    );
    let (timestamp_public, timestamp_threshold) = choose(
        public_keys(&keys::load_any(&args.timestamp_keys)?),
        RoleType::Timestamp,
    );
    let roles = Roles {
        root: role_keys(&root_public, root_threshold),
        targets: role_keys(&targets_public, targets_threshold),
        timestamp: role_keys(&timestamp_public, timestamp_threshold),
    };
    let version = old.version().saturating_add(1);
    let issued = now();
    let all = union(&[&root_public, &targets_public, &timestamp_public]);
    let root = Root::new(
        version,
        issued,
        issued.saturating_add(args.expires),
        &all,
        roles,
    );
    // Signed by the old root keys and by the new ones (each key once).
    let mut signers: Vec<&SigningKey> = Vec::new();
    for key in old_keys.iter().chain(&new_root_keys) {
        if !signers.iter().any(|k| k.id() == key.id()) {
            signers.push(key);
        }
    }
    let bytes = sign(&root, &signers)?;
    let file = root_file(version);
    open_root(&file, &bytes, Some(&old)).context(
        "the new root would not be accepted by devices (the keys given must meet the threshold of the current root and of the new one)",
    )?;
    let path = repo.write(&file, &bytes)?;
    report(out, &path, &root);
    Ok(())
}

fn report(out: &Output, path: &std::path::Path, root: &Root) {
    let role = |role: RoleType| {
        let keys = root.role_keys(role);
        json!({
            "threshold": keys.threshold(),
            "keyids": keys.keyids().iter().map(KeyId::to_string).collect::<Vec<_>>(),
        })
    };
    let mut text = format!(
        "wrote {} (root version {}, expires {})\n",
        path.display(),
        root.version(),
        root.expires()
    );
    for r in [RoleType::Root, RoleType::Targets, RoleType::Timestamp] {
        let keys = root.role_keys(r);
        text.push_str(&format!(
            "  {:<9} threshold {} of {}\n",
            r.as_str(),
            keys.threshold(),
            keys.keyids().len()
        ));
        for id in keys.keyids() {
            text.push_str(&format!("            {id}\n"));
        }
    }
    out.result(
        &text,
        &json!({
            "file": path,
            "version": root.version(),
            "expires": root.expires().to_string(),
            "roles": {
                "root": role(RoleType::Root),
                "targets": role(RoleType::Targets),
                "timestamp": role(RoleType::Timestamp),
            },
        }),
    );
}

fn public_keys(files: &[KeyFile]) -> Vec<PublicKey> {
    files.iter().map(KeyFile::public).collect()
}

fn role_keys(keys: &[PublicKey], threshold: u32) -> RoleKeys {
    let mut ids: Vec<KeyId> = Vec::new();
    for key in keys {
        if !ids.contains(&key.id()) {
            ids.push(key.id());
        }
    }
    RoleKeys::new(ids, threshold)
}

fn union(sets: &[&[PublicKey]]) -> Vec<PublicKey> {
    let mut all: Vec<PublicKey> = Vec::new();
    for key in sets.iter().flat_map(|s| s.iter()) {
        if !all.contains(key) {
            all.push(*key);
        }
    }
    all
}
