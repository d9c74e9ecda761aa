use std::sync::atomic::AtomicU64;

use super::*;

/// A clock the test moves by hand.
#[derive(Debug)]
struct ManualClock(Mutex<SystemTime>);

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(ManualClock(Mutex::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        )))
    }
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

fn key(host: &str, connection: u64) -> TokenKey {
    TokenKey {
        host: host.into(),
        connection,
    }
}

fn token(now: SystemTime, lifetime: Duration, n: u64) -> RegistryToken {
    RegistryToken {
        username: "u".into(),
        password: format!("t{n}"),
        expires_at: now + lifetime,
        lifetime,
    }
}

#[test]
fn margin_is_five_minutes_or_a_tenth_of_the_lifetime_whichever_is_smaller() {
    let policy = MarginPolicy::default();
    assert_eq!(
        policy.margin(Duration::from_secs(12 * 3600)),
        Duration::from_secs(300)
    );
    assert_eq!(
        policy.margin(Duration::from_secs(60)),
        Duration::from_secs(6)
    );
    assert_eq!(
        policy.margin(Duration::from_secs(3000)),
        Duration::from_secs(300)
    );
}

#[tokio::test]
async fn serves_a_fresh_token_from_the_cache_and_refreshes_before_expiry() {
    let clock = ManualClock::new();
    let cache = CloudTokenCache::new(MarginPolicy::default(), clock.clone());
    let calls = AtomicU64::new(0);
    let fetch = |now| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok(token(now, Duration::from_secs(3600), n)) }
    };
    assert_eq!(cache.get(&key("h", 1), fetch).await.unwrap().password, "t0");
    clock.advance(Duration::from_secs(3600 - 301));
    assert_eq!(cache.get(&key("h", 1), fetch).await.unwrap().password, "t0");
    clock.advance(Duration::from_secs(2)); // now inside the 5-minute margin
    assert_eq!(cache.get(&key("h", 1), fetch).await.unwrap().password, "t1");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.refreshes(), 2);
    assert_eq!(cache.hits(), 1);
}

#[tokio::test]
async fn keeps_hosts_apart() {
    let clock = ManualClock::new();
    let cache = CloudTokenCache::new(MarginPolicy::default(), clock);
    let a = cache
        .get(&key("a", 1), |now| async move {
            Ok(token(now, Duration::from_secs(60), 1))
        })
        .await
        .unwrap();
    let b = cache
        .get(&key("b", 1), |now| async move {
            Ok(token(now, Duration::from_secs(60), 2))
        })
        .await
        .unwrap();
    assert_ne!(a.password, b.password);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_callers_cause_exactly_one_refresh() {
    let cache = Arc::new(CloudTokenCache::new(
        MarginPolicy::default(),
        Arc::new(SystemClock),
    ));
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let cache = cache.clone();
        let calls = calls.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get(&key("registry.example.com", 1), |now| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that every other caller arrives while this one refreshes.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(token(now, Duration::from_secs(3600), 0))
                })
                .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().password, "t0");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn remembers_a_failed_refresh_for_the_backoff_then_tries_again() {
    let clock = ManualClock::new();
    let cache = CloudTokenCache::new(MarginPolicy::default(), clock.clone());
    let calls = AtomicU64::new(0);
    let failing = |_| {
        calls.fetch_add(1, Ordering::SeqCst);
        async {
            Err(CloudError::Refused {
                endpoint: "https://sts".into(),
                status: 503,
            })
        }
    };
    assert!(matches!(
        cache.get(&key("h", 1), failing).await,
        Err(CloudError::Refused { .. })
    ));
    let again = cache.get(&key("h", 1), failing).await.unwrap_err();
    assert!(
        matches!(again, CloudError::RecentlyFailed { retry_after, .. } if retry_after == Duration::from_secs(5))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(6));
    let ok = cache
        .get(&key("h", 1), |now| async move {
            Ok(token(now, Duration::from_secs(60), 9))
        })
        .await;
    assert_eq!(ok.unwrap().password, "t9");
}

#[tokio::test]
async fn a_new_connection_to_the_same_host_gets_a_token_of_its_own() {
    let cache = CloudTokenCache::new(MarginPolicy::default(), ManualClock::new());
    let first = cache
        .get(&key("h", 1), |now| async move {
            Ok(token(now, Duration::from_secs(3600), 1))
        })
        .await
        .unwrap();
    let second = cache
        .get(&key("h", 2), |now| async move {
            Ok(token(now, Duration::from_secs(3600), 2))
        })
        .await
        .unwrap();
    assert_ne!(first.password, second.password);
    assert_eq!(cache.refreshes(), 2);
}

#[tokio::test]
async fn a_refused_token_is_dropped_and_the_next_caller_refreshes() {
    let cache = CloudTokenCache::new(MarginPolicy::default(), ManualClock::new());
    let calls = AtomicU64::new(0);
    let fetch = |now| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok(token(now, Duration::from_secs(3600), n)) }
    };
    assert_eq!(cache.get(&key("h", 1), fetch).await.unwrap().password, "t0");
    cache.reject(&key("h", 1), "t0").await;
    assert_eq!(cache.get(&key("h", 1), fetch).await.unwrap().password, "t1");
    // A refusal of the token already replaced keeps the new one.
    cache.reject(&key("h", 1), "t0").await;
    assert_eq!(cache.get(&key("h", 1), fetch).await.unwrap().password, "t1");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn forgetting_a_host_drops_the_tokens_of_its_connections_only() {
    let cache = CloudTokenCache::new(MarginPolicy::default(), ManualClock::new());
    let calls = AtomicU64::new(0);
    let fetch = |now| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move { Ok(token(now, Duration::from_secs(3600), n)) }
    };
    cache.get(&key("h", 1), fetch).await.unwrap();
    cache.get(&key("other", 2), fetch).await.unwrap();
    cache.forget_host("h");
    assert_eq!(cache.get(&key("h", 1), fetch).await.unwrap().password, "t2");
    assert_eq!(
        cache.get(&key("other", 2), fetch).await.unwrap().password,
        "t1"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
