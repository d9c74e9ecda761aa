//! `meshctl registry ...`, `meshctl tags` and `meshctl import`: the commands that talk to a
//! running facade over its operator socket (file permissions are the authentication).
//!
//! Exit codes scripts can rely on: 0 all good; 1 the facade refused the operation, or some
//! tags of an import failed (the others were imported and pinned); 2 usage; 64 bad input
//! on this side (an unreadable token or key file); 69 the facade is not reachable.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use meshanics_operator_api::{
    AddRegistry, ClipReason, ConnectionView, ImportResult, OperatorClient, OperatorClientError,
    Outcome, ProviderKind, TagList,
};
use meshanics_shared::metadata::UnixTime;
use serde_json::json;

use crate::output::{Output, escape};

/// Where the facade's operator socket is unless `--socket` says otherwise.
pub(crate) const DEFAULT_SOCKET: &str = "/var/lib/meshanics-facade/admin.sock";

/// sysexits(3) codes used here.
pub(crate) const EX_CONFIG: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;

/// How to reach the facade.
#[derive(Debug, Args)]
pub(crate) struct SocketArgs {
    /// The facade's operator socket.
    #[arg(long, global = true, env = "MESHANICS_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

impl SocketArgs {
    /// The operator socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.socket
    }
}

/// `meshctl registry`.
#[derive(Debug, Subcommand)]
pub(crate) enum RegistryCommand {
    /// Connect a registry: static credentials, anonymous (needs approval), a Google service
    /// account, or an AWS role for ECR. HOST may be a host, a pasted browser URL or an image
    /// reference; Docker Hub's names are one registry.
    // Boxed: its arguments are by far the largest of the commands'.
    Add(Box<AddArgs>),
    /// List connected registries (never their secrets).
    List,
    /// Show one connected registry.
    Show {
        /// The registry.
        host: String,
    },
    /// Approve a registry for device traffic (anonymous connections start unapproved).
    Approve {
        /// The registry.
        host: String,
    },
    /// Withdraw a registry's approval: its device traffic is refused at once (cached content
    /// included; every replica within a second), its connection kept for browsing and a later
    /// approve.
    Unapprove {
        /// The registry.
        host: String,
    },
    /// Remove a registry: the facade stops proxying it at once.
    Remove {
        /// The registry.
        host: String,
    },
}

/// `meshctl registry add`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("provider").required(true).args(["token_file", "anonymous", "gcp_key_file", "ecr_role_arn"])))]
pub(crate) struct AddArgs {
    /// The registry (host, URL or image reference).
    host: String,
    /// Static: the username.
    #[arg(long, requires = "token_file")]
    username: Option<String>,
    /// Static: a file holding the token or password (one line).
    #[arg(long, value_name = "FILE", requires = "username")]
    token_file: Option<PathBuf>,
    /// A public registry with no credentials (proxied only once approved).
    #[arg(long)]
    anonymous: bool,
    /// A Google service-account key file (JSON).
    #[arg(long, value_name = "FILE")]
    gcp_key_file: Option<PathBuf>,
    /// An AWS role for ECR.
    #[arg(long, value_name = "ARN", requires = "region")]
    ecr_role_arn: Option<String>,
    /// The external id the role's trust policy requires.
    #[arg(long, requires = "ecr_role_arn")]
    external_id: Option<String>,
    /// The AWS region of the registry.
    #[arg(long)]
    region: Option<String>,
    /// A CA bundle (PEM) for a registry with a private CA.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Talk plain HTTP to the registry (labs and tests only).
    #[arg(long)]
    plain_http: bool,
    /// A host (HOST or HOST:PORT) the registry redirects blobs to that sits on a private
    /// address (on-prem object storage); redirects elsewhere reach public addresses only.
    /// Repeat for several.
    #[arg(long = "storage-host", value_name = "HOST")]
    storage_hosts: Vec<String>,
    /// Who connects it (default: the local user).
    #[arg(long)]
    by: Option<String>,
}

/// `meshctl tags`.
#[derive(Debug, Args)]
#[command(
    after_help = "Tags are listed newest-likely-first: registries give no dates, so the order is a \
heuristic: semantic versions (highest first; a release before its pre-releases and variants), then \
date-like tags (newest first), then moving names (latest, stable, main, ...), then the rest \
alphabetically. When the walk stops early (at --limit, or at the facade's caps on a registry that \
loops its pages or sends too much), the output says the list was clipped and why. Tags that are not \
valid tag names are dropped and counted."
)]
pub(crate) struct TagsArgs {
    /// The repository (`ghcr.io/org/app`, `nginx`, or a pasted URL).
    repository: String,
    /// Stop after this many tags (default 10,000).
    #[arg(long)]
    limit: Option<usize>,
}

/// `meshctl import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// References with tags: `ghcr.io/org/app:1.2 ...`.
    #[arg(required = true, value_name = "REPOSITORY:TAG")]
    references: Vec<String>,
    /// Write the imported tags as a pins file for `meshctl release --pins`.
    #[arg(long, value_name = "FILE")]
    pins: Option<PathBuf>,
}

/// Runs a `meshctl registry` command.
pub(crate) fn registry(command: &RegistryCommand, socket: &SocketArgs, out: &Output) -> ExitCode {
    let client = OperatorClient::new(&socket.socket);
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            match command {
                RegistryCommand::Add(args) => {
                    let request = add_request(args).map_err(|e| (EX_CONFIG, e))?;
                    let view = client.add(&request).await.map_err(api)?;
                    let note = if view.approved {
                        String::new()
                    } else {
                        format!(
                            "\nnot proxied until approved: meshctl registry approve {}",
                            view.host
                        )
                    };
                    out.result(
                        &format!("connected {}{note}\n", describe(&view)),
                        &json!(view),
                    );
                    Ok(())
                }
                RegistryCommand::List => {
                    let list = client.list().await.map_err(api)?;
                    let text: String = list.iter().map(|v| format!("{}\n", describe(v))).collect();
                    out.result(
                        if text.is_empty() {
                            "no registries connected\n"
                        } else {
                            &text
                        },
                        &json!(list),
                    );
                    Ok(())
                }
                RegistryCommand::Show { host } => {
                    let view = client.show(host).await.map_err(api)?;
                    out.result(&format!("{}\n", describe(&view)), &json!(view));
                    Ok(())
                }
                RegistryCommand::Approve { host } => {
                    let view = client.approve(host).await.map_err(api)?;
                    out.result(&format!("approved {}\n", view.host), &json!(view));
                    Ok(())
                }
                RegistryCommand::Unapprove { host } => {
                    let view = client.unapprove(host).await.map_err(api)?;
                    out.result(
                        &format!("unapproved {}: no longer proxied\n", view.host),
                        &json!(view),
                    );
                    Ok(())
                }
                RegistryCommand::Remove { host } => {
                    let view = client.remove(host).await.map_err(api)?;
                    out.result(
                        &format!("removed {}: no longer proxied\n", view.host),
                        &json!(view),
                    );
                    Ok(())
                }
            }
        })
    });
    finish(result, out)
}

/// `meshctl audit`.
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// How many of the newest entries to show.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

/// Runs `meshctl audit`: the newest entries, oldest first, one a line.
pub(crate) fn audit(args: &AuditArgs, socket: &SocketArgs, out: &Output) -> ExitCode {
    let client = OperatorClient::new(&socket.socket);
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let entries = client.audit(args.limit).await.map_err(api)?;
            let text: String = entries
                .iter()
                .map(|e| {
                    format!(
                        "{} {} {} by {}\n",
                        UnixTime::from_secs(e.at),
                        escape(&e.action),
                        escape(&e.subject),
                        escape(&e.operator)
                    )
                })
                .collect();
            out.result(
                if text.is_empty() {
                    "no operator actions recorded\n"
                } else {
                    &text
                },
                &json!(entries),
            );
            Ok(())
        })
    });
    finish(result, out)
}

/// Runs `meshctl tags`.
pub(crate) fn tags(args: &TagsArgs, socket: &SocketArgs, out: &Output) -> ExitCode {
    let client = OperatorClient::new(&socket.socket);
    let result = runtime().and_then(|rt| {
        rt.block_on(async {
            let list = client
                .tags(&args.repository, args.limit)
                .await
                .map_err(api)?;
            out.result(&tags_text(&list), &json!(list));
            Ok(())
        })
    });
    finish(result, out)
}

/// Runs `meshctl import`.
pub(crate) fn import(args: &ImportArgs, socket: &SocketArgs, out: &Output) -> ExitCode {
    let client = OperatorClient::new(&socket.socket);
    let result = runtime().and_then(|rt| {
        rt.block_on(async { client.import(args.references.clone()).await.map_err(api) })
    });
    let response = match result {
        Ok(response) => response,
        Err(e) => return finish(Err(e), out),
    };
    let pins: Vec<serde_json::Value> = response.results.iter().filter_map(pin).collect();
    if let Some(path) = &args.pins
        && let Err(e) = write_pins(path, &pins)
    {
        return finish(Err((EX_CONFIG, e)), out);
    }
    let mut text = import_text(&response.results);
    if let Some(path) = &args.pins {
        text.push_str(&format!(
            "{} pins written to {}\n",
            pins.len(),
            path.display()
        ));
    }
    out.result(&text, &json!({"results": response.results, "pins": pins}));
    let failed = response
        .results
        .iter()
        .any(|r| r.outcome != Outcome::Imported);
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// `meshctl tags` for people: one tag a line, then why the list is incomplete. Every string
/// from the registry or the facade is escaped.
fn tags_text(list: &TagList) -> String {
    let mut text: String = list
        .tags
        .iter()
        .map(|t| format!("{}\n", escape(t)))
        .collect();
    if list.clipped {
        let reason = list.clip_reason.unwrap_or(ClipReason::Limit);
        text.push_str(&format!(
            "(clipped: stopped after {} tags: {reason})\n",
            list.seen
        ));
    }
    if list.dropped > 0 {
        text.push_str(&format!(
            "(dropped {} listed tag(s) that are not valid tag names)\n",
            list.dropped
        ));
    }
    text
}

/// `meshctl import` for people: one line per reference. Every string from the registry, the
/// facade or the command line is escaped.
fn import_text(results: &[ImportResult]) -> String {
    let mut text = String::new();
    for r in results {
        let reference = escape(&r.reference);
        match (&r.outcome, &r.digest) {
            (Outcome::Imported, Some(digest)) => {
                text.push_str(&format!("imported  {reference} -> {}\n", escape(digest)));
            }
            (outcome, _) => {
                let outcome = serde_json::to_value(outcome).ok();
                let outcome = outcome
                    .as_ref()
                    .and_then(|v| v.as_str())
                    .unwrap_or("failed");
                text.push_str(&format!(
                    "{:<9} {reference}: {}\n",
                    escape(outcome),
                    escape(r.message.as_deref().unwrap_or(""))
                ));
            }
        }
    }
    text
}

/// A pins-file entry (docs/metadata.md section 6) for an imported tag. The name is the
/// repository's last component and the tag (`app-1.2`).
fn pin(result: &ImportResult) -> Option<serde_json::Value> {
    if result.outcome != Outcome::Imported {
        return None;
    }
    let repository = result.repository.as_ref()?;
    let base = repository.rsplit('/').next()?;
    let name = format!("{base}-{}", result.tag.as_deref()?);
    Some(json!({
        "name": name,
        "repository": repository,
        "digest": result.digest.as_ref()?,
        "size": result.size?,
        "media_type": result.media_type.as_ref()?,
    }))
}

fn write_pins(path: &Path, pins: &[serde_json::Value]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(pins)?;
    // Written beside and renamed into place: a half-written pins file is never left behind.
    let tmp = path.with_extension("tmp");
    fs_err::write(&tmp, format!("{text}\n"))?;
    fs_err::rename(&tmp, path).with_context(|| format!("writing the pins file {}", path.display()))
}

fn add_request(args: &AddArgs) -> anyhow::Result<AddRegistry> {
    let read = |path: &Path, what: &str| -> anyhow::Result<String> {
        fs_err::read_to_string(path)
            .with_context(|| format!("reading the {what} file {}", path.display()))
    };
    let provider = if args.anonymous {
        ProviderKind::Anonymous
    } else if args.gcp_key_file.is_some() {
        ProviderKind::Gcp
    } else if args.ecr_role_arn.is_some() {
        ProviderKind::Ecr
    } else {
        ProviderKind::Static
    };
    let token = match &args.token_file {
        Some(path) => Some(
            read(path, "token")?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
        ),
        None => None,
    };
    let gcp_key_json = match &args.gcp_key_file {
        Some(path) => Some(read(path, "service-account key")?),
        None => None,
    };
    let ca_pem = match &args.ca_file {
        Some(path) => Some(read(path, "CA")?),
        None => None,
    };
    let connected_by = args.by.clone().unwrap_or_else(local_user);
    Ok(AddRegistry {
        registry: args.host.clone(),
        provider,
        username: args.username.clone(),
        token,
        gcp_key_json,
        role_arn: args.ecr_role_arn.clone(),
        external_id: args.external_id.clone(),
        region: args.region.clone(),
        plain_http: args.plain_http,
        ca_pem,
        storage_hosts: args.storage_hosts.clone(),
        connected_by,
    })
}

fn local_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

fn describe(view: &ConnectionView) -> String {
    let user = view
        .username
        .as_deref()
        .map(|u| format!(" as {}", escape(u)))
        .unwrap_or_default();
    let state = if view.approved {
        "approved"
    } else {
        "NOT APPROVED"
    };
    format!(
        "{:<40} {:<9}{user}, {state}, connected by {} at {}",
        escape(&view.host),
        view.provider,
        escape(&view.connected_by),
        UnixTime::from_secs(view.connected_at)
    )
}

pub(crate) type Failure = (u8, anyhow::Error);

pub(crate) fn api(e: OperatorClientError) -> Failure {
    let code = match &e {
        OperatorClientError::Connect { .. } => EX_UNAVAILABLE,
        _ => 1,
    };
    (code, anyhow::Error::new(e))
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            (
                1,
                anyhow::Error::new(e).context("starting the async runtime"),
            )
        })
}

pub(crate) fn finish(result: Result<(), Failure>, out: &Output) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, error)) => {
            out.error(&error);
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_text_escapes_what_the_registry_sent_and_says_why_it_was_clipped() {
        let list = TagList {
            repository: "r.example/app".into(),
            tags: vec!["1.0".into(), "evil\u{1b}[2J\u{9b}0m".into()],
            clipped: true,
            clip_reason: Some(ClipReason::LinkLoop),
            seen: 2,
            dropped: 1,
        };
        let text = tags_text(&list);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(text.starts_with("1.0\nevil\\u{1b}[2J\\u{9b}0m\n"), "{text}");
        assert!(text.contains("stopped after 2 tags: the registry's next-page link points back"));
        assert!(text.contains("(dropped 1 listed tag(s) that are not valid tag names)"));
    }

    #[test]
    fn import_text_escapes_references_and_messages() {
        let result = ImportResult {
            message: Some("the registry said \u{1b}[31mno".into()),
            ..ImportResult::failed("r.example/app:\u{1b}]0;title\u{7}".into())
        };
        let text = import_text(&[result]);
        assert_eq!(
            text,
            "failed    r.example/app:\\u{1b}]0;title\\u{7}: the registry said \\u{1b}[31mno\n"
        );
    }

    #[test]
    fn connection_text_escapes_the_username_and_who_connected_it() {
        let view = ConnectionView {
            host: "r.example".into(),
            provider: ProviderKind::Static,
            username: Some("bot\u{1b}[2J".into()),
            connected_by: "ops\u{9b}31m".into(),
            connected_at: 0,
            approved: true,
            plain_http: false,
            private_ca: false,
            storage_hosts: Vec::new(),
        };
        let text = describe(&view);
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(
            text.contains(" as bot\\u{1b}[2J, approved, connected by ops\\u{9b}31m"),
            "{text}"
        );
    }
}
