//! The cache policies, and the counters they keep.
//!
//! Capacity is counted in keys (and optionally bytes) and every entry lives for
//! the same TTL under either policy; they differ only in what goes when room is needed:
//!
//! - [`Lru`](super::lru::Lru): exact least-recently-used, the specified behaviour;
//! - [`S3Fifo`](super::s3fifo::S3Fifo): quick_cache's S3-FIFO, which keeps a
//!   one-time scan from flushing the keys that are read again and again.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::lru::SharedLru;
use super::s3fifo::S3Fifo;
use crate::lookup::Key;

/// A live entry as a read finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) value: Bytes,
    pub(crate) expires_at: Instant,
    /// The value's digest, kept for values of [`DIGEST_AT`] bytes and more.
    pub(crate) digest: Option<u64>,
}

/// Values of at least this many bytes are stored with their digest (see
/// [`crate::Lookup::digest`]): hashing them on every read would cost more than
/// the eight bytes.
pub(crate) const DIGEST_AT: usize = super::lru::SHARE_AT;

/// The digest a store keeps for `value`, if any.
pub(crate) fn kept_digest(value: &[u8]) -> Option<u64> {
    (value.len() >= DIGEST_AT).then(|| crate::lookup::digest(value))
}

/// Counters of what a store did since it was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Reads that found a live entry.
    pub hits: u64,
    /// Reads that found nothing, or an expired entry.
    pub misses: u64,
    /// Live entries removed to make room.
    pub evictions: u64,
    /// Entries removed because their TTL had passed.
    pub expirations: u64,
}

/// What a cache evicts when it is full (`--cache-policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CachePolicy {
    /// Exact least-recently-used (`lru`).
    #[default]
    Lru,
    /// quick_cache's S3-FIFO (`s3fifo`): scan-resistant.
    S3Fifo,
}

impl CachePolicy {
    /// Every policy, as named in configuration.
    pub const NAMES: &'static [&'static str] = &["lru", "s3fifo"];

    /// The policy's name in configuration: `lru` or `s3fifo`.
    pub fn as_str(self) -> &'static str {
        match self {
            CachePolicy::Lru => "lru",
            CachePolicy::S3Fifo => "s3fifo",
        }
    }
}

impl std::fmt::Display for CachePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CachePolicy {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "lru" => Ok(CachePolicy::Lru),
            "s3fifo" => Ok(CachePolicy::S3Fifo),
            other => Err(format!(
                "unknown cache policy `{other}`, expected one of: {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// The store behind a [`Cache`](super::Cache): one of the two policies, each
/// synchronizing itself.
#[derive(Debug)]
pub(crate) enum Store {
    Lru(SharedLru),
    S3Fifo(S3Fifo),
}

/// How many expired LRU entries one sweep step removes before it lets readers
/// in again.
const RECLAIM_STEP: usize = 1024;

impl Store {
    /// An empty store of `policy` with these capacities.
    pub(crate) fn new(
        policy: CachePolicy,
        capacity: usize,
        max_bytes: usize,
        ttl: Duration,
    ) -> Self {
        match policy {
            CachePolicy::Lru => Store::Lru(SharedLru::new(capacity, max_bytes, ttl)),
            CachePolicy::S3Fifo => Store::S3Fifo(S3Fifo::with_max_bytes(capacity, max_bytes, ttl)),
        }
    }

    /// The live entry of `key`.
    pub(crate) fn get(&self, key: &Key, now: Instant) -> Option<Found> {
        match self {
            Store::Lru(s) => s.get(key.db(), key.name(), now),
            Store::S3Fifo(s) => s.get_in(key.db(), key.name(), now),
        }
    }

    /// Stores `value` under `key`; whether it was stored.
    pub(crate) fn insert(&self, key: &Key, value: &Bytes, now: Instant) -> bool {
        match self {
            Store::Lru(s) => s.insert(key.db(), key.name(), value, now),
            Store::S3Fifo(s) => s.insert_in(key.db(), key.name(), value, now),
        }
    }

    /// Drops `key`.
    pub(crate) fn remove(&self, key: &Key) {
        match self {
            Store::Lru(s) => s.remove(key.db(), key.name()),
            Store::S3Fifo(s) => s.remove_in(key.db(), key.name()),
        }
    }

    /// Drops `name` in every database.
    pub(crate) fn remove_everywhere(&self, name: &[u8]) {
        match self {
            Store::Lru(s) => s.remove_everywhere(name),
            Store::S3Fifo(s) => s.remove_everywhere(name),
        }
    }

    /// Drops every entry.
    pub(crate) fn clear(&self) {
        match self {
            Store::Lru(s) => s.clear(),
            Store::S3Fifo(s) => s.clear(),
        }
    }

    /// Removes every expired entry; returns how many went. The LRU store does
    /// it in steps, so readers wait for one step at most.
    pub(crate) fn reclaim_expired(&self, now: Instant) -> usize {
        match self {
            Store::Lru(s) => {
                let mut total = 0;
                loop {
                    let step = s.reclaim_expired(now, RECLAIM_STEP);
                    total += step;
                    if step < RECLAIM_STEP {
                        return total;
                    }
                }
            }
            Store::S3Fifo(s) => s.reclaim_expired(now),
        }
    }

    /// Entries stored, expired ones not yet reclaimed included.
    pub(crate) fn len(&self) -> usize {
        match self {
            Store::Lru(s) => s.len(),
            Store::S3Fifo(s) => s.len(),
        }
    }

    /// Names plus values of every entry, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Store::Lru(s) => s.bytes(),
            Store::S3Fifo(s) => s.bytes(),
        }
    }

    /// What the store has done so far.
    pub(crate) fn stats(&self) -> Stats {
        match self {
            Store::Lru(s) => s.stats(),
            Store::S3Fifo(s) => s.stats(),
        }
    }
}
