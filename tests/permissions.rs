//! What a user may do in transparent mode beyond naming keys: scripts and
//! functions, pub/sub channels, and `SORT`'s key patterns, against a real
//! Redis. The backend sees one user, the proxy's; these are the proxy's own
//! checks, and each test fails where they are missing.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::{Proxy, ProxyBuilder, RawConn, RedisServer};

const ROOT_PASSWORD: &str = "pw-root";

/// Users: `app` (keys `app:*`, no channels by default), `scripter` (keys
/// `app:*`, `scripts = true`), `news` (keys `n:*`, channels `news.*` and
/// `alerts`), and `all` (every key, so every channel by default).
fn users_file() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "redis-proxy-permissions-{}-{}",
        std::process::id(),
        support::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("users.toml");
    std::fs::write(
        &path,
        r#"
[[users]]
name = "app"
password = "pw"
keys = ["app:*"]

[[users]]
name = "scripter"
password = "pw"
keys = ["app:*"]
scripts = true

[[users]]
name = "news"
password = "pw"
keys = ["n:*"]
channels = ["news.*", "alerts"]

[[users]]
name = "all"
password = "pw"
keys = ["*"]
"#,
    )
    .unwrap();
    path
}

/// Redis with `other:1 = secret` and `app:list = [3 1 2]`, and a transparent
/// proxy with the users of [`users_file`].
fn start() -> (RedisServer, Proxy) {
    let redis = RedisServer::start();
    redis.set("other:1", "secret");
    redis.cmd::<i64>(&["RPUSH", "app:list", "3", "1", "2"]);
    let proxy = ProxyBuilder::new(&redis.url())
        .flag("--forward-commands")
        .env("REDIS_PROXY_CLIENT_PASSWORD", ROOT_PASSWORD)
        .arg("--config", users_file().display())
        .start();
    (redis, proxy)
}

/// A connection authenticated as `user`.
fn login(proxy: &Proxy, user: &str, password: &str) -> RawConn {
    let mut conn = RawConn::connect(proxy.resp_addr());
    assert_eq!(command(&mut conn, &["AUTH", user, password]), "+OK\r\n");
    conn
}

fn command(conn: &mut RawConn, args: &[&str]) -> String {
    conn.command(args)
}

fn is_noperm(reply: &str) -> bool {
    reply.starts_with("-NOPERM")
}

#[test]
fn a_user_with_key_patterns_runs_no_script_unless_it_may() {
    let (redis, proxy) = start();
    let mut app = login(&proxy, "app", "pw");
    let sha = redis.cmd::<String>(&["SCRIPT", "LOAD", "return redis.call('GET','other:1')"]);
    let attempts: [&[&str]; 7] = [
        &["EVAL", "return redis.call('GET','other:1')", "0"],
        &[
            "EVAL",
            "return redis.call('SET','other:1','PWNED')",
            "1",
            "app:x",
        ],
        &[
            "EVAL",
            "return redis.call('SET',ARGV[1],'PWNED')",
            "0",
            "other:1",
        ],
        &["EVALSHA", &sha, "0"],
        &["EVAL_RO", "return redis.call('GET','other:1')", "0"],
        &["FCALL", "anything", "0"],
        &["SCRIPT", "LOAD", "return 1"],
    ];
    for attempt in attempts {
        let reply = command(&mut app, attempt);
        assert!(is_noperm(&reply), "{attempt:?}: {reply}");
        assert!(reply.contains("scripts"), "the reply says why: {reply}");
    }
    // Inside a transaction: refused while queueing, so EXEC aborts.
    assert_eq!(command(&mut app, &["MULTI"]), "+OK\r\n");
    let queued = command(
        &mut app,
        &["EVAL", "return redis.call('SET','other:1','PWNED')", "0"],
    );
    assert!(is_noperm(&queued), "{queued}");
    assert!(command(&mut app, &["EXEC"]).starts_with("-EXECABORT"));
    assert_eq!(redis.cmd::<String>(&["GET", "other:1"]), "secret");
    assert_eq!(
        redis.calls("eval") + redis.calls("evalsha"),
        0,
        "nothing ran"
    );

    // Given `scripts = true`, or every key, a user runs scripts as before.
    let mut scripter = login(&proxy, "scripter", "pw");
    assert_eq!(
        command(
            &mut scripter,
            &["EVAL", "return redis.call('GET','other:1')", "0"]
        ),
        "$6\r\nsecret\r\n"
    );
    for (user, password) in [("all", "pw"), ("default", ROOT_PASSWORD)] {
        let mut conn = login(&proxy, user, password);
        assert_eq!(
            command(&mut conn, &["EVALSHA", &sha, "0"]),
            "$6\r\nsecret\r\n"
        );
    }
}

#[test]
fn pubsub_is_bound_by_the_users_channel_patterns() {
    let (redis, proxy) = start();
    redis.cmd::<String>(&["CONFIG", "SET", "notify-keyspace-events", "KA"]);
    // No channel patterns: nothing, keyspace notifications included.
    let mut app = login(&proxy, "app", "pw");
    for attempt in [
        &["SUBSCRIBE", "news.sport"][..],
        &["PSUBSCRIBE", "*"],
        &["PSUBSCRIBE", "__keyspace@0__:*"],
        &["SSUBSCRIBE", "app:channel"],
        &["PUBLISH", "news.sport", "x"],
        &["SPUBLISH", "app:channel", "x"],
    ] {
        assert_eq!(
            command(&mut app, attempt),
            "-NOPERM No permissions to access a channel\r\n",
            "{attempt:?}"
        );
    }
    assert_eq!(
        command(&mut app, &["PING"]),
        "+PONG\r\n",
        "still on the shared path"
    );

    let mut news = login(&proxy, "news", "pw");
    assert_eq!(
        command(&mut news, &["PUBLISH", "other", "x"]),
        "-NOPERM No permissions to access a channel\r\n"
    );
    assert_eq!(command(&mut news, &["PUBLISH", "alerts", "x"]), ":0\r\n");
    // A pattern is allowed only as the user wrote it.
    assert_eq!(
        command(&mut news, &["PSUBSCRIBE", "news.s*"]),
        "-NOPERM No permissions to access a channel\r\n"
    );
    assert_eq!(
        command(&mut news, &["PSUBSCRIBE", "news.*"]),
        "*3\r\n$10\r\npsubscribe\r\n$6\r\nnews.*\r\n:1\r\n"
    );
    // Subscribed: a channel outside its patterns is still refused, and what
    // it may hear arrives.
    assert_eq!(
        command(&mut news, &["SUBSCRIBE", "__keyspace@0__:other:1"]),
        "-NOPERM No permissions to access a channel\r\n"
    );
    assert_eq!(
        command(&mut news, &["SUBSCRIBE", "alerts"]),
        "*3\r\n$9\r\nsubscribe\r\n$6\r\nalerts\r\n:2\r\n"
    );
    let mut root = login(&proxy, "default", ROOT_PASSWORD);
    assert_eq!(command(&mut root, &["PUBLISH", "alerts", "fire"]), ":1\r\n");
    assert_eq!(
        news.read_reply(),
        "*3\r\n$7\r\nmessage\r\n$6\r\nalerts\r\n$4\r\nfire\r\n"
    );
    // A user who reads every key hears every channel by default.
    let mut all = login(&proxy, "all", "pw");
    assert_eq!(
        command(&mut all, &["PSUBSCRIBE", "__keyspace@0__:*"]),
        "*3\r\n$10\r\npsubscribe\r\n$16\r\n__keyspace@0__:*\r\n:1\r\n"
    );
    assert_eq!(
        command(&mut root, &["SET", "other:1", "changed"]),
        "+OK\r\n"
    );
    let notification = all.read_reply();
    assert!(
        notification.contains("__keyspace@0__:other:1"),
        "{notification}"
    );
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn sort_by_or_get_patterns_need_every_key() {
    let (_redis, proxy) = start();
    let mut app = login(&proxy, "app", "pw");
    assert_eq!(
        command(&mut app, &["SORT", "app:list"]),
        "*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n"
    );
    assert_eq!(
        command(&mut app, &["SORT", "app:list", "BY", "other:*"]),
        "-ERR BY option of SORT denied due to insufficient ACL permissions.\r\n"
    );
    assert_eq!(
        command(&mut app, &["SORT_RO", "app:list", "GET", "other:*"]),
        "-ERR GET option of SORT denied due to insufficient ACL permissions.\r\n"
    );
    let mut all = login(&proxy, "all", "pw");
    assert_eq!(
        command(&mut all, &["SORT", "app:list", "BY", "nosort", "GET", "#"]),
        "*3\r\n$1\r\n3\r\n$1\r\n1\r\n$1\r\n2\r\n"
    );
}
