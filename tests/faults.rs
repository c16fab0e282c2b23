//! Transparent mode when Redis is slow or stuck: a write whose outcome is
//! unknown drops what it may have written, every command on a dedicated
//! connection is bounded by the request timeout (plus its own blocking
//! time), and the proxy's own commands keep a transaction's replies in
//! order.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{ProxyBuilder, RedisServer, Relay};

/// One RESP connection spoken by hand, with a read timeout of `timeout`.
struct Client(TcpStream);

impl Client {
    fn connect(addr: std::net::SocketAddr, timeout: Duration) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(timeout)).unwrap();
        Self(stream)
    }

    fn send(&mut self, args: &[&str]) {
        let mut out = format!("*{}\r\n", args.len());
        for arg in args {
            out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.0.write_all(out.as_bytes()).unwrap();
    }

    /// Reads one reply line (or a bulk string's two lines).
    fn line(&mut self) -> String {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            match self.0.read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                _ => break,
            }
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if line.starts_with('$') && line != "$-1\r\n" {
            return line + &self.line();
        }
        line
    }

    fn call(&mut self, args: &[&str]) -> String {
        self.send(args);
        self.line()
    }

    /// Whether the proxy closed the connection.
    fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.0.read(&mut byte), Ok(0) | Err(_))
    }
}

#[test]
fn a_write_whose_reply_timed_out_drops_the_value_it_may_have_changed() {
    let redis = RedisServer::start();
    redis.set("k", "old");
    let relay = Relay::start(redis.addr(), Duration::ZERO);
    let proxy = ProxyBuilder::new(&relay.url())
        .flag("--forward-commands")
        .arg("--worker-threads", 1)
        .arg("--request-timeout", "500ms")
        .arg("--cache-ttl", "60s")
        .start();
    let mut client = Client::connect(proxy.resp_addr(), Duration::from_secs(5));
    assert_eq!(client.call(&["GET", "k"]), "$3\r\nold\r\n");
    let (status, body) = support::http_get(proxy.http_addr(), "/k");
    assert_eq!((status, body.as_str()), (200, "old"), "cached");

    // The SET reaches Redis; its reply comes after the request timeout.
    relay.delay_replies_containing(b"+OK", Duration::from_millis(1500));
    let started = Instant::now();
    assert_eq!(client.call(&["SET", "k", "new"]), "-ERR timed out\r\n");
    assert!(started.elapsed() < Duration::from_millis(1200));
    std::thread::sleep(Duration::from_millis(1200));
    relay.set_delay(Duration::ZERO);
    assert_eq!(redis.cmd::<String>(&["GET", "k"]), "new", "the write ran");

    let mut fresh = Client::connect(proxy.resp_addr(), Duration::from_secs(5));
    assert_eq!(fresh.call(&["GET", "k"]), "$3\r\nnew\r\n");
    let (status, body) = support::http_get(proxy.http_addr(), "/k");
    assert_eq!((status, body.as_str()), (200, "new"));
}

#[test]
fn a_transaction_left_unanswered_drops_what_it_writes_and_ends_the_session() {
    let redis = RedisServer::start();
    redis.set("k", "old");
    let proxy = ProxyBuilder::new(&redis.url())
        .flag("--forward-commands")
        .arg("--request-timeout", "1s")
        .start();
    let mut reader = Client::connect(proxy.resp_addr(), Duration::from_secs(10));
    assert_eq!(reader.call(&["GET", "k"]), "$3\r\nold\r\n");
    let mut client = Client::connect(proxy.resp_addr(), Duration::from_secs(10));
    assert_eq!(client.call(&["MULTI"]), "+OK\r\n");
    assert_eq!(client.call(&["SET", "k", "new"]), "+QUEUED\r\n");
    redis.freeze();
    let started = Instant::now();
    let reply = client.call(&["EXEC"]);
    let waited = started.elapsed();
    redis.thaw();
    assert!(reply.starts_with("-ERR timed out"), "{reply}");
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    assert!(
        client.is_closed(),
        "its state on Redis is lost: the connection ends"
    );
    // Redis ran the transaction once it woke; the old value is not served.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(reader.call(&["GET", "k"]), "$3\r\nnew\r\n");
}

#[test]
fn every_command_on_a_dedicated_connection_is_bounded_by_the_request_timeout() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .flag("--forward-commands")
        .arg("--request-timeout", "1s")
        .start();
    let mut watching = Client::connect(proxy.resp_addr(), Duration::from_secs(15));
    assert_eq!(watching.call(&["WATCH", "k"]), "+OK\r\n");
    let mut subscribed = Client::connect(proxy.resp_addr(), Duration::from_secs(15));
    subscribed.send(&["SUBSCRIBE", "a"]);
    assert_eq!(subscribed.line(), "*3\r\n");
    for _ in 0..3 {
        subscribed.line();
    }
    let mut transaction = Client::connect(proxy.resp_addr(), Duration::from_secs(15));
    assert_eq!(transaction.call(&["MULTI"]), "+OK\r\n");
    assert_eq!(transaction.call(&["SET", "t", "1"]), "+QUEUED\r\n");

    redis.freeze();
    let started = Instant::now();
    watching.send(&["GET", "k"]);
    subscribed.send(&["SUBSCRIBE", "b"]);
    transaction.send(&["EXEC"]);
    for (name, client) in [
        ("GET after WATCH", &mut watching),
        ("a second SUBSCRIBE", &mut subscribed),
        ("EXEC", &mut transaction),
    ] {
        let reply = client.line();
        assert!(reply.starts_with("-ERR timed out"), "{name}: {reply}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{name} answered after {:?}",
            started.elapsed()
        );
    }
    redis.thaw();
}

#[test]
fn a_blocking_command_may_block_for_its_own_timeout_beyond_the_request_timeout() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .flag("--forward-commands")
        .arg("--request-timeout", "300ms")
        .start();
    let mut client = Client::connect(proxy.resp_addr(), Duration::from_secs(5));
    let started = Instant::now();
    assert_eq!(client.call(&["BLPOP", "q", "1"]), "*-1\r\n");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    // Back on the shared path, and woken by a push as Redis would.
    assert_eq!(client.call(&["PING"]), "+PONG\r\n");
    client.send(&["BLPOP", "q", "0"]);
    std::thread::sleep(Duration::from_millis(800));
    redis.cmd::<i64>(&["RPUSH", "q", "job"]);
    assert_eq!(client.line(), "*2\r\n");
    assert_eq!(client.line(), "$1\r\nq\r\n");
    assert_eq!(client.line(), "$3\r\njob\r\n");
}

#[test]
fn the_proxys_own_commands_are_queued_inside_a_transaction() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .flag("--forward-commands")
        .start();
    let mut client = Client::connect(proxy.resp_addr(), Duration::from_secs(5));
    assert_eq!(client.call(&["MULTI"]), "+OK\r\n");
    assert_eq!(client.call(&["SET", "a", "1"]), "+QUEUED\r\n");
    assert_eq!(client.call(&["CLIENT", "SETNAME", "worker"]), "+QUEUED\r\n");
    assert_eq!(client.call(&["CLIENT", "GETNAME"]), "+QUEUED\r\n");
    assert_eq!(client.call(&["SET", "b", "2"]), "+QUEUED\r\n");
    client.send(&["EXEC"]);
    let replies: Vec<String> = (0..5).map(|_| client.line()).collect();
    assert_eq!(
        replies,
        [
            "*4\r\n",
            "+OK\r\n",
            "+OK\r\n",
            "$6\r\nworker\r\n",
            "+OK\r\n"
        ],
        "one reply per queued command, in order"
    );
    assert_eq!(client.call(&["CLIENT", "GETNAME"]), "$6\r\nworker\r\n");
    // A transaction that does not run runs none of the proxy's own commands.
    assert_eq!(client.call(&["WATCH", "a"]), "+OK\r\n");
    redis.set("a", "changed");
    assert_eq!(client.call(&["MULTI"]), "+OK\r\n");
    assert_eq!(client.call(&["CLIENT", "SETNAME", "other"]), "+QUEUED\r\n");
    assert_eq!(client.call(&["EXEC"]), "*-1\r\n");
    assert_eq!(client.call(&["CLIENT", "GETNAME"]), "$6\r\nworker\r\n");
}

#[test]
fn redis_py_transactions_with_the_proxys_own_commands_get_every_reply() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .flag("--forward-commands")
        .start();
    let script = format!(
        r#"
import redis
r = redis.Redis(port={port})
p = r.pipeline(transaction=True)
p.set("a", "1").client_setname("py").client_getname().incr("n").info("server")
results = p.execute()
print(len(results), results[0], results[1], results[2], results[3], "redis_version" in results[4])
"#,
        port = proxy.resp_addr().port()
    );
    let output = std::process::Command::new("python3")
        .args(["-c", &script])
        .env("PYTHONPATH", support::python_path())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.trim(), "5 True True py 1 True");
}

#[test]
fn a_client_that_pauses_reading_is_bounded_by_the_write_timeout_not_the_request_timeout() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .flag("--forward-commands")
        .arg("--request-timeout", "1s")
        .arg("--client-write-timeout", "30s")
        .start();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.connect(&proxy.resp_addr().into()).unwrap();
    let stream: TcpStream = socket.into();
    let n = 20_000;
    let requests: Vec<u8> = (0..n)
        .flat_map(|i| {
            format!(
                "*3\r\n$3\r\nSET\r\n$6\r\nk{:05}\r\n$1\r\nv\r\n",
                i % 100_000
            )
            .into_bytes()
        })
        .collect();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&requests));
    // Three request timeouts without reading a byte.
    std::thread::sleep(Duration::from_secs(3));
    let mut reader = stream;
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while got.len() < 5 * n {
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => got.extend_from_slice(&chunk[..k]),
        }
    }
    sender.join().unwrap().expect("every request was taken");
    assert_eq!(
        got.len(),
        5 * n,
        "every reply came: {}",
        String::from_utf8_lossy(&got[got.len().saturating_sub(200)..])
    );
    assert!(got.chunks(5).all(|reply| reply == b"+OK\r\n"));
    assert!(
        !proxy
            .logs()
            .iter()
            .any(|line| line.contains("past a bound")),
        "no bound was applied"
    );
}

#[test]
fn a_pipeline_sent_whole_before_any_reply_is_read_is_answered_whole() {
    // As redis-py's pipelines do: every request written, then every reply
    // read. 20 MB of requests and 6 MB of replies are more than the
    // kernel's buffers hold both ways, so the proxy must read on while its
    // replies wait, as Redis does.
    let redis = RedisServer::start();
    let key = "k".repeat(1000);
    redis.set(&key, "v".repeat(300));
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--client-write-timeout", "3s")
        .start();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.connect(&proxy.resp_addr().into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let n = 20_000;
    let request = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
    stream
        .write_all(request.repeat(n).as_bytes())
        .expect("the proxy takes every request before any reply is read");
    let reply = format!("$300\r\n{}\r\n", "v".repeat(300));
    let mut got = vec![0u8; reply.len() * n];
    stream.read_exact(&mut got).expect("every reply");
    assert!(got.chunks(reply.len()).all(|r| r == reply.as_bytes()));
    assert_eq!(redis.calls("get"), 1);
}

#[test]
fn running_out_of_time_while_connecting_is_a_timeout_every_time() {
    let redis = RedisServer::start();
    redis.set("k", "v");
    // Two seconds to every reply, the handshake's included.
    let relay = Relay::start(redis.addr(), Duration::from_secs(2));
    let proxy = ProxyBuilder::new(&relay.url())
        .arg("--request-timeout", "300ms")
        .start();
    // Each request waits for its own timeout, until the node is
    // short-circuited (three failures in a row): then it fails at once,
    // saying so. The first such answer may come at the end of a wait: a
    // request that joined a fetch begun before the circuit opened, which ran
    // out of time, asks once more and finds the circuit open.
    let mut short_circuited = 0;
    for attempt in 0..6 {
        let started = Instant::now();
        let (status, body) = support::http_get(proxy.http_addr(), "/k");
        let waited = started.elapsed();
        if status == 502 {
            assert!(
                body.contains("short-circuited"),
                "attempt {attempt}: {body}"
            );
            let bound = if short_circuited == 0 {
                Duration::from_secs(2)
            } else {
                Duration::from_millis(250)
            };
            assert!(waited < bound, "attempt {attempt}: at once: {waited:?}");
            short_circuited += 1;
            continue;
        }
        assert_eq!(status, 504, "attempt {attempt}: {body}");
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
            "attempt {attempt}: the request's own timeout, not a failure at once: {waited:?}"
        );
    }
    assert!(
        short_circuited >= 2,
        "the node was short-circuited: {short_circuited}"
    );
    let mut client = Client::connect(proxy.resp_addr(), Duration::from_secs(5));
    let reply = client.call(&["GET", "k"]);
    assert!(
        reply == "-ERR timed out\r\n" || reply.contains("short-circuited"),
        "{reply}"
    );
    // Once Redis is quick again, the next request is served.
    relay.set_delay(Duration::ZERO);
    assert!(support::wait_until(Duration::from_secs(5), || {
        support::http_get(proxy.http_addr(), "/k") == (200, "v".to_owned())
    }));
}
