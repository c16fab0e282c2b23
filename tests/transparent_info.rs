//! Transparent mode as clients that read the server see it: `INFO` is
//! Redis's own with the proxy's section appended (redis-py parses it),
//! `CONFIG RESETSTAT` resets the proxy's counts too, and `AUTH` without
//! proxy users is answered by Redis exactly as Redis answers it.

mod support;

use std::process::Command;

use support::{Proxy, ProxyBuilder, RawConn, RedisServer};

fn call(addr: std::net::SocketAddr, args: &[&str]) -> String {
    RawConn::connect(addr).command(args)
}

fn transparent(redis: &RedisServer) -> Proxy {
    ProxyBuilder::new(&redis.url())
        .flag("--forward-commands")
        .flag("--forward-admin-commands")
        .start()
}

#[test]
fn info_is_redis_own_with_the_proxy_section_and_redis_py_reads_it() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = transparent(&redis);
    assert!(call(proxy.resp_addr(), &["GET", "k"]).ends_with("v\r\n"));
    call(proxy.resp_addr(), &["GET", "k"]);

    let info = call(proxy.resp_addr(), &["INFO"]);
    let direct = call(redis.addr(), &["INFO", "server"]);
    let version = direct
        .lines()
        .find(|line| line.starts_with("redis_version:"))
        .unwrap();
    for line in [
        version,
        "arch_bits:",
        "total_commands_processed:",
        "# Proxy",
        "proxy_cache_entries:1",
        "proxy_cache_hits:1",
    ] {
        assert!(info.contains(line), "{line:?} missing:\n{info}");
    }
    assert!(
        info.ends_with("\r\n\r\n") || info.ends_with("\r\n"),
        "{info:?}"
    );
    let only = call(proxy.resp_addr(), &["INFO", "proxy"]);
    assert!(
        only.contains("# Proxy\r\n") && !only.contains("# Server"),
        "{only}"
    );
    let server = call(proxy.resp_addr(), &["INFO", "server"]);
    assert!(
        server.contains(version) && !server.contains("# Proxy"),
        "{server}"
    );

    let script = "import redis, sys\n\
        r = redis.Redis(port=int(sys.argv[1]))\n\
        info = r.info()\n\
        proxy = r.info('proxy')\n\
        print(info['arch_bits'], info['redis_version'], proxy['proxy_cache_entries'])\n";
    let output = Command::new("python3")
        .args(["-c", script, &proxy.resp_addr().port().to_string()])
        .env("PYTHONPATH", support::python_path())
        .output()
        .expect("python3");
    let printed = String::from_utf8_lossy(&output.stdout);
    let version = version.trim_start_matches("redis_version:").trim();
    assert_eq!(
        printed.trim(),
        format!("64 {version} 1"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn config_resetstat_resets_the_proxy_counts_too() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = transparent(&redis);
    for _ in 0..3 {
        call(proxy.resp_addr(), &["GET", "k"]);
    }
    let before = call(proxy.resp_addr(), &["INFO", "proxy"]);
    assert!(before.contains("proxy_cache_hits:2\r\n"), "{before}");
    assert_eq!(call(proxy.resp_addr(), &["CONFIG", "RESETSTAT"]), "+OK\r\n");
    let after = call(proxy.resp_addr(), &["INFO", "proxy"]);
    assert!(after.contains("proxy_cache_hits:0\r\n"), "{after}");
    assert!(after.contains("proxy_cache_misses:0\r\n"), "{after}");
    let stats = call(proxy.resp_addr(), &["INFO", "stats"]);
    let processed: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("total_commands_processed:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        processed < 10,
        "Redis's own counts were reset too: {processed}"
    );
}

#[test]
fn auth_without_proxy_users_is_answered_by_redis_as_redis_answers_it() {
    for extra in [&[][..], &["--requirepass", "s3cret"][..]] {
        let redis = RedisServer::start_with(extra);
        let url = match extra.is_empty() {
            true => redis.url(),
            false => format!("redis://:s3cret@127.0.0.1:{}", redis.port()),
        };
        let proxy = ProxyBuilder::new(&url).flag("--forward-commands").start();
        for args in [
            &["AUTH", "wrong"][..],
            &["AUTH", "default", "wrong"],
            &["AUTH", "s3cret"],
            &["AUTH", "nobody", "s3cret"],
            &["HELLO", "3", "AUTH", "default", "wrong"],
            &["HELLO", "2", "AUTH", "nobody", ""],
        ] {
            // HELLO's map names each connection's own id.
            let masked = |reply: String| {
                let mut lines: Vec<&str> = reply.split("\r\n").collect();
                if let Some(at) = lines.iter().position(|line| *line == "id") {
                    lines[at + 1] = ":ID";
                }
                lines.join("\r\n")
            };
            let direct = masked(call(redis.addr(), args));
            assert_eq!(
                masked(call(proxy.resp_addr(), args)),
                direct,
                "{args:?} with {extra:?}"
            );
        }
    }
    // A password set through the proxy (redis-py's own AUTH test): Redis
    // checks it on a connection of its own, which the URL's lack of
    // credentials does not stop at its handshake.
    let redis = RedisServer::start();
    let proxy = transparent(&redis);
    let mut conn = RawConn::connect(proxy.resp_addr());
    let info = call(redis.addr(), &["INFO", "server"]);
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap();
    assert_eq!(
        conn.command(&["CONFIG", "SET", "requirepass", "p"]),
        "+OK\r\n"
    );
    assert_eq!(conn.command(&["AUTH", "p"]), "+OK\r\n");
    assert_eq!(conn.command(&["AUTH", "default", "p"]), "+OK\r\n");
    assert!(conn.command(&["AUTH", "q"]).starts_with("-WRONGPASS"));
    // HELLO's credentials too, and it reports the backend's version.
    assert!(
        conn.command(&["HELLO", "3", "AUTH", "default", "q"])
            .starts_with("-WRONGPASS")
    );
    let hello = conn.command(&["HELLO", "3", "AUTH", "default", "p", "SETNAME", "n"]);
    assert!(
        hello.starts_with('%') && hello.contains(&support::bulk(version)),
        "{hello}"
    );
    assert_eq!(conn.command(&["CLIENT", "GETNAME"]), support::bulk("n"));
    // The RESP2 shared connection, opened before the password was set.
    let mut resp2 = RawConn::connect(proxy.resp_addr());
    let cleared = resp2.command(&["CONFIG", "SET", "requirepass", ""]);
    assert_eq!(cleared, "+OK\r\n");
}

/// The `key=value` fields of a `CLIENT LIST` line, by name.
fn fields(line: &str) -> std::collections::BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The lines of a bulk reply.
fn lines(reply: &str) -> Vec<String> {
    reply
        .split("\r\n")
        .skip(1)
        .flat_map(|body| body.split('\n'))
        .filter(|line| line.starts_with("id="))
        .map(str::to_owned)
        .collect()
}

#[test]
fn client_list_info_and_kill_cover_the_proxys_clients_in_redis_format() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = transparent(&redis);
    let mut alpha = RawConn::connect(proxy.resp_addr());
    assert_eq!(alpha.command(&["CLIENT", "SETNAME", "alpha"]), "+OK\r\n");
    assert_eq!(alpha.command(&["SELECT", "2"]), "+OK\r\n");
    let mut beta = RawConn::connect(proxy.resp_addr());
    assert_eq!(
        beta.command(&["CLIENT", "SETINFO", "LIB-NAME", "mylib"]),
        "+OK\r\n"
    );
    assert!(beta.command(&["GET", "k"]).ends_with("v\r\n"));
    let mut subscriber = RawConn::connect(proxy.resp_addr());
    assert!(
        subscriber
            .command(&["SUBSCRIBE", "news"])
            .starts_with("*3\r\n$9\r\nsubscribe")
    );
    let mut me = RawConn::connect(proxy.resp_addr());
    for args in [&["CLIENT", "GETREDIR"][..], &["CLIENT", "TRACKINGINFO"]] {
        let mut direct = RawConn::connect(redis.addr());
        assert_eq!(me.command(args), direct.command(args), "{args:?}");
    }

    let listed = lines(&me.command(&["CLIENT", "LIST"]));
    assert_eq!(listed.len(), 4, "{listed:?}");
    let subscribed = listed
        .iter()
        .map(|l| fields(l))
        .find(|f| f["cmd"] == "subscribe");
    let subscribed = subscribed.expect("the subscriber listed");
    let state = |f: &std::collections::BTreeMap<String, String>| {
        ["sub", "psub", "multi", "flags"].map(|name| f[name].clone())
    };
    assert_eq!(state(&subscribed), ["1", "0", "-1", "P"], "{subscribed:?}");
    let by_name = |name: &str| listed.iter().map(|l| fields(l)).find(|f| f["name"] == name);
    let alpha_fields = by_name("alpha").expect("alpha listed");
    assert_eq!(
        (alpha_fields["db"].as_str(), alpha_fields["cmd"].as_str()),
        ("2", "select")
    );
    let beta_fields = listed
        .iter()
        .map(|l| fields(l))
        .find(|f| f["lib-name"] == "mylib")
        .expect("beta listed");
    assert_eq!(beta_fields["cmd"], "get");
    let mine = listed
        .iter()
        .map(|l| fields(l))
        .find(|f| f["cmd"] == "client|list")
        .unwrap();
    // Every field Redis writes (7.0's), and 7.2's lib-name and lib-ver.
    let mut direct = RawConn::connect(redis.addr());
    let redis_line = lines(&direct.command(&["CLIENT", "LIST"])).remove(0);
    for name in fields(&redis_line)
        .keys()
        .map(String::as_str)
        .chain(["lib-name", "lib-ver"])
    {
        assert!(mine.contains_key(name), "{name} missing from {mine:?}");
    }
    let info = me.command(&["CLIENT", "INFO"]);
    assert_eq!(fields(&lines(&info)[0])["id"], mine["id"], "{info}");
    // A transaction's queued commands, as Redis counts them.
    for addr in [proxy.resp_addr(), redis.addr()] {
        let mut queuing = RawConn::connect(addr);
        let id = &queuing.client_id();
        assert_eq!(queuing.command(&["MULTI"]), "+OK\r\n");
        assert_eq!(queuing.command(&["SET", "a", "1"]), "+QUEUED\r\n");
        assert_eq!(queuing.command(&["INCR", "b"]), "+QUEUED\r\n");
        let listed = RawConn::connect(addr).command(&["CLIENT", "LIST", "ID", id]);
        let listed = fields(&lines(&listed)[0]);
        assert_eq!(state(&listed), ["0", "0", "2", "x"], "{addr}: {listed:?}");
    }

    assert_eq!(
        me.command(&["CLIENT", "KILL", "ID", &alpha_fields["id"]]),
        ":1\r\n"
    );
    assert!(alpha.is_closed_by_server());
    assert_eq!(
        me.command(&["CLIENT", "KILL", "1.2.3.4:5"]),
        "-ERR No such client\r\n"
    );
    assert_eq!(
        me.command(&["CLIENT", "KILL", &beta_fields["addr"]]),
        "+OK\r\n"
    );
    assert!(beta.is_closed_by_server());
    // A subscriber killed is closed, not left listening.
    assert_eq!(
        me.command(&["CLIENT", "KILL", "ID", &subscribed["id"]]),
        ":1\r\n"
    );
    assert!(subscriber.is_closed_by_server());
    assert_eq!(
        me.command(&["CLIENT", "KILL", "USER", "default"]),
        ":0\r\n",
        "SKIPME yes"
    );
    assert_eq!(lines(&me.command(&["CLIENT", "LIST"])).len(), 1);

    let plain = ProxyBuilder::new(&redis.url())
        .flag("--forward-commands")
        .start();
    let refused = call(plain.resp_addr(), &["CLIENT", "LIST"]);
    assert!(
        refused.starts_with("-ERR 'client|list' is an admin command"),
        "{refused}"
    );
}

#[test]
fn client_pause_holds_the_proxys_clients_writes_or_all_until_unpaused_and_not_redis() {
    use std::time::{Duration, Instant};
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = transparent(&redis);
    let mut admin = RawConn::connect(proxy.resp_addr());
    let mut client = RawConn::connect(proxy.resp_addr());
    assert!(client.command(&["GET", "k"]).ends_with("v\r\n"));

    assert_eq!(
        admin.command(&["CLIENT", "PAUSE", "600", "WRITE"]),
        "+OK\r\n"
    );
    let start = Instant::now();
    assert!(client.command(&["GET", "k"]).ends_with("v\r\n"));
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "reads go on: {:?}",
        start.elapsed()
    );
    // Redis itself is not paused.
    redis.set("direct", "1");
    assert!(start.elapsed() < Duration::from_millis(300));
    assert_eq!(client.command(&["SET", "k", "w"]), "+OK\r\n");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "the write waited: {waited:?}"
    );

    assert_eq!(
        admin.command(&["CLIENT", "PAUSE", "20000", "ALL"]),
        "+OK\r\n"
    );
    let start = Instant::now();
    let unpausing = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(admin.command(&["CLIENT", "UNPAUSE"]), "+OK\r\n");
        admin
    });
    assert!(client.command(&["GET", "k"]).ends_with("w\r\n"));
    let held = start.elapsed();
    assert!(
        (Duration::from_millis(350)..Duration::from_secs(3)).contains(&held),
        "a read waited out the ALL pause until UNPAUSE: {held:?}"
    );
    let mut admin = unpausing.join().unwrap();
    assert_eq!(
        admin.command(&["CLIENT", "PAUSE", "soon"]),
        "-ERR timeout is not an integer or out of range\r\n"
    );

    // A client on a dedicated connection (a subscriber) waits too.
    let mut subscriber = RawConn::connect(proxy.resp_addr());
    assert!(
        subscriber
            .command(&["SUBSCRIBE", "ch"])
            .contains("subscribe")
    );
    assert_eq!(admin.command(&["CLIENT", "PAUSE", "500", "ALL"]), "+OK\r\n");
    let start = Instant::now();
    assert!(subscriber.command(&["PING"]).contains("pong"));
    let held = start.elapsed();
    assert!(
        held >= Duration::from_millis(400),
        "the subscriber's PING waited: {held:?}"
    );
}

#[test]
fn client_reply_off_and_skip_keep_replies_from_the_client_as_redis_does() {
    let redis = RedisServer::start();
    let proxy = transparent(&redis);
    for addr in [proxy.resp_addr(), redis.addr()] {
        let mut conn = RawConn::connect(addr);
        let pipeline = [
            &["CLIENT", "REPLY", "OFF"][..],
            &["SET", "quiet", "1"],
            &["GET", "quiet"],
            &["CLIENT", "REPLY", "SKIP"],
            &["CLIENT", "REPLY", "ON"],
            &["CLIENT", "REPLY", "SKIP"],
            &["SET", "skipped", "2"],
            &["GET", "skipped"],
            &["CLIENT", "REPLY", "maybe"],
        ];
        let mut frames = String::new();
        for args in pipeline {
            frames.push_str(&format!("*{}\r\n", args.len()));
            for arg in args {
                frames.push_str(&support::bulk(arg));
            }
        }
        conn.send(frames.as_bytes());
        assert_eq!(conn.read_reply(), "+OK\r\n", "{addr}: REPLY ON's");
        assert_eq!(
            conn.read_reply(),
            support::bulk("2"),
            "{addr}: SET's skipped"
        );
        assert!(conn.read_reply().starts_with("-ERR syntax error"), "{addr}");
        // The writes ran though their replies were kept back.
        assert_eq!(call(addr, &["GET", "quiet"]), support::bulk("1"), "{addr}");
        assert_eq!(
            conn.command(&["PING"]),
            "+PONG\r\n",
            "{addr}: nothing else came"
        );
    }
}

#[test]
fn client_unblock_reaches_the_dedicated_connection_of_a_blocked_client() {
    let redis = RedisServer::start();
    let proxy = transparent(&redis);
    for addr in [proxy.resp_addr(), redis.addr()] {
        let mut blocked = RawConn::connect(addr);
        let id = blocked.client_id();
        let mut admin = RawConn::connect(addr);
        let not_blocked = admin.command(&["CLIENT", "UNBLOCK", &id]);
        assert_eq!(not_blocked, ":0\r\n", "{addr}");
        for (mode, reply) in [
            (None, "*-1\r\n"),
            (Some("TIMEOUT"), "*-1\r\n"),
            (
                Some("ERROR"),
                "-UNBLOCKED client unblocked via CLIENT UNBLOCK\r\n",
            ),
        ] {
            blocked.send(b"*3\r\n$5\r\nBLPOP\r\n$5\r\nempty\r\n$1\r\n0\r\n");
            std::thread::sleep(std::time::Duration::from_millis(200));
            let mut args = vec!["CLIENT", "UNBLOCK", &id];
            args.extend(mode);
            assert_eq!(admin.command(&args), ":1\r\n", "{addr} {mode:?}");
            assert_eq!(blocked.read_reply(), reply, "{addr} {mode:?}");
        }
        assert_eq!(admin.command(&["CLIENT", "UNBLOCK", "999999"]), ":0\r\n");
        let bad = admin.command(&["CLIENT", "UNBLOCK", &id, "SOON"]);
        assert!(
            bad.contains("reason should be TIMEOUT or ERROR"),
            "{addr}: {bad}"
        );
        // The unblocked client goes on as before.
        assert_eq!(blocked.command(&["PING"]), "+PONG\r\n");
    }
}
