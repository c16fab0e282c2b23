//! Client-side caching through the proxy: `CLIENT TRACKING` served by the
//! proxy to its clients, with Redis 7's semantics. Each test runs the same
//! code against the proxy and, as its control, against Redis itself.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use support::{Proxy, ProxyBuilder, RawConn, RedisServer};

/// Transparent mode with the proxy's own tracking of Redis, which client
/// tracking requires.
fn tracked(redis: &RedisServer) -> Proxy {
    ProxyBuilder::new(&redis.url())
        .flag("--forward-commands")
        .flag("--forward-admin-commands")
        .arg("--invalidation", "tracking")
        .arg("--cache-ttl", "1h")
        .start()
}

/// One RESP frame's parts: a push or a message names what it is, the rest
/// is the reply's text.
#[derive(Debug, PartialEq)]
enum Frame {
    /// Invalidated keys; `None`: everything.
    Invalidate(Option<Vec<String>>),
    Other(String),
}

/// Splits a raw frame (as `RawConn::read_reply` gives it) into lines.
fn parse(raw: &str) -> Frame {
    let lines: Vec<&str> = raw.split("\r\n").collect();
    let invalidate = match lines.first() {
        Some(&">2") => lines.get(2) == Some(&"invalidate"),
        Some(&"*3") => lines.get(4) == Some(&"__redis__:invalidate"),
        _ => false,
    };
    if !invalidate {
        return Frame::Other(raw.to_owned());
    }
    let at = if lines[0] == ">2" { 3 } else { 5 };
    match lines[at] {
        "_" | "$-1" | "*-1" => Frame::Invalidate(None),
        _ => {
            let keys = (lines[at + 1..].chunks(2))
                .filter(|pair| pair.len() == 2)
                .map(|pair| pair[1].to_owned())
                .collect();
            Frame::Invalidate(Some(keys))
        }
    }
}

/// A client with a cache of its own kept coherent by invalidations.
struct Tracker {
    conn: RawConn,
    cache: HashMap<String, String>,
    flushes: usize,
}

impl Tracker {
    /// A RESP3 connection to `addr` with `CLIENT TRACKING ON` and `options`.
    fn resp3(addr: SocketAddr, options: &[&str]) -> Self {
        let mut conn = RawConn::connect(addr);
        assert!(conn.command(&["HELLO", "3"]).starts_with('%'));
        let mut args = vec!["CLIENT", "TRACKING", "ON"];
        args.extend(options);
        assert_eq!(conn.command(&args), "+OK\r\n", "{args:?}");
        Self {
            conn,
            cache: HashMap::new(),
            flushes: 0,
        }
    }

    fn apply(&mut self, frame: Frame) -> Option<String> {
        match frame {
            Frame::Invalidate(Some(keys)) => {
                // Every cached read of the key ("GET k", "HGET k f").
                let read_of = |read: &String| read.split(' ').nth(1).map(str::to_owned);
                (self.cache).retain(|read, _| read_of(read).is_none_or(|key| !keys.contains(&key)));
                None
            }
            Frame::Invalidate(None) => {
                self.cache.clear();
                self.flushes += 1;
                None
            }
            Frame::Other(reply) => Some(reply),
        }
    }

    /// Takes the invalidations already received.
    fn drain(&mut self) {
        self.conn.set_read_timeout(Duration::from_millis(20));
        loop {
            let raw = self.conn.read_reply();
            if raw.is_empty() {
                break;
            }
            assert!(self.apply(parse(&raw)).is_none(), "unasked reply {raw:?}");
        }
        self.conn.set_read_timeout(Duration::from_secs(5));
    }

    /// The reply to `args`, invalidations before it taken.
    fn ask(&mut self, args: &[&str]) -> String {
        let mut frame = format!("*{}\r\n", args.len());
        for arg in args {
            frame.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.conn.send(frame.as_bytes());
        loop {
            let raw = self.conn.read_reply();
            assert!(!raw.is_empty(), "no reply to {args:?}");
            if let Some(reply) = self.apply(parse(&raw)) {
                return reply;
            }
        }
    }

    /// `GET`'s or `HGET`'s value: from the client's own cache when it has it
    /// (kept by the whole request, `GET k`).
    fn read(&mut self, args: &[&str]) -> String {
        let key = args.join(" ");
        if let Some(value) = self.cache.get(&key) {
            return value.clone();
        }
        let value = self.ask(args);
        self.cache.insert(key, value.clone());
        value
    }
}

/// Writes and reads as an application with a client-side cache does: after
/// each write (through `via`, the proxy or Redis) and 100 ms, every key read
/// from the client's cache is as written. Returns the stale reads.
fn stale_reads(reader_at: SocketAddr, writers: [SocketAddr; 2], rounds: usize) -> usize {
    let mut reader = Tracker::resp3(reader_at, &[]);
    let mut writers = writers.map(RawConn::connect);
    let mut written: HashMap<String, String> = HashMap::new();
    let mut stale = 0;
    for round in 0..rounds {
        let writer = &mut writers[round % 2];
        let value = format!("v{round}");
        let (read, expected) = match round % 3 {
            0 => {
                let key = format!("s{}", round % 4);
                writer.command(&["SET", &key, &value]);
                (vec!["GET".to_owned(), key], support::bulk(&value))
            }
            1 => {
                let field = format!("f{}", round % 2);
                writer.command(&["HSET", "h", &field, &value]);
                (
                    vec!["HGET".to_owned(), "h".into(), field],
                    support::bulk(&value),
                )
            }
            _ => {
                let key = format!("s{}", round % 4);
                writer.command(&["DEL", &key]);
                (vec!["GET".to_owned(), key], "_\r\n".to_owned())
            }
        };
        written.insert(read.join(" "), expected);
        std::thread::sleep(Duration::from_millis(100));
        reader.drain();
        for (key, expected) in &written {
            let args: Vec<&str> = key.split(' ').collect();
            if reader.read(&args) != *expected {
                stale += 1;
            }
        }
    }
    assert!(
        reader.cache.len() >= 4,
        "the reader cached: {:?}",
        reader.cache
    );
    stale
}

#[test]
fn tracked_reads_see_every_write_through_the_proxy_and_straight_to_redis() {
    let redis = RedisServer::start();
    let proxy = tracked(&redis);
    let (at_proxy, at_redis) = (proxy.resp_addr(), redis.addr());
    assert_eq!(stale_reads(at_proxy, [at_proxy, at_redis], 30), 0);
    // Control: the same client, straight to Redis.
    assert_eq!(stale_reads(at_redis, [at_redis, at_redis], 12), 0);
}

#[test]
fn tracking_turned_on_then_off_as_redis_reports_it() {
    let redis = RedisServer::start();
    let proxy = tracked(&redis);
    for addr in [proxy.resp_addr(), redis.addr()] {
        let mut conn = RawConn::connect(addr);
        assert_eq!(conn.command(&["CLIENT", "GETREDIR"]), ":-1\r\n");
        let id = &conn.client_id();
        for (args, error) in [
            (vec!["PREFIX", "a"], "PREFIX option requires BCAST"),
            (
                vec!["BCAST", "OPTIN"],
                "OPTIN and OPTOUT are not compatible with BCAST",
            ),
            (
                vec!["OPTIN", "OPTOUT"],
                "You can't specify both OPTIN mode and OPTOUT mode",
            ),
            (vec!["REDIRECT", "999999"], "does not exist"),
            (
                vec!["BCAST", "PREFIX", "ab", "PREFIX", "a"],
                "Prefix 'ab' overlaps with another provided prefix 'a'",
            ),
            (vec!["NOPE"], "syntax error"),
        ] {
            let mut command = vec!["CLIENT", "TRACKING", "ON"];
            command.extend(&args);
            let reply = conn.command(&command);
            assert!(
                reply.starts_with("-ERR") && reply.contains(error),
                "{args:?}: {reply}"
            );
        }
        let on = [
            "CLIENT", "TRACKING", "ON", "REDIRECT", id, "OPTIN", "NOLOOP",
        ];
        assert_eq!(conn.command(&on), "+OK\r\n");
        assert_eq!(conn.command(&["CLIENT", "GETREDIR"]), format!(":{id}\r\n"));
        let info = conn.command(&["CLIENT", "TRACKINGINFO"]);
        for part in ["on", "optin", "noloop", &format!(":{id}")] {
            assert!(info.contains(part), "{part} in {info}");
        }
        let list = conn.command(&["CLIENT", "LIST", "ID", id]);
        assert!(
            list.contains(" flags=t ") && list.contains(&format!(" redir={id} ")),
            "{list}"
        );
        assert_eq!(conn.command(&["CLIENT", "CACHING", "YES"]), "+OK\r\n");
        let reply = conn.command(&["CLIENT", "CACHING", "NO"]);
        assert!(
            reply.contains("only valid when tracking is enabled in OPTOUT mode"),
            "{reply}"
        );
        let switch = conn.command(&["CLIENT", "TRACKING", "ON", "OPTOUT"]);
        assert!(
            switch.contains("You can't switch OPTIN/OPTOUT mode"),
            "{switch}"
        );
        assert_eq!(conn.command(&["CLIENT", "TRACKING", "OFF"]), "+OK\r\n");
        assert_eq!(conn.command(&["CLIENT", "GETREDIR"]), ":-1\r\n");
        let caching = conn.command(&["CLIENT", "CACHING", "YES"]);
        assert!(caching.contains("can be called only when the client is in tracking mode"));
    }
}

#[test]
fn resp2_invalidations_go_to_the_redirect_connection_as_messages() {
    let redis = RedisServer::start();
    let proxy = tracked(&redis);
    for addr in [proxy.resp_addr(), redis.addr()] {
        let mut listener = RawConn::connect(addr);
        let id = listener.client_id();
        let subscribed = listener.command(&["SUBSCRIBE", "__redis__:invalidate"]);
        assert!(subscribed.contains("subscribe"), "{subscribed}");
        let mut reader = RawConn::connect(addr);
        let on = ["CLIENT", "TRACKING", "ON", "REDIRECT", &id];
        assert_eq!(reader.command(&on), "+OK\r\n");
        RawConn::connect(redis.addr()).command(&["SET", "r2", "old"]);
        assert_eq!(reader.command(&["GET", "r2"]), support::bulk("old"));
        // Not read by the tracking client: never told of.
        RawConn::connect(addr).command(&["SET", "unread", "x"]);
        RawConn::connect(redis.addr()).command(&["SET", "r2", "new"]);
        let message = listener.read_reply();
        assert_eq!(
            parse(&message),
            Frame::Invalidate(Some(vec!["r2".into()])),
            "{addr}: {message:?}"
        );
        // A flush is the null invalidation.
        assert_eq!(reader.command(&["GET", "r2"]), support::bulk("new"));
        RawConn::connect(addr).command(&["FLUSHALL"]);
        let message = listener.read_reply();
        assert_eq!(
            parse(&message),
            Frame::Invalidate(None),
            "{addr}: {message:?}"
        );
    }
}

#[test]
fn broadcast_tells_of_writes_under_the_prefixes_only() {
    let redis = RedisServer::start();
    let proxy = tracked(&redis);
    for addr in [proxy.resp_addr(), redis.addr()] {
        let mut reader = Tracker::resp3(addr, &["BCAST", "PREFIX", "user:", "PREFIX", "cart:"]);
        let mut writer = RawConn::connect(addr);
        writer.command(&["SET", "user:1", "a"]);
        writer.command(&["MSET", "cart:9", "b", "other", "c"]);
        writer.command(&["HSET", "user:2", "f", "v"]);
        let mut heard = Vec::new();
        reader.conn.set_read_timeout(Duration::from_millis(300));
        while heard.len() < 3 {
            match parse(&reader.conn.read_reply()) {
                Frame::Invalidate(Some(keys)) => heard.extend(keys),
                other => panic!("{addr}: {other:?} after {heard:?}"),
            }
        }
        heard.sort();
        assert_eq!(heard, ["cart:9", "user:1", "user:2"], "{addr}");
        reader.drain();
        assert_eq!(reader.flushes, 0);
    }
}

#[test]
fn losing_the_proxys_tracking_link_sends_the_null_invalidation() {
    let redis = RedisServer::start();
    let proxy = tracked(&redis);
    let mut reader = Tracker::resp3(proxy.resp_addr(), &[]);
    RawConn::connect(redis.addr()).command(&["SET", "k", "v"]);
    assert_eq!(reader.read(&["GET", "k"]), support::bulk("v"));
    // Every connection of the proxy's to Redis is cut.
    let killed = RawConn::connect(redis.addr())
        .command(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    assert!(killed.starts_with(':') && killed != ":0\r\n", "{killed}");
    std::thread::sleep(Duration::from_millis(300));
    reader.drain();
    assert!(reader.flushes >= 1, "told to flush");
    assert!(reader.cache.is_empty());
    assert_eq!(reader.read(&["GET", "k"]), support::bulk("v"));
}

#[test]
fn tracking_is_refused_without_the_proxys_own_tracking() {
    let redis = RedisServer::start();
    let proxy = ProxyBuilder::new(&redis.url())
        .flag("--forward-commands")
        .start();
    let reply = RawConn::connect(proxy.resp_addr()).command(&["CLIENT", "TRACKING", "ON"]);
    assert!(
        reply.starts_with("-ERR") && reply.contains("--invalidation tracking"),
        "{reply}"
    );
}
