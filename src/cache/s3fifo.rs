//! The scan-resistant policy (`--cache-policy s3fifo`): quick_cache's S3-FIFO,
//! with each entry's lifetime stored with its value.
//!
//! quick_cache decides what to evict and synchronizes itself (a sharded cache
//! with a lock per shard); this wrapper adds what the proxy needs on top: expiry
//! (checked on read, like the LRU store, and swept by [`S3Fifo::reclaim_expired`]),
//! databases, the byte capacity and the counters.
//!
//! quick_cache has one capacity, a weight. The key and byte capacities are folded
//! into it: the weight capacity is `capacity × UNIT`, and an entry weighs the
//! larger of its share of each, `max(UNIT, cost × capacity × UNIT /
//! max_bytes)`, where its cost is the memory it takes ([`cost`]). A cache of small values is bounded by its keys, one of large
//! values by its bytes; a mix is bounded a little earlier than the two
//! capacities taken apart would be. Each shard holds its share of the capacity
//! rounded up, so the cache may hold up to one entry per shard more than asked
//! (quick_cache makes one shard for capacities under 64 keys).
//!
//! quick_cache's lookups are O(1) on average, like the LRU's; its S3-FIFO queues
//! make a one-time scan pass through a small probationary queue instead of
//! pushing out the entries that are read again and again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};
use tokio::time::Instant;

#[cfg(test)]
use super::eviction::TEST_LIFETIME;
use super::eviction::{
    Found, INDEX_COST, Lifetime, Space, Stats, Store, Value, allocated, kept_digest, shared_value,
};

/// One key's share of the weight capacity.
const UNIT: u64 = 1024;

type Name = (Space, Bytes);

#[derive(Debug, Clone)]
struct Entry {
    /// `None`: a remembered absence.
    value: Option<Bytes>,
    stored_at: Instant,
    lifetime: Lifetime,
    digest: Option<u64>,
}

impl Entry {
    fn value_len(&self) -> usize {
        self.value.as_ref().map_or(0, Bytes::len)
    }

    /// Whether the entry's lifetime has ended by `now`.
    fn ended(&self, now: Instant) -> bool {
        self.stored_at + self.lifetime.keep() <= now
    }
}

/// What an entry weighs (see the module's documentation).
#[derive(Debug, Clone, Copy)]
struct Weight {
    /// Weight per byte, times 2^16, so small entries weigh less than one unit.
    per_byte: u64,
}

impl Weighter<Name, Entry> for Weight {
    fn weight(&self, (_, name): &Name, entry: &Entry) -> u64 {
        let bytes = cost(name, entry.value_len()) as u64;
        UNIT.max(bytes.saturating_mul(self.per_byte) >> 16)
    }
}

/// What quick_cache adds to each entry it holds: its slab's links, the
/// entry's state, reference count and kind.
const QUICK_CACHE_NODE: usize = 24;

/// What one entry costs in memory: quick_cache's node (name, entry and its
/// own fields), its index, half a ghost (quick_cache remembers up to half
/// as many evicted keys as it can hold, each in a node of the same size),
/// and the name's and value's allocations.
fn cost(name: &[u8], value_len: usize) -> usize {
    const NODE: usize = std::mem::size_of::<(Name, Entry)>() + QUICK_CACHE_NODE + INDEX_COST;
    NODE + NODE / 2 + allocated(name.len()) + shared_value(value_len)
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

impl Lifecycle<Name, Entry> for CountEvictions {
    type RequestState = Evictions;

    fn on_evict(&self, state: &mut Evictions, _key: Name, entry: Entry) {
        if state.now.is_some_and(|now| entry.ended(now)) {
            state.expired += 1;
        } else {
            state.live += 1;
        }
    }
}

type Inner = quick_cache::sync::Cache<Name, Entry, Weight, DefaultHashBuilder, CountEvictions>;

/// An S3-FIFO map from key to value with a capacity in keys and in bytes,
/// each entry with its lifetime.
#[derive(Debug)]
pub(crate) struct S3Fifo {
    entries: Inner,
    max_bytes: usize,
    /// The databases whose keys have held entries (see
    /// `Lru::remove_everywhere`).
    dbs: Mutex<Vec<Space>>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
}

impl S3Fifo {
    /// An empty store holding at most `capacity` keys.
    #[cfg(test)]
    pub(crate) fn new(capacity: usize) -> Self {
        Self::with_max_bytes(capacity, usize::MAX)
    }

    /// An empty store holding at most `capacity` keys, whose entries cost at
    /// most `max_bytes` bytes of memory.
    pub(crate) fn with_max_bytes(capacity: usize, max_bytes: usize) -> Self {
        let capacity = capacity.max(1);
        // quick_cache sizes its table and its ghosts by the entries it
        // expects: no more than the byte capacity can hold.
        let expected = capacity.min(max_bytes / cost(b"", 1)).max(1);
        let weight_capacity = (capacity as u64).saturating_mul(UNIT);
        let per_byte = ((u128::from(weight_capacity) << 16) / (max_bytes.max(1) as u128))
            .try_into()
            .unwrap_or(u64::MAX);
        Self {
            entries: Inner::with(
                expected,
                weight_capacity,
                Weight { per_byte },
                DefaultHashBuilder::default(),
                CountEvictions,
            ),
            max_bytes,
            dbs: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            expirations: AtomicU64::new(0),
        }
    }

    fn count(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The entry `name` in `space`, fresh or stale; `None` when absent or
    /// past its lifetime (such an entry is removed on the way).
    fn get_in(&self, space: Space, name: &[u8], now: Instant) -> Option<Found> {
        let key = (space, Bytes::copy_from_slice(name));
        match self.entries.get(&key) {
            Some(entry) if !entry.ended(now) => {
                let found = Found {
                    value: entry.value,
                    age: now.saturating_duration_since(entry.stored_at),
                    lifetime: entry.lifetime,
                    digest: entry.digest,
                };
                let fresh = found.is_fresh();
                Self::count(if fresh { &self.hits } else { &self.misses }, 1);
                Some(found)
            }
            Some(_) => {
                self.entries.remove(&key);
                Self::count(&self.expirations, 1);
                Self::count(&self.misses, 1);
                None
            }
            None => {
                Self::count(&self.misses, 1);
                None
            }
        }
    }

    /// Stores `value` (`None`: an absence) under `name` in `space`, living
    /// `lifetime` from `now`, making room as S3-FIFO decides. A value that
    /// alone exceeds the byte capacity is not stored, and the key's old entry
    /// goes. Returns whether it was stored.
    fn insert_in(
        &self,
        space: Space,
        name: &[u8],
        value: Value<'_>,
        lifetime: Lifetime,
        now: Instant,
    ) -> bool {
        // A key parsed from a client's request is a slice of that connection's read
        // buffer; a copy of its own keeps the cache from pinning the buffer.
        let key = (space, Bytes::copy_from_slice(name));
        if cost(name, value.map_or(0, Bytes::len)) > self.max_bytes {
            self.entries.remove(&key);
            return false;
        }
        {
            let mut dbs = self.dbs.lock().unwrap_or_else(PoisonError::into_inner);
            if matches!(space, Space::Keys(_)) && !dbs.contains(&space) {
                dbs.push(space);
            }
        }
        let mut evictions = Evictions {
            now: Some(now),
            ..Evictions::default()
        };
        let entry = Entry {
            value: value.cloned(),
            stored_at: now,
            lifetime,
            digest: value.and_then(|value| kept_digest(value)),
        };
        self.entries
            .insert_with_lifecycle(key, entry, &mut evictions);
        Self::count(&self.evictions, evictions.live);
        Self::count(&self.expirations, evictions.expired);
        true
    }
}

impl Store for S3Fifo {
    fn get(&self, space: Space, name: &[u8], now: Instant) -> Option<Found> {
        self.get_in(space, name, now)
    }

    fn contains(&self, space: Space, name: &[u8], now: Instant) -> bool {
        self.entries
            .peek(&(space, Bytes::copy_from_slice(name)))
            .is_some_and(|entry| !entry.ended(now))
    }

    fn insert(
        &self,
        space: Space,
        name: &[u8],
        value: Value<'_>,
        lifetime: Lifetime,
        now: Instant,
    ) -> bool {
        self.insert_in(space, name, value, lifetime, now)
    }

    fn remove(&self, space: Space, name: &[u8]) {
        self.entries.remove(&(space, Bytes::copy_from_slice(name)));
    }

    /// Drops `name` in every database that has held entries.
    fn remove_everywhere(&self, name: &[u8]) {
        let dbs = self
            .dbs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for space in dbs {
            self.remove(space, name);
        }
    }

    /// Drops every entry.
    fn clear(&self) {
        self.entries.clear();
    }

    /// Removes every entry past its lifetime (a sweep of the whole cache:
    /// S3-FIFO keeps no order by expiry); returns how many went.
    fn reclaim_expired(&self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, entry| !entry.ended(now));
        let reclaimed = before.saturating_sub(self.entries.len());
        Self::count(&self.expirations, reclaimed as u64);
        reclaimed
    }

    /// Entries stored, expired ones not yet reclaimed included.
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// What every entry costs in memory, in bytes (see [`cost`]).
    fn bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|((_, name), entry)| cost(&name, entry.value_len()))
            .sum()
    }

    /// What the store has done so far.
    fn stats(&self) -> Stats {
        Stats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            expirations: self.expirations.load(Ordering::Relaxed),
        }
    }
}

impl S3Fifo {
    /// See [`S3Fifo::get_in`], in the backend's own database: a fresh value.
    #[cfg(test)]
    fn get(&self, key: &[u8], now: Instant) -> Option<(Bytes, Instant)> {
        self.get_in(Space::Keys(None), key, now)
            .filter(Found::is_fresh)
            .and_then(|found| Some((found.value.clone()?, now + found.lifetime.ttl - found.age)))
    }

    /// See [`S3Fifo::insert_in`], in the backend's own database, living
    /// [`TEST_LIFETIME`].
    #[cfg(test)]
    fn insert(&self, key: Bytes, value: Bytes, now: Instant) {
        self.insert_in(Space::Keys(None), &key, Some(&value), TEST_LIFETIME, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const TTL: Duration = TEST_LIFETIME.ttl;

    fn key(i: usize) -> Bytes {
        Bytes::from(format!("key{i}"))
    }

    #[test]
    fn capacity_is_a_number_of_keys() {
        let now = Instant::now();
        let s = S3Fifo::new(10);
        for i in 0..100 {
            s.insert(key(i), Bytes::from("v"), now);
        }
        assert!(s.len() <= 10, "{} entries", s.len());
        assert_eq!(s.stats().evictions as usize, 100 - s.len());
    }

    #[test]
    fn entry_expires_exactly_at_its_ttl() {
        let now = Instant::now();
        let s = S3Fifo::new(10);
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
        let s = S3Fifo::new(100);
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

    #[test]
    fn large_values_keep_their_digest_and_small_ones_none() {
        let now = Instant::now();
        let s = S3Fifo::new(8);
        let large = Bytes::from(vec![7u8; crate::cache::eviction::DIGEST_AT]);
        s.insert(Bytes::from("large"), large.clone(), now);
        s.insert(Bytes::from("small"), Bytes::from("v"), now);
        let found = s.get_in(Space::Keys(None), b"large", now).unwrap();
        assert_eq!(found.digest, Some(crate::lookup::digest(&large)));
        assert_eq!(
            s.get_in(Space::Keys(None), b"small", now).unwrap().digest,
            None
        );
    }

    #[test]
    fn the_byte_capacity_bounds_large_values() {
        let now = Instant::now();
        let s = S3Fifo::with_max_bytes(1000, 10_000);
        for i in 0..100 {
            s.insert(key(i), Bytes::from(vec![b'v'; 995]), now);
        }
        assert!(s.bytes() <= 10_000 + 1000, "{} bytes", s.bytes());
        assert!(s.len() <= 11, "{} entries", s.len());
        assert!(!s.insert_in(
            Space::Keys(None),
            b"huge",
            Some(&Bytes::from(vec![0u8; 20_000])),
            TEST_LIFETIME,
            now
        ));
        assert!(s.get(b"huge", now).is_none());
    }

    #[test]
    fn reclaim_sweeps_expired_entries() {
        let t0 = Instant::now();
        let s = S3Fifo::new(100);
        for i in 0..10 {
            s.insert(key(i), Bytes::from("v"), t0);
        }
        s.insert(key(99), Bytes::from("v"), t0 + Duration::from_secs(5));
        assert_eq!(s.reclaim_expired(t0 + TTL), 10);
        assert_eq!(s.len(), 1);
        assert_eq!(s.stats().expirations, 10);
    }
}
