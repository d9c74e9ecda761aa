//! How long an operator change takes to reach another replica on the same PostgreSQL: two
//! connection stores (as two facades open theirs) on Debian's PostgreSQL started by the bench;
//! 100 changes on A (alternately connect and remove), each timed until B sees it. Prints
//! p50, p99 and max. `cargo bench -p meshanics-tests --bench cluster_propagation`.

use std::time::{Duration, Instant, SystemTime};

use meshanics_facade::config::PostgresConfig;
use meshanics_facade::connections::{ConnectionCredentials, NewConnection, Store};
use meshanics_facade::seal::MasterKey;
use meshanics_tests::postgres::PostgresServer;

const CHANGES: usize = 100;

fn main() -> std::process::ExitCode {
    meshanics_tests::run_main("cluster_propagation", run)
}

fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let server = PostgresServer::start()?;
    let settings = PostgresConfig {
        url: server.url(),
        password_file: None,
        ca_file: None,
        resync_interval: Duration::from_secs(30),
    };
    let key = || MasterKey::from_bytes(&[5u8; 32]).ok_or("a 32-byte key");
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = Store::open_postgres(dir_a.path(), &settings, key()?)?;
    let b = Store::open_postgres(dir_b.path(), &settings, key()?)?;
    let mut times = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let connect = i % 2 == 0;
        let started = Instant::now();
        if connect {
            a.add(
                NewConnection {
                    registry: "bench.lan".into(),
                    credentials: ConnectionCredentials::Anonymous,
                    plain_http: true,
                    ca_pem: None,
                    storage_hosts: Vec::new(),
                    connected_by: "bench".into(),
                },
                SystemTime::now(),
            )?;
        } else {
            a.remove("bench.lan")?;
        }
        let deadline = started + Duration::from_secs(60);
        while b.show("bench.lan").is_ok() != connect {
            if Instant::now() > deadline {
                return Err(format!("change {i} did not reach B in 60 s").into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        times.push(started.elapsed());
    }
    times.sort();
    let ms = |q: f64| {
        let index = ((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1));
        times.get(index).map_or(0.0, |t| t.as_secs_f64() * 1e3)
    };
    println!(
        "propagation over {CHANGES} changes (write on A until B sees it): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(0.50),
        ms(0.99),
        ms(1.0)
    );
    Ok(())
}
