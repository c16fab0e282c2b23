//! Operations: health and readiness, metrics that move exactly with requests,
//! backend outages, graceful shutdown, logs, and hostile HTTP clients.

mod support;

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::{Proxy, ProxyBuilder, RawConn, RedisServer, Relay, is_listening, wait_until};

/// A value whose replies the relay holds back.
const SLOW: &str = "SLOW-VALUE";

async fn get(url: String) -> (StatusCode, String) {
    let response = reqwest::get(url).await.expect("request");
    (response.status(), response.text().await.unwrap())
}

/// Polls `check` every 50 ms until it holds or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

/// The value of one series in a Prometheus text exposition (absent: `None`).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let present: Vec<&str> = label_text.split(',').filter(|s| !s.is_empty()).collect();
            let matches = series_name == name
                && present.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| present.contains(&format!("{k}=\"{v}\"").as_str()));
            matches.then(|| value.parse().ok()).flatten()
        })
}

async fn scrape(proxy: &Proxy) -> String {
    let (status, text) = get(proxy.admin_url("metrics")).await;
    assert_eq!(status, StatusCode::OK);
    text
}

#[tokio::test]
async fn healthz_is_ok_and_readyz_follows_redis() {
    let mut redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).start();

    assert_eq!(
        get(proxy.admin_url("healthz")).await,
        (StatusCode::OK, "ok\n".into())
    );
    let ready = || async { get(proxy.admin_url("readyz")).await.0 == StatusCode::OK };
    assert!(
        eventually(Duration::from_secs(5), ready).await,
        "ready once Redis answers"
    );

    redis.stop();
    let not_ready =
        || async { get(proxy.admin_url("readyz")).await.0 == StatusCode::SERVICE_UNAVAILABLE };
    assert!(
        eventually(Duration::from_secs(5), not_ready).await,
        "not ready while Redis is down"
    );
    let (_, body) = get(proxy.admin_url("readyz")).await;
    assert!(body.starts_with("not ready: "), "{body}");
    assert_eq!(
        get(proxy.admin_url("healthz")).await.0,
        StatusCode::OK,
        "alive all the same"
    );

    redis.restart();
    assert!(
        eventually(Duration::from_secs(5), ready).await,
        "ready again without a restart"
    );
}

#[tokio::test]
async fn pipelines_and_mgets_count_every_request_and_every_key() {
    let redis = RedisServer::start();
    for i in 0..10 {
        redis.set(format!("k{i}"), "v");
    }
    redis.set("x0", "v");
    redis.set("x1", "v");
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = RawConn::connect(proxy.resp_addr());
    // One pipeline of ten keys that exist and six that do not, twice.
    let pipeline: String = (0..10)
        .map(|i| format!("GET k{i}\r\n"))
        .chain((0..6).map(|i| format!("GET absent{i}\r\n")))
        .collect();
    let replies = "$1\r\nv\r\n".repeat(10) + &"$-1\r\n".repeat(6);
    for _ in 0..2 {
        conn.send(pipeline.as_bytes()).expect(replies.as_bytes());
    }
    // An MGET of a cached key, two uncached ones and an absent one.
    conn.send(b"MGET k0 x0 x1 absent9\r\n")
        .expect(b"*4\r\n$1\r\nv\r\n$1\r\nv\r\n$1\r\nv\r\n$-1\r\n");

    let text = scrape(&proxy).await;
    let requests = |outcome| {
        metric(
            &text,
            "redis_proxy_requests_total",
            &[("protocol", "resp"), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("hit"), Some(11.0), "{text}");
    assert_eq!(requests("miss"), Some(12.0), "{text}");
    assert_eq!(requests("not_found"), Some(13.0), "{text}");
    assert_eq!(
        metric(&text, "redis_proxy_cache_hits_total", &[]),
        Some(11.0)
    );
    assert_eq!(
        metric(&text, "redis_proxy_cache_misses_total", &[]),
        Some(25.0)
    );

    // redis-benchmark's pipelines: every request counted once, as the cache
    // counts its reads.
    redis.set("key:__rand_int__", "v");
    let output = std::process::Command::new("redis-benchmark")
        .args(["-p", &proxy.resp_addr().port().to_string()])
        .args(["-t", "get", "-n", "16000", "-P", "16", "-c", "1", "-q"])
        .output()
        .expect("redis-benchmark");
    assert!(output.status.success());
    let text = scrape(&proxy).await;
    let outcome = |outcome| {
        metric(
            &text,
            "redis_proxy_requests_total",
            &[("protocol", "resp"), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    let cache_hits = metric(&text, "redis_proxy_cache_hits_total", &[]).unwrap();
    assert_eq!(outcome("hit"), cache_hits, "{text}");
    assert_eq!(
        outcome("hit") + outcome("miss") + outcome("not_found"),
        36.0 + 16_000.0,
        "{text}"
    );
}

#[tokio::test]
async fn metrics_move_exactly_with_requests() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    redis.cmd::<()>(&["RPUSH", "list", "x"]);
    let proxy = ProxyBuilder::new(&redis.url()).start();

    for key in ["k", "k", "k", "missing", "list"] {
        get(proxy.url(key)).await;
    }
    let mut conn = RawConn::connect(proxy.resp_addr());
    conn.send(b"GET k\r\n").expect(b"$1\r\nv\r\n");
    conn.send(b"MGET k missing\r\n")
        .expect(b"*2\r\n$1\r\nv\r\n$-1\r\n");

    let text = scrape(&proxy).await;
    let requests = |protocol, outcome| {
        metric(
            &text,
            "redis_proxy_requests_total",
            &[("protocol", protocol), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("http", "miss"), Some(1.0), "{text}");
    assert_eq!(requests("http", "hit"), Some(2.0));
    assert_eq!(requests("http", "not_found"), Some(1.0));
    assert_eq!(requests("http", "wrong_type"), Some(1.0));
    assert_eq!(requests("resp", "hit"), Some(2.0));
    assert_eq!(requests("resp", "not_found"), Some(1.0));
    assert_eq!(requests("http", "shed"), Some(0.0));
    assert_eq!(
        metric(&text, "redis_proxy_requests_shed_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "redis_proxy_cache_hits_total", &[]),
        Some(4.0)
    );
    assert_eq!(
        metric(&text, "redis_proxy_cache_misses_total", &[]),
        Some(4.0)
    );
    assert_eq!(metric(&text, "redis_proxy_cache_entries", &[]), Some(1.0));
    assert_eq!(
        metric(&text, "redis_proxy_cache_evictions_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "redis_proxy_cache_expirations_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "redis_proxy_backend_request_duration_seconds_count",
            &[]
        ),
        Some(4.0),
        "one backend GET per miss"
    );
    assert!(text.contains("redis_proxy_backend_request_duration_seconds_bucket{le=\"0.001\"}"));
    assert_eq!(
        metric(&text, "redis_proxy_backend_errors_total", &[]).unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        metric(&text, "redis_proxy_requests_in_flight", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "redis_proxy_connections", &[("protocol", "resp")]),
        Some(1.0)
    );
    assert_eq!(redis.calls("get"), 4, "the metrics agree with Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shed_requests_and_in_flight_are_counted() {
    let redis = RedisServer::start();
    redis.set("slow", SLOW);
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    relay.delay_replies_containing(SLOW.as_bytes(), Duration::from_secs(2));
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--max-clients", 1)
        .arg("--request-timeout", "30s")
        .start();

    let slow = tokio::spawn(get(proxy.url("slow")));
    assert!(wait_until(Duration::from_secs(5), || redis.calls("get") == 1));
    assert_eq!(
        get(proxy.url("other")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let text = scrape(&proxy).await;
    assert_eq!(
        metric(&text, "redis_proxy_requests_shed_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "redis_proxy_requests_total",
            &[("protocol", "http"), ("outcome", "shed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "redis_proxy_requests_in_flight", &[]),
        Some(1.0)
    );
    assert_eq!(slow.await.unwrap(), (StatusCode::OK, SLOW.into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_hits_survive_a_redis_outage_and_misses_recover() {
    let mut redis = RedisServer::start();
    redis.set("cached", "still here");
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--request-timeout", "5s")
        .start();
    assert_eq!(get(proxy.url("cached")).await.0, StatusCode::OK);

    redis.stop();
    assert_eq!(
        get(proxy.url("cached")).await,
        (StatusCode::OK, "still here".into())
    );
    let start = Instant::now();
    let (status, body) = get(proxy.url("uncached")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a miss fails within request_timeout"
    );
    let mut conn = RawConn::connect(proxy.resp_addr());
    conn.send(b"GET uncached\r\n");
    assert!(
        conn.read_line().starts_with("-ERR redis"),
        "RESP gets an error reply"
    );

    redis.restart();
    redis.set("uncached", "back");
    let restarted = Instant::now();
    let recovered = || async { get(proxy.url("uncached")).await.0 == StatusCode::OK };
    assert!(
        eventually(Duration::from_secs(3), recovered).await,
        "no restart needed"
    );
    println!("recovered {:?} after Redis came back", restarted.elapsed());
}

#[tokio::test]
async fn once_redis_answers_again_the_next_request_succeeds_every_time() {
    let mut redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--worker-threads", 2)
        .start();
    let mut conn = RawConn::connect(proxy.resp_addr());
    redis.set("first", "v");
    assert_eq!(get(proxy.url("first")).await.0, StatusCode::OK);
    for round in 0..20 {
        redis.stop();
        assert_eq!(
            get(proxy.url(&format!("down{round}"))).await.0,
            StatusCode::BAD_GATEWAY
        );
        conn.send(format!("GET down{round}\r\n").as_bytes());
        assert!(conn.read_line().starts_with("-ERR redis"));
        redis.restart();
        redis.set(format!("http{round}"), "v");
        redis.set(format!("resp{round}"), "v");
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Both workers' connections were lost: each is replaced, not used.
        let (status, body) = get(proxy.url(&format!("http{round}"))).await;
        assert_eq!(status, StatusCode::OK, "round {round}: {body}");
        conn.send(format!("GET resp{round}\r\n").as_bytes())
            .expect(b"$1\r\nv\r\n");
        let mut fresh = RawConn::connect(proxy.resp_addr());
        fresh
            .send(format!("GET http{round}\r\nGET resp{round}\r\n").as_bytes())
            .expect(b"$1\r\nv\r\n$1\r\nv\r\n");
    }
}

#[tokio::test]
async fn while_redis_is_down_failures_are_logged_once_not_per_request() {
    let mut redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).start();
    redis.stop();
    let mut conn = RawConn::connect(proxy.resp_addr());
    for i in 0..50 {
        assert_eq!(
            get(proxy.url(&format!("k{i}"))).await.0,
            StatusCode::BAD_GATEWAY
        );
        conn.send(format!("GET k{i}\r\n").as_bytes());
        assert!(conn.read_line().starts_with("-ERR redis"));
    }
    redis.restart();
    redis.set("back", "v");
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(proxy.url("back")).await.0 == StatusCode::OK
        })
        .await
    );
    let logs = proxy.logs();
    let count = |text: &str| logs.iter().filter(|line| line.contains(text)).count();
    assert_eq!(count("request failed"), 2, "one per front-end: {logs:#?}");
    assert!(
        count("cannot connect to redis") <= 4,
        "one per connection: {logs:#?}"
    );
    assert!(
        count("connected to redis again") + count("redis answers; ready") >= 1,
        "the recovery is logged: {logs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_and_refused_backend_connections_fail_fast_and_recover() {
    let redis = RedisServer::start();
    redis.set("a", "1");
    redis.set("b", "2");
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--request-timeout", "5s")
        .start();
    assert_eq!(get(proxy.url("a")).await.0, StatusCode::OK);

    relay.refuse_new(true);
    relay.reset_all();
    let start = Instant::now();
    let (status, body) = get(proxy.url("b")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "no hang on a reset connection"
    );
    let (status, _) = get(proxy.url("b")).await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "refused reconnects fail too"
    );

    relay.refuse_new(false);
    let recovered = || async { get(proxy.url("b")).await == (StatusCode::OK, "2".into()) };
    assert!(eventually(Duration::from_secs(3), recovered).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let redis = RedisServer::start();
    redis.set("slow1", SLOW);
    redis.set("slow2", SLOW);
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    relay.delay_replies_containing(SLOW.as_bytes(), Duration::from_millis(1500));
    let mut proxy = ProxyBuilder::new(&relay.url())
        .arg("--request-timeout", "10s")
        .arg("--max-clients", 16)
        .start();
    let (http, resp) = (proxy.http_addr(), proxy.resp_addr());

    let over_http = tokio::spawn(get(proxy.url("slow1")));
    let over_resp = tokio::task::spawn_blocking(move || {
        let mut conn = RawConn::connect(resp);
        conn.send(b"GET slow2\r\n");
        conn.read_reply()
    });
    assert!(wait_until(Duration::from_secs(5), || redis.calls("get") == 2));

    proxy.terminate();
    assert!(
        wait_until(Duration::from_secs(1), || !is_listening(http)
            && !is_listening(resp)),
        "listeners stop accepting at once"
    );
    assert_eq!(over_http.await.unwrap(), (StatusCode::OK, SLOW.into()));
    assert_eq!(over_resp.await.unwrap(), "$10\r\nSLOW-VALUE\r\n");
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn shutdown_grace_bounds_the_wait_for_slow_requests() {
    let redis = RedisServer::start();
    redis.set("slow", SLOW);
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    relay.delay_replies_containing(SLOW.as_bytes(), Duration::from_secs(20));
    let mut proxy = ProxyBuilder::new(&relay.url())
        .arg("--request-timeout", "30s")
        .arg("--shutdown-grace", "300ms")
        .start();
    let mut conn = RawConn::connect(proxy.resp_addr());
    conn.send(b"GET slow\r\n");
    assert!(wait_until(Duration::from_secs(5), || redis.calls("get") == 1));

    let start = Instant::now();
    proxy.terminate();
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the grace period, not the request, ends it"
    );
    let logs = proxy.logs().join("\n");
    assert!(logs.contains("grace period over"), "{logs}");
}

/// One HTTP/1.1 request over a raw socket; returns the local address used.
fn raw_http_get(addr: SocketAddr, path: &str) -> (SocketAddr, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    (stream.local_addr().unwrap(), response)
}

#[test]
fn json_logs_are_one_object_per_line_with_a_span_per_connection() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = ProxyBuilder::new(&redis.url())
        .env("RUST_LOG", "debug")
        .start();

    let (client, response) = raw_http_get(proxy.http_addr(), "k");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let mut conn = RawConn::connect(proxy.resp_addr());
    conn.send(b"GET k\r\nQUIT\r\n")
        .expect(b"$1\r\nv\r\n+OK\r\n");

    let client = client.to_string();
    let has_connection_span = |lines: &[String], protocol: &str, client: Option<&str>| {
        lines.iter().any(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            value["spans"].as_array().is_some_and(|spans| {
                spans.iter().any(|s| {
                    s["name"] == "connection"
                        && s["protocol"] == protocol
                        && client.is_none_or(|c| s["client"] == c)
                })
            })
        })
    };
    assert!(wait_until(Duration::from_secs(5), || {
        let logs = proxy.logs();
        has_connection_span(&logs, "http", Some(&client))
            && has_connection_span(&logs, "resp", None)
    }));
    for line in proxy.logs() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(&line);
        assert!(
            parsed.is_ok_and(|v| v.is_object()),
            "not a JSON object: {line}"
        );
    }
}

#[test]
fn redis_password_never_appears_in_logs() {
    let password = "pw-s3cret-Xy7";
    let redis = RedisServer::start_with(&["--requirepass", password]);
    redis.set("k", "v");
    let good = ProxyBuilder::new(&format!("redis://:{password}@127.0.0.1:{}", redis.port()))
        .env("RUST_LOG", "debug")
        .start();
    let wrong = "wrong-pw-Zq9";
    let bad = ProxyBuilder::new(&format!(
        "redis://default:{wrong}@127.0.0.1:{}",
        redis.port()
    ))
    .env("RUST_LOG", "debug")
    .start();

    assert!(
        raw_http_get(good.http_addr(), "k")
            .1
            .starts_with("HTTP/1.1 200")
    );
    let mut conn = RawConn::connect(good.resp_addr());
    conn.send(b"GET k\r\n").expect(b"$1\r\nv\r\n");
    assert!(
        raw_http_get(bad.http_addr(), "k")
            .1
            .starts_with("HTTP/1.1 502")
    );
    // Let the readiness pinger fail and log a few times too.
    assert!(wait_until(Duration::from_secs(5), || {
        bad.logs().iter().any(|l| l.contains("not reachable"))
    }));

    for (proxy, secret) in [(&good, password), (&bad, wrong)] {
        let logs = proxy.logs();
        assert!(logs.len() > 3, "some logs were written");
        assert!(
            logs.iter().all(|l| !l.contains(secret)),
            "password in logs:\n{}",
            logs.join("\n")
        );
    }
}

#[tokio::test]
async fn uri_over_8_kib_is_414() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).start();
    assert_eq!(
        get(proxy.url(&"a".repeat(8 * 1024))).await.0,
        StatusCode::URI_TOO_LONG
    );
    assert_eq!(
        get(proxy.url(&"a".repeat(8000))).await.0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn a_request_line_beyond_the_header_buffer_is_431() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let status =
        |len: usize| support::http_get(proxy.http_addr(), &format!("/{}", "a".repeat(len))).0;
    // Up to about 400 KiB the request line is read and answered 414; past it,
    // it no longer fits the buffer hyper reads request heads into, and is
    // refused before it is parsed.
    assert_eq!(status(100 * 1024), 414);
    assert_eq!(status(1024 * 1024), 431);
}

#[test]
fn idle_keep_alive_connections_do_not_starve_active_ones() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = ProxyBuilder::new(&redis.url()).start();

    let idle: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = TcpStream::connect(proxy.http_addr()).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            stream
                .write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            stream // kept open, idle
        })
        .collect();

    for _ in 0..20 {
        let (_, response) = raw_http_get(proxy.http_addr(), "k");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    }
    assert_eq!(idle.len(), 300);
}

#[test]
fn slowloris_client_is_disconnected() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--request-timeout", "1s")
        .start();
    let mut stream = TcpStream::connect(proxy.http_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    stream.write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n").unwrap();

    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(6) {
        // One more header line every 200 ms: never finishing the request.
        if stream.write_all(b"X-Trickle: 1\r\n").is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => {} // e.g. a 408 before the close
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(closed, "a client trickling its headers is cut off");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "within about the header timeout"
    );
    assert!(is_listening(proxy.http_addr()));
}
