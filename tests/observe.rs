//! Seeing the proxy while it runs: `/hotkeys` against a Zipf workload over
//! both protocols and under 200,000 distinct keys, `/bigkeys`, `/stats`
//! against the traffic sent, `/config` without secrets, the dashboard in a
//! real browser (headless chromium), and the Grafana file against the
//! metrics the proxy exports.

mod support;

use std::collections::HashMap;

use serde_json::Value;
use support::{Proxy, ProxyBuilder, RawConn, RedisServer};

fn json(proxy: &Proxy, path: &str) -> Value {
    let (status, body) = support::http_get(proxy.admin_addr(), path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// RESP `GET`s of `keys`, pipelined a few hundred at a time.
fn resp_gets(proxy: &Proxy, keys: &[String]) {
    let mut conn = RawConn::connect(proxy.resp_addr());
    for chunk in keys.chunks(500) {
        let mut out = Vec::new();
        for key in chunk {
            out.extend_from_slice(
                format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes(),
            );
        }
        conn.send(&out);
        for _ in chunk {
            conn.read_reply();
        }
    }
}

/// A Zipf(1.0) sequence over `n` keys, deterministic.
fn zipf(n: usize, requests: usize) -> Vec<usize> {
    let weights: Vec<f64> = (1..=n).map(|rank| 1.0 / rank as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(n);
    let mut sum = 0.0;
    for weight in weights {
        sum += weight / total;
        cumulative.push(sum);
    }
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..requests)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            cumulative.partition_point(|&c| c < u).min(n - 1)
        })
        .collect()
}

#[test]
fn hot_keys_of_a_zipf_workload_over_both_protocols_are_the_true_top_ten() {
    let redis = RedisServer::start();
    for i in 0..2000 {
        redis.set(format!("zipf:{i}"), format!("value-{i}"));
    }
    let proxy = ProxyBuilder::new(&redis.url()).flag("--hot-keys").start();
    let sequence = zipf(2000, 30_000);
    let mut truth: HashMap<String, u64> = HashMap::new();
    let (mut over_resp, mut over_http) = (Vec::new(), Vec::new());
    for (i, &rank) in sequence.iter().enumerate() {
        let key = format!("zipf:{rank}");
        *truth.entry(key.clone()).or_default() += 1;
        // One request in ten over HTTP.
        if i % 10 == 0 {
            over_http.push(key);
        } else {
            over_resp.push(key);
        }
    }
    resp_gets(&proxy, &over_resp);
    for key in &over_http {
        assert_eq!(
            support::http_get(proxy.http_addr(), &format!("/{key}")).0,
            200
        );
    }
    let mut true_top: Vec<(&String, &u64)> = truth.iter().collect();
    true_top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let true_top: Vec<(&String, &u64)> = true_top.into_iter().take(10).collect();

    let hot = json(&proxy, "/hotkeys?n=10");
    assert!(hot["window_seconds"].as_f64().unwrap() > 0.0, "{hot}");
    let reported: Vec<(String, u64)> = hot["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| {
            assert_eq!(key["db"], 0);
            let count = key["hits"].as_u64().unwrap() + key["misses"].as_u64().unwrap();
            (key["key"].as_str().unwrap().to_owned(), count)
        })
        .collect();
    assert_eq!(reported.len(), 10, "{hot}");
    let found = true_top
        .iter()
        .filter(|(key, _)| reported.iter().any(|(k, _)| k == *key))
        .count();
    assert!(
        found >= 9,
        "true top ten {true_top:?}, reported {reported:?}"
    );
    for (key, count) in &reported {
        if let Some(truth) = truth
            .get(key)
            .filter(|_| true_top.iter().any(|(k, _)| *k == key))
        {
            let error = (*count as f64 - *truth as f64).abs() / *truth as f64;
            assert!(error <= 0.10, "{key}: counted {count}, sent {truth}");
        }
    }
    // Most requested first; the top key missed (pipelined requests that
    // came before its value did), then hit.
    assert!(
        reported.windows(2).all(|w| w[0].1 >= w[1].1),
        "{reported:?}"
    );
    let top = &hot["keys"][0];
    assert!(top["misses"].as_u64().unwrap() >= 1, "{top}");
    assert!(top["hits"].as_u64().unwrap() > 1000, "{top}");
    assert_eq!(top["bytes"], "value-0".len(), "{top}");
}

#[test]
fn hot_keys_memory_stays_flat_under_200000_distinct_keys() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).flag("--hot-keys").start();
    let keys = |from: usize, to: usize| -> Vec<String> {
        (from..to)
            .map(|i| format!("distinct-key-with-a-longish-name-{i:08}"))
            .collect()
    };
    resp_gets(&proxy, &keys(0, 50_000));
    let before = proxy.rss_kib();
    resp_gets(&proxy, &keys(50_000, 200_000));
    let after = proxy.rss_kib();
    // A map of every key would hold 150,000 more names of 41 bytes and
    // their counts: more than 10 MiB.
    assert!(
        after.saturating_sub(before) < 4 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    let hot = json(&proxy, "/hotkeys?n=5");
    assert_eq!(hot["keys"].as_array().unwrap().len(), 5, "{hot}");
}

#[test]
fn hot_keys_are_off_by_default_and_big_keys_are_the_largest_cached() {
    let redis = RedisServer::start();
    for (key, size) in [("small", 10), ("medium", 1000), ("large", 100_000)] {
        redis.set(key, "x".repeat(size));
    }
    redis.set(b"\xffbinary\n".as_slice(), "x".repeat(5000));
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-capacity", "3")
        .start();
    // The largest first: the least recently used when the fourth comes.
    for key in ["large", "small", "medium", "%FFbinary%0A"] {
        assert_eq!(
            support::http_get(proxy.http_addr(), &format!("/{key}")).0,
            200
        );
    }
    let hot = json(&proxy, "/hotkeys");
    assert_eq!(hot["keys"], serde_json::json!([]), "{hot}");
    assert!(hot["disabled"].as_str().is_some(), "{hot}");
    let big = json(&proxy, "/bigkeys?n=3");
    let listed: Vec<(&str, u64)> = big["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["key"].as_str().unwrap(), k["bytes"].as_u64().unwrap()))
        .collect();
    // `large`, evicted, is not listed; the binary name is written as
    // redis-cli writes it.
    assert_eq!(
        listed,
        [("\\xffbinary\\n", 5000), ("medium", 1000), ("small", 10)]
    );
}

#[test]
fn stats_match_the_traffic_sent() {
    let redis = RedisServer::start();
    redis.set("present", "value");
    redis.set("other", "v");
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-capacity", "5000")
        .start();
    for _ in 0..5 {
        assert_eq!(support::http_get(proxy.http_addr(), "/present").0, 200);
    }
    for _ in 0..2 {
        assert_eq!(support::http_get(proxy.http_addr(), "/absent").0, 404);
    }
    // One at a time: pipelined, all three would miss, coalesced.
    for _ in 0..3 {
        resp_gets(&proxy, &["other".to_owned()]);
    }
    let stats = json(&proxy, "/stats");
    let http = &stats["requests"]["http"];
    let resp = &stats["requests"]["resp"];
    assert_eq!(
        (
            &http["total"],
            &http["hit"],
            &http["miss"],
            &http["not_found"]
        ),
        (&7.into(), &4.into(), &1.into(), &2.into()),
        "{stats}"
    );
    assert_eq!(
        (&resp["total"], &resp["hit"], &resp["miss"]),
        (&3.into(), &2.into(), &1.into()),
        "{stats}"
    );
    assert_eq!(
        (
            &stats["hits"],
            &stats["misses"],
            &stats["stale"],
            &stats["not_found"]
        ),
        (&6.into(), &2.into(), &0.into(), &2.into()),
        "{stats}"
    );
    let cache = &stats["cache"];
    assert_eq!(
        (&cache["entries"], &cache["capacity"]),
        (&2.into(), &5000.into())
    );
    assert!(cache["bytes"].as_u64().unwrap() > 0 && cache["max_bytes"].as_u64().unwrap() > 0);
    assert!(
        stats["latency_us"]["misses"]["p50"].as_f64().unwrap() > 0.0,
        "{stats}"
    );
    assert!(
        stats["latency_us"]["misses"]["p99"].as_f64().unwrap() > 0.0,
        "{stats}"
    );
    let backend = stats["backend"].as_array().unwrap();
    assert_eq!(backend.len(), 1);
    assert_eq!(backend[0]["node"], format!("127.0.0.1:{}", redis.port()));
    assert_eq!(
        (&backend[0]["state"], &backend[0]["in_flight"]),
        (&"up".into(), &0.into())
    );
    assert_eq!(stats["config_reloaded_at"], Value::Null);
}

#[test]
fn config_shows_every_key_and_no_secret() {
    let redis = RedisServer::start_with(&["--requirepass", "backend-secret-1"]);
    let url = format!("redis://:backend-secret-1@127.0.0.1:{}", redis.port());
    let file =
        std::env::temp_dir().join(format!("redis-proxy-observe-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        format!(
            "redis_url = \"{url}\"\nclient_password = \"client-secret-2\"\n\n\
             [[users]]\nname = \"ada\"\npassword = \"user-secret-3\"\nkeys = [\"*\"]\n"
        ),
    )
    .unwrap();
    let proxy = ProxyBuilder::bare()
        .arg("--config", file.display())
        .arg("--http-addr", "127.0.0.1:0")
        .start();
    let (status, body) = support::http_get(proxy.admin_addr(), "/config");
    assert_eq!(status, 200);
    for secret in ["backend-secret-1", "client-secret-2", "user-secret-3"] {
        assert!(!body.contains(secret), "{secret} in {body}");
    }
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        config["redis_url"],
        format!("redis://:***@127.0.0.1:{}", redis.port())
    );
    assert_eq!(config["client_password"], "***");
    assert_eq!(config["users"][0]["password"], "***");
    assert_eq!(config["cache_ttl"], "1m");
    let _ = std::fs::remove_file(file);
}

fn chromium() -> String {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .find(|path| std::path::Path::new(path).exists())
    .expect("chromium (apt-get install chromium) for the dashboard test")
    .to_owned()
}

fn headless(args: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!(
        "redis-proxy-chromium-{}-{}",
        std::process::id(),
        support::free_port()
    ));
    let output = support::dies_with_test(&mut std::process::Command::new(chromium()))
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            &format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=4000",
        ])
        .args(args)
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(profile);
    assert!(
        output.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_dashboard_shows_the_live_figures_in_a_real_browser_and_nothing_from_elsewhere() {
    let redis = RedisServer::start();
    for i in 0..25 {
        redis.set(format!("page:{i}"), "x".repeat(100 * (i + 1)));
    }
    let proxy = ProxyBuilder::new(&redis.url()).flag("--hot-keys").start();
    let keys: Vec<String> = (0..25).map(|i| format!("page:{i}")).collect();
    resp_gets(&proxy, &keys);
    resp_gets(&proxy, &vec!["page:7".to_owned(); 400]);
    for _ in 0..20 {
        support::http_get(proxy.http_addr(), "/page:3");
    }

    let (status, page) = support::http_get(proxy.admin_addr(), "/");
    assert_eq!(status, 200);
    for outside in ["http://", "https://", "//cdn", "@import", "<link", "src=\""] {
        assert!(!page.contains(outside), "the page references `{outside}`");
    }
    let url = format!("http://{}/", proxy.admin_addr());
    let dom = headless(&["--dump-dom", &url]);
    let shown = |id: &str| -> String {
        let start = dom
            .find(&format!("id=\"{id}\">"))
            .unwrap_or_else(|| panic!("#{id} in {dom}"));
        let rest = &dom[start + id.len() + 6..];
        rest[..rest.find('<').unwrap()].to_owned()
    };
    assert_eq!(shown("entries"), "25", "{dom}");
    assert_eq!(shown("capacity"), "10,000");
    assert!(dom.contains(">page:7<"), "the hot key is listed: {dom}");
    let hot_first = dom.find(">page:7<").unwrap();
    assert!(
        hot_first < dom.find(">page:3<").unwrap(),
        "page:7 (401 requests) above page:3 (21)"
    );
    assert_eq!(shown("hits"), "420", "{dom}");
    assert!(dom.contains("state-up"), "the node's health: {dom}");
    assert!(dom.contains("<polyline id=\"line-rps\""), "{dom}");

    let png = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    let _ = std::fs::remove_file(&png);
    headless(&[
        &format!("--screenshot={}", png.display()),
        "--window-size=1280,900",
        &url,
    ]);
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{} bytes",
        bytes.len()
    );
}

#[test]
fn every_metric_the_grafana_dashboard_charts_is_exported() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/grafana/redis-proxy.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut charted = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("redis_proxy_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name)
                    .to_owned();
                charted.insert(base);
            }
        }
    }
    for needed in [
        "redis_proxy_requests_total",
        "redis_proxy_cache_hits_total",
        "redis_proxy_backend_request_duration_seconds",
        "redis_proxy_backend_node_errors_total",
        "redis_proxy_cache_entries",
        "redis_proxy_cache_bytes",
        "redis_proxy_stale_served_total",
        "redis_proxy_backend_short_circuited_total",
    ] {
        assert!(charted.contains(needed), "the dashboard charts {needed}");
    }

    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = ProxyBuilder::new(&redis.url()).start();
    support::http_get(proxy.http_addr(), "/k");
    support::http_get(proxy.http_addr(), "/k");
    let (_, metrics) = support::http_get(proxy.admin_addr(), "/metrics");
    let exported: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
        })
        .collect();
    let missing: Vec<&String> = charted
        .iter()
        .filter(|m| !exported.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "charted but not exported: {missing:?}\n{metrics}"
    );
}
