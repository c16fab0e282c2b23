//! The read-through cache: a shared [`Cache`] handle, and the Tower
//! [`CacheLayer`]/[`CacheService`] that serves hits from it and sends misses on
//! (see [`service`] for coalescing).
//!
//! The store behind the handle is one of two policies ([`CachePolicy`]): exact
//! LRU (the default, [`lru`]) or quick_cache's S3-FIFO ([`s3fifo`]). Both hold
//! at most a number of keys, and every entry lives for one TTL.

mod lru;
mod policy;
mod s3fifo;
mod service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::lookup::Key;

pub use policy::{CachePolicy, Stats};
pub use service::{CacheLayer, CacheService, ResponseFuture};

use lru::Lru;
use policy::Policy;
use s3fifo::S3Fifo;
use service::Flight;

/// A cheap, cloneable handle to one shared store (LRU or S3-FIFO, one TTL) and
/// to the fetches in flight for it.
///
/// The lock guards only the O(1) store operations and is never held across an
/// `.await`.
#[derive(Debug, Clone)]
pub struct Cache {
    // One reference count to bump: the handle is cloned for every miss.
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Box<dyn Policy>>,
    flights: Mutex<HashMap<Key, Flight>>,
    ttl: Duration,
}

/// How a [`Cache`] is made: [`Cache::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheBuilder {
    capacity: usize,
    ttl: Duration,
    policy: CachePolicy,
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

    /// An empty cache.
    pub fn build(self) -> Cache {
        let capacity = self.capacity.max(1);
        let store: Box<dyn Policy> = match self.policy {
            CachePolicy::Lru => Box::new(Lru::new(capacity, self.ttl)),
            CachePolicy::S3Fifo => Box::new(S3Fifo::new(capacity, self.ttl)),
        };
        Cache {
            shared: Arc::new(Shared {
                store: Mutex::new(store),
                flights: Mutex::default(),
                ttl: self.ttl,
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
        }
    }

    /// How many fetches are in flight.
    pub fn fetches_in_flight(&self) -> usize {
        self.flights().len()
    }

    /// Drops `keys` (the backend said they changed), and keeps fetches of them
    /// that are in flight from caching what they bring.
    pub fn invalidate(&self, keys: &[Key]) {
        // Lock order, everywhere: flights, then the store.
        let mut flights = self.flights();
        let mut store = self.lock();
        for key in keys {
            store.remove(key);
            if let Some(flight) = flights.get_mut(key) {
                flight.invalidate();
            }
        }
    }

    /// Drops every entry and keeps every fetch in flight from caching.
    pub fn flush(&self) {
        let mut flights = self.flights();
        self.lock().clear();
        for flight in flights.values_mut() {
            flight.invalidate();
        }
    }

    /// The live value of `key`, now the most recently used, and how long it
    /// stays fresh.
    pub fn get(&self, key: &[u8]) -> Option<(Bytes, Duration)> {
        let now = Instant::now();
        let (value, expires_at) = self.lock().get(key, now)?;
        Some((value, expires_at.saturating_duration_since(now)))
    }

    /// Stores `value` under `key` for one TTL from now.
    pub fn insert(&self, key: Key, value: Bytes) {
        let now = Instant::now();
        self.lock().insert(key, value, now);
    }

    /// Entries stored, counting expired ones not yet reclaimed.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Hits, misses, evictions and expirations so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats()
    }

    fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<Key, Flight>> {
        self.shared
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, Box<dyn Policy>> {
        // The store's invariants hold between operations, and none of them can
        // panic halfway, so a poisoned lock is still a consistent store.
        self.shared
            .store
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
