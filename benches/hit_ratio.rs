//! Hit ratio of the two cache policies on a skewed key stream with scans.
//!
//! Requests draw keys from a Zipf(0.99) distribution over 100,000 keys (a few keys
//! are very popular, most are rare), through the proxy's own `Cache` with a
//! capacity of 5,000 keys, read-through: a miss inserts the key. The second
//! workload interrupts the stream every 100,000 requests with a scan of 20,000
//! keys that are never read again, the pattern that flushes an LRU. Scan requests
//! are not counted in the ratio. The stream is seeded, so every run is the same.
//!
//! Run: `cargo bench --bench hit_ratio` (part of `make bench`).

use std::time::Duration;

use bytes::Bytes;
use redis_proxy::{Cache, CachePolicy, Key};

const KEYS: usize = 100_000;
const CAPACITY: usize = 5_000;
const REQUESTS: usize = 1_000_000;
const SCAN_EVERY: usize = 100_000;
const SCAN_LEN: usize = 20_000;
const SKEW: f64 = 0.99;

/// xorshift64*: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Cumulative Zipf probabilities of ranks 1..=KEYS.
fn zipf_cdf() -> Vec<f64> {
    let weights: Vec<f64> = (1..=KEYS).map(|k| 1.0 / (k as f64).powf(SKEW)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

/// The hit ratio of `policy` over the stream, with scans or without.
fn hit_ratio(policy: CachePolicy, cdf: &[f64], scans: bool) -> f64 {
    let cache = Cache::builder()
        .policy(policy)
        .capacity(CAPACITY)
        .ttl(Duration::from_secs(3600))
        .build();
    let value = Bytes::from_static(&[b'v'; 100]);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut scan_key = 0usize;
    let (mut hits, mut counted) = (0u64, 0u64);
    for request in 1..=REQUESTS {
        let rank = cdf.partition_point(|&p| p < rng.next_f64()).min(KEYS - 1);
        let key = Key::new(format!("key:{rank}"));
        counted += 1;
        if cache.get(&key).is_some() {
            hits += 1;
        } else {
            cache.insert(&key, &value);
        }
        if scans && request % SCAN_EVERY == 0 {
            for _ in 0..SCAN_LEN {
                let key = Key::new(format!("scan:{scan_key}"));
                scan_key += 1;
                if cache.get(&key).is_none() {
                    cache.insert(&key, &value);
                }
            }
        }
    }
    hits as f64 / counted as f64
}

fn main() {
    let cdf = zipf_cdf();
    println!(
        "\nHit ratio: Zipf({SKEW}) over {KEYS} keys, capacity {CAPACITY}, {REQUESTS} requests; \
         scans of {SCAN_LEN} one-time keys every {SCAN_EVERY} requests\n"
    );
    println!("{:<8} {:>10} {:>12}", "policy", "no scans", "with scans");
    let mut ratios = Vec::new();
    for (name, policy) in [("lru", CachePolicy::Lru), ("s3fifo", CachePolicy::S3Fifo)] {
        let plain = hit_ratio(policy, &cdf, false);
        let scanned = hit_ratio(policy, &cdf, true);
        println!(
            "{name:<8} {:>9.1}% {:>11.1}%",
            plain * 100.0,
            scanned * 100.0
        );
        ratios.push((plain, scanned));
    }
    println!(
        "\ns3fifo / lru: {:.2} without scans, {:.2} with scans",
        ratios[1].0 / ratios[0].0,
        ratios[1].1 / ratios[0].1
    );
}
