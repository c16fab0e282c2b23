//! Read-through caching, expiry and exact-LRU eviction, observed from outside:
//! values are changed in Redis behind the proxy's back, so a stale answer proves
//! a cached one.

mod support;

use std::time::Duration;

use support::{Proxy, ProxyBuilder, RedisServer};

/// The body and `X-Cache` header of `GET /key`.
async fn read(proxy: &Proxy, key: &str) -> (String, String) {
    let response = reqwest::get(proxy.url(key)).await.expect("request");
    assert_eq!(response.status(), 200, "GET /{key}");
    let cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
    (response.text().await.unwrap(), cache)
}

#[tokio::test]
async fn cached_value_is_served_after_redis_changes() {
    let redis = RedisServer::start();
    redis.set("k", "old");
    let proxy = ProxyBuilder::new(&redis.url()).start();

    assert_eq!(read(&proxy, "k").await, ("old".into(), "MISS".into()));
    redis.set("k", "new");
    assert_eq!(read(&proxy, "k").await, ("old".into(), "HIT".into()));
    assert_eq!(redis.calls("get"), 1, "a hit never touches Redis");
}

#[tokio::test]
async fn expired_entry_is_refetched() {
    let redis = RedisServer::start();
    redis.set("k", "old");
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-ttl", "400ms")
        .start();

    assert_eq!(read(&proxy, "k").await.1, "MISS");
    redis.set("k", "new");
    assert_eq!(read(&proxy, "k").await, ("old".into(), "HIT".into()));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(read(&proxy, "k").await, ("new".into(), "MISS".into()));
}

#[tokio::test]
async fn least_recently_used_key_is_evicted_at_capacity_3() {
    let redis = RedisServer::start();
    for key in ["a", "b", "c", "d"] {
        redis.set(key, format!("{key}1"));
    }
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-capacity", 3)
        .start();

    for key in ["a", "b", "c"] {
        assert_eq!(read(&proxy, key).await.1, "MISS");
    }
    assert_eq!(read(&proxy, "a").await.1, "HIT"); // recency, oldest first: b c a
    assert_eq!(read(&proxy, "d").await.1, "MISS"); // evicts b
    for key in ["a", "b", "c", "d"] {
        redis.set(key, format!("{key}2"));
    }
    for key in ["a", "c", "d"] {
        assert_eq!(
            read(&proxy, key).await,
            (format!("{key}1"), "HIT".into()),
            "{key}"
        );
    }
    assert_eq!(read(&proxy, "b").await, ("b2".into(), "MISS".into()));
}

#[tokio::test]
async fn only_the_most_recent_keys_fit_the_capacity() {
    let redis = RedisServer::start();
    let keys: Vec<String> = (0..20).map(|i| format!("key{i}")).collect();
    for key in &keys {
        redis.set(key, "v1");
    }
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-capacity", 5)
        .start();

    for key in &keys {
        assert_eq!(read(&proxy, key).await.1, "MISS");
    }
    for key in &keys {
        redis.set(key, "v2");
    }
    // Hits do not change which keys are cached, so check those first.
    for key in &keys[15..] {
        assert_eq!(
            read(&proxy, key).await,
            ("v1".into(), "HIT".into()),
            "{key}"
        );
    }
    for key in &keys[..15] {
        assert_eq!(
            read(&proxy, key).await,
            ("v2".into(), "MISS".into()),
            "{key}"
        );
    }
}

#[tokio::test]
async fn a_hit_refreshes_recency_but_not_expiry() {
    let redis = RedisServer::start();
    redis.set("k", "old");
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-ttl", "500ms")
        .start();

    assert_eq!(read(&proxy, "k").await.1, "MISS");
    redis.set("k", "new");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read(&proxy, "k").await, ("old".into(), "HIT".into()));
    tokio::time::sleep(Duration::from_millis(350)).await;
    // 650 ms after it was fetched: expired, though read 350 ms ago.
    assert_eq!(read(&proxy, "k").await, ("new".into(), "MISS".into()));
}

/// A value whose replies the relay holds back.
const SLOW: &str = "SLOW-VALUE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_from_both_protocols_cost_one_redis_get() {
    let redis = RedisServer::start();
    redis.set("cold", SLOW);
    let relay = support::Relay::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], redis.port())),
        Duration::ZERO,
    );
    relay.delay_replies_containing(SLOW.as_bytes(), Duration::from_millis(500));
    let proxy = ProxyBuilder::new(&relay.url()).start();

    let over_http: Vec<_> = (0..20)
        .map(|_| {
            let url = proxy.url("cold");
            tokio::spawn(async move { reqwest::get(url).await.unwrap().text().await.unwrap() })
        })
        .collect();
    let resp = proxy.resp_addr();
    let over_resp: Vec<_> = (0..20)
        .map(|_| {
            tokio::task::spawn_blocking(move || {
                let mut conn = support::RawConn::connect(resp);
                conn.send(b"GET cold\r\n");
                conn.read_reply()
            })
        })
        .collect();
    for task in over_http {
        assert_eq!(task.await.unwrap(), SLOW);
    }
    for task in over_resp {
        assert_eq!(
            task.await.unwrap(),
            format!("${}\r\n{SLOW}\r\n", SLOW.len())
        );
    }
    assert_eq!(
        redis.calls("get"),
        1,
        "40 concurrent misses, one backend GET"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_waiter_does_not_cancel_the_fetch() {
    let redis = RedisServer::start();
    redis.set("cold", SLOW);
    let relay = support::Relay::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], redis.port())),
        Duration::ZERO,
    );
    relay.delay_replies_containing(SLOW.as_bytes(), Duration::from_millis(600));
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--request-timeout", "1s")
        .start();

    // The client gives up after 200 ms; the proxy's fetch goes on.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    assert!(client.get(proxy.url("cold")).send().await.is_err());
    tokio::time::sleep(Duration::from_millis(800)).await;

    assert_eq!(read(&proxy, "cold").await, (SLOW.into(), "HIT".into()));
    assert_eq!(redis.calls("get"), 1);
}

#[tokio::test]
async fn s3fifo_policy_reads_through_and_keeps_its_capacity() {
    let redis = RedisServer::start();
    for i in 0..50 {
        redis.set(format!("key{i}"), format!("v{i}"));
    }
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-policy", "s3fifo")
        .arg("--cache-capacity", 5)
        .start();

    assert_eq!(read(&proxy, "key0").await, ("v0".into(), "MISS".into()));
    redis.set("key0", "changed");
    assert_eq!(read(&proxy, "key0").await, ("v0".into(), "HIT".into()));
    for i in 1..50 {
        read(&proxy, &format!("key{i}")).await;
    }
    let metrics = reqwest::get(proxy.admin_url("metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let entries: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("redis_proxy_cache_entries "))
        .expect("cache_entries")
        .parse()
        .unwrap();
    assert!(
        (1.0..=5.0).contains(&entries),
        "{entries} entries at capacity 5"
    );
    assert!(
        proxy
            .logs()
            .iter()
            .any(|l| l.contains("\"cache_policy\":\"s3fifo\"")),
        "the startup line names the policy"
    );
}
