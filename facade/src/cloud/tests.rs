//! The token client against small local endpoints: no redirect is followed, no answer read
//! past the cap.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use super::CloudError;
use super::ecr::{AwsCredentials, EcrProvider, EcrRole, Endpoints};

/// An endpoint on 127.0.0.1 that reads each request whole and answers `head` and `body`;
/// it counts the requests it saw.
struct Endpoint {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    async fn start(head: String, body: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (head, body, seen) = (head.clone(), body.clone(), seen.clone());
                tokio::spawn(async move {
                    if read_request(&mut stream).await.is_some() {
                        seen.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.write_all(head.as_bytes()).await;
                        let _ = stream.write_all(&body).await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
        Endpoint {
            addr,
            requests,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request's head and its `Content-Length` body.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(())
}

fn client() -> reqwest::Client {
    crate::http_client::client(
        rustls::RootCertStore::empty(),
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .unwrap()
}

fn ecr(sts: &str) -> EcrProvider {
    EcrProvider::new(
        EcrRole {
            role_arn: "arn:aws:iam::123456789012:role/meshanics-pull".into(),
            external_id: None,
            region: "eu-west-1".into(),
        },
        AwsCredentials {
            access_key_id: "AKIAMESHANICSTEST".into(),
            secret_access_key: "base-secret-key".into(),
            session_token: None,
            expires_at: None,
        },
        Endpoints {
            sts: sts.to_owned(),
            ecr: sts.to_owned(),
        },
    )
}

#[tokio::test]
async fn a_token_endpoint_redirect_is_not_followed() {
    let elsewhere = Endpoint::start(
        "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
        Vec::new(),
    )
    .await;
    let redirecting = Endpoint::start(
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: {}\r\ncontent-length: 0\r\n\
             connection: close\r\n\r\n",
            elsewhere.url()
        ),
        Vec::new(),
    )
    .await;
    let err = ecr(&redirecting.url())
        .fetch(&client(), SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(
        elsewhere.requests(),
        0,
        "the signed request was sent on to another host"
    );
    assert_eq!(redirecting.requests(), 1);
    assert!(
        matches!(err, CloudError::Redirected { status: 307, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_token_answer_of_a_mebibyte_is_refused() {
    let huge = Endpoint::start(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            1 << 20
        ),
        vec![b' '; 1 << 20],
    )
    .await;
    let err = ecr(&huge.url())
        .fetch(&client(), SystemTime::now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, CloudError::TooLarge { limit: 65536, .. }),
        "{err}"
    );
}
