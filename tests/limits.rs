//! Concurrency control under load: many clients, the parallel limit, the client
//! limit (503), and the request timeout (504), against a real Redis made slow by
//! a relay.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::{Proxy, ProxyBuilder, RedisServer, Relay, wait_until};

async fn status_and_body(proxy: &Proxy, key: &str) -> (StatusCode, String) {
    let response = reqwest::get(proxy.url(key)).await.expect("request");
    (response.status(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_clients_all_get_their_own_value() {
    let redis = RedisServer::start();
    for i in 0..50 {
        redis.set(
            format!("key{i}"),
            format!("value-{i}-{}", "x".repeat(i * 7)),
        );
    }
    let proxy = ProxyBuilder::new(&redis.url()).start();

    let tasks: Vec<_> = (0..400)
        .map(|n| {
            let url = proxy.url(&format!("key{}", n % 50));
            // A client per task: hundreds of separate connections.
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let response = client.get(url).send().await.expect("request");
                (n % 50, response.status(), response.text().await.unwrap())
            })
        })
        .collect();
    for task in tasks {
        let (i, status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("value-{i}-{}", "x".repeat(i * 7)));
    }
}

/// A value whose replies the relay holds back; other replies pass at once.
const SLOW: &str = "SLOW-VALUE";

/// The time 8 concurrent misses on distinct keys take through a slowed backend.
async fn time_for_eight_concurrent_misses(max_parallel: usize, delay: Duration) -> Duration {
    let redis = RedisServer::start();
    for i in 0..8 {
        redis.set(format!("k{i}"), SLOW);
    }
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    relay.delay_replies_containing(SLOW.as_bytes(), delay);
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--max-parallel", max_parallel)
        .arg("--request-timeout", "30s")
        .start();
    let start = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let url = proxy.url(&format!("k{i}"));
            tokio::spawn(async move { reqwest::get(url).await.unwrap().status() })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_processing_is_measurably_slower_than_parallel() {
    let delay = Duration::from_millis(250);
    let sequential = time_for_eight_concurrent_misses(1, delay).await;
    let parallel = time_for_eight_concurrent_misses(8, delay).await;
    // One at a time, each miss waits for the one before it: at least 8 delays.
    assert!(
        sequential >= delay * 8,
        "sequential took only {sequential:?}"
    );
    assert!(
        parallel * 2 < sequential,
        "parallel {parallel:?} is not clearly faster than sequential {sequential:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_client_limit_requests_get_503_at_once() {
    let redis = RedisServer::start();
    redis.set("slow1", SLOW);
    redis.set("slow2", SLOW);
    redis.set("warm", "w");
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--max-clients", 2)
        .arg("--request-timeout", "30s")
        .start();
    assert_eq!(status_and_body(&proxy, "warm").await.0, StatusCode::OK);

    relay.delay_replies_containing(SLOW.as_bytes(), Duration::from_secs(3));
    let slow: Vec<_> = ["slow1", "slow2"]
        .into_iter()
        .map(|key| {
            let url = proxy.url(key);
            tokio::spawn(async move { reqwest::get(url).await.unwrap().status() })
        })
        .collect();
    // Both slow requests have reached Redis: the proxy holds two in flight.
    assert!(wait_until(Duration::from_secs(5), || redis.calls("get") == 3));

    // A cached key is refused too: the limit counts requests, not misses.
    let (status, body) = status_and_body(&proxy, "warm").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("overloaded"), "{body}");
    assert!(
        slow.iter().all(|t| !t.is_finished()),
        "503 came before the slow ones ended"
    );

    for task in slow {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(status_and_body(&proxy, "warm").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_gets_504_and_the_connection_stays_correct() {
    let redis = RedisServer::start();
    redis.set("a", "value of a");
    redis.set("b", "value of b");
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--request-timeout", "300ms")
        .arg("--redis-pool-size", 1)
        .start();
    // Open the single pooled connection while the backend is fast.
    assert_eq!(
        status_and_body(&proxy, "warm-up").await.0,
        StatusCode::NOT_FOUND
    );

    relay.delay_replies_containing(b"value of a", Duration::from_millis(700));
    let (status, _) = status_and_body(&proxy, "a").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);

    // Let a's late reply arrive, then ask for b on the same connection.
    tokio::time::sleep(Duration::from_millis(800)).await;
    relay.set_delay(Duration::ZERO);
    assert_eq!(
        status_and_body(&proxy, "b").await,
        (StatusCode::OK, "value of b".into()),
        "a timed-out request must not hand its reply to the next one"
    );
    assert_eq!(
        status_and_body(&proxy, "a").await,
        (StatusCode::OK, "value of a".into())
    );
}
