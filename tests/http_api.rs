//! The HTTP API as a client sees it: status codes, headers and exact bytes.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use support::{ProxyBuilder, RedisServer};

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.expect("request")
}

#[tokio::test]
async fn binary_value_is_returned_byte_exact() {
    let redis = RedisServer::start();
    let value: Vec<u8> = (0..=255u8)
        .chain(b"\r\n\0$-1\r\n".iter().copied())
        .collect();
    redis.set("bin", &value);
    let proxy = ProxyBuilder::new(&redis.url()).start();

    let response = get(&proxy.url("bin")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.headers()["x-cache"], "MISS");
    assert_eq!(response.bytes().await.unwrap(), value);

    let cached = get(&proxy.url("bin")).await;
    assert_eq!(cached.headers()["x-cache"], "HIT");
    assert_eq!(cached.bytes().await.unwrap(), value);
}

#[tokio::test]
async fn one_megabyte_value_is_returned_whole() {
    let redis = RedisServer::start();
    let value: Vec<u8> = (0..1024 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    redis.set("big", &value);
    let proxy = ProxyBuilder::new(&redis.url()).start();

    for expected_cache in ["MISS", "HIT"] {
        let response = get(&proxy.url("big")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-cache"], expected_cache);
        assert_eq!(response.headers()["content-length"], "1048576");
        let body = response.bytes().await.unwrap();
        assert!(
            body == value,
            "the 1 MiB body differs from what Redis holds"
        );
    }
}

#[tokio::test]
async fn missing_key_is_404_and_absence_is_not_cached() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).start();

    let response = get(&proxy.url("nope")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    redis.set("nope", "now here");
    let response = get(&proxy.url("nope")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "now here");
}

#[tokio::test]
async fn keys_are_percent_decoded_paths() {
    let redis = RedisServer::start();
    let cases: [(&[u8], &str); 9] = [
        (b"with space", "with%20space"),
        (b"a/b/c", "a/b/c"),
        (
            "\u{fc}n\u{ef}c\u{f8}d\u{e9} \u{1F600}".as_bytes(),
            "%C3%BCn%C3%AFc%C3%B8d%C3%A9%20%F0%9F%98%80",
        ),
        (b"what?", "what%3F"),
        (b"100%", "100%25"),
        (b"#hash", "%23hash"),
        (b"a+b", "a+b"),
        (b"/leading", "/leading"),
        (&[0xFF, 0x00, 0x80], "%FF%00%80"),
    ];
    for (i, (key, _)) in cases.iter().enumerate() {
        redis.set(key, format!("value {i}"));
    }
    let proxy = ProxyBuilder::new(&redis.url()).start();

    for (i, (key, path)) in cases.iter().enumerate() {
        let response = get(&proxy.url(path)).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "key {key:?} sent as /{path}"
        );
        assert_eq!(
            response.text().await.unwrap(),
            format!("value {i}"),
            "key {key:?}"
        );
    }
}

#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let redis = RedisServer::start();
    redis.set("k", "twelve bytes");
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let client = reqwest::Client::new();

    let response = client.head(proxy.url("k")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], "12");
    assert_eq!(response.headers()["x-cache"], "MISS");
    assert!(response.bytes().await.unwrap().is_empty());

    let response = client.head(proxy.url("missing")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let client = reqwest::Client::new();

    for method in [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let response = client
            .request(method.clone(), proxy.url("k"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
        assert_eq!(response.headers()["allow"], "GET, HEAD");
    }
    assert_eq!(redis.calls("set"), 0);
}

#[tokio::test]
async fn empty_key_and_query_string_are_400() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).start();

    let response = get(&proxy.url("")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.unwrap().contains("empty key"));

    let response = get(&proxy.url("a?b")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.unwrap().contains("%3F"));
    assert_eq!(redis.calls("get"), 0, "rejected requests never reach Redis");
}

#[tokio::test]
async fn non_string_value_is_409_with_the_redis_error() {
    let redis = RedisServer::start();
    redis.cmd::<()>(&["RPUSH", "list", "a"]);
    let proxy = ProxyBuilder::new(&redis.url()).start();

    let response = get(&proxy.url("list")).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert!(response.text().await.unwrap().starts_with("WRONGTYPE"));
}

#[tokio::test]
async fn unreachable_backend_is_502_with_a_reason() {
    let dead_port = support::free_port();
    let proxy = ProxyBuilder::new(&format!("redis://127.0.0.1:{dead_port}"))
        .arg("--request-timeout", "10s")
        .start();

    let response = get(&proxy.url("k")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let body = response.text().await.unwrap();
    assert!(body.contains("redis unavailable"), "{body}");
}

fn header_secs(response: &reqwest::Response, name: &str, prefix: &str) -> u64 {
    let value = response.headers()[name].to_str().unwrap();
    value
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{name}: {value}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn responses_carry_max_age_age_and_a_strong_etag() {
    let redis = RedisServer::start();
    redis.set("k", "first");
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-ttl", "3s")
        .start();

    let miss = get(&proxy.url("k")).await;
    assert_eq!(miss.headers()["x-cache"], "MISS");
    assert_eq!(
        header_secs(&miss, "cache-control", "max-age="),
        3,
        "a miss answers with the full TTL"
    );
    assert_eq!(header_secs(&miss, "age", ""), 0);
    let tag = miss.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        tag.starts_with('"') && tag.ends_with('"') && !tag.starts_with("W/"),
        "{tag}"
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let hit = get(&proxy.url("k")).await;
    assert_eq!(hit.headers()["x-cache"], "HIT");
    let (max_age, age) = (
        header_secs(&hit, "cache-control", "max-age="),
        header_secs(&hit, "age", ""),
    );
    assert!(age >= 1, "age {age}");
    assert!(
        (2..=3).contains(&(max_age + age)),
        "max-age {max_age} + age {age} is the TTL, rounded down"
    );
    assert_eq!(hit.headers()["etag"], tag.as_str());

    let client = reqwest::Client::new();
    let not_modified = client
        .get(proxy.url("k"))
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"], tag.as_str());
    assert!(not_modified.bytes().await.unwrap().is_empty());
    let other = client
        .get(proxy.url("k"))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
    assert_eq!(other.text().await.unwrap(), "first");

    redis.set("k", "second");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let changed = client
        .get(proxy.url("k"))
        .header("if-none-match", &tag)
        .send()
        .await
        .unwrap();
    assert_eq!(
        changed.status(),
        StatusCode::OK,
        "a new value no longer matches the old tag"
    );
    assert_ne!(changed.headers()["etag"], tag.as_str());
    assert_eq!(changed.text().await.unwrap(), "second");
}
