//! A scripted HTTP/1.1 server on 127.0.0.1:0: every request is recorded and answered with
//! raw bytes a test chose. It is how tests play a malicious upstream (wrong bytes, lying
//! headers, endless bodies, redirects) and blob storage, which a well-behaved HTTP library
//! would refuse to send.
//!
//! One request per connection: every reply should carry `Connection: close` (see [`reply`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{FixtureError, io_err};

/// A request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The method.
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
}

/// What to answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// These bytes, then close.
    Raw(Vec<u8>),
    /// This head (ending in a blank line, with `Transfer-Encoding: chunked`), then chunks of
    /// `chunk` forever, until the client goes away.
    EndlessChunked {
        /// The status line and headers.
        head: Vec<u8>,
        /// The chunk repeated.
        chunk: Vec<u8>,
    },
    /// This head, then `body` in `parts` pieces with `pause` between them.
    Slow {
        /// The status line and headers.
        head: Vec<u8>,
        /// The body.
        body: Vec<u8>,
        /// Into how many pieces.
        parts: usize,
        /// The pause between pieces.
        pause: Duration,
    },
}

type Script = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A running scripted server; stopped on drop.
#[derive(Debug)]
pub struct ScriptedServer {
    port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

// === impl Recorded ===

impl Recorded {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

// === impl ScriptedServer ===

impl ScriptedServer {
    /// Starts a server answering with `script`.
    pub fn start(
        script: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
    ) -> Result<Self, FixtureError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(io_err(
                "starting a runtime for",
                std::path::Path::new("scripted"),
            ))?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .map_err(io_err("binding", std::path::Path::new("127.0.0.1:0")))?;
        let port = listener
            .local_addr()
            .map_err(io_err(
                "reading the address of",
                std::path::Path::new("listener"),
            ))?
            .port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let recorded = requests.clone();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let script = script.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let _ = answer(tcp, &*script, &recorded).await;
                });
            }
        });
        Ok(ScriptedServer {
            port,
            requests,
            runtime: Some(runtime),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn answer(
    mut tcp: TcpStream,
    script: &Script,
    recorded: &Mutex<Vec<Recorded>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await? == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&byte);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let request = Recorded {
        method: request_line.next().unwrap_or_default().to_owned(),
        path: request_line.next().unwrap_or_default().to_owned(),
        headers: lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect(),
    };
    if let Ok(mut all) = recorded.lock() {
        all.push(request.clone());
    }
    match script(&request) {
        Reply::Raw(bytes) => tcp.write_all(&bytes).await?,
        Reply::EndlessChunked { head, chunk } => {
            tcp.write_all(&head).await?;
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            loop {
                tcp.write_all(&framed).await?;
            }
        }
        Reply::Slow {
            head,
            body,
            parts,
            pause,
        } => {
            tcp.write_all(&head).await?;
            let size = body.len().div_ceil(parts.max(1)).max(1);
            for piece in body.chunks(size) {
                tcp.write_all(piece).await?;
                tcp.flush().await?;
                tokio::time::sleep(pause).await;
            }
        }
    }
    tcp.shutdown().await
}

/// A raw response: status line, the given headers, `Connection: close`, a blank line, `body`.
/// No `Content-Length` is added: lying about it is the caller's choice.
pub fn reply(status: u16, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Scripted\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A well-formed `200` carrying `body` with its true length and the given extra headers.
pub fn ok(body: &[u8], extra: &[(&str, String)]) -> Vec<u8> {
    let mut headers = vec![("Content-Length", body.len().to_string())];
    headers.extend(extra.iter().cloned());
    reply(200, &headers, body)
}
