//! The operator API over a real Unix socket, with a real connection store.

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use meshanics_operator_api::{
    AddRegistry, BrowseError, Browser, OperatorClient, OperatorClientError, Outcome, ProviderKind,
    Resolved, TagList,
};
use meshanics_shared::Reference;

use super::*;
use crate::connections::Store;
use crate::seal::MasterKey;

/// Registry traffic is not what these tests are about: this browser answers that it has no
/// upstream, and the tests check that the API never needed it.
#[derive(Debug)]
struct Offline;

impl Browser for Offline {
    fn tags<'a>(
        &'a self,
        repository: &'a Reference,
        _: usize,
    ) -> BoxFuture<'a, Result<TagList, BrowseError>> {
        Box::pin(async move { Err(BrowseError::Failed(format!("offline: {repository}"))) })
    }
    fn resolve<'a>(
        &'a self,
        reference: &'a Reference,
    ) -> BoxFuture<'a, Result<Resolved, BrowseError>> {
        Box::pin(async move { Err(BrowseError::Failed(format!("offline: {reference}"))) })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    client: OperatorClient,
    socket: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Store::open(dir.path(), MasterKey::from_bytes(&[3u8; 32]).unwrap()).unwrap());
    let socket = dir.path().join("admin.sock");
    let listener = bind(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let state = Arc::new(AdminState {
        metadata: Arc::new(crate::publish::Metadata::from_parts(
            Some(dir.path().to_owned()),
            Some(store.clone()),
            1024 * 1024,
        )),
        store,
        browser: Arc::new(Offline),
    });
    tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Fixture {
        client: OperatorClient::new(&socket),
        socket,
        _dir: dir,
        stop: Some(stop),
    }
}

fn add_static(registry: &str) -> AddRegistry {
    AddRegistry {
        registry: registry.into(),
        provider: ProviderKind::Static,
        username: Some("robot".into()),
        token: Some("tok-3xq-secret".into()),
        gcp_key_json: None,
        role_arn: None,
        external_id: None,
        region: None,
        plain_http: false,
        ca_pem: None,
        storage_hosts: Vec::new(),
        connected_by: "alice".into(),
    }
}

#[tokio::test]
async fn the_socket_is_reachable_by_the_facade_user_and_group_only() {
    let f = start().await;
    let mode = std::fs::metadata(&f.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
}

#[tokio::test]
async fn connects_lists_shows_approves_and_removes_registries_without_returning_secrets() {
    let f = start().await;
    let view = f
        .client
        .add(&add_static("https://quay.io/repository/org/app"))
        .await
        .unwrap();
    assert_eq!(view.host, "quay.io");
    assert!(view.approved);
    let mut anonymous = add_static("localhost:5000");
    anonymous.provider = ProviderKind::Anonymous;
    anonymous.username = None;
    anonymous.token = None;
    assert!(!f.client.add(&anonymous).await.unwrap().approved);
    assert!(f.client.approve("localhost:5000").await.unwrap().approved);
    let list = f.client.list().await.unwrap();
    assert_eq!(
        list.iter().map(|v| v.host.as_str()).collect::<Vec<_>>(),
        ["localhost:5000", "quay.io"]
    );
    let shown = f.client.show("quay.io").await.unwrap();
    assert_eq!(shown.username.as_deref(), Some("robot"));
    let everything = serde_json::to_string(&(list, shown)).unwrap();
    assert!(!everything.contains("tok-3xq-secret"));
    f.client.remove("quay.io").await.unwrap();
    assert!(f.client.show("quay.io").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn refusals_carry_a_code_and_name_the_input() {
    let f = start().await;
    f.client.add(&add_static("ghcr.io")).await.unwrap();
    let exists = f.client.add(&add_static("ghcr.io")).await.unwrap_err();
    assert!(
        matches!(&exists, OperatorClientError::Api { status: 409, code, .. } if code == "EXISTS"),
        "{exists}"
    );
    let mut no_token = add_static("quay.io");
    no_token.token = None;
    let invalid = f.client.add(&no_token).await.unwrap_err();
    assert!(
        matches!(&invalid, OperatorClientError::Api { status: 400, code, .. } if code == "INVALID"),
        "{invalid}"
    );
    let bad_host = f.client.add(&add_static("bad host")).await.unwrap_err();
    assert!(bad_host.to_string().contains("bad host"), "{bad_host}");
    let missing = f.client.approve("nowhere.example").await.unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
}

#[tokio::test]
async fn import_reports_an_outcome_per_reference_without_failing_the_batch() {
    let f = start().await;
    f.client.add(&add_static("ghcr.io")).await.unwrap();
    let response = f
        .client
        .import(vec![
            "quay.io/org/app:1.0".into(),
            "Bad Ref".into(),
            "ghcr.io/org/app".into(),
            "ghcr.io/org/app:1.0".into(),
        ])
        .await
        .unwrap();
    let outcomes: Vec<Outcome> = response.results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::NotConnected,
            Outcome::Invalid,
            Outcome::Invalid,
            Outcome::Failed
        ]
    );
    assert_eq!(
        response.results[3].repository.as_deref(),
        Some("ghcr.io/org/app")
    );
    assert_eq!(response.results[3].tag.as_deref(), Some("1.0"));
}

#[tokio::test]
async fn tags_of_an_unconnected_registry_are_refused_before_any_upstream_request() {
    let f = start().await;
    let err = f.client.tags("quay.io/org/app", None).await.unwrap_err();
    assert!(
        matches!(&err, OperatorClientError::Api { status: 404, code, .. } if code == "NOT_CONNECTED"),
        "{err}"
    );
}

#[tokio::test]
async fn a_stopped_facade_is_reported_with_the_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let client = OperatorClient::new(&dir.path().join("admin.sock"));
    let err = client.list().await.unwrap_err();
    assert!(matches!(err, OperatorClientError::Connect { .. }));
    assert!(err.to_string().contains("admin.sock"));
}

#[tokio::test]
async fn the_audit_log_names_who_connected_approved_and_removed_what_by_the_sockets_peer() {
    let fixture = start().await;
    assert!(fixture.client.audit(10).await.unwrap().is_empty());
    let mut anonymous = add_static("lab.lan:5000");
    anonymous.provider = ProviderKind::Anonymous;
    anonymous.username = None;
    anonymous.token = None;
    fixture.client.add(&anonymous).await.unwrap();
    fixture.client.approve("lab.lan:5000").await.unwrap();
    fixture.client.remove("lab.lan:5000").await.unwrap();
    // A refused action is not an action.
    assert!(fixture.client.remove("lab.lan:5000").await.is_err());

    let entries = fixture.client.audit(10).await.unwrap();
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["connect", "approve", "remove"]);
    let me = format!("uid {} pid {}", current_uid(), std::process::id());
    assert!(entries.iter().all(|e| e.subject == "lab.lan:5000"));
    assert!(entries[0].operator.contains(&me), "{:?}", entries[0]);
    assert_eq!(entries[1].operator, me);
    assert!(entries.windows(2).all(|w| w[0].at <= w[1].at));
    // The newest first when cut.
    let last = fixture.client.audit(1).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].action, "remove");
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    // The tests' own files belong to the user running them.
    let dir = tempfile::tempdir().unwrap();
    std::fs::metadata(dir.path()).unwrap().uid()
}

#[tokio::test]
async fn a_publish_is_refused_naming_the_file_and_may_carry_files_past_the_small_body_cap() {
    use meshanics_operator_api::{FileBytes, PublishRequest};
    let f = start().await;
    let request = |name: &str, size: usize| PublishRequest {
        files: [(name.to_owned(), FileBytes(vec![0; size]))].into(),
    };
    let bad_name = f
        .client
        .publish(&request("../1.root.cose", 8))
        .await
        .unwrap_err();
    assert!(
        matches!(&bad_name, OperatorClientError::Api { status: 422, code, message }
            if code == "REFUSED" && message.contains("../1.root.cose")),
        "{bad_name}"
    );
    // Over the 1 MiB body cap of the other routes, under this one's: the file's own cap
    // refuses it, by name.
    let big = f
        .client
        .publish(&request("1.targets.cose", 2 * 1024 * 1024))
        .await
        .unwrap_err();
    assert!(
        matches!(&big, OperatorClientError::Api { status: 413, message, .. }
            if message.contains("1.targets.cose")),
        "{big}"
    );
}
