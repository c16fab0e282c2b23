//! The exact-LRU policy (`--cache-policy lru`, the default) with one global TTL.
//!
//! Two indexes over the same keys, both from the `lru` crate (a hash map threaded
//! with a doubly linked list, so every operation below is O(1)):
//!
//! - `entries`, in recency order, bounded by the capacity: the LRU itself;
//! - `expiry`, in insertion order, unbounded (it never holds more keys than
//!   `entries`). Every entry lives for the same TTL, so the oldest insertion is
//!   always the first to expire.
//!
//! The second index is what makes "an expired entry acts as if it was never
//! stored" exact: when the store is full and the oldest insertion has expired, that
//! entry goes, not the least recently used live one. Expired entries are also
//! reclaimed when read, and a few at a time on every insert, so memory held by
//! dead values does not wait for capacity pressure.
//!
//! Times are passed in rather than read, so the store is a pure data structure.

use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use lru::LruCache;
use tokio::time::Instant;

use super::policy::{Policy, Stats};

/// How many expired entries one insert reclaims at most, beyond what it needs to
/// make room. Bounded so an insert never stalls the lock on a long sweep.
const RECLAIM_PER_INSERT: usize = 2;

#[derive(Debug)]
struct Entry {
    value: Bytes,
    expires_at: Instant,
}

/// An LRU map from key to value with a capacity in keys and one TTL for all entries.
#[derive(Debug)]
pub struct Lru {
    entries: LruCache<Bytes, Entry>,
    expiry: LruCache<Bytes, ()>,
    ttl: Duration,
    stats: Stats,
}

impl Lru {
    /// An empty store holding at most `capacity` keys, each for `ttl`.
    pub fn new(capacity: NonZeroUsize, ttl: Duration) -> Self {
        Self {
            entries: LruCache::new(capacity),
            expiry: LruCache::unbounded(),
            ttl,
            stats: Stats::default(),
        }
    }

    /// Removes up to `budget` expired entries, oldest insertion first.
    fn reclaim_expired(&mut self, now: Instant, budget: usize) {
        for _ in 0..budget {
            let Some((oldest, ())) = self.expiry.peek_lru() else {
                return;
            };
            let expired = self
                .entries
                .peek(oldest)
                .is_none_or(|entry| entry.expires_at <= now);
            if !expired {
                // Uniform TTL: if the oldest insertion is live, every entry is.
                return;
            }
            let oldest = oldest.clone();
            self.remove_expired(&oldest);
        }
    }

    fn remove_expired(&mut self, key: &[u8]) {
        self.entries.pop(key);
        self.expiry.pop(key);
        self.stats.expirations += 1;
    }
}

impl Policy for Lru {
    fn remove(&mut self, key: &[u8]) {
        self.entries.pop(key);
        self.expiry.pop(key);
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.expiry.clear();
    }

    /// The live value of `key` and when it expires; the entry becomes the most
    /// recently used. `None` when absent or expired (an expired entry is removed on
    /// the way).
    fn get(&mut self, key: &[u8], now: Instant) -> Option<(Bytes, Instant)> {
        match self.entries.get(key) {
            Some(entry) if entry.expires_at > now => {
                self.stats.hits += 1;
                Some((entry.value.clone(), entry.expires_at))
            }
            Some(_) => {
                self.remove_expired(key);
                self.stats.misses += 1;
                None
            }
            None => {
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Stores `value` under `key` as the most recently used entry, expiring `ttl`
    /// after `now`. When the store is full, an expired entry makes room if there is
    /// one; otherwise the least recently used entry is evicted.
    fn insert(&mut self, key: Bytes, value: Bytes, now: Instant) {
        let full = self.entries.len() == self.entries.cap().get();
        let budget = RECLAIM_PER_INSERT + usize::from(full);
        self.reclaim_expired(now, budget);
        let expires_at = now + self.ttl;
        let displaced = self.entries.push(key.clone(), Entry { value, expires_at });
        // `push` returns either the old entry of this same key, or the evicted one.
        if let Some((evicted, _)) = displaced.filter(|(old_key, _)| *old_key != key) {
            self.expiry.pop(&evicted);
            self.stats.evictions += 1;
        }
        self.expiry.push(key, ());
    }

    /// How many entries are stored, counting expired ones not yet reclaimed.
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// What the store has done so far.
    fn stats(&self) -> Stats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn store(capacity: usize) -> Lru {
        Lru::new(NonZeroUsize::new(capacity).unwrap(), TTL)
    }

    fn put(store: &mut Lru, key: &str, now: Instant) {
        store.insert(
            Bytes::copy_from_slice(key.as_bytes()),
            Bytes::from(format!("value of {key}")),
            now,
        );
    }

    fn cached(store: &mut Lru, key: &str, now: Instant) -> bool {
        store.get(key.as_bytes(), now).is_some()
    }

    #[test]
    fn get_returns_the_stored_value() {
        let now = Instant::now();
        let mut s = store(2);
        put(&mut s, "a", now);
        assert_eq!(
            s.get(b"a", now),
            Some((Bytes::from("value of a"), now + TTL))
        );
        assert_eq!(s.get(b"b", now), None);
        assert_eq!(s.stats().hits, 1);
        assert_eq!(s.stats().misses, 1);
    }

    #[test]
    fn least_recently_used_entry_is_evicted_at_capacity() {
        let now = Instant::now();
        let mut s = store(3);
        put(&mut s, "a", now);
        put(&mut s, "b", now);
        put(&mut s, "c", now);
        assert!(cached(&mut s, "a", now)); // order of use, oldest first: b c a
        put(&mut s, "d", now); // evicts b
        assert!(!cached(&mut s, "b", now));
        assert!(cached(&mut s, "a", now));
        assert!(cached(&mut s, "c", now));
        assert!(cached(&mut s, "d", now));
        assert_eq!(s.len(), 3);
        assert_eq!(s.stats().evictions, 1);
    }

    #[test]
    fn reinserting_a_key_does_not_evict_another() {
        let now = Instant::now();
        let mut s = store(2);
        put(&mut s, "a", now);
        put(&mut s, "b", now);
        put(&mut s, "a", now);
        assert!(cached(&mut s, "a", now));
        assert!(cached(&mut s, "b", now));
        assert_eq!(s.stats().evictions, 0);
    }

    #[test]
    fn entry_expires_exactly_at_its_ttl() {
        let now = Instant::now();
        let mut s = store(2);
        put(&mut s, "a", now);
        assert!(cached(&mut s, "a", now + TTL - Duration::from_nanos(1)));
        assert!(!cached(&mut s, "a", now + TTL));
        assert_eq!(s.len(), 0, "an expired entry is removed when read");
        assert_eq!(s.stats().expirations, 1);
    }

    #[test]
    fn reinsert_restarts_the_ttl() {
        let now = Instant::now();
        let mut s = store(2);
        put(&mut s, "a", now);
        put(&mut s, "a", now + Duration::from_secs(5));
        assert!(cached(&mut s, "a", now + Duration::from_secs(12)));
    }

    #[test]
    fn expired_entry_makes_room_before_a_live_one_is_evicted() {
        let t0 = Instant::now();
        let mut s = store(3);
        put(&mut s, "a", t0);
        put(&mut s, "b", t0 + Duration::from_secs(1));
        put(&mut s, "c", t0 + Duration::from_secs(2));
        let t1 = t0 + Duration::from_secs(3);
        assert!(cached(&mut s, "a", t1)); // recency, oldest first: b c a
        // a has expired, b and c have not; b is the least recently used.
        let t2 = t0 + TTL + Duration::from_millis(500);
        put(&mut s, "d", t2);
        assert!(
            cached(&mut s, "b", t2),
            "a live entry was evicted for an expired one"
        );
        assert!(cached(&mut s, "c", t2));
        assert!(cached(&mut s, "d", t2));
        assert!(!cached(&mut s, "a", t2));
        assert_eq!(s.stats().evictions, 0);
        assert_eq!(s.stats().expirations, 1);
    }

    #[test]
    fn inserts_reclaim_expired_entries_without_capacity_pressure() {
        let t0 = Instant::now();
        let mut s = store(100);
        for i in 0..10 {
            put(&mut s, &format!("old{i}"), t0);
        }
        let later = t0 + TTL;
        for i in 0..5 {
            put(&mut s, &format!("new{i}"), later);
        }
        // Each insert reclaims up to two expired entries: all ten are gone.
        assert_eq!(s.len(), 5);
        assert_eq!(s.stats().expirations, 10);
    }

    #[test]
    fn removed_and_cleared_entries_are_gone_from_both_indexes() {
        let now = Instant::now();
        let mut s = store(3);
        for key in ["a", "b", "c"] {
            put(&mut s, key, now);
        }
        s.remove(b"b");
        assert!(!cached(&mut s, "b", now));
        assert_eq!((s.len(), s.expiry.len()), (2, 2));
        s.clear();
        assert_eq!((s.len(), s.expiry.len()), (0, 0));
        put(&mut s, "d", now);
        assert!(cached(&mut s, "d", now));
    }

    #[test]
    fn capacity_of_one_keeps_only_the_last_key() {
        let now = Instant::now();
        let mut s = store(1);
        for key in ["a", "b", "c"] {
            put(&mut s, key, now);
        }
        assert!(cached(&mut s, "c", now));
        assert!(!cached(&mut s, "a", now));
        assert!(!cached(&mut s, "b", now));
        assert_eq!(s.stats().evictions, 2);
    }
}
