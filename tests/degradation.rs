//! When Redis misbehaves: stale answers on errors and while refreshing,
//! remembered absences, short-circuiting a failing node, cache rules per key
//! pattern. Failures are real: Redis stopped with SIGSTOP, killed, or slowed
//! by a relay; every answer is read over HTTP (its headers say what it is)
//! and over RESP.

mod support;

use std::time::{Duration, Instant};

use support::{Proxy, ProxyBuilder, RawConn, RedisServer, Relay};

/// One HTTP answer: status, body, `X-Cache`, `Age`, `Cache-Control`, and
/// how long it took.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    cache: String,
    age: Option<u64>,
    cache_control: String,
    took: Duration,
}

async fn http(proxy: &Proxy, key: &str) -> Answer {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let started = Instant::now();
    let response = client.get(proxy.url(key)).send().await.expect("an answer");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (cache, cache_control) = (header("x-cache"), header("cache-control"));
    let age = header("age").parse().ok();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    Answer {
        status,
        body,
        cache,
        age,
        cache_control,
        took: started.elapsed(),
    }
}

/// `GET key` over RESP on `conn`: the reply's text and how long it took.
fn resp_get(conn: &mut RawConn, key: &str) -> (String, Duration) {
    let started = Instant::now();
    conn.send(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes());
    (conn.read_reply(), started.elapsed())
}

/// A proxy with a short TTL, stale-if-error on, and a 500 ms request timeout.
fn stale_proxy(url: &str, stale_if_error: &str) -> Proxy {
    ProxyBuilder::new(url)
        .arg("--cache-ttl", "300ms")
        .arg("--cache-stale-if-error", stale_if_error)
        .arg("--request-timeout", "500ms")
        .start()
}

#[tokio::test]
async fn an_expired_entry_answers_stale_while_redis_is_down_and_not_after_its_window() {
    let mut redis = RedisServer::start();
    redis.set("k", "v1");
    let proxy = stale_proxy(&redis.url(), "2s");
    let first = http(&proxy, "k").await;
    assert_eq!((first.status, first.cache.as_str()), (200, "MISS"));
    let mut conn = RawConn::connect(proxy.resp_addr());
    assert_eq!(resp_get(&mut conn, "k").0, "$2\r\nv1\r\n");

    redis.stop();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stale = http(&proxy, "k").await;
    assert_eq!(
        (stale.status, stale.body.as_str(), stale.cache.as_str()),
        (200, "v1", "STALE"),
        "{stale:?}"
    );
    assert_eq!(
        stale.age,
        Some(1),
        "seconds since it was fetched: {stale:?}"
    );
    assert_eq!(stale.cache_control, "max-age=0");
    assert_eq!(
        resp_get(&mut conn, "k").0,
        "$2\r\nv1\r\n",
        "RESP: the value"
    );
    let uncached = http(&proxy, "never-fetched").await;
    assert_eq!(uncached.status, 502, "no stale copy: the error");

    // The window (TTL + 2 s) ends: the error, as without stale-if-error.
    tokio::time::sleep(Duration::from_millis(1400)).await;
    let after = http(&proxy, "k").await;
    assert_eq!(after.status, 502, "{after:?}");
    assert!(
        resp_get(&mut conn, "k").0.starts_with("-ERR"),
        "RESP: the error"
    );
    let served = proxy
        .metric("redis_proxy_stale_served_total{reason=\"error\"}")
        .unwrap_or(0.0);
    assert_eq!(served, 2.0, "one stale answer per protocol");
}

#[tokio::test]
async fn a_stopped_redis_gets_stale_answers_within_the_request_timeout_and_soon_at_once() {
    let redis = RedisServer::start();
    for i in 0..12 {
        redis.set(format!("k{i}"), format!("v{i}"));
    }
    let proxy = stale_proxy(&redis.url(), "1m");
    for i in 0..12 {
        assert_eq!(http(&proxy, &format!("k{i}")).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    redis.freeze();
    let mut took = Vec::new();
    for i in 0..12 {
        let answer = http(&proxy, &format!("k{i}")).await;
        assert_eq!(
            (answer.status, answer.cache.as_str()),
            (200, "STALE"),
            "k{i}: {answer:?}"
        );
        assert_eq!(answer.body, format!("v{i}"));
        took.push(answer.took);
    }
    redis.thaw();
    let slow = took
        .iter()
        .filter(|t| **t >= Duration::from_millis(100))
        .count();
    assert!(
        took.iter().all(|t| *t < Duration::from_millis(500)),
        "every stale answer within the request timeout: {took:?}"
    );
    assert!(slow <= 4, "at most the first few wait: {took:?}");
}

#[tokio::test]
async fn a_short_circuited_node_fails_at_once_says_so_in_readyz_and_recovers() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--request-timeout", "500ms")
        .start();
    redis.freeze();
    let mut took = Vec::new();
    for i in 0..11 {
        let answer = http(&proxy, &format!("missing{i}")).await;
        assert!(
            matches!(answer.status, 502 | 504),
            "an error, not a value: {answer:?}"
        );
        took.push(answer.took);
    }
    let waited = took
        .iter()
        .filter(|t| **t >= Duration::from_millis(100))
        .count();
    assert!(
        waited <= 4,
        "at most the first 3-4 wait for the timeout: {took:?}"
    );
    let last = http(&proxy, "missing-last").await;
    assert!(last.took < Duration::from_millis(100), "{last:?}");
    assert_eq!(last.status, 502);
    assert!(last.body.contains("short-circuited"), "{last:?}");
    let (status, body) = support::http_get(proxy.admin_addr(), "/readyz");
    assert_eq!(status, 503);
    assert!(
        body.contains(&format!("127.0.0.1:{} is short-circuited", redis.port())),
        "{body}"
    );
    assert!(
        proxy
            .metric(&format!(
                "redis_proxy_backend_short_circuited_total{{node=\"127.0.0.1:{}\"}}",
                redis.port()
            ))
            .unwrap_or(0.0)
            >= 1.0
    );

    redis.thaw();
    let thawed = Instant::now();
    redis.set("back", "yes");
    let recovered = loop {
        let answer = http(&proxy, "back").await;
        if answer.status == 200 {
            break thawed.elapsed();
        }
        assert!(thawed.elapsed() < Duration::from_secs(5), "{answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        recovered < Duration::from_secs(2),
        "requests succeed again within 2 s of SIGCONT: {recovered:?}"
    );
    assert!(support::wait_until(Duration::from_secs(3), || {
        support::http_get(proxy.admin_addr(), "/readyz").0 == 200
    }));
}

#[tokio::test]
async fn a_slow_redis_gets_stale_answers_before_the_timeout() {
    let redis = RedisServer::start();
    redis.set("k", "v1");
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    let proxy = stale_proxy(&relay.url(), "1m");
    assert_eq!(http(&proxy, "k").await.body, "v1");
    tokio::time::sleep(Duration::from_millis(400)).await;
    relay.set_delay(Duration::from_millis(800));
    let answer = http(&proxy, "k").await;
    assert_eq!(
        (answer.body.as_str(), answer.cache.as_str()),
        ("v1", "STALE")
    );
    assert!(answer.took < Duration::from_millis(500), "{answer:?}");
    let mut conn = RawConn::connect(proxy.resp_addr());
    let (reply, took) = resp_get(&mut conn, "k");
    assert_eq!(reply, "$2\r\nv1\r\n");
    assert!(took < Duration::from_millis(500), "{took:?}");
}

#[tokio::test]
async fn stale_is_never_served_when_redis_answers_a_new_value_or_absence() {
    let redis = RedisServer::start();
    redis.set("k", "old");
    redis.set("gone", "here");
    let proxy = stale_proxy(&redis.url(), "1m");
    assert_eq!(http(&proxy, "k").await.body, "old");
    assert_eq!(http(&proxy, "gone").await.body, "here");
    redis.set("k", "new");
    redis.cmd::<i64>(&["DEL", "gone"]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let answer = http(&proxy, "k").await;
    assert_eq!(
        (answer.body.as_str(), answer.cache.as_str()),
        ("new", "MISS")
    );
    let answer = http(&proxy, "gone").await;
    assert_eq!(answer.status, 404, "absent in Redis: absent, not stale");
    // Nor later, when Redis fails: the absence dropped the stale copy.
    let mut redis = redis;
    redis.stop();
    assert_eq!(http(&proxy, "gone").await.status, 502);
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let redis = RedisServer::start();
    redis.set("k", "v1");
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--cache-ttl", "1s")
        .arg("--cache-stale-while-revalidate", "2s")
        .start();
    assert_eq!(http(&proxy, "k").await.cache, "MISS");
    redis.set("k", "v2");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    relay.set_delay(Duration::from_millis(300));
    let gets = redis.calls("get");
    let reads = (0..10).map(|_| http(&proxy, "k"));
    let answers = futures_util::future::join_all(reads).await;
    for answer in &answers {
        assert_eq!(
            (answer.body.as_str(), answer.cache.as_str()),
            ("v1", "STALE"),
            "{answer:?}"
        );
        assert!(answer.took < Duration::from_millis(250), "{answer:?}");
    }
    assert!(support::wait_until(Duration::from_secs(2), || {
        redis.calls("get") == gets + 1
    }));
    // The refresh's reply comes through the relay's delay.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh = http(&proxy, "k").await;
    assert_eq!((fresh.body.as_str(), fresh.cache.as_str()), ("v2", "HIT"));
    assert_eq!(redis.calls("get"), gets + 1, "ten stale reads, one refresh");
    assert!(
        proxy
            .metric("redis_proxy_stale_served_total{reason=\"revalidate\"}")
            .unwrap_or(0.0)
            >= 10.0
    );

    // Past the window: a plain miss that waits for Redis.
    relay.set_delay(Duration::ZERO);
    redis.set("k", "v3");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let miss = http(&proxy, "k").await;
    assert_eq!((miss.body.as_str(), miss.cache.as_str()), ("v3", "MISS"));
}

#[tokio::test]
async fn with_tracking_an_invalidated_entry_is_never_served_stale() {
    let mut redis = RedisServer::start();
    redis.set("k", "old");
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--invalidation", "tracking")
        .arg("--cache-stale-if-error", "1m")
        .arg("--request-timeout", "500ms")
        .start();
    assert_eq!(http(&proxy, "k").await.body, "old");
    redis.set("k", "new");
    assert!(
        support::wait_until(Duration::from_secs(2), || {
            proxy
                .metric("redis_proxy_cache_invalidations_total")
                .unwrap_or(0.0)
                >= 1.0
        }),
        "the invalidation arrived"
    );
    redis.stop();
    let answer = http(&proxy, "k").await;
    assert_eq!(
        answer.status, 502,
        "never the invalidated value: {answer:?}"
    );
}

#[tokio::test]
async fn with_tracking_a_lost_link_leaves_entries_for_errors_only_marked_stale() {
    let mut redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--invalidation", "tracking")
        .arg("--cache-ttl", "60s")
        .arg("--cache-stale-if-error", "1m")
        .arg("--request-timeout", "500ms")
        .start();
    assert_eq!(http(&proxy, "k").await.cache, "MISS");
    assert_eq!(http(&proxy, "k").await.cache, "HIT");
    // Redis and the tracking link go down together.
    redis.stop();
    let answer = http(&proxy, "k").await;
    assert_eq!(
        (answer.status, answer.body.as_str(), answer.cache.as_str()),
        (200, "v", "STALE"),
        "unverified: not a fresh hit, but an answer: {answer:?}"
    );
    let mut conn = RawConn::connect(proxy.resp_addr());
    assert_eq!(resp_get(&mut conn, "k").0, "$1\r\nv\r\n");
    // Redis back: the entry is not trusted as fresh; it is fetched again.
    redis.restart();
    redis.set("k", "v2");
    assert!(support::wait_until(Duration::from_secs(5), || {
        support::http_get(proxy.http_addr(), "/k").1 == "v2"
    }));
}

#[tokio::test]
async fn a_remembered_absence_spares_redis_until_its_ttl_ends() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-negative-ttl", "1s")
        .start();
    let first = http(&proxy, "nothing").await;
    assert_eq!((first.status, first.cache.as_str()), (404, "MISS"));
    let mut conn = RawConn::connect(proxy.resp_addr());
    for _ in 0..20 {
        let again = http(&proxy, "nothing").await;
        assert_eq!((again.status, again.cache.as_str()), (404, "HIT"));
        assert_eq!(resp_get(&mut conn, "nothing").0, "$-1\r\n");
    }
    assert_eq!(redis.calls("get"), 1, "Redis asked once");
    assert_eq!(proxy.metric("redis_proxy_negative_hits_total"), Some(40.0));
    redis.set("nothing", "now");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let seen = http(&proxy, "nothing").await;
    assert_eq!((seen.status, seen.body.as_str()), (200, "now"));
    assert_eq!(redis.calls("get"), 2);
}

#[tokio::test]
async fn a_remembered_absence_is_invalidated_by_tracking_and_by_a_write_through_the_proxy() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--invalidation", "tracking")
        .arg("--cache-negative-ttl", "1m")
        .flag("--forward-commands")
        .start();
    assert_eq!(http(&proxy, "a").await.status, 404);
    assert_eq!(http(&proxy, "a").await.cache, "HIT");
    redis.set("a", "set in redis");
    let set = Instant::now();
    assert!(support::wait_until(Duration::from_secs(1), || {
        support::http_get(proxy.http_addr(), "/a").0 == 200
    }));
    assert!(
        set.elapsed() < Duration::from_millis(500),
        "{:?}",
        set.elapsed()
    );

    let mut conn = RawConn::connect(proxy.resp_addr());
    assert_eq!(resp_get(&mut conn, "b").0, "$-1\r\n");
    assert_eq!(resp_get(&mut conn, "b").0, "$-1\r\n");
    conn.send(b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$7\r\nthrough\r\n");
    assert_eq!(conn.read_reply(), "+OK\r\n");
    assert_eq!(
        resp_get(&mut conn, "b").0,
        "$7\r\nthrough\r\n",
        "read your write"
    );
}

#[tokio::test]
async fn a_write_through_the_proxy_drops_a_stale_entry_before_its_reply() {
    let redis = RedisServer::start();
    redis.set("k", "old");
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-ttl", "200ms")
        .arg("--cache-stale-while-revalidate", "1m")
        .arg("--cache-stale-if-error", "1m")
        .flag("--forward-commands")
        .start();
    let mut conn = RawConn::connect(proxy.resp_addr());
    assert_eq!(resp_get(&mut conn, "k").0, "$3\r\nold\r\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nnew\r\n");
    assert_eq!(conn.read_reply(), "+OK\r\n");
    assert_eq!(
        resp_get(&mut conn, "k").0,
        "$3\r\nnew\r\n",
        "not the stale value"
    );
}

/// A proxy reading its cache rules (and the rest) from a TOML file.
fn with_rules(redis: &RedisServer, toml: &str) -> ProxyBuilder {
    let file = std::env::temp_dir().join(format!(
        "redis-proxy-rules-{}-{}.toml",
        std::process::id(),
        support::free_port()
    ));
    std::fs::write(&file, toml).unwrap();
    ProxyBuilder::new(&redis.url()).arg("--config", file.display())
}

#[tokio::test]
async fn cache_rules_set_ttls_per_pattern_the_first_match_winning() {
    let redis = RedisServer::start();
    let rules = "cache_ttl = \"60s\"\n\
        [[cache_rules]]\npattern = \"short:*\"\nttl = \"300ms\"\n\
        [[cache_rules]]\npattern = \"short:never*\"\ncache = false\n\
        [[cache_rules]]\npattern = \"nocache:*\"\ncache = false\n\
        [[cache_rules]]\npattern = \"neg:*\"\nnegative_ttl = \"1m\"\n\
        [[cache_rules]]\npattern = \"small:*\"\nmax_value_bytes = 4\n";
    let proxy = with_rules(&redis, rules).start();
    for key in [
        "short:1",
        "short:never1",
        "long:1",
        "nocache:1",
        "small:1",
        "small:2",
    ] {
        redis.set(key, "old");
    }
    redis.set("small:2", "12345");
    for key in [
        "short:1",
        "short:never1",
        "long:1",
        "nocache:1",
        "small:1",
        "small:2",
    ] {
        assert_eq!(http(&proxy, key).await.cache, "MISS", "{key}");
    }
    let expect = [
        ("short:1", "HIT"),
        ("short:never1", "HIT"), // the first rule that matches: short:*
        ("long:1", "HIT"),
        ("nocache:1", "MISS"),
        ("small:1", "HIT"),
        ("small:2", "MISS"), // 5 bytes > 4: served, not cached
    ];
    for (key, cache) in expect {
        assert_eq!(http(&proxy, key).await.cache, cache, "{key}");
    }
    let mut conn = RawConn::connect(proxy.resp_addr());
    let nocache_gets = redis.calls("get");
    assert_eq!(resp_get(&mut conn, "nocache:1").0, "$3\r\nold\r\n");
    assert_eq!(
        redis.calls("get"),
        nocache_gets + 1,
        "RESP: fetched every time"
    );

    redis.set("short:1", "new");
    redis.set("long:1", "new");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(http(&proxy, "short:1").await.body, "new", "its rule's TTL");
    assert_eq!(http(&proxy, "long:1").await.body, "old", "the global TTL");

    assert_eq!(http(&proxy, "neg:x").await.cache, "MISS");
    assert_eq!(
        http(&proxy, "neg:x").await.cache,
        "HIT",
        "its rule's negative TTL"
    );
    assert_eq!(http(&proxy, "other:x").await.cache, "MISS");
    assert_eq!(
        http(&proxy, "other:x").await.cache,
        "MISS",
        "no global negative TTL"
    );

    // MGET applies each key's rule.
    conn.send(b"*3\r\n$4\r\nMGET\r\n$9\r\nnocache:1\r\n$7\r\nshort:1\r\n");
    assert_eq!(conn.read_reply(), "*2\r\n$3\r\nold\r\n$3\r\nnew\r\n");
    let gets = redis.calls("get") + redis.calls("mget");
    conn.send(b"*3\r\n$4\r\nMGET\r\n$9\r\nnocache:1\r\n$7\r\nshort:1\r\n");
    assert_eq!(conn.read_reply(), "*2\r\n$3\r\nold\r\n$3\r\nnew\r\n");
    assert_eq!(
        redis.calls("get") + redis.calls("mget"),
        gets + 1,
        "only the uncached key is fetched"
    );
}

#[test]
fn bad_cache_rules_stop_the_proxy_naming_the_rule() {
    let redis = RedisServer::start();
    for (toml, says) in [
        (
            "[[cache_rules]]\npattern = \"a:*\"\n[[cache_rules]]\npattern = \"b:*\"\ntll = \"1s\"\n",
            "rule 1: unknown key `tll`",
        ),
        (
            "[[cache_rules]]\nttl = \"1s\"\n",
            "rule 0: `pattern` is missing",
        ),
        (
            "[[cache_rules]]\npattern = \"a:*\"\nstale_if_error = \"a while\"\n",
            "rule 0:",
        ),
    ] {
        let output = with_rules(&redis, toml).run_to_exit(Duration::from_secs(10));
        assert_eq!(output.status.code(), Some(2), "{toml}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("cache_rules"), "{stderr}");
        assert!(stderr.contains(says), "{toml}: {stderr}");
    }
}

#[tokio::test]
async fn in_a_cluster_one_stopped_primary_does_not_delay_keys_on_the_others() {
    let cluster = support::RedisCluster::start();
    let proxy = ProxyBuilder::new(&cluster.seeds())
        .arg("--redis-mode", "cluster")
        .arg("--request-timeout", "500ms")
        .start();
    // Twenty keys on each primary, by owner (asked before any node stops).
    let mut by_owner: Vec<(usize, String)> = (0..20)
        .flat_map(|i| cluster.key_per_primary(&format!("k{i}-")))
        .map(|key| (cluster.owner(cluster.slot(&key)), key))
        .collect();
    by_owner.sort();
    for (_, key) in &by_owner {
        cluster.set(key, "v");
    }
    let frozen_owner = by_owner[0].0;
    let (stopped, others): (Vec<_>, Vec<_>) = by_owner
        .into_iter()
        .partition(|(owner, _)| *owner == frozen_owner);
    let frozen = &cluster.nodes[frozen_owner];
    frozen.freeze();
    let stuck = {
        let proxy_url = proxy.url("");
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for (_, key) in stopped {
                let _ = client.get(format!("{proxy_url}{key}")).send().await;
            }
        })
    };
    let started = Instant::now();
    for (_, key) in &others {
        let answer = http(&proxy, key).await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "v"), "{key}");
        assert!(
            answer.took < Duration::from_millis(100),
            "{key}: {answer:?}"
        );
    }
    frozen.thaw();
    assert!(started.elapsed() < Duration::from_secs(5));
    stuck.abort();
}
