//! SIGHUP reloads the configuration file: live keys apply to what comes
//! next while connections opened before stay; a bad file changes nothing;
//! users removed lose their connections; restart-only keys are named and
//! left; the log level follows.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::{Proxy, ProxyBuilder, RawConn, RedisServer, bulk};

/// A configuration file, removed on drop.
struct File(PathBuf);

impl File {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "redis-proxy-reload-{}-{}.toml",
            std::process::id(),
            support::free_port()
        ));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for File {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn start(redis: &RedisServer, file: &File) -> Proxy {
    ProxyBuilder::new(&redis.url())
        .arg("--config", file.0.display())
        .start()
}

fn reloads(proxy: &Proxy, result: &str) -> f64 {
    proxy
        .metric(&format!(
            "redis_proxy_config_reloads_total{{result=\"{result}\"}}"
        ))
        .unwrap_or(0.0)
}

/// Sends SIGHUP and waits until the reload is counted as `result`.
fn hangup(proxy: &Proxy, result: &str) {
    let before = reloads(proxy, result);
    // SAFETY: a signal to a child process of this test.
    unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) };
    assert!(
        support::wait_until(Duration::from_secs(5), || reloads(proxy, result) > before),
        "no reload counted as {result}: {:?}",
        proxy.logs()
    );
}

fn get(conn: &mut RawConn, key: &str) -> String {
    conn.command(&["GET", key])
}

#[test]
fn a_new_ttl_and_a_new_rule_apply_while_a_connection_opened_before_keeps_working() {
    let redis = RedisServer::start();
    let file = File::new("cache_ttl = \"1h\"\n");
    let proxy = start(&redis, &file);
    let mut conn = RawConn::connect(proxy.resp_addr());
    redis.set("before", "1");
    assert_eq!(get(&mut conn, "before"), bulk("1"));

    file.write("cache_ttl = \"1s\"\n\n[[cache_rules]]\npattern = \"live:*\"\ncache = false\n");
    hangup(&proxy, "ok");
    // The same connection, after the reload.
    redis.set("before", "2");
    assert_eq!(
        get(&mut conn, "before"),
        bulk("1"),
        "stored before: its hour stands"
    );
    redis.set("after", "a");
    assert_eq!(get(&mut conn, "after"), bulk("a"));
    redis.set("after", "b");
    assert_eq!(get(&mut conn, "after"), bulk("a"), "cached, for a second");
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(get(&mut conn, "after"), bulk("b"), "the new one-second TTL");
    redis.set("live:1", "x");
    assert_eq!(get(&mut conn, "live:1"), bulk("x"));
    redis.set("live:1", "y");
    assert_eq!(
        get(&mut conn, "live:1"),
        bulk("y"),
        "the new rule: not cached"
    );

    let (_, stats) = support::http_get(proxy.admin_addr(), "/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(
        stats["config_reloaded_at"].as_f64().unwrap() > 0.0,
        "{stats}"
    );
    let (_, config) = support::http_get(proxy.admin_addr(), "/config");
    assert!(config.contains("\"cache_ttl\":\"1s\""), "{config}");
    assert!(
        proxy
            .metric("redis_proxy_config_last_reload_success_timestamp_seconds")
            .unwrap()
            > 1.0e9
    );
}

#[test]
fn a_bad_file_changes_nothing_is_counted_and_its_key_is_named() {
    let redis = RedisServer::start();
    let file = File::new("cache_ttl = \"1h\"\n");
    let proxy = start(&redis, &file);
    let mut conn = RawConn::connect(proxy.resp_addr());
    for (bad, key) in [
        ("cache_ttl = \"soon\"\n", "cache_ttl"),
        ("cache_ttl = \"1s\"\nno_such_key = 1\n", "no_such_key"),
        ("cache_ttl = [\n", "TOML"),
    ] {
        file.write(bad);
        hangup(&proxy, "error");
        assert!(
            support::wait_until(Duration::from_secs(2), || proxy
                .logs()
                .iter()
                .any(|line| line.contains("nothing changed") && line.contains(key))),
            "the error names {key}: {:?}",
            proxy.logs()
        );
    }
    assert_eq!(reloads(&proxy, "ok"), 0.0);
    // The old TTL still holds: an hour, not a second.
    redis.set("k", "1");
    assert_eq!(get(&mut conn, "k"), bulk("1"));
    redis.set("k", "2");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(get(&mut conn, "k"), bulk("1"));
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {token}")
}

fn http_status(proxy: &Proxy, path: &str, header: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(proxy.http_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{header}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response[9..12].parse().unwrap()
}

fn users(ada: &str, bob: bool) -> String {
    let mut text = format!("[[users]]\nname = \"ada\"\npassword = \"{ada}\"\nkeys = [\"*\"]\n");
    if bob {
        text.push_str("\n[[users]]\nname = \"bob\"\npassword = \"bob-1\"\nkeys = [\"*\"]\n");
    }
    text
}

fn auth(conn: &mut RawConn, user: &str, password: &str) -> String {
    conn.command(&["AUTH", user, password])
}

#[test]
fn users_a_changed_password_keeps_connections_and_a_removed_user_loses_them() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let file = File::new(&users("ada-1", true));
    let proxy = start(&redis, &file);
    let mut ada = RawConn::connect(proxy.resp_addr());
    assert_eq!(auth(&mut ada, "ada", "ada-1"), "+OK\r\n");
    let mut bob = RawConn::connect(proxy.resp_addr());
    assert_eq!(auth(&mut bob, "bob", "bob-1"), "+OK\r\n");
    assert_eq!(http_status(&proxy, "/k", &basic("bob", "bob-1")), 200);

    file.write(&users("ada-2", false));
    hangup(&proxy, "ok");
    assert!(bob.is_closed_by_server(), "bob, removed, is disconnected");
    assert_eq!(get(&mut ada, "k"), bulk("v"), "ada's connection stays");
    let mut again = RawConn::connect(proxy.resp_addr());
    assert!(auth(&mut again, "ada", "ada-1").starts_with("-WRONGPASS"));
    assert_eq!(auth(&mut again, "ada", "ada-2"), "+OK\r\n");
    assert_eq!(http_status(&proxy, "/k", &basic("bob", "bob-1")), 401);
    assert_eq!(http_status(&proxy, "/k", &basic("ada", "ada-1")), 401);
    assert_eq!(http_status(&proxy, "/k", &basic("ada", "ada-2")), 200);
}

#[test]
fn a_restart_only_change_is_logged_by_name_and_not_applied() {
    let redis = RedisServer::start();
    let file = File::new("max_dedicated_connections = 10\nmax_clients = 100\n");
    let proxy = start(&redis, &file);
    file.write("max_dedicated_connections = 20\nmax_clients = 200\n");
    hangup(&proxy, "ok");
    assert!(
        support::wait_until(Duration::from_secs(2), || proxy.logs().iter().any(|line| {
            line.contains("needs a restart") && line.contains("max_dedicated_connections")
        })),
        "{:?}",
        proxy.logs()
    );
    let (_, config) = support::http_get(proxy.admin_addr(), "/config");
    assert!(
        config.contains("\"max_dedicated_connections\":10"),
        "the old value stays: {config}"
    );
    assert!(
        config.contains("\"max_clients\":200"),
        "the live one applies: {config}"
    );
}

#[test]
fn the_log_level_follows_the_file() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let file = File::new("log_level = \"info\"\n");
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--config", file.0.display())
        .env("RUST_LOG", "")
        .start();
    let answered = |proxy: &Proxy| {
        proxy
            .logs()
            .iter()
            .filter(|line| line.contains("\"answered\""))
            .count()
    };
    file.write("log_level = \"warn\"\n");
    hangup(&proxy, "ok");
    support::http_get(proxy.http_addr(), "/k");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(answered(&proxy), 0, "no debug line at warn");
    file.write("log_level = \"debug\"\n");
    hangup(&proxy, "ok");
    support::http_get(proxy.http_addr(), "/k");
    assert!(
        support::wait_until(Duration::from_secs(2), || answered(&proxy) > 0),
        "a request's debug line at debug: {:?}",
        proxy.logs()
    );
}

#[test]
fn a_smaller_capacity_evicts_down_to_it_and_the_cache_is_otherwise_kept() {
    let redis = RedisServer::start();
    let file = File::new("cache_capacity = 100\n");
    let proxy = start(&redis, &file);
    let mut conn = RawConn::connect(proxy.resp_addr());
    for i in 0..50 {
        redis.set(format!("k{i}"), "v");
        get(&mut conn, &format!("k{i}"));
    }
    let entries = |proxy: &Proxy| -> u64 {
        let (_, stats) = support::http_get(proxy.admin_addr(), "/stats");
        let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
        stats["cache"]["entries"].as_u64().unwrap()
    };
    assert_eq!(entries(&proxy), 50);
    file.write("cache_capacity = 100\nrequest_timeout = \"2s\"\n");
    hangup(&proxy, "ok");
    assert_eq!(entries(&proxy), 50, "a reload keeps the cache");
    file.write("cache_capacity = 10\n");
    hangup(&proxy, "ok");
    assert_eq!(entries(&proxy), 10);
    // The most recently used stayed.
    redis.set("k49", "changed");
    assert_eq!(get(&mut conn, "k49"), bulk("v"));
}
