//! Cloud credential providers against local servers that speak the real protocols and
//! check the real signatures: Google's JWT bearer grant (RS256, keys made by openssl) and
//! AWS STS AssumeRole + ECR GetAuthorizationToken (SigV4 recomputed independently).
#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a failure fails the test"
)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshanics_facade::cloud::CloudError;
use meshanics_facade::cloud::ecr::{AwsCredentials, EcrProvider, EcrRole, Endpoints};
use meshanics_facade::cloud::gcp::ServiceAccountKey;
use meshanics_facade::cloud::token_cache::{CloudTokenCache, MarginPolicy, SystemClock, TokenKey};
use meshanics_facade::http_client;
use meshanics_tests::aws_server::{AwsAccount, AwsServer};
use meshanics_tests::gcp_server::{GcpTokenServer, ServiceAccount};

/// The cache key of the one connection to `host` in these tests.
fn connection(host: &str) -> TokenKey {
    TokenKey {
        host: host.into(),
        connection: 1,
    }
}

fn client() -> reqwest::Client {
    http_client::client(
        rustls::RootCertStore::empty(),
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .unwrap()
}

async fn gcp() -> (tempfile::TempDir, GcpTokenServer, ServiceAccountKey) {
    let dir = tempfile::tempdir().unwrap();
    let account =
        ServiceAccount::generate(dir.path(), "puller@meshanics-test.iam.gserviceaccount.com")
            .unwrap();
    let server = GcpTokenServer::start(account.clone()).await.unwrap();
    let key = ServiceAccountKey::parse(&account.key_json(&server.token_uri())).unwrap();
    (dir, server, key)
}

#[tokio::test]
async fn gcp_service_account_key_is_exchanged_for_a_registry_token() {
    let (_dir, server, key) = gcp().await;
    let now = SystemTime::now();
    let token = key.fetch(&client(), now).await.unwrap();
    assert_eq!(token.username, "oauth2accesstoken");
    assert_eq!(token.password, "ya29.test-access-token-1");
    assert_eq!(token.lifetime, Duration::from_secs(3600));
    assert_eq!(token.expires_at, now + Duration::from_secs(3600));
    assert_eq!((server.requests(), server.rejected()), (1, 0));
}

#[tokio::test]
async fn gcp_token_server_refuses_an_assertion_signed_by_another_key() {
    let (dir, server, _key) = gcp().await;
    // Same account name, another private key: the signature cannot verify.
    let impostor = ServiceAccount::generate(dir.path(), "impostor").unwrap();
    let mut forged = impostor.clone();
    forged.client_email = "puller@meshanics-test.iam.gserviceaccount.com".into();
    let key = ServiceAccountKey::parse(&forged.key_json(&server.token_uri())).unwrap();
    let err = key.fetch(&client(), SystemTime::now()).await.unwrap_err();
    assert!(
        matches!(err, CloudError::Refused { status: 400, .. }),
        "{err}"
    );
    assert_eq!(server.rejected(), 1);
}

#[tokio::test]
async fn gcp_refusal_does_not_leak_the_endpoint_answer() {
    let (dir, server, _key) = gcp().await;
    let other = ServiceAccount::generate(dir.path(), "other").unwrap();
    let key = ServiceAccountKey::parse(&other.key_json(&server.token_uri())).unwrap();
    let err = key
        .fetch(&client(), SystemTime::now())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains("invalid_grant") && !err.contains("wrong iss"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_pulls_cause_exactly_one_token_request() {
    let (_dir, server, key) = gcp().await;
    let key = Arc::new(key);
    let cache = Arc::new(CloudTokenCache::new(
        MarginPolicy::default(),
        Arc::new(SystemClock),
    ));
    let client = client();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, key, client) = (cache.clone(), key.clone(), client.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get(&connection("europe-docker.pkg.dev"), |now| async move {
                    key.fetch(&client, now).await
                })
                .await
        }));
    }
    for task in tasks {
        assert_eq!(
            task.await.unwrap().unwrap().password,
            "ya29.test-access-token-1"
        );
    }
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_token_expiring_mid_run_is_refreshed_once() {
    let (_dir, server, key) = gcp().await;
    server.set_token_lifetime(2);
    let cache = CloudTokenCache::new(MarginPolicy::default(), Arc::new(SystemClock));
    let client = client();
    let fetch = |now| key.fetch(&client, now);
    let first = cache.get(&connection("gcr.io"), fetch).await.unwrap();
    assert_eq!(
        cache.get(&connection("gcr.io"), fetch).await.unwrap(),
        first
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = cache.get(&connection("gcr.io"), fetch).await.unwrap();
    assert_ne!(second.password, first.password);
    assert_eq!(
        cache.get(&connection("gcr.io"), fetch).await.unwrap(),
        second
    );
    assert_eq!(server.requests(), 2);
}

fn account(external_id: Option<&str>) -> AwsAccount {
    AwsAccount {
        region: "eu-west-1".into(),
        access_key_id: "AKIAMESHANICSTEST".into(),
        secret_access_key: "base-secret-key".into(),
        role_arn: "arn:aws:iam::123456789012:role/meshanics-pull".into(),
        external_id: external_id.map(str::to_owned),
    }
}

fn provider(
    server: &AwsServer,
    account: &AwsAccount,
    external_id: Option<&str>,
    secret: &str,
) -> EcrProvider {
    EcrProvider::new(
        EcrRole {
            role_arn: account.role_arn.clone(),
            external_id: external_id.map(str::to_owned),
            region: account.region.clone(),
        },
        AwsCredentials {
            access_key_id: account.access_key_id.clone(),
            secret_access_key: secret.into(),
            session_token: None,
            expires_at: None,
        },
        Endpoints {
            sts: server.sts_url(),
            ecr: server.ecr_url(),
        },
    )
}

/// Fetches a token through `provider(server, account, external_id, secret)`, which must be
/// refused with a 403.
async fn fetch_refused_with_403(
    server: &AwsServer,
    account: &AwsAccount,
    external_id: Option<&str>,
    secret: &str,
) {
    let err = provider(server, account, external_id, secret)
        .fetch(&client(), SystemTime::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, CloudError::Refused { status: 403, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn ecr_role_is_assumed_and_exchanged_for_an_authorization_token() {
    let account = account(Some("ext-1234"));
    let server = AwsServer::start(account.clone()).await.unwrap();
    let now = SystemTime::now();
    let token = provider(&server, &account, Some("ext-1234"), "base-secret-key")
        .fetch(&client(), now)
        .await
        .unwrap();
    assert_eq!(token.username, "AWS");
    assert!(
        token.password.starts_with("ecr-password-1-"),
        "{}",
        token.password
    );
    let lifetime = token.expires_at.duration_since(now).unwrap();
    assert!(
        lifetime > Duration::from_secs(12 * 3600 - 60)
            && lifetime <= Duration::from_secs(12 * 3600 + 1)
    );
    assert_eq!((server.assume_calls(), server.token_calls()), (1, 1));
    assert!(server.refusals().is_empty(), "{:?}", server.refusals());
}

#[tokio::test]
async fn ecr_refuses_a_wrong_external_id() {
    let account = account(Some("ext-1234"));
    let server = AwsServer::start(account.clone()).await.unwrap();
    fetch_refused_with_403(&server, &account, Some("guess"), "base-secret-key").await;
    assert_eq!(server.refusals(), ["AccessDenied: external id mismatch"]);
    assert_eq!(server.token_calls(), 0);
}

#[tokio::test]
async fn ecr_refuses_a_request_signed_with_the_wrong_secret() {
    let account = account(None);
    let server = AwsServer::start(account.clone()).await.unwrap();
    fetch_refused_with_403(&server, &account, None, "not-the-secret").await;
    assert_eq!(
        server.refusals(),
        ["SignatureDoesNotMatch: signature differs"]
    );
}

#[tokio::test]
async fn ecr_refuses_an_expired_session_token() {
    let account = account(None);
    let server = AwsServer::start(account.clone()).await.unwrap();
    server.set_session_lifetime(Duration::ZERO);
    fetch_refused_with_403(&server, &account, None, "base-secret-key").await;
    assert_eq!(server.assume_calls(), 1);
    assert!(
        server.refusals()[0].starts_with("ExpiredTokenException"),
        "{:?}",
        server.refusals()
    );
}
