//! The read-through cache: a shared [`Cache`] handle, and the Tower
//! [`CacheLayer`]/[`CacheService`] that serves hits from it and sends misses on
//! (see `service` for coalescing).
//!
//! The store behind the handle is one of two policies ([`CachePolicy`]): exact
//! LRU (the default, see `lru`) or quick_cache's S3-FIFO (see `s3fifo`). Both
//! hold at most a number of keys and of bytes (names plus values), and every
//! entry lives for one TTL. Each store synchronizes itself; the exact-LRU store
//! lets hits on different threads proceed without writing to any memory they
//! share.

mod lru;
mod policy;
mod s3fifo;
mod service;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::lookup::{Key, Lookup, Source};

pub use policy::{CachePolicy, Stats};
pub use service::{CacheLayer, CacheService, ResponseFuture};

use policy::Store;
use service::Flights;

/// A cheap, cloneable handle to one shared store (LRU or S3-FIFO, one TTL) and
/// to the fetches in flight for it.
///
/// No lock is held across an `.await`; the store's own locks guard O(1)
/// operations.
#[derive(Debug, Clone)]
pub struct Cache {
    // One reference count to bump: the handle is cloned for every miss.
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    flights: Mutex<Flights>,
    ttl: Duration,
    max_value_bytes: usize,
}

/// How a [`Cache`] is made: [`Cache::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheBuilder {
    capacity: usize,
    ttl: Duration,
    policy: CachePolicy,
    max_bytes: usize,
    max_value_bytes: usize,
}

impl CacheBuilder {
    /// Keys held at most (at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// How long an entry lives after it was fetched.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// What goes when the cache is full.
    pub fn policy(mut self, policy: CachePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Bytes of names and values held at most (unset: no bound beyond the keys).
    /// Beyond it entries go in the same order as beyond the key capacity.
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Values larger than this are served but not cached (unset: no bound beyond
    /// [`CacheBuilder::max_bytes`]).
    pub fn max_value_bytes(mut self, max_value_bytes: usize) -> Self {
        self.max_value_bytes = max_value_bytes;
        self
    }

    /// An empty cache.
    pub fn build(self) -> Cache {
        Cache {
            shared: Arc::new(Shared {
                store: Store::new(self.policy, self.capacity.max(1), self.max_bytes, self.ttl),
                flights: Mutex::default(),
                ttl: self.ttl,
                max_value_bytes: self.max_value_bytes,
            }),
        }
    }
}

impl Cache {
    /// Keys held unless set: 10,000.
    pub const DEFAULT_CAPACITY: usize = 10_000;
    /// The TTL unless set: 60 s.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

    /// An empty exact-LRU cache of `capacity` keys (at least 1) whose entries
    /// live for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self::builder().capacity(capacity).ttl(ttl).build()
    }

    /// A cache with every setting at its default until set.
    pub fn builder() -> CacheBuilder {
        CacheBuilder {
            capacity: Self::DEFAULT_CAPACITY,
            ttl: Self::DEFAULT_TTL,
            policy: CachePolicy::default(),
            max_bytes: usize::MAX,
            max_value_bytes: usize::MAX,
        }
    }

    /// How many fetches are in flight.
    pub fn fetches_in_flight(&self) -> usize {
        self.flights().live.len()
    }

    /// Drops `keys` (the backend said they changed), with every reply cached
    /// for reads of them (transparent mode), and keeps fetches of them that are
    /// in flight from caching what they bring: such a fetch is detached, so a
    /// miss that comes after the change starts a fetch of its own instead of
    /// waiting for a value that may predate it.
    pub fn invalidate(&self, keys: &[Key]) {
        // Lock order, everywhere: flights, then the store.
        let mut flights = self.flights();
        for key in keys {
            self.shared.store.remove(key);
            flights.detach(key);
            for query in flights.queries.remove(key.name()).unwrap_or_default() {
                self.shared.store.remove(&query);
                flights.detach(&query);
            }
        }
    }

    /// Drops `names` in every database, and keeps fetches of them in flight from
    /// caching (see [`Cache::invalidate`]): what Redis's invalidation messages
    /// ask, since they name keys but not their databases.
    pub fn invalidate_everywhere(&self, names: &[Bytes]) {
        let mut flights = self.flights();
        for name in names {
            self.shared.store.remove_everywhere(name);
            for query in flights.queries.remove(name).unwrap_or_default() {
                self.shared.store.remove(&query);
                flights.detach(&query);
            }
        }
        let fetching: Vec<Key> = flights
            .live
            .keys()
            .filter(|key| names.iter().any(|name| name == key.name()))
            .cloned()
            .collect();
        for key in &fetching {
            flights.detach(key);
        }
    }

    /// Drops every entry and keeps every fetch in flight from caching.
    pub fn flush(&self) {
        let mut flights = self.flights();
        self.shared.store.clear();
        flights.queries.clear();
        let fetching: Vec<Key> = flights.live.keys().cloned().collect();
        for key in &fetching {
            flights.detach(key);
        }
    }

    /// The live value of `key`, now the most recently used, and how long it
    /// stays fresh.
    pub fn get(&self, key: &Key) -> Option<(Bytes, Duration)> {
        let lookup = self.lookup(key)?;
        Some((lookup.value?, lookup.fresh_for))
    }

    /// The live value of `key` as a hit's answer, with the digest the store
    /// keeps for a large value.
    pub(crate) fn lookup(&self, key: &Key) -> Option<Lookup> {
        let now = Instant::now();
        let found = self.shared.store.get(key, now)?;
        let fresh_for = found.expires_at.saturating_duration_since(now);
        Some(Lookup {
            value: Some(found.value),
            source: Source::Cache,
            fresh_for,
            age: self.shared.ttl.saturating_sub(fresh_for),
            digest: found.digest,
        })
    }

    /// Stores `value` under `key` for one TTL from now. A value over the value or
    /// byte limit is not stored (and any older value of `key` goes): returns
    /// whether it was stored.
    pub fn insert(&self, key: &Key, value: &Bytes) -> bool {
        if value.len() > self.shared.max_value_bytes {
            self.shared.store.remove(key);
            return false;
        }
        self.shared.store.insert(key, value, Instant::now())
    }

    /// Removes every expired entry now; returns how many went. Expired entries
    /// are never served, but they hold memory until they are read, pushed out,
    /// or swept by this.
    pub fn reclaim_expired(&self) -> usize {
        {
            // The index of cached reads keeps keys whose entries the policy has
            // evicted since; past a bound, the cached reads are dropped with
            // it (they are fetched again), so it cannot grow without end.
            let mut flights = self.flights();
            if flights.queries.len() > self.shared.store.len() + 1024 {
                let queries = std::mem::take(&mut flights.queries);
                for query in queries.into_values().flatten() {
                    self.shared.store.remove(&query);
                }
            }
        }
        self.shared.store.reclaim_expired(Instant::now())
    }

    /// Sweeps expired entries every `interval`, for ever: spawn it beside the
    /// cache, so memory and the entry count fall once entries expire even when no
    /// traffic touches them.
    pub async fn run_reclaimer(self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let reclaimed = self.reclaim_expired();
            if reclaimed > 0 {
                tracing::debug!(reclaimed, "expired entries reclaimed");
            }
        }
    }

    /// Entries stored, counting expired ones not yet reclaimed.
    pub fn len(&self) -> usize {
        self.shared.store.len()
    }

    /// Names plus values of every entry, in bytes.
    pub fn bytes(&self) -> usize {
        self.shared.store.bytes()
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hits, misses, evictions and expirations so far.
    pub fn stats(&self) -> Stats {
        self.shared.store.stats()
    }

    fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    fn flights(&self) -> MutexGuard<'_, Flights> {
        self.shared
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for Cache {
    /// An exact-LRU cache of [`Cache::DEFAULT_CAPACITY`] keys for
    /// [`Cache::DEFAULT_TTL`].
    fn default() -> Self {
        Self::builder().build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_over_the_value_limit_are_not_cached_and_drop_the_old_one() {
        let cache = Cache::builder().max_value_bytes(4).build();
        let key = Key::from("k");
        assert!(cache.insert(&key, &Bytes::from("four")));
        assert!(!cache.insert(&key, &Bytes::from("fives")));
        assert!(cache.get(&key).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_reclaimer_sweeps_expired_entries_without_reads() {
        for policy in [CachePolicy::Lru, CachePolicy::S3Fifo] {
            let cache = Cache::builder()
                .policy(policy)
                .ttl(Duration::from_secs(2))
                .build();
            for i in 0..100 {
                cache.insert(&Key::new(format!("k{i}")), &Bytes::from("v"));
            }
            let reclaimer = tokio::spawn(cache.clone().run_reclaimer(Duration::from_secs(1)));
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(cache.len(), 100, "{policy}: nothing expired yet");
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(cache.len(), 0, "{policy}: swept after the TTL");
            assert_eq!(cache.bytes(), 0);
            assert_eq!(cache.stats().expirations, 100);
            reclaimer.abort();
        }
    }

    #[test]
    fn a_hit_on_a_large_value_carries_the_digest_stored_with_it() {
        for policy in [CachePolicy::Lru, CachePolicy::S3Fifo] {
            let cache = Cache::builder().policy(policy).build();
            let (large, small) = (Key::from("large"), Key::from("small"));
            let value = Bytes::from(vec![b'x'; policy::DIGEST_AT]);
            cache.insert(&large, &value);
            cache.insert(&small, &Bytes::from("v"));
            let hit = cache.lookup(&large).unwrap();
            assert_eq!(hit.digest, Some(crate::lookup::digest(&value)), "{policy}");
            assert_eq!(hit.digest(), Some(crate::lookup::digest(&value)));
            let hit = cache.lookup(&small).unwrap();
            assert_eq!(
                hit.digest, None,
                "{policy}: a small value is hashed when read"
            );
            assert_eq!(hit.digest(), Some(crate::lookup::digest(b"v")));
        }
    }

    #[test]
    fn invalidating_a_name_drops_it_in_every_database() {
        let cache = Cache::default();
        let (plain, in_two) = (Key::from("k"), Key::in_db(Some(2), "k"));
        cache.insert(&plain, &Bytes::from("0"));
        cache.insert(&in_two, &Bytes::from("2"));
        cache.invalidate(std::slice::from_ref(&in_two));
        assert!(cache.get(&in_two).is_none());
        assert!(cache.get(&plain).is_some());
        cache.insert(&in_two, &Bytes::from("2"));
        cache.invalidate_everywhere(&[Bytes::from("k")]);
        assert!(cache.get(&plain).is_none());
        assert!(cache.get(&in_two).is_none());
    }
}
