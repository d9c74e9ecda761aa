//! A listener that runs out of file descriptors keeps serving, without spinning: its own test
//! binary, because it lowers `RLIMIT_NOFILE` for the whole process.
//!
//! The listener is wrapped to count accept attempts. While the process has no descriptor
//! left, every accept fails with `EMFILE` at once; a loop that retries at once makes
//! thousands of attempts a second, the serve loop a handful with its growing delay. Once
//! descriptors are free again, the client that waited in the backlog is served, and so is a
//! new one.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on anything unexpected"
)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meshanics_http::{Connection, Listener, ServeConfig, serve};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A TCP listener that counts how often it is asked to accept.
struct Counting {
    inner: TcpListener,
    attempts: Arc<AtomicUsize>,
}

impl Listener for Counting {
    type Io = TcpStream;
    type Addr = SocketAddr;

    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> + Send {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.inner.accept()
    }
}

/// Puts the original descriptor limit back when the test ends, passed or not.
struct Restore(Rlimit);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = setrlimit(Resource::Nofile, self.0);
    }
}

/// What the server says to each client before it closes the connection.
const GREETING: &str = "served";

/// Reads what the server says, to its end.
async fn greeting(mut stream: TcpStream) -> String {
    let mut said = String::new();
    stream.read_to_string(&mut said).await.unwrap();
    said
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_without_spinning_after_running_out_of_file_descriptors() {
    let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = inner.local_addr().unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let listener = Counting {
        inner,
        attempts: attempts.clone(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        ServeConfig::new("fd-limit test"),
        async move {
            let _ = stopped.await;
        },
        // The accept loop is what is tested: each client is greeted, then the connection ends.
        |mut connection: Connection<TcpStream, SocketAddr>| async move {
            let _ = connection.io.write_all(GREETING.as_bytes()).await;
        },
    ));
    assert_eq!(
        greeting(TcpStream::connect(addr).await.unwrap()).await,
        GREETING
    );

    // A limit a little above what is open now, then every free descriptor taken but one.
    let original = getrlimit(Resource::Nofile);
    let restore = Restore(original);
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(open + 16),
            maximum: original.maximum,
        },
    )
    .unwrap();
    let mut hogs = Vec::new();
    let emfile = rustix::io::Errno::MFILE.raw_os_error();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hogs.push(file),
            Err(error) if error.raw_os_error() == Some(emfile) => break,
            Err(error) => panic!("opening /dev/null: {error}"),
        }
    }
    assert!(hogs.len() >= 2, "only {} descriptors were free", hogs.len());
    drop(hogs.pop());
    // The client takes the last descriptor: the server has none left to accept it with.
    let waiting = TcpStream::connect(addr).await.unwrap();

    let before = attempts.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = attempts.load(Ordering::Relaxed) - before;
    assert!(
        (2..=30).contains(&during),
        "{during} accept attempts in 1.5 s without descriptors: it should retry a few times \
         with a growing delay, neither spin nor stop"
    );

    drop(hogs);
    drop(restore);
    let said = tokio::time::timeout(Duration::from_secs(5), greeting(waiting))
        .await
        .expect("the client that waited in the backlog was not served once descriptors were free");
    assert_eq!(said, GREETING);
    let said = tokio::time::timeout(
        Duration::from_secs(5),
        greeting(TcpStream::connect(addr).await.unwrap()),
    )
    .await
    .expect("a new client was not served after the descriptors were freed");
    assert_eq!(said, GREETING);

    stop.send(()).unwrap();
    server.await.unwrap();
}
