//! Transparent mode (`--forward-commands`) against a real Redis: real clients
//! doing ordinary work get what Redis itself answers, reads are cached and
//! dropped when written, every client reads its own writes, admin commands and
//! keys outside a user's patterns are refused, and a client leaving mid-state
//! leaves no dedicated connection behind.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Proxy, ProxyBuilder, RedisServer};

fn transparent(redis: &RedisServer) -> ProxyBuilder {
    ProxyBuilder::new(&redis.url()).flag("--forward-commands")
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a client script against `port` and returns what it printed.
fn transcript(program: &str, script: &str, port: u16) -> String {
    let mut command = Command::new(program);
    command
        .arg(manifest_dir().join("tests/clients").join(script))
        .arg(port.to_string())
        .env("PYTHONPATH", manifest_dir().join("target/clients/python"));
    let output = command.output().expect("run the client script");
    assert!(
        output.status.success(),
        "{script} against port {port} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The script against Redis directly and against a transparent proxy in
/// front of another, empty Redis: the transcripts must be equal.
fn same_as_redis(program: &str, script: &str, tracking: bool) {
    let direct = RedisServer::start();
    let behind = RedisServer::start();
    let mut builder = transparent(&behind);
    if tracking {
        builder = builder.arg("--invalidation", "tracking");
    }
    let proxy = builder.start();
    let expected = transcript(program, script, direct.port());
    let got = transcript(program, script, proxy.resp_addr().port());
    assert!(expected.lines().count() > 20, "{expected}");
    assert_eq!(got, expected, "the proxy's transcript differs from Redis's");
    assert!(got.contains("stale reads: 0"), "{got}");
}

#[test]
fn redis_py_gets_what_redis_answers_in_both_protocols() {
    same_as_redis("python3", "redis_py_forwarding.py", false);
}

#[test]
fn redis_py_gets_what_redis_answers_with_tracking() {
    same_as_redis("python3", "redis_py_forwarding.py", true);
}

#[test]
fn ioredis_with_auto_pipelining_and_node_redis_get_what_redis_answers() {
    same_as_redis("node", "node_forwarding.mjs", false);
}

#[test]
fn redis_benchmarks_default_tests_run_without_errors() {
    let redis = RedisServer::start();
    let proxy = transparent(&redis).start();
    let port = proxy.resp_addr().port().to_string();
    let output = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-n",
            "2000",
            "-c",
            "10",
            "-q",
        ])
        .output()
        .expect("run redis-benchmark");
    let text = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}\n{errors}");
    for test in [
        "SET:",
        "GET:",
        "INCR:",
        "LPUSH:",
        "LPOP:",
        "SADD:",
        "HSET:",
        "ZADD:",
        "LRANGE_100",
        "MSET",
    ] {
        assert!(text.contains(test), "no {test} in:\n{text}");
    }
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("requests per second"))
        .collect();
    assert!(lines.len() >= 15, "{text}");
    assert!(
        !text.contains("ERR") && !errors.contains("ERR"),
        "{text}\n{errors}"
    );
    assert_eq!(redis.calls("set"), 2000, "every SET reached Redis");
}

/// One RESP connection to the proxy, spoken by hand.
struct Raw(TcpStream);

impl Raw {
    fn connect(proxy: &Proxy) -> Self {
        let stream = TcpStream::connect(proxy.resp_addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Self(stream)
    }

    fn send(&mut self, commands: &[&[&str]]) {
        let mut out = Vec::new();
        for args in commands {
            out.extend(format!("*{}\r\n", args.len()).bytes());
            for arg in *args {
                out.extend(format!("${}\r\n{arg}\r\n", arg.len()).bytes());
            }
        }
        self.0.write_all(&out).unwrap();
    }

    /// Reads until `expected` bytes have come, and returns them.
    fn read(&mut self, expected: usize) -> String {
        let mut got = vec![0u8; expected];
        self.0.read_exact(&mut got).expect("the expected reply");
        String::from_utf8_lossy(&got).into_owned()
    }
}

#[test]
fn a_read_after_a_write_in_one_pipeline_sees_the_write() {
    let redis = RedisServer::start();
    let proxy = transparent(&redis).start();
    let mut raw = Raw::connect(&proxy);
    raw.send(&[
        &["SET", "k", "1"],
        &["GET", "k"],
        &["HSET", "h", "f", "a"],
        &["HGET", "h", "f"],
        &["SET", "k", "2"],
        &["HSET", "h", "f", "b"],
        &["GET", "k"],
        &["HGET", "h", "f"],
    ]);
    let expected = "+OK\r\n$1\r\n1\r\n:1\r\n$1\r\na\r\n+OK\r\n:0\r\n$1\r\n2\r\n$1\r\nb\r\n";
    assert_eq!(raw.read(expected.len()), expected);
}

#[test]
fn cached_reads_are_served_from_the_cache_until_their_key_is_written() {
    let redis = RedisServer::start();
    let proxy = transparent(&redis).start();
    let mut client = proxy.redis_client();
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("one")
        .query(&mut client)
        .unwrap();
    for _ in 0..5 {
        let got: String = redis::cmd("HGET")
            .arg("h")
            .arg("f")
            .query(&mut client)
            .unwrap();
        assert_eq!(got, "one");
        let len: i64 = redis::cmd("HLEN").arg("h").query(&mut client).unwrap();
        assert_eq!(len, 1);
    }
    assert_eq!(redis.calls("hget"), 1, "one HGET reached Redis");
    assert_eq!(redis.calls("hlen"), 1);
    // A write through the proxy drops every reply cached for the key.
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("g")
        .arg("two")
        .query(&mut client)
        .unwrap();
    let len: i64 = redis::cmd("HLEN").arg("h").query(&mut client).unwrap();
    assert_eq!(len, 2);
    let got: String = redis::cmd("HGET")
        .arg("h")
        .arg("f")
        .query(&mut client)
        .unwrap();
    assert_eq!(got, "one");
    assert_eq!(redis.calls("hget"), 2);
    // Reads that change with no write are never cached.
    for _ in 0..3 {
        let _: i64 = redis::cmd("TTL").arg("h").query(&mut client).unwrap();
    }
    assert_eq!(redis.calls("ttl"), 3);
}

#[tokio::test]
async fn a_write_through_resp_is_seen_by_http_at_once() {
    let redis = RedisServer::start();
    redis.set("k", "old");
    let proxy = transparent(&redis).start();
    let read = || async {
        reqwest::get(proxy.url("k"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert_eq!(read().await, "old");
    assert_eq!(read().await, "old");
    let mut client = proxy.redis_client();
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("new")
        .query(&mut client)
        .unwrap();
    assert_eq!(read().await, "new");
    let _: () = redis::cmd("DEL").arg("k").query(&mut client).unwrap();
    assert_eq!(reqwest::get(proxy.url("k")).await.unwrap().status(), 404);
}

/// Many clients each writing and reading their own key: no read may return
/// anything but the write just acknowledged. And a reader of a key another
/// client writes never sees a value older than the last write acknowledged
/// before the read began.
fn read_your_writes(tracking: bool) {
    let redis = RedisServer::start();
    let mut builder = transparent(&redis);
    if tracking {
        builder = builder.arg("--invalidation", "tracking");
    }
    let proxy = builder.start();
    let stale = std::sync::atomic::AtomicUsize::new(0);
    let acknowledged = std::sync::atomic::AtomicI64::new(-1);
    let (proxy, stale_ref, acknowledged) = (&proxy, &stale, &acknowledged);
    std::thread::scope(|scope| {
        for c in 0..8 {
            let stale = stale_ref;
            scope.spawn(move || {
                let mut client = proxy.redis_client();
                for i in 0..300 {
                    let key = format!("own:{c}");
                    let _: () = redis::cmd("SET")
                        .arg(&key)
                        .arg(i)
                        .query(&mut client)
                        .unwrap();
                    let got: i64 = redis::cmd("GET").arg(&key).query(&mut client).unwrap();
                    let hkey = format!("ownh:{c}");
                    let _: () = redis::cmd("HSET")
                        .arg(&hkey)
                        .arg("f")
                        .arg(i)
                        .query(&mut client)
                        .unwrap();
                    let hgot: i64 = redis::cmd("HGET")
                        .arg(&hkey)
                        .arg("f")
                        .query(&mut client)
                        .unwrap();
                    if got != i || hgot != i {
                        stale.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
        scope.spawn(move || {
            let mut client = proxy.redis_client();
            for i in 0..2000i64 {
                let _: () = redis::cmd("SET")
                    .arg("shared")
                    .arg(i)
                    .query(&mut client)
                    .unwrap();
                acknowledged.store(i, std::sync::atomic::Ordering::SeqCst);
            }
        });
        for _ in 0..3 {
            let stale = stale_ref;
            scope.spawn(move || {
                let mut client = proxy.redis_client();
                let start = Instant::now();
                while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < 1999
                    && start.elapsed() < Duration::from_secs(60)
                {
                    let floor = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
                    let got: Option<i64> =
                        redis::cmd("GET").arg("shared").query(&mut client).unwrap();
                    if got.unwrap_or(-1) < floor {
                        stale.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(stale.into_inner(), 0, "stale reads");
}

#[test]
fn every_client_reads_its_own_writes_under_concurrency() {
    read_your_writes(false);
}

#[test]
fn every_client_reads_its_own_writes_under_concurrency_with_tracking() {
    read_your_writes(true);
}

#[test]
fn admin_commands_are_refused_unless_asked_and_unknown_ones_get_redis_errors() {
    let redis = RedisServer::start();
    let proxy = transparent(&redis).start();
    let mut raw = Raw::connect(&proxy);
    raw.send(&[
        &["CONFIG", "GET", "save"],
        &["FLUSHALL"],
        &["NOSUCH", "x"],
        &["SLOWLOG", "GET"],
    ]);
    let mut all = String::new();
    while all.matches("\r\n").count() < 4 {
        all.push_str(&raw.read(1));
    }
    let lines: Vec<&str> = all.lines().collect();
    assert!(
        lines[0].starts_with("-ERR 'config' is an admin command"),
        "{all}"
    );
    assert!(
        lines[1].starts_with("-ERR 'flushall' is an admin command"),
        "{all}"
    );
    assert_eq!(
        lines[2],
        "-ERR unknown command 'NOSUCH', with args beginning with: 'x' "
    );
    // Flagged `admin` on the subcommand, not on `SLOWLOG` itself.
    assert!(
        lines[3].starts_with("-ERR 'slowlog' is an admin command"),
        "{all}"
    );
    assert_eq!(redis.calls("config"), 0);

    let admin = transparent(&redis).flag("--forward-admin-commands").start();
    redis.set("k", "v");
    let mut client = admin.redis_client();
    let got: String = redis::cmd("GET").arg("k").query(&mut client).unwrap();
    assert_eq!(got, "v");
    let _: () = redis::cmd("FLUSHALL").query(&mut client).unwrap();
    let got: Option<String> = redis::cmd("GET").arg("k").query(&mut client).unwrap();
    assert_eq!(
        got, None,
        "FLUSHALL through the proxy flushes its cache too"
    );
}

#[test]
fn keys_outside_a_users_patterns_are_refused_on_forwarded_commands() {
    let redis = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("redis-proxy-forwarding-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let users = dir.join("users.toml");
    std::fs::write(
        &users,
        "[[users]]\nname = \"app\"\npassword = \"pw\"\nkeys = [\"app:*\"]\n",
    )
    .unwrap();
    let proxy = transparent(&redis).arg("--config", users.display()).start();
    let mut raw = Raw::connect(&proxy);
    raw.send(&[
        &["AUTH", "app", "pw"],
        &["SET", "app:1", "x"],
        &["SET", "other", "x"],
        &["HGET", "other", "f"],
        &["MSET", "app:2", "y", "other", "z"],
    ]);
    let noperm = "-NOPERM No permissions to access a key\r\n";
    let expected = format!("+OK\r\n+OK\r\n{noperm}{noperm}{noperm}");
    assert_eq!(raw.read(expected.len()), expected);
    assert_eq!(redis.calls("set"), 1);
    assert_eq!(redis.calls("mset"), 0);
}

/// Clients connected to the backing Redis, by its own count.
fn backend_clients(redis: &RedisServer) -> usize {
    let list: String = redis.cmd(&["CLIENT", "LIST"]);
    list.lines().count()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_leaving_mid_state_leaves_no_dedicated_connection_behind() {
    let redis = RedisServer::start();
    let proxy = transparent(&redis).start();
    // Warm up the shared path, so only dedicated connections come and go.
    let mut client = proxy.redis_client();
    let _: () = redis::cmd("SET")
        .arg("warm")
        .arg("1")
        .query(&mut client)
        .unwrap();
    let baseline = backend_clients(&redis);
    let states: [&[&[&str]]; 4] = [
        &[&["MULTI"], &["SET", "never", "1"]],
        &[&["SUBSCRIBE", "ch"]],
        &[&["BLPOP", "q", "0"]],
        &[&["WATCH", "k"]],
    ];
    for state in states {
        let mut raw = Raw::connect(&proxy);
        raw.send(state);
        wait_for("a dedicated connection opens", || {
            backend_clients(&redis) == baseline + 1
                && proxy.metric("redis_proxy_dedicated_connections") == Some(1.0)
        });
        drop(raw);
        wait_for("the dedicated connection closes", || {
            backend_clients(&redis) == baseline
                && proxy.metric("redis_proxy_dedicated_connections") == Some(0.0)
        });
    }
    let exists: i64 = redis.cmd(&["EXISTS", "never"]);
    assert_eq!(exists, 0, "the transaction was discarded");
}

#[test]
fn dedicated_connections_are_bounded_and_return_to_the_shared_path() {
    let redis = RedisServer::start();
    let proxy = transparent(&redis)
        .arg("--max-dedicated-connections", 1)
        .start();
    let mut first = Raw::connect(&proxy);
    first.send(&[&["BLPOP", "q", "0"]]);
    wait_for("the first client blocks", || {
        proxy.metric("redis_proxy_dedicated_connections") == Some(1.0)
    });
    let mut second = Raw::connect(&proxy);
    second.send(&[&["BLPOP", "q", "0"], &["PING"]]);
    let refused = "-ERR max number of clients reached (--max-dedicated-connections)\r\n+PONG\r\n";
    assert_eq!(second.read(refused.len()), refused);
    // The block ends; the client is back on the shared path.
    redis.cmd::<i64>(&["RPUSH", "q", "job"]);
    let woken = "*2\r\n$1\r\nq\r\n$3\r\njob\r\n";
    assert_eq!(first.read(woken.len()), woken);
    wait_for("the dedicated connection is given back", || {
        proxy.metric("redis_proxy_dedicated_connections") == Some(0.0)
    });
    first.send(&[&["SET", "k", "v"], &["GET", "k"]]);
    assert_eq!(first.read(12), "+OK\r\n$1\r\nv\r\n");
    second.send(&[&["BLPOP", "q", "1"]]);
    assert_eq!(second.read(5), "*-1\r\n");
}

#[test]
fn a_command_refused_inside_a_transaction_aborts_it() {
    let redis = RedisServer::start();
    let proxy = transparent(&redis).start();
    let mut raw = Raw::connect(&proxy);
    raw.send(&[
        &["MULTI"],
        &["SET", "a", "1"],
        &["CONFIG", "GET", "save"],
        &["EXEC"],
        &["GET", "a"],
    ]);
    let mut all = String::new();
    while all.matches("\r\n").count() < 5 {
        all.push_str(&raw.read(1));
    }
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines[0], "+OK");
    assert_eq!(lines[1], "+QUEUED");
    assert!(
        lines[2].starts_with("-ERR 'config' is an admin command"),
        "{all}"
    );
    assert_eq!(
        lines[3],
        "-EXECABORT Transaction discarded because of previous errors."
    );
    assert_eq!(lines[4], "$-1");
}

#[test]
fn without_the_flag_writes_are_refused_as_before() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut raw = Raw::connect(&proxy);
    raw.send(&[&["SET", "k", "v"]]);
    let mut all = String::new();
    while !all.ends_with("\r\n") {
        all.push_str(&raw.read(1));
    }
    assert!(
        all.starts_with("-ERR unknown or unsupported command 'SET'"),
        "{all}"
    );
    assert_eq!(redis.calls("set"), 0);
}

#[test]
fn forwarded_commands_count_toward_the_client_limit() {
    let redis = RedisServer::start();
    let addr = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let relay = support::Relay::start(addr, Duration::ZERO);
    let proxy = ProxyBuilder::new(&relay.url())
        .flag("--forward-commands")
        .arg("--worker-threads", 1)
        .arg("--max-clients", 1)
        .arg("--request-timeout", "30s")
        .start();
    let mut warm = Raw::connect(&proxy);
    warm.send(&[&["SET", "warm", "w"], &["GET", "warm"]]);
    assert_eq!(warm.read(12), "+OK\r\n$1\r\nw\r\n");

    // Redis one second away: the first SET holds the only client slot.
    relay.set_delay(Duration::from_secs(1));
    let mut clients: Vec<Raw> = (0..4).map(|_| Raw::connect(&proxy)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let (key, value) = (format!("k{i}"), format!("v{i}"));
        client.send(&[&["SET", &key, &value]]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let refusal = "-ERR overloaded: too many requests in flight\r\n";
    let replies: Vec<String> = clients
        .iter_mut()
        .map(|client| {
            let first = client.read(1);
            let rest = if first == "+" { 4 } else { refusal.len() - 1 };
            first + &client.read(rest)
        })
        .collect();
    assert_eq!(replies[0], "+OK\r\n", "{replies:?}");
    assert!(replies[1..].iter().all(|r| r == refusal), "{replies:?}");
    // And a cached GET beside a forwarded command is refused alike.
    clients[0].send(&[&["SET", "k0", "again"]]);
    std::thread::sleep(Duration::from_millis(100));
    warm.send(&[&["GET", "warm"]]);
    assert_eq!(warm.read(refusal.len()), refusal);
    assert_eq!(clients[0].read(5), "+OK\r\n");
    relay.set_delay(Duration::ZERO);
    assert_eq!(
        redis.calls("set"),
        3,
        "warm, k0 twice: refused SETs never reach Redis"
    );
}
