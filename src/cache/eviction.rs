//! What every eviction policy provides, and the types they share: the
//! [`Store`] trait that the cache holds one implementation of, where an entry
//! lives ([`Space`]), what a read finds ([`Found`]) and the counters
//! ([`Stats`]).
//!
//! Shaped as pingora's `EvictionManager`: this module knows no policy. Each
//! policy (`lru`, `s3fifo`) implements [`Store`] in a module of its own that
//! imports only this one, and the cache picks one by [`CachePolicy`] when it
//! is built. A new policy is one more file and one more arm there.

use bytes::Bytes;
use tokio::time::Instant;

pub(crate) use super::rules::Lifetime;

/// Where an entry lives: the keys of one database (what `GET` reads), or the
/// replies cached for transparent mode's reads in one database and protocol.
/// Equal names in different spaces are different entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Space {
    /// Values of keys in a database (`None`: the backend's own).
    Keys(Option<u16>),
    /// Replies to whole read requests, as Redis sent them in RESP3 or RESP2,
    /// read in a database (`None`: the backend's own).
    Replies { db: Option<u16>, resp3: bool },
}

/// An entry as a read finds it, fresh or within its stale windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The value, or `None` for a remembered absence.
    pub(crate) value: Option<Bytes>,
    /// How long ago it was stored.
    pub(crate) age: std::time::Duration,
    /// How it lives from then on.
    pub(crate) lifetime: Lifetime,
    /// The value's digest, kept for values of [`DIGEST_AT`] bytes and more.
    pub(crate) digest: Option<u64>,
}

impl Found {
    /// Whether the entry is within its TTL.
    pub(crate) fn is_fresh(&self) -> bool {
        self.age < self.lifetime.ttl
    }
}

/// How test entries live: fresh for 10 s, never stale.
#[cfg(test)]
pub(crate) const TEST_LIFETIME: Lifetime = Lifetime {
    ttl: std::time::Duration::from_secs(10),
    revalidate: std::time::Duration::ZERO,
    if_error: std::time::Duration::ZERO,
};

/// The value an entry holds: a value, or a remembered absence.
pub(crate) type Value<'a> = Option<&'a Bytes>;

/// Values of at least this many bytes are stored with their digest (see
/// [`crate::Lookup::digest`]): hashing them on every read would cost more than
/// the eight bytes. Also where the LRU store starts sharing values with
/// readers instead of copying them.
pub(crate) const DIGEST_AT: usize = 2048;

/// The digest a store keeps for `value`, if any.
pub(crate) fn kept_digest(value: &[u8]) -> Option<u64> {
    (value.len() >= DIGEST_AT).then(|| crate::lookup::digest(value))
}

/// What the allocator takes for an allocation of `n` bytes, as glibc's
/// malloc (the one the proxy runs on) lays its chunks out: an 8-byte header,
/// rounded up to 16 bytes, 32 at least. (From its mmap threshold, 128 KiB by
/// default, it takes whole pages instead: under 4% more.)
pub(crate) const fn allocated(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let chunk = (n + 8 + 15) & !15;
    if chunk < 32 { 32 } else { chunk }
}

/// What a value handed on by the connection layer costs, as a store keeps
/// it: its bytes, in an allocation of their own (see `backend::compact`),
/// and the reference count that sharing it with readers allocates.
pub(crate) const fn shared_value(len: usize) -> usize {
    allocated(len) + allocated(std::mem::size_of::<usize>() * 3)
}

/// What a hash table costs per entry, at most, beyond the entry: one
/// 4-byte slot index and one control byte per bucket, at a load between
/// 7/16 and 7/8 (hashbrown's).
pub(crate) const INDEX_COST: usize = 12;

/// Counters of what a store did since it was created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Reads that found a fresh entry.
    pub hits: u64,
    /// Reads that found nothing, or an entry past its TTL.
    pub misses: u64,
    /// Live entries removed to make room.
    pub evictions: u64,
    /// Entries removed because their lifetime had ended.
    pub expirations: u64,
}

/// A store of entries with a capacity in keys and in bytes, each entry with
/// a lifetime of its own, synchronizing itself: what the cache holds.
///
/// Every operation is O(1) on average unless it says otherwise. An entry is
/// found until its lifetime ends ([`Lifetime::keep`]: its TTL and its stale
/// windows); after that it acts as if it had never been stored.
pub(crate) trait Store: Send + Sync + std::fmt::Debug {
    /// The entry `name` in `space`, fresh or stale, now the most recently
    /// used.
    fn get(&self, space: Space, name: &[u8], now: Instant) -> Option<Found>;

    /// Whether `name` in `space` is stored (fresh or stale), without
    /// counting a read or changing its place.
    fn contains(&self, space: Space, name: &[u8], now: Instant) -> bool;

    /// Stores a copy of `name` with `value` in `space`, living `lifetime`
    /// from `now`, making room as the policy decides. A value that alone
    /// exceeds the byte capacity is not stored, and the old entry of `name`
    /// goes. Returns whether it was stored.
    fn insert(
        &self,
        space: Space,
        name: &[u8],
        value: Value<'_>,
        lifetime: Lifetime,
        now: Instant,
    ) -> bool;

    /// Drops `name` in `space`, if it is stored.
    fn remove(&self, space: Space, name: &[u8]);

    /// Drops `name` in every database's keys (Redis's invalidations name keys,
    /// not databases): O(databases that have held entries).
    fn remove_everywhere(&self, name: &[u8]);

    /// Drops every entry.
    fn clear(&self);

    /// Holds at most `capacity` keys and `max_bytes` bytes from now on,
    /// evicting in the policy's order down to them; `false` when the store
    /// cannot be resized while it runs.
    fn resize(&self, _capacity: usize, _max_bytes: usize, _now: Instant) -> bool {
        false
    }

    /// Removes every entry whose lifetime has ended; returns how many went.
    /// Readers wait for a bounded step of it at most.
    fn reclaim_expired(&self, now: Instant) -> usize;

    /// Entries stored, expired ones not yet reclaimed included.
    fn len(&self) -> usize;

    /// What the entries cost in memory, in bytes: what the byte capacity
    /// bounds. Each entry counts its name, its value, their allocations,
    /// its policy's node and its index, as laid out in memory.
    fn bytes(&self) -> usize;

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
