//! The Redis-protocol front-end, byte by byte: commands, pipelining, RESP2/RESP3,
//! limits, and bad input.

mod support;

use std::time::{Duration, Instant};

use support::{ProxyBuilder, RawConn, RedisServer, Relay, wait_until};

#[test]
fn get_returns_the_value_or_nil() {
    let redis = RedisServer::start();
    redis.set("k", "v\r\n\0binary");
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = RawConn::connect(proxy.resp_addr());

    conn.send(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        .expect(b"$10\r\nv\r\n\0binary\r\n");
    conn.send(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n")
        .expect(b"$-1\r\n");
}

#[test]
fn mget_answers_every_key_in_order() {
    let redis = RedisServer::start();
    redis.set("a", "1");
    redis.set("c", "3");
    redis.cmd::<()>(&["RPUSH", "list", "x"]);
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = RawConn::connect(proxy.resp_addr());

    // A key holding another type is nil in MGET, as in Redis.
    conn.send(b"MGET a b c list\r\n")
        .expect(b"*4\r\n$1\r\n1\r\n$-1\r\n$1\r\n3\r\n$-1\r\n");
}

#[test]
fn get_of_a_non_string_passes_redis_error_through() {
    let redis = RedisServer::start();
    redis.cmd::<()>(&["RPUSH", "list", "x"]);
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = RawConn::connect(proxy.resp_addr());

    conn.send(b"GET list\r\n");
    assert_eq!(
        conn.read_line(),
        "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    );
    conn.send(b"PING\r\n").expect(b"+PONG\r\n");
}

#[test]
fn http_and_resp_share_one_cache() {
    let redis = RedisServer::start();
    redis.set("by-http", "old");
    redis.set("by-resp", "old");
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let http = |key: &str| {
        let url = proxy.url(key);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let response = reqwest::get(url).await.unwrap();
                let cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
                (response.text().await.unwrap(), cache)
            })
        })
        .join()
        .unwrap()
    };
    let mut conn = RawConn::connect(proxy.resp_addr());

    // Cached by HTTP, then a hit over RESP.
    assert_eq!(http("by-http"), ("old".into(), "MISS".into()));
    redis.set("by-http", "new");
    conn.send(b"GET by-http\r\n").expect(b"$3\r\nold\r\n");

    // Cached by RESP, then a hit over HTTP.
    conn.send(b"GET by-resp\r\n").expect(b"$3\r\nold\r\n");
    redis.set("by-resp", "new");
    assert_eq!(http("by-resp"), ("old".into(), "HIT".into()));
    assert_eq!(redis.calls("get"), 2);
}

#[test]
fn write_commands_are_refused_and_never_reach_redis() {
    let redis = RedisServer::start();
    redis.set("k", "original");
    let sets_before = redis.calls("set");
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = RawConn::connect(proxy.resp_addr());

    for (request, name) in [
        (&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nx\r\n"[..], "SET"),
        (b"DEL k\r\n", "DEL"),
        (b"flushall\r\n", "flushall"),
        (b"CONFIG SET maxmemory 1\r\n", "CONFIG"),
        (b"EVAL \"return redis.call('set','k','y')\" 0\r\n", "EVAL"),
    ] {
        conn.send(request);
        let line = conn.read_line();
        assert!(
            line.starts_with(&format!("-ERR unknown or unsupported command '{name}'")),
            "{line}"
        );
    }
    conn.send(b"PING\r\n").expect(b"+PONG\r\n");
    assert_eq!(redis.cmd::<String>(&["GET", "k"]), "original");
    assert_eq!(redis.calls("set"), sets_before, "SET reached Redis");
    for command in ["del", "flushall", "config", "eval"] {
        assert_eq!(redis.calls(command), 0, "{command} reached Redis");
    }
}

#[test]
fn inline_commands_are_answered() {
    let redis = RedisServer::start();
    redis.set("a b", "spaced");
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = RawConn::connect(proxy.resp_addr());

    conn.send(b"PING\r\n").expect(b"+PONG\r\n");
    conn.send(b"ping hello\n").expect(b"$5\r\nhello\r\n");
    conn.send(b"GET \"a b\"\r\n").expect(b"$6\r\nspaced\r\n");
    conn.send(b"ECHO 'it\\'s'\r\n").expect(b"$4\r\nit's\r\n");
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let redis = RedisServer::start();
    for i in 0..200 {
        redis.set(format!("key{i}"), format!("value{i}"));
    }
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = RawConn::connect(proxy.resp_addr());

    let mut request = Vec::new();
    let mut expected = Vec::new();
    for i in 0..200 {
        request.extend_from_slice(format!("GET key{i}\r\n").as_bytes());
        let value = format!("value{i}");
        expected.extend_from_slice(format!("${}\r\n{value}\r\n", value.len()).as_bytes());
        if i % 50 == 0 {
            request.extend_from_slice(b"PING\r\nGET nothing\r\n");
            expected.extend_from_slice(b"+PONG\r\n$-1\r\n");
        }
    }
    conn.send(&request);
    let got = conn.read_exact_len(expected.len());
    assert!(got == expected, "replies out of order or missing");
}

#[test]
fn hello_switches_the_protocol() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = RawConn::connect(proxy.resp_addr());

    conn.send(b"HELLO 3\r\n");
    let hello = conn.read_reply();
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
    assert!(hello.contains("$6\r\nserver\r\n$5\r\nredis\r\n"), "{hello}");
    assert!(hello.contains("$7\r\nmodules\r\n*0\r\n"), "{hello}");
    conn.send(b"GET missing\r\n").expect(b"_\r\n");

    conn.send(b"HELLO 2\r\n");
    let hello = conn.read_reply();
    assert!(hello.starts_with("*14\r\n"), "{hello}");
    assert!(hello.contains("$5\r\nproto\r\n:2\r\n"), "{hello}");
    conn.send(b"GET missing\r\n").expect(b"$-1\r\n");

    conn.send(b"HELLO 4\r\n")
        .expect(b"-NOPROTO unsupported protocol version\r\n");
    conn.send(b"HELLO 3 AUTH default secret SETNAME app\r\n");
    assert!(conn.read_reply().starts_with("%7"));
    conn.send(b"CLIENT GETNAME\r\n").expect(b"$3\r\napp\r\n");
    conn.send(b"RESET\r\n").expect(b"+RESET\r\n");
    conn.send(b"GET missing\r\n").expect(b"$-1\r\n");
}

#[test]
fn connection_commands_answer_like_redis() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = RawConn::connect(proxy.resp_addr());

    conn.send(b"SELECT 0\r\n").expect(b"+OK\r\n");
    // Any database the backing Redis has (16 by default), and no other.
    conn.send(b"SELECT 1\r\n").expect(b"+OK\r\n");
    conn.send(b"SELECT 16\r\n");
    assert!(
        conn.read_line()
            .starts_with("-ERR DB index is out of range")
    );
    conn.send(b"SELECT 0\r\n").expect(b"+OK\r\n");
    conn.send(b"CLIENT SETNAME worker-1\r\n").expect(b"+OK\r\n");
    conn.send(b"CLIENT GETNAME\r\n")
        .expect(b"$8\r\nworker-1\r\n");
    conn.send(b"CLIENT SETINFO LIB-NAME test\r\n")
        .expect(b"+OK\r\n");
    conn.send(b"CLIENT ID\r\n");
    assert!(conn.read_line().starts_with(':'));
    // Over the proxy's own clients, and only with --forward-admin-commands.
    conn.send(b"CLIENT KILL x\r\n");
    assert!(
        conn.read_line()
            .starts_with("-ERR 'client|kill' is an admin command")
    );
    conn.send(b"COMMAND COUNT\r\n").expect(b":12\r\n");
    conn.send(b"AUTH secret\r\n").expect(b"+OK\r\n");
    conn.send(b"ECHO\r\n")
        .expect(b"-ERR wrong number of arguments for 'echo' command\r\n");
    conn.send(b"QUIT\r\nPING\r\n").expect(b"+OK\r\n");
    assert!(conn.is_closed_by_server(), "QUIT closes the connection");
}

#[test]
fn info_reports_cache_stats_and_loading() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-capacity", 1)
        .start();
    let mut client = proxy.redis_client();

    for key in ["k", "k", "missing", "k"] {
        let _: Option<String> = redis::cmd("GET").arg(key).query(&mut client).unwrap();
    }
    redis.set("other", "o");
    let _: Option<String> = redis::cmd("GET").arg("other").query(&mut client).unwrap(); // evicts k
    let info: String = redis::cmd("INFO").query(&mut client).unwrap();
    for line in [
        "keyspace_hits:2",
        "keyspace_misses:3",
        "evicted_keys:1",
        "loading:0",
        "connected_clients:1",
        "redis_version:",
    ] {
        assert!(info.contains(line), "INFO lacks {line}:\n{info}");
    }
    let stats: String = redis::cmd("INFO").arg("stats").query(&mut client).unwrap();
    assert!(
        stats.starts_with("# Stats") && !stats.contains("# Server"),
        "{stats}"
    );
}

#[test]
fn protocol_error_closes_only_that_connection() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut bystander = RawConn::connect(proxy.resp_addr());
    bystander.send(b"PING\r\n").expect(b"+PONG\r\n");

    for (bad, error) in [
        (
            &b"*2\r\n$3\r\nGET\r\n:1\r\n"[..],
            "-ERR Protocol error: expected '$', got ':'\r\n",
        ),
        (
            b"*1\r\n$-7\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*x\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"GET \"open\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
    ] {
        let mut conn = RawConn::connect(proxy.resp_addr());
        conn.send(b"PING\r\n").send(bad);
        assert_eq!(
            conn.read_line(),
            "+PONG\r\n",
            "replies before the error are sent"
        );
        assert_eq!(conn.read_line(), error);
        assert!(conn.is_closed_by_server(), "after {error:?}");
    }
    bystander.send(b"GET k\r\n").expect(b"$1\r\nv\r\n");
}

#[test]
fn huge_lengths_are_rejected_at_once() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).start();

    for (header, error) in [
        (
            &b"*1\r\n$536870913\r\n"[..],
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*2\r\n$3\r\nGET\r\n$9223372036854775807\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1048577\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n$100000000\r\n",
            "-ERR Protocol error: request larger than 64 MiB\r\n",
        ),
    ] {
        let mut conn = RawConn::connect(proxy.resp_addr());
        let start = Instant::now();
        conn.send(header);
        // Answered from the header alone: nothing waits for the announced bytes.
        assert_eq!(conn.read_line(), error);
        assert!(start.elapsed() < Duration::from_secs(4));
        assert!(conn.is_closed_by_server());
    }
    let mut conn = RawConn::connect(proxy.resp_addr());
    conn.send(b"PING\r\n").expect(b"+PONG\r\n");
}

#[test]
fn endless_input_without_a_newline_is_cut_off() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = RawConn::connect(proxy.resp_addr());

    conn.send(&vec![b'A'; 70 * 1024]);
    assert_eq!(
        conn.read_line(),
        "-ERR Protocol error: too big inline request\r\n"
    );
}

#[test]
fn truncated_frames_and_random_bytes_leave_the_proxy_serving() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let mut proxy = ProxyBuilder::new(&redis.url()).start();

    for truncated in [
        &b"*2\r\n$3\r\nGE"[..],
        b"*3\r\n",
        b"*1\r\n$10\r\nabc",
        b"GET k",
    ] {
        let mut conn = RawConn::connect(proxy.resp_addr());
        conn.send(truncated);
        conn.shutdown_write();
        assert!(conn.is_closed_by_server());
    }
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..100 {
        let junk: Vec<u8> = (0..512)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect();
        let mut conn = RawConn::connect(proxy.resp_addr());
        conn.send(&junk);
        conn.shutdown_write();
        let _ = conn.read_exact_len(1 << 20);
    }
    assert!(proxy.is_running());
    let mut conn = RawConn::connect(proxy.resp_addr());
    conn.send(b"GET k\r\n").expect(b"$1\r\nv\r\n");
}

#[test]
fn beyond_max_connections_a_client_is_told_and_closed() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--max-connections", 2)
        .start();
    let mut first = RawConn::connect(proxy.resp_addr());
    let mut second = RawConn::connect(proxy.resp_addr());
    first.send(b"PING\r\n").expect(b"+PONG\r\n");
    second.send(b"PING\r\n").expect(b"+PONG\r\n");

    let mut third = RawConn::connect(proxy.resp_addr());
    assert_eq!(third.read_line(), "-ERR max number of clients reached\r\n");
    assert!(third.is_closed_by_server());

    drop(first);
    // The slot is free again once the first connection is gone.
    assert!(wait_until(Duration::from_secs(5), || {
        let mut conn = RawConn::connect(proxy.resp_addr());
        conn.send(b"PING\r\n");
        conn.read_line() == "+PONG\r\n"
    }));
}

/// A value whose replies the relay holds back.
const SLOW: &str = "SLOW-VALUE";

#[test]
fn shed_request_gets_an_error_at_once() {
    let redis = RedisServer::start();
    redis.set("slow1", SLOW);
    redis.set("slow2", SLOW);
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    relay.delay_replies_containing(SLOW.as_bytes(), Duration::from_secs(3));
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--max-clients", 2)
        .arg("--request-timeout", "30s")
        .start();

    let mut a = RawConn::connect(proxy.resp_addr());
    let mut b = RawConn::connect(proxy.resp_addr());
    a.send(b"GET slow1\r\n");
    b.send(b"GET slow2\r\n");
    assert!(wait_until(Duration::from_secs(5), || redis.calls("get") == 2));

    let mut c = RawConn::connect(proxy.resp_addr());
    let start = Instant::now();
    c.send(b"GET other\r\n");
    assert_eq!(
        c.read_line(),
        "-ERR overloaded: too many requests in flight\r\n"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "refused at once, not after the slow ones"
    );
    c.send(b"PING\r\n").expect(b"+PONG\r\n");

    a.expect(b"$10\r\nSLOW-VALUE\r\n");
    b.expect(b"$10\r\nSLOW-VALUE\r\n");
}

#[test]
fn one_pipelining_connection_cannot_exhaust_the_client_limit() {
    let redis = RedisServer::start();
    redis.set("hot", "h");
    for i in 0..20 {
        redis.set(format!("slow{i}"), SLOW);
    }
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    // max_clients 8: one connection may have one key in flight.
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--max-clients", 8)
        .arg("--request-timeout", "30s")
        .start();
    let mut other = RawConn::connect(proxy.resp_addr());
    other.send(b"GET hot\r\n").expect(b"$1\r\nh\r\n");

    relay.delay_replies_containing(SLOW.as_bytes(), Duration::from_millis(300));
    let mut greedy = RawConn::connect(proxy.resp_addr());
    let pipeline: String = (0..20).map(|i| format!("GET slow{i}\r\n")).collect();
    greedy.send(pipeline.as_bytes());
    assert!(wait_until(Duration::from_secs(5), || redis.calls("get") >= 2));

    for _ in 0..5 {
        other.send(b"GET hot\r\n").expect(b"$1\r\nh\r\n");
    }
    let reply = "$10\r\nSLOW-VALUE\r\n".repeat(20);
    greedy.expect(reply.as_bytes());
}

#[test]
fn timeout_and_dead_backend_get_error_replies() {
    let redis = RedisServer::start();
    redis.set("slow", SLOW);
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    relay.delay_replies_containing(SLOW.as_bytes(), Duration::from_secs(2));
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--request-timeout", "300ms")
        .start();
    let mut conn = RawConn::connect(proxy.resp_addr());
    conn.send(b"GET slow\r\n").expect(b"-ERR timed out\r\n");
    conn.send(b"PING\r\n").expect(b"+PONG\r\n");

    let dead = ProxyBuilder::new(&format!("redis://127.0.0.1:{}", support::free_port())).start();
    let mut conn = RawConn::connect(dead.resp_addr());
    conn.send(b"GET k\r\n");
    let line = conn.read_line();
    assert!(line.starts_with("-ERR redis unavailable"), "{line}");
    conn.send(b"PING\r\n").expect(b"+PONG\r\n");
}

#[test]
fn an_mget_of_cold_keys_reaches_redis_as_one_pipeline() {
    let redis = RedisServer::start();
    let keys: Vec<String> = (0..60).map(|i| format!("key{i}")).collect();
    for key in &keys {
        redis.set(key, "v");
    }
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = RawConn::connect(proxy.resp_addr());
    // Opens the proxy's pooled connection, so that connecting is not counted.
    conn.send(b"GET warm\r\n").expect(b"$-1\r\n");

    let before = redis.stat("total_reads_processed");
    conn.send(format!("MGET {}\r\n", keys.join(" ")).as_bytes())
        .expect(format!("*60\r\n{}", "$1\r\nv\r\n".repeat(60)).as_bytes());
    let reads = redis.stat("total_reads_processed") - before;

    assert_eq!(redis.calls("get"), 61);
    // Sixty GETs in one write are one read for Redis. The margin covers this
    // test's own INFO connection and the proxy's readiness PING.
    assert!(reads <= 6, "Redis needed {reads} reads for 60 GETs");
}
