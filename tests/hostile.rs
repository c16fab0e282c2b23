//! Hostile and heavy clients: what one client holds is bounded, memory stays flat
//! (read from `/proc/PID/status`), readiness tells the truth, and the answers are
//! never silently wrong.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{ProxyBuilder, RawConn, RedisServer, Relay, http_get, wait_until};

const MIB: u64 = 1024;

/// Reads one reply's header line and `len` bytes of its body from `conn`.
fn read_bulk(conn: &mut RawConn, len: usize) -> Vec<u8> {
    let header = conn.read_line();
    assert_eq!(header, format!("${len}\r\n"));
    let body = conn.read_exact_len(len + 2);
    assert_eq!(body.len(), len + 2, "the whole value");
    body
}

#[test]
fn an_mget_past_the_output_limit_closes_the_connection_and_copies_nothing() {
    let redis = RedisServer::start();
    let big = vec![b'b'; 8 << 20];
    redis.set("big", &big);
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut reader = RawConn::connect(proxy.resp_addr());
    reader.send(b"GET big\r\n");
    read_bulk(&mut reader, big.len()); // now cached

    let before = proxy.rss_kib();
    let mut greedy = RawConn::connect(proxy.resp_addr());
    let request = format!("MGET {}\r\n", vec!["big"; 100].join(" "));
    greedy.send(request.as_bytes()); // and never reads
    std::thread::sleep(Duration::from_secs(1));
    let grown = proxy.rss_kib().saturating_sub(before);
    assert!(
        grown < 64 * MIB,
        "800 MB of replies to one client grew the proxy by {grown} KiB"
    );
    let line = greedy.read_line();
    assert!(
        line.starts_with("-ERR client output buffer limit reached"),
        "{line}"
    );
    assert!(greedy.is_closed_by_server());
    reader.send(b"PING\r\n").expect(b"+PONG\r\n");
}

#[test]
fn clients_reading_one_large_cached_value_share_it() {
    let redis = RedisServer::start();
    let big: Vec<u8> = (0..100 << 20).map(|i| (i % 251) as u8).collect();
    redis.set("big", &big);
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--request-timeout", "30s")
        .start();
    let mut first = RawConn::connect(proxy.resp_addr());
    first.send(b"GET big\r\n");
    read_bulk(&mut first, big.len());

    let before = proxy.rss_kib();
    let mut clients: Vec<RawConn> = (0..10)
        .map(|_| RawConn::connect(proxy.resp_addr()))
        .collect();
    for client in &mut clients {
        client.send(b"GET big\r\n"); // none reads yet
    }
    std::thread::sleep(Duration::from_secs(1));
    let grown = proxy.rss_kib().saturating_sub(before);
    assert!(
        grown < 100 * MIB,
        "ten replies of one 100 MB cached value grew the proxy by {grown} KiB"
    );
    for client in &mut clients {
        let body = read_bulk(client, big.len());
        assert!(body[..big.len()] == big[..], "the value is intact");
    }
}

#[test]
fn stalled_large_requests_are_bounded_and_cut_off() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--request-timeout", "2s")
        .arg("--client-input-limit", "64mb")
        .start();
    let before = proxy.rss_kib();
    // Twenty connections each send 59 MB of a 60 MB argument, then stall.
    let senders: Vec<_> = (0..20)
        .map(|_| {
            let addr = proxy.resp_addr();
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let _ = stream.write_all(b"*2\r\n$3\r\nGET\r\n$62914560\r\n");
                let chunk = vec![b'k'; 1 << 20];
                for _ in 0..59 {
                    if stream.write_all(&chunk).is_err() {
                        break; // refused: the proxy closed it
                    }
                }
                stream
            })
        })
        .collect();
    let mut peak = 0;
    let streams: Vec<TcpStream> = senders
        .into_iter()
        .map(|sender| {
            peak = peak.max(proxy.rss_kib().saturating_sub(before));
            sender.join().unwrap()
        })
        .collect();
    peak = peak.max(proxy.rss_kib().saturating_sub(before));
    assert!(
        peak < 160 * MIB,
        "1.2 GB of incomplete requests grew the proxy by {peak} KiB"
    );
    // None completes its request: each is closed within the request timeout.
    let start = Instant::now();
    for mut stream in streams {
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        let text = String::from_utf8_lossy(&rest);
        assert!(
            text.starts_with("-ERR the proxy holds too much unparsed input")
                || text.starts_with("-ERR Protocol error: request not completed within"),
            "{text}"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        wait_until(Duration::from_secs(5), || {
            proxy.rss_kib().saturating_sub(before) < 32 * MIB
        }),
        "memory held after the connections closed: {} KiB",
        proxy.rss_kib().saturating_sub(before)
    );
    let mut conn = RawConn::connect(proxy.resp_addr());
    conn.send(b"PING\r\n").expect(b"+PONG\r\n");
}

#[test]
fn a_low_open_files_limit_lowers_the_connection_limits_and_refuses_beyond() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = ProxyBuilder::new(&redis.url())
        .open_files_limit(512)
        .arg("--redis-pool-size", 2)
        .arg("--max-connections", 10_000)
        .start();
    let logs = proxy.logs().join("\n");
    assert!(logs.contains("the open-files limit is too low"), "{logs}");

    let mut served = 0;
    let mut refused = 0;
    let mut held = Vec::new();
    for _ in 0..300 {
        let mut conn = RawConn::connect(proxy.resp_addr());
        conn.send(b"PING\r\n");
        match conn.read_line().as_str() {
            "+PONG\r\n" => served += 1,
            "-ERR max number of clients reached\r\n" => refused += 1,
            other => panic!("neither served nor refused: {other:?}"),
        }
        held.push(conn);
    }
    assert!(
        served > 100 && refused > 0,
        "{served} served, {refused} refused"
    );
    // Other listeners and other clients are not affected.
    assert_eq!(http_get(proxy.admin_addr(), "/healthz").0, 200);
    assert_eq!(http_get(proxy.http_addr(), "/k"), (200, "v".to_owned()));
    drop(held);
}

/// A connection to a `--maxclients 1` Redis. Redis frees a closed
/// connection's slot asynchronously: until the last one's is gone (the
/// startup probe's), a new connection is refused at its first command.
fn only_client(redis: &RedisServer) -> redis::Connection {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = match redis::Client::open(redis.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        {
            Ok(mut conn) => match redis::cmd("PING").query::<String>(&mut conn) {
                Ok(_) => return conn,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "Redis's only slot stays taken: {refused}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn readiness_and_misses_carry_redis_own_reason_when_it_refuses_connections() {
    let redis = RedisServer::start_with(&["--maxclients", "1"]);
    let mut occupant = only_client(&redis); // Redis's only client slot
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut occupant)
        .unwrap();
    // One worker: each worker keeps connections of its own, and Redis allows one.
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--worker-threads", 1)
        .start();

    let reason = "max number of clients reached";
    assert!(wait_until(Duration::from_secs(5), || {
        let (status, body) = http_get(proxy.admin_addr(), "/readyz");
        status == 503 && body.contains(reason)
    }));
    let (status, body) = http_get(proxy.http_addr(), "/k");
    assert_eq!(status, 502);
    assert!(body.contains(reason), "{body}");
    assert!(
        proxy.logs().iter().any(|line| line.contains(reason)),
        "the log says why"
    );

    drop(occupant);
    assert!(wait_until(Duration::from_secs(5), || {
        http_get(proxy.admin_addr(), "/readyz").0 == 200
    }));
    assert_eq!(http_get(proxy.http_addr(), "/k"), (200, "v".to_owned()));
}

#[test]
fn a_proxy_on_the_only_client_slot_serves_requests_and_says_it_is_ready() {
    let redis = RedisServer::start_with(&["--maxclients", "1"]);
    let mut setter = only_client(&redis);
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut setter)
        .unwrap();
    drop(setter);
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--worker-threads", 1)
        .start();
    assert!(wait_until(Duration::from_secs(5), || {
        http_get(proxy.admin_addr(), "/readyz").0 == 200
    }));
    // Readiness and requests share the connection: ready means served.
    assert_eq!(http_get(proxy.http_addr(), "/k"), (200, "v".to_owned()));
}

#[test]
fn the_byte_capacity_bounds_memory_and_expired_entries_are_reclaimed() {
    let redis = RedisServer::start();
    let value = vec![b'v'; 1 << 20];
    for i in 0..400 {
        redis.set(format!("key{i}"), &value);
    }
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-max-bytes", "50mb")
        .arg("--cache-ttl", "4s")
        .start();
    let before = proxy.rss_kib();
    let mut conn = RawConn::connect(proxy.resp_addr());
    for i in 0..400 {
        conn.send(format!("GET key{i}\r\n").as_bytes());
        read_bulk(&mut conn, value.len());
    }
    let entries = proxy.metric("redis_proxy_cache_entries").unwrap();
    assert!(
        (40.0..=50.0).contains(&entries),
        "{entries} entries of 1 MB in 50 MB"
    );
    let loaded = proxy.rss_kib().saturating_sub(before);
    assert!(
        loaded < 120 * MIB,
        "400 MB read through a 50 MB cache: {loaded} KiB"
    );
    // Least recently used first: the last keys read are the ones kept.
    let hits_before = proxy.metric("redis_proxy_cache_hits_total").unwrap();
    for i in 390..400 {
        conn.send(format!("GET key{i}\r\n").as_bytes());
        read_bulk(&mut conn, value.len());
    }
    assert_eq!(
        proxy.metric("redis_proxy_cache_hits_total").unwrap() - hits_before,
        10.0
    );

    // Untouched, every entry expires and is swept: the gauge and memory fall.
    assert!(wait_until(Duration::from_secs(8), || {
        proxy.metric("redis_proxy_cache_entries") == Some(0.0)
    }));
    assert!(
        wait_until(Duration::from_secs(3), || {
            proxy.rss_kib().saturating_sub(before) < 20 * MIB
        }),
        "still {} KiB above the start after every entry expired",
        proxy.rss_kib().saturating_sub(before)
    );
}

#[test]
fn values_over_the_value_limit_are_served_but_not_cached() {
    let redis = RedisServer::start();
    redis.set("small", "s");
    redis.set("large", vec![b'l'; 2048]);
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-max-value-bytes", "1kb")
        .start();
    let mut conn = RawConn::connect(proxy.resp_addr());
    for _ in 0..2 {
        conn.send(b"GET small\r\nGET large\r\n");
        conn.expect(b"$1\r\ns\r\n");
        read_bulk(&mut conn, 2048);
    }
    assert_eq!(redis.calls("get"), 3, "small once, large each time");
}

#[test]
fn a_slow_backend_link_is_bounded_by_the_request_timeout_alone() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    // One second per reply, the connection handshake's included.
    let relay = Relay::start(redis.addr(), Duration::from_secs(1));
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--request-timeout", "30s")
        .start();
    let start = Instant::now();
    assert_eq!(http_get(proxy.http_addr(), "/k"), (200, "v".to_owned()));
    assert!(start.elapsed() > Duration::from_secs(1), "it was slow");
}

#[test]
fn an_unanswered_handshake_names_the_option_that_bounded_it() {
    let redis = RedisServer::start();
    let relay = Relay::start(redis.addr(), Duration::from_secs(10));
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--request-timeout", "1s")
        .start();
    assert!(wait_until(Duration::from_secs(5), || {
        let (status, body) = http_get(proxy.admin_addr(), "/readyz");
        status == 503 && body.contains("--request-timeout")
    }));
}

#[test]
fn select_reads_the_database_it_names() {
    let redis = RedisServer::start();
    redis.set("k", "in zero");
    redis::pipe()
        .cmd("SELECT")
        .arg(2)
        .cmd("SET")
        .arg("k")
        .arg("in two")
        .query::<()>(&mut redis.client())
        .unwrap();
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut conn = RawConn::connect(proxy.resp_addr());
    conn.send(b"GET k\r\n").expect(b"$7\r\nin zero\r\n");
    conn.send(b"SELECT 2\r\nGET k\r\n")
        .expect(b"+OK\r\n$6\r\nin two\r\n");
    // Cached apart: both databases' values are served from the cache.
    conn.send(b"GET k\r\nSELECT 0\r\nGET k\r\n")
        .expect(b"$6\r\nin two\r\n+OK\r\n$7\r\nin zero\r\n");
    conn.send(b"CLIENT INFO\r\n");
    let info = conn.read_reply();
    assert!(info.contains(" db=0 "), "{info}");
    assert_eq!(redis.calls("get"), 2);
    // HTTP reads the URL's database.
    assert_eq!(
        http_get(proxy.http_addr(), "/k"),
        (200, "in zero".to_owned())
    );
    // RESET goes back to it.
    conn.send(b"SELECT 2\r\nRESET\r\nGET k\r\n")
        .expect(b"+OK\r\n+RESET\r\n$7\r\nin zero\r\n");
}

#[test]
fn a_lane_that_cannot_connect_borrows_one_that_can_and_readiness_says_ready() {
    // Room for one connection: one worker's lane gets it, the other's cannot.
    let redis = RedisServer::start_with(&["--maxclients", "1"]);
    let mut setter = only_client(&redis);
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut setter)
        .unwrap();
    drop(setter);
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--worker-threads", 2)
        .arg("--cache-capacity", 1)
        .start();
    assert!(wait_until(Duration::from_secs(5), || {
        http_get(proxy.admin_addr(), "/readyz").0 == 200
    }));
    // Every request is served, whichever worker takes it.
    for i in 0..40 {
        assert_eq!(
            http_get(proxy.http_addr(), "/k"),
            (200, "v".to_owned()),
            "request {i}"
        );
        let mut conn = RawConn::connect(proxy.resp_addr());
        conn.send(b"GET k\r\n").expect(b"$1\r\nv\r\n");
    }
    assert_eq!(http_get(proxy.admin_addr(), "/readyz").0, 200);
    // The lane that could not connect is warned about once, and counted.
    let logs = proxy.logs().join("\n");
    assert_eq!(
        logs.matches("cannot connect to redis; trying again")
            .count(),
        1,
        "{logs}"
    );
    let (_, metrics) = http_get(proxy.admin_addr(), "/metrics");
    assert!(
        metrics.contains("redis_proxy_backend_connect_failures_total{node="),
        "{metrics}"
    );
}

#[test]
fn running_out_of_descriptors_while_serving_refuses_new_clients_and_serves_the_others() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    let proxy = ProxyBuilder::new(&redis.url()).start();
    let mut established = RawConn::connect(proxy.resp_addr());
    established.send(b"GET k\r\n").expect(b"$1\r\nv\r\n");
    // The limit lowered under the running process, as any exhaustion would.
    let lowered = std::process::Command::new("prlimit")
        .args(["--pid", &proxy.pid().to_string(), "--nofile=64:64"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(lowered.success());
    let (mut served, mut refused) = (0, 0);
    let mut held = Vec::new();
    for i in 0..100 {
        let mut conn = RawConn::connect(proxy.resp_addr());
        conn.send(b"PING\r\n");
        let asked = Instant::now();
        match conn.read_line().as_str() {
            "+PONG\r\n" => served += 1,
            "-ERR max number of clients reached\r\n" => refused += 1,
            // Refused and closed before its request arrived: the request
            // then meets a reset, which may overtake the refusal. Still an
            // answer at once, not a wait.
            "" if asked.elapsed() < Duration::from_secs(1) => refused += 1,
            other => {
                panic!("client {i} got no answer: {other:?} ({served} served, {refused} refused)")
            }
        }
        held.push(conn);
    }
    assert!(refused > 0, "{served} served, {refused} refused");
    // Established clients keep being served, and HTTP answers at once.
    established.send(b"GET k\r\n").expect(b"$1\r\nv\r\n");
    let started = Instant::now();
    let answer = http_answer(proxy.http_addr(), "/k");
    assert!(
        answer.starts_with("HTTP/1.1 503") || answer.starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(held);
    let warnings = proxy
        .logs()
        .iter()
        .filter(|line| line.contains("out of file descriptors"))
        .count();
    assert!(
        (1..=10).contains(&warnings),
        "warned {warnings} times, not once per episode"
    );
}

/// What an HTTP server answers a `GET`, however soon it closes: a refused
/// client may find its request unread and its write broken, the refusal
/// already on its way.
fn http_answer(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    );
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn the_default_connection_limits_fit_the_open_files_limit_without_a_warning() {
    let redis = RedisServer::start();
    for limit in [20_000, 1024] {
        let proxy = ProxyBuilder::new(&redis.url())
            .open_files_limit(limit)
            .start();
        let logs = proxy.logs().join("\n");
        assert!(!logs.contains("too low"), "limit {limit}: {logs}");
        assert!(
            !logs.contains("WARN") && !logs.contains("\"level\":\"WARN\""),
            "limit {limit}: {logs}"
        );
    }
}

#[test]
fn a_server_that_is_not_redis_is_named_as_such_in_one_line() {
    // An HTTP server where Redis should be: it answers anything with a 400
    // and closes, before or after reading what it was sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            if i % 2 == 0 {
                let mut buf = [0u8; 16];
                let _ = stream.read(&mut buf);
            }
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
        }
    });
    let proxy = ProxyBuilder::new(&format!("redis://{addr}")).start();
    let (status, body) = http_get(proxy.http_addr(), "/k");
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(&format!(
            "{addr} did not answer as Redis: got `HTTP/1.1 400 Bad Request`"
        )),
        "{body}"
    );
    assert!(!body.trim_end().contains('\n'), "one line: {body}");
}
