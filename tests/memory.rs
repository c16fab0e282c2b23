//! `--cache-max-bytes` bounds memory, not just names and values: 1.5 million
//! tiny keys read through a 64 MiB cache grow the proxy's resident memory
//! (from `/proc/PID/status`) by at most 1.5 × 64 MiB, under either policy.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{ProxyBuilder, RedisServer};

const KEYS: usize = 1_500_000;
const MAX_BYTES_MIB: u64 = 64;
/// Keys per `MGET`.
const BATCH: usize = 100;

/// Reads every key through the proxy, pipelined, and returns the growth of
/// its resident memory in KiB and the entries it holds.
fn read_every_key_through(policy: &str) -> (u64, f64) {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    // `k:0` … `k:1499999`, each an 8-byte value.
    let _: () = redis.cmd(&["DEBUG", "POPULATE", &KEYS.to_string(), "k", "8"]);
    let proxy = ProxyBuilder::new(&redis.url())
        .arg("--cache-policy", policy)
        .arg("--cache-max-bytes", format!("{MAX_BYTES_MIB}mb"))
        .arg("--cache-capacity", 10 * KEYS)
        .arg("--cache-ttl", "1h")
        .start();
    let before = proxy.rss_kib();

    let mut conn = TcpStream::connect(proxy.resp_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut out = Vec::new();
        for start in (0..KEYS).step_by(BATCH) {
            let keys = start..(start + BATCH).min(KEYS);
            out.extend_from_slice(format!("*{}\r\n$4\r\nMGET\r\n", keys.len() + 1).as_bytes());
            for i in keys {
                let key = format!("k:{i}");
                out.extend_from_slice(format!("${}\r\n{key}\r\n", key.len()).as_bytes());
            }
            if out.len() > 64 * 1024 {
                writer.write_all(&out).unwrap();
                out.clear();
            }
        }
        out.extend_from_slice(b"PING\r\n");
        writer.write_all(&out).unwrap();
    });
    // Every reply, up to the PONG that follows the last one.
    let (mut tail, mut buf) = (Vec::new(), vec![0u8; 1 << 16]);
    loop {
        let n = conn.read(&mut buf).expect("the proxy answers every MGET");
        assert!(n > 0, "the proxy closed the connection");
        tail.extend_from_slice(&buf[..n]);
        if tail.ends_with(b"+PONG\r\n") {
            break;
        }
        tail.drain(..tail.len().saturating_sub(8));
    }
    sender.join().unwrap();
    assert_eq!(
        proxy.metric("redis_proxy_cache_misses_total"),
        Some(KEYS as f64),
        "every key was read once, through the cache"
    );
    let grown = proxy.rss_kib().saturating_sub(before);
    let entries = proxy.metric("redis_proxy_cache_entries").unwrap();
    (grown, entries)
}

fn assert_bounded(policy: &str, smallest_entry: f64) {
    let (grown, entries) = read_every_key_through(policy);
    let limit = MAX_BYTES_MIB * 1024 * 3 / 2;
    assert!(
        grown <= limit,
        "{policy}: {KEYS} tiny keys through a {MAX_BYTES_MIB} MiB cache grew RSS by {grown} KiB \
         (limit {limit} KiB), {entries} entries"
    );
    // The bound is what entries cost, not far more: the cache is used.
    let fits = (MAX_BYTES_MIB << 20) as f64 / smallest_entry;
    assert!(
        entries > fits / 2.0 && entries < KEYS as f64,
        "{policy}: {entries} entries held, about {fits:.0} expected"
    );
}

#[test]
fn tiny_values_through_the_lru_cache_stay_within_its_byte_capacity() {
    // 40-byte slot, 12 of index, one 32-byte chunk.
    assert_bounded("lru", 84.0);
}

#[test]
fn tiny_values_through_the_s3fifo_cache_stay_within_its_byte_capacity() {
    // quick_cache's node, index and half a ghost, and three 32-byte chunks.
    assert_bounded("s3fifo", 306.0);
}
