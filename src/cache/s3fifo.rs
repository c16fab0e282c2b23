//! The scan-resistant policy (`--cache-policy s3fifo`): quick_cache's S3-FIFO
//! with a capacity in keys, and the TTL kept as a deadline stored with each value.
//!
//! quick_cache decides what to evict; this wrapper adds what the proxy needs on
//! top: expiry (checked on read, like the LRU store; an expired entry that is
//! never read again is evicted by the policy in time), and the counters.
//!
//! quick_cache's lookups are O(1) on average, like the LRU's; its S3-FIFO queues
//! make a one-time scan pass through a small probationary queue instead of
//! pushing out the entries that are read again and again.

use std::time::Duration;

use bytes::Bytes;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};
use tokio::time::Instant;

use super::policy::{Policy, Stats};

#[derive(Debug, Clone)]
struct Entry {
    value: Bytes,
    expires_at: Instant,
}

/// Counts what one insert evicted, sorting expired entries from live ones.
#[derive(Debug, Clone, Copy, Default)]
struct Evictions {
    now: Option<Instant>,
    live: u64,
    expired: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct CountEvictions;

impl Lifecycle<Bytes, Entry> for CountEvictions {
    type RequestState = Evictions;

    fn on_evict(&self, state: &mut Evictions, _key: Bytes, entry: Entry) {
        if state.now.is_some_and(|now| entry.expires_at <= now) {
            state.expired += 1;
        } else {
            state.live += 1;
        }
    }
}

type Inner =
    quick_cache::unsync::Cache<Bytes, Entry, UnitWeighter, DefaultHashBuilder, CountEvictions>;

/// An S3-FIFO map from key to value with a capacity in keys and one TTL.
#[derive(Debug)]
pub(crate) struct S3Fifo {
    entries: Inner,
    ttl: Duration,
    stats: Stats,
}

impl S3Fifo {
    /// An empty store holding at most `capacity` keys, each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: Inner::with(
                capacity,
                capacity as u64,
                UnitWeighter,
                DefaultHashBuilder::default(),
                CountEvictions,
            ),
            ttl,
            stats: Stats::default(),
        }
    }
}

impl Policy for S3Fifo {
    fn get(&mut self, key: &[u8], now: Instant) -> Option<(Bytes, Instant)> {
        match self.entries.get(key) {
            Some(entry) if entry.expires_at > now => {
                self.stats.hits += 1;
                Some((entry.value.clone(), entry.expires_at))
            }
            Some(_) => {
                self.entries.remove(key);
                self.stats.expirations += 1;
                self.stats.misses += 1;
                None
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    fn insert(&mut self, key: Bytes, value: Bytes, now: Instant) {
        let mut evictions = Evictions {
            now: Some(now),
            ..Evictions::default()
        };
        let entry = Entry {
            value,
            expires_at: now + self.ttl,
        };
        // A key parsed from a client's request is a slice of that connection's read
        // buffer; a copy of its own keeps the cache from pinning the buffer.
        let key = Bytes::copy_from_slice(&key);
        self.entries
            .insert_with_lifecycle(key, entry, &mut evictions);
        self.stats.evictions += evictions.live;
        self.stats.expirations += evictions.expired;
    }

    fn remove(&mut self, key: &[u8]) {
        self.entries.remove(key);
    }

    fn clear(&mut self) {
        self.entries.clear();
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn stats(&self) -> Stats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn key(i: usize) -> Bytes {
        Bytes::from(format!("key{i}"))
    }

    #[test]
    fn capacity_is_a_number_of_keys() {
        let now = Instant::now();
        let mut s = S3Fifo::new(10, TTL);
        for i in 0..100 {
            s.insert(key(i), Bytes::from("v"), now);
        }
        assert!(s.len() <= 10, "{} entries", s.len());
        assert_eq!(s.stats().evictions as usize, 100 - s.len());
    }

    #[test]
    fn entry_expires_exactly_at_its_ttl() {
        let now = Instant::now();
        let mut s = S3Fifo::new(10, TTL);
        s.insert(key(1), Bytes::from("v"), now);
        assert!(
            s.get(b"key1", now + TTL - Duration::from_nanos(1))
                .is_some()
        );
        assert!(s.get(b"key1", now + TTL).is_none());
        assert_eq!(s.len(), 0);
        assert_eq!(s.stats().expirations, 1);
        assert_eq!(s.stats().hits, 1);
        assert_eq!(s.stats().misses, 1);
    }

    #[test]
    fn a_scan_does_not_flush_the_keys_in_use() {
        let now = Instant::now();
        let mut s = S3Fifo::new(100, TTL);
        for round in 0..3 {
            for i in 0..50 {
                if s.get(format!("key{i}").as_bytes(), now).is_none() {
                    s.insert(key(i), Bytes::from("hot"), now);
                }
            }
            let _ = round;
        }
        // One pass over 1,000 keys never read again.
        for i in 1000..2000 {
            s.insert(key(i), Bytes::from("scan"), now);
        }
        let kept = (0..50)
            .filter(|i| s.get(format!("key{i}").as_bytes(), now).is_some())
            .count();
        assert!(kept >= 40, "only {kept} of 50 hot keys survived the scan");
    }
}
