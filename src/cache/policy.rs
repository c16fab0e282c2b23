//! The one small trait both cache policies implement, and the counters they keep.
//!
//! Capacity is counted in keys and every entry lives for the same TTL under either
//! policy; they differ only in what goes when room is needed:
//!
//! - [`Lru`](super::lru::Lru): exact least-recently-used, the specified behaviour;
//! - [`S3Fifo`](super::s3fifo::S3Fifo): quick_cache's S3-FIFO, which keeps a
//!   one-time scan from flushing the keys that are read again and again.

use bytes::Bytes;
use tokio::time::Instant;

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

/// A bounded key-value store with one TTL. Times are passed in, so stores are pure
/// data structures; the [`Cache`](super::Cache) handle reads the clock.
pub(crate) trait Policy: Send + std::fmt::Debug {
    /// The live value of `key` and when it expires; `None` when absent or expired
    /// (an expired entry is removed on the way and counted as an expiration).
    fn get(&mut self, key: &[u8], now: Instant) -> Option<(Bytes, Instant)>;

    /// Stores `value` under `key`, expiring one TTL after `now`, making room as the
    /// policy decides.
    fn insert(&mut self, key: Bytes, value: Bytes, now: Instant);

    /// Drops `key` if it is stored (an invalidation).
    fn remove(&mut self, key: &[u8]);

    /// Drops every entry (a flush).
    fn clear(&mut self);

    /// Entries stored, expired ones not yet reclaimed included.
    fn len(&self) -> usize;

    /// Whether no entry is stored.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the store has done so far.
    fn stats(&self) -> Stats;
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
