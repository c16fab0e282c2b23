//! The one small trait both cache policies implement, and the counters they keep.
//!
//! Capacity is counted in keys and every entry lives for the same TTL under either
//! policy; they differ only in what goes when room is needed:
//!
//! - [`Lru`](super::lru::Lru): exact least-recently-used, the specified behaviour;
//! - [`S3Fifo`](super::s3fifo::S3Fifo): quick_cache's S3-FIFO, which keeps a
//!   one-time scan from flushing the keys that are read again and again.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
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
pub trait Policy: Send + std::fmt::Debug {
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

/// Which policy a cache uses (`--cache-policy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Exact LRU.
    #[default]
    Lru,
    /// S3-FIFO (quick_cache): scan-resistant.
    S3fifo,
}
