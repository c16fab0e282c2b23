//! The read-through cache: a shared [`Cache`] handle, and the Tower
//! [`CacheLayer`]/[`CacheService`] that serves hits from it and sends misses on
//! (see `service` for coalescing, `flights` for the fetches in flight).
//!
//! The store behind the handle is one implementation of the
//! [`eviction::Store`] trait, picked by [`CachePolicy`]: exact LRU (the
//! default, `lru`) or quick_cache's S3-FIFO (`s3fifo`). Both hold at most a
//! number of keys and of bytes. Each store synchronizes itself; the exact-LRU
//! store lets hits on different threads proceed without writing to any memory
//! they share.
//!
//! How long an entry lives is its key's [`KeyPolicy`] (`rules`): the global
//! one, or that of the first cache rule whose pattern matches the key. An
//! entry is fresh for its TTL; past it, it may still answer reads at once
//! while one fetch refreshes it (stale-while-revalidate) or answer reads
//! whose fetch failed (stale-if-error); an absence Redis reported may be
//! remembered (a negative entry). See [`Cached`].
//!
//! The cache holds two kinds of entry ([`Read`]): the value of a key (`GET`),
//! and in transparent mode the reply to a whole read request ([`Query`]),
//! kept with the entries of the key it reads. Neither is parsed here.

mod eviction;
mod flights;
mod hot;
mod lru;
mod rules;
mod s3fifo;
mod service;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::lookup::{Key, Lookup, Query, Source};

pub use eviction::{CachePolicy, Stats};
pub use hot::{HotKey, HotKeys};
pub use rules::KeyPolicy;
pub use service::{CacheLayer, CacheService, ResponseFuture};

use eviction::{Found, Space, Store};
use flights::Flights;
use rules::Rules;

/// One entry the cache answers: the value of a key, or the reply to a read
/// request (transparent mode).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Read {
    /// `GET`'s: the value of a key.
    Key(Key),
    /// A cached read other than `GET`: its reply as Redis sent it.
    Query(Query),
}

impl Read {
    /// Where the entry lives in the store, and its name there.
    fn space_name(&self) -> (Space, &[u8]) {
        match self {
            Read::Key(key) => (Space::Keys(key.db()), key.name()),
            Read::Query(query) => Self::space_of(query),
        }
    }

    /// Where a cached read's reply lives in the store: its request is its name.
    fn space_of(query: &Query) -> (Space, &[u8]) {
        let space = Space::Replies {
            db: query.db(),
            resp3: query.resp3(),
        };
        (space, query.request())
    }

    /// The name of the key the entry holds or reads.
    fn key_name(&self) -> &[u8] {
        match self {
            Read::Key(key) => key.name(),
            Read::Query(query) => query.key(),
        }
    }
}

/// A cheap, cloneable handle to one shared store (LRU or S3-FIFO) and
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
    store: Box<dyn Store>,
    flights: Mutex<Flights>,
    /// Replaced whole by a reload; read on every store, not on hits.
    rules: std::sync::RwLock<Arc<Rules>>,
    /// How long a read with a stale answer to fall back on waits for its
    /// fetch before it takes that answer (`None`: as long as the fetch takes).
    stale_after: Option<Duration>,
    /// Entries stored before this are not known fresh (the link that would
    /// have said they changed was lost): nanoseconds from `epoch`,
    /// `i64::MIN` for none.
    unverified_before: AtomicI64,
    epoch: Instant,
    counters: Counters,
    /// The most requested keys, unless off.
    hot: Option<hot::Hot>,
    /// The largest values stored.
    big: hot::Big,
    /// Told of every change the cache learns of (see [`Cache::watch`]).
    watcher: std::sync::OnceLock<Watching>,
}

/// The watcher, as a field the handle's `Debug` can show.
struct Watching(Watcher);

impl std::fmt::Debug for Watching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watcher")
    }
}

/// What changed, as [`Cache::watch`] tells it: keys by name (in every
/// database), or everything that could have been read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed<'a> {
    /// These keys changed or went away.
    Keys(&'a [Bytes]),
    /// Anything may have changed: a flush, or the link that would have told
    /// of changes was lost.
    All,
}

/// Receives [`Changed`], synchronously, after the cache has dropped what it
/// names.
pub type Watcher = Arc<dyn Fn(Changed<'_>) + Send + Sync>;

/// What the cache counts itself, resolved once when it is built.
#[derive(Debug)]
struct Counters {
    negative_hits: metrics::Counter,
    stale_on_error: metrics::Counter,
    stale_revalidating: metrics::Counter,
    /// Stale answers served, for `INFO`'s proxy section.
    stale: std::sync::atomic::AtomicU64,
}

impl Counters {
    fn new() -> Self {
        let stale = |reason: &'static str| metrics::counter!("redis_proxy_stale_served_total", "reason" => reason);
        Self {
            negative_hits: metrics::counter!("redis_proxy_negative_hits_total"),
            stale_on_error: stale("error"),
            stale_revalidating: stale("revalidate"),
            stale: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn served_stale(&self, counter: &metrics::Counter) {
        counter.increment(1);
        self.stale.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the cache holds for a read, as the read may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cached {
    /// A fresh entry: the answer (a value, or a remembered absence).
    Fresh(Lookup),
    /// Past its TTL, within its stale-while-revalidate window: the answer
    /// now, while one fetch refreshes it.
    Revalidate(Lookup),
    /// Past its TTL (or not known fresh), within its stale-if-error window:
    /// the answer should the fetch fail.
    IfError(Lookup),
}

/// How a [`Cache`] is made: [`Cache::builder`].
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use redis_proxy::{Cache, CachePolicy, Key};
///
/// let cache = Cache::builder()
///     .capacity(100_000)
///     .max_bytes(64 << 20)
///     .ttl(Duration::from_secs(30))
///     .policy(CachePolicy::S3Fifo)
///     .build();
/// cache.insert(&Key::from("user:1"), &Bytes::from("Ada"));
/// assert_eq!(cache.get(&Key::from("user:1")).unwrap().0, "Ada");
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheBuilder {
    capacity: usize,
    policy: CachePolicy,
    max_bytes: usize,
    rules: Rules,
    stale_after: Option<Duration>,
    hot_keys: Option<Duration>,
}

impl CacheBuilder {
    /// Counts the most requested keys over `window` (see
    /// [`Cache::hot_keys`]); `None` (the default) does not.
    pub fn hot_keys(mut self, window: Option<Duration>) -> Self {
        self.hot_keys = window;
        self
    }

    /// Keys held at most (at least 1).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// How long an entry stays fresh after it was fetched (the global
    /// policy's TTL).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.rules.global_mut().ttl = ttl;
        self
    }

    /// How every key's entries live unless a rule says otherwise (see
    /// [`CacheBuilder::rule`]).
    pub fn key_policy(mut self, policy: KeyPolicy) -> Self {
        *self.rules.global_mut() = policy;
        self
    }

    /// Keys matching `pattern` (a Redis glob: `*`, `?`, `[a-z]`, `\x`), and
    /// no rule added before, live by `policy`.
    pub fn rule(mut self, pattern: &str, policy: KeyPolicy) -> Self {
        self.rules.push(pattern, policy);
        self
    }

    /// A read that has a stale answer to fall back on (stale-if-error)
    /// waits this long for its fetch at most, then takes it: set it below
    /// the request timeout, so that the stale answer comes before the
    /// timeout does. The fetch goes on and fills the cache when it ends.
    pub fn stale_after(mut self, wait: Duration) -> Self {
        self.stale_after = Some(wait);
        self
    }

    /// What goes when the cache is full.
    pub fn policy(mut self, policy: CachePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Bytes of memory the entries take at most: names, values, their
    /// allocations and the policy's own structures, as laid out in memory
    /// (unset: no bound beyond the keys). Beyond it entries go in the same
    /// order as beyond the key capacity.
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Values larger than this are served but not cached (unset: no bound beyond
    /// [`CacheBuilder::max_bytes`]); the global policy's.
    pub fn max_value_bytes(mut self, max_value_bytes: usize) -> Self {
        self.rules.global_mut().max_value_bytes = max_value_bytes;
        self
    }

    /// An empty cache.
    pub fn build(self) -> Cache {
        let capacity = self.capacity.max(1);
        let store: Box<dyn Store> = match self.policy {
            CachePolicy::Lru => Box::new(lru::SharedLru::new(capacity, self.max_bytes)),
            CachePolicy::S3Fifo => {
                Box::new(s3fifo::S3Fifo::with_max_bytes(capacity, self.max_bytes))
            }
        };
        Cache {
            shared: Arc::new(Shared {
                store,
                flights: Mutex::default(),
                rules: std::sync::RwLock::new(Arc::new(self.rules)),
                stale_after: self.stale_after,
                unverified_before: AtomicI64::new(i64::MIN),
                epoch: Instant::now(),
                counters: Counters::new(),
                hot: self.hot_keys.map(|window| {
                    let threads = std::thread::available_parallelism().map_or(1, usize::from);
                    hot::Hot::new(window, threads)
                }),
                big: hot::Big::default(),
                watcher: std::sync::OnceLock::new(),
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
            policy: CachePolicy::default(),
            max_bytes: usize::MAX,
            rules: Rules::new(KeyPolicy::default()),
            stale_after: None,
            hot_keys: None,
        }
    }

    /// How many fetches are in flight.
    pub fn fetches_in_flight(&self) -> usize {
        self.flights().len()
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
            let read = Read::Key(key.clone());
            let (space, name) = read.space_name();
            self.store().remove(space, name);
            flights.detach(&read);
            self.drop_queries(&mut flights, key.name());
        }
        drop(flights);
        if self.shared.watcher.get().is_some() {
            let names: Vec<Bytes> = keys.iter().map(|key| key.name().clone()).collect();
            self.changed(Changed::Keys(&names));
        }
    }

    /// Has `watcher` told of every change the cache learns of from now on:
    /// keys invalidated, a flush, entries no longer known fresh. The
    /// RESP front-end's client-side caching hears of changes so. A cache has
    /// one watcher; a second is refused (`false`).
    pub fn watch(&self, watcher: Watcher) -> bool {
        self.shared.watcher.set(Watching(watcher)).is_ok()
    }

    fn changed(&self, changed: Changed<'_>) {
        if let Some(Watching(watcher)) = self.shared.watcher.get() {
            watcher(changed);
        }
    }

    /// Drops `names` in every database, and keeps fetches of them in flight from
    /// caching (see [`Cache::invalidate`]): what Redis's invalidation messages
    /// ask, since they name keys but not their databases.
    pub fn invalidate_everywhere(&self, names: &[Bytes]) {
        let mut flights = self.flights();
        for name in names {
            self.store().remove_everywhere(name);
            self.drop_queries(&mut flights, name);
        }
        flights.detach_all(|read| {
            matches!(read, Read::Key(_)) && names.iter().any(|name| name[..] == *read.key_name())
        });
        drop(flights);
        self.changed(Changed::Keys(names));
    }

    /// Drops every cached read of the key called `name`, and detaches their
    /// fetches.
    fn drop_queries(&self, flights: &mut Flights, name: &[u8]) {
        for query in flights.take_queries(name) {
            let (space, name) = Read::space_of(&query);
            self.store().remove(space, name);
            flights.detach(&Read::Query(query));
        }
    }

    /// Drops every entry and keeps every fetch in flight from caching.
    pub fn flush(&self) {
        let mut flights = self.flights();
        self.store().clear();
        flights.clear_queries();
        flights.detach_all(|_| true);
        drop(flights);
        self.changed(Changed::All);
    }

    /// What Redis would have said changed can no longer be known (the
    /// connection that tracked the keys was lost): no entry stored so far is
    /// served as fresh again, and fetches in flight do not cache. Where
    /// stale-if-error is configured, the entries stay to answer reads whose
    /// fetch fails until their window ends; otherwise they are dropped
    /// ([`Cache::flush`]).
    pub fn unverify(&self) {
        if !self.rules().any_stale() {
            return self.flush();
        }
        let mut flights = self.flights();
        let now = self.offset(Instant::now());
        self.shared
            .unverified_before
            .fetch_max(now.saturating_add(1), Ordering::Relaxed);
        flights.detach_all(|_| true);
        drop(flights);
        self.changed(Changed::All);
    }

    /// The fresh value of `key`, now the most recently used, and how long it
    /// stays fresh.
    pub fn get(&self, key: &Key) -> Option<(Bytes, Duration)> {
        match self.lookup(&Read::Key(key.clone()))? {
            Cached::Fresh(lookup) => Some((lookup.value?, lookup.fresh_for)),
            _ => None,
        }
    }

    /// The entry of `read` as a read may use it, with the digest the store
    /// keeps for a large value.
    pub(crate) fn lookup(&self, read: &Read) -> Option<Cached> {
        let (space, name) = read.space_name();
        self.lookup_at(space, name)
    }

    /// [`Cache::lookup`] of a key, borrowed: the hit path makes no entry.
    pub(crate) fn lookup_key(&self, key: &Key) -> Option<Cached> {
        self.lookup_at(Space::Keys(key.db()), key.name())
    }

    fn lookup_at(&self, space: Space, name: &[u8]) -> Option<Cached> {
        let now = Instant::now();
        let found = self.store().get(space, name, now)?;
        let verified = self.verified(&found, now);
        let mut lookup = Lookup {
            value: found.value,
            source: Source::Cache,
            fresh_for: found.lifetime.ttl.saturating_sub(found.age),
            age: found.age,
            digest: found.digest,
        };
        if verified && !lookup.fresh_for.is_zero() {
            if lookup.value.is_none() {
                self.shared.counters.negative_hits.increment(1);
            }
            return Some(Cached::Fresh(lookup));
        }
        let stale_for = found.age.saturating_sub(found.lifetime.ttl);
        lookup.source = Source::Stale;
        lookup.fresh_for = Duration::ZERO;
        if verified && stale_for < found.lifetime.revalidate {
            Some(Cached::Revalidate(lookup))
        } else if stale_for < found.lifetime.if_error {
            Some(Cached::IfError(lookup))
        } else {
            None
        }
    }

    /// Whether `found` was stored since the tracking link was last lost.
    fn verified(&self, found: &Found, now: Instant) -> bool {
        let before = self.shared.unverified_before.load(Ordering::Relaxed);
        before == i64::MIN
            || now
                .checked_sub(found.age)
                .is_some_and(|stored_at| self.offset(stored_at) >= before)
    }

    /// `at` in nanoseconds from the cache's epoch, saturating.
    fn offset(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.shared.epoch) {
            Some(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            None => i64::MIN + 1,
        }
    }

    /// Stores `value` under `key` as the key's policy says (for its TTL from
    /// now). A value over the value or byte limit, or of a key that is not
    /// cached, is not stored (and any older value of `key` goes): returns
    /// whether it was stored.
    pub fn insert(&self, key: &Key, value: &Bytes) -> bool {
        self.store_read(&Read::Key(key.clone()), Some(value))
    }

    /// Stores what a fetch of `read` found, as its key's policy says: a
    /// value, or (`None`) that Redis has none, remembered as an absence for
    /// the negative TTL. Whatever is not stored drops the older entry, so a
    /// stale value never outlives Redis's saying it changed or went away.
    fn store_read(&self, read: &Read, value: Option<&Bytes>) -> bool {
        let (space, name) = read.space_name();
        let policy = *self.rules().policy(read.key_name());
        let lifetime = match value {
            _ if !policy.cache => None,
            Some(value) if value.len() > policy.max_value_bytes => None,
            Some(_) => Some(policy.value_lifetime()),
            // A query's `None` is a reply not to cache, not an absence.
            None if matches!(read, Read::Query(_)) => None,
            None => Some(policy.absence_lifetime()).filter(|life| !life.ttl.is_zero()),
        };
        let Some(lifetime) = lifetime else {
            self.store().remove(space, name);
            return false;
        };
        let stored = self
            .store()
            .insert(space, name, value, lifetime, Instant::now());
        if let (true, Read::Key(key), Some(value)) = (stored, read, value) {
            self.shared.big.stored(key.db(), key.name(), value.len());
            if let Some(hot) = &self.shared.hot {
                hot.sized(key.db(), key.name(), value.len());
            }
        }
        stored
    }

    /// Counts a request for `key`: answered from the cache with a value of
    /// `bytes`, or (`None`) not.
    pub(crate) fn count_request(&self, key: &Key, bytes: Option<usize>) {
        if let Some(hot) = &self.shared.hot {
            hot.record(key.db(), key.name(), bytes);
        }
    }

    /// The `n` most requested keys over the hot-key window, most requested
    /// first; `None` when hot keys are not counted.
    pub fn hot_keys(&self, n: usize) -> Option<HotKeys> {
        self.shared.hot.as_ref().map(|hot| hot.top(n))
    }

    /// The `n` largest values cached (of the largest stored, those still
    /// cached), largest first.
    pub fn big_keys(&self, n: usize) -> Vec<HotKey> {
        let now = Instant::now();
        self.shared.big.top(n, |db, name| {
            self.store().contains(Space::Keys(db), name, now)
        })
    }

    fn rules(&self) -> Arc<Rules> {
        self.shared
            .rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From now on, entries stored live by `global` and `rules` (pattern
    /// and policy, the first match winning), as [`CacheBuilder::key_policy`]
    /// and [`CacheBuilder::rule`] set them; entries stored before keep their
    /// lifetimes.
    pub fn set_policies(&self, global: KeyPolicy, rules: &[(String, KeyPolicy)]) {
        let mut new = Rules::new(global);
        for (pattern, policy) in rules {
            new.push(pattern, *policy);
        }
        *self
            .shared
            .rules
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
    }

    /// Holds at most `capacity` keys and `max_bytes` bytes from now on,
    /// evicting in policy order down to them; `false` when the policy cannot
    /// be resized while it runs (S3-FIFO).
    pub fn resize(&self, capacity: usize, max_bytes: usize) -> bool {
        self.store()
            .resize(capacity.max(1), max_bytes, Instant::now())
    }

    /// How long a read with a stale answer waits for its fetch.
    fn stale_after(&self) -> Option<Duration> {
        self.shared.stale_after
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Removes every expired entry now; returns how many went. Expired entries
    /// are never served, but they hold memory until they are read, pushed out,
    /// or swept by this. The index of cached reads is pruned of what the store
    /// no longer holds.
    pub fn reclaim_expired(&self) -> usize {
        let now = Instant::now();
        self.flights().prune(self.store(), now);
        self.store().reclaim_expired(now)
    }

    /// Sweeps expired entries every `interval`, for ever: spawn it beside the
    /// cache, so memory and the entry count fall once entries expire even when no
    /// traffic touches them.
    pub async fn run_reclaimer(self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Some(hot) = &self.shared.hot {
                hot.turn_if_due(Instant::now());
            }
            let reclaimed = self.reclaim_expired();
            if reclaimed > 0 {
                tracing::debug!(reclaimed, "expired entries reclaimed");
            }
        }
    }

    /// Stale answers served so far (past their TTL, while refreshed or when
    /// the fetch failed).
    pub fn stale_served(&self) -> u64 {
        self.shared.counters.stale.load(Ordering::Relaxed)
    }

    /// Entries stored, counting expired ones not yet reclaimed.
    pub fn len(&self) -> usize {
        self.store().len()
    }

    /// What the entries cost, in the bytes the byte capacity counts.
    pub fn bytes(&self) -> usize {
        self.store().bytes()
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hits, misses, evictions and expirations so far.
    pub fn stats(&self) -> Stats {
        self.store().stats()
    }

    /// How long the entry of a value fetched now stays fresh, for the key
    /// called `name`.
    /// (Zero for a key that is not cached.)
    fn ttl(&self, name: &[u8]) -> Duration {
        let rules = self.rules();
        let policy = rules.policy(name);
        if policy.cache {
            policy.ttl
        } else {
            Duration::ZERO
        }
    }

    fn store(&self) -> &dyn Store {
        &*self.shared.store
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
            let value = Bytes::from(vec![b'x'; eviction::DIGEST_AT]);
            cache.insert(&large, &value);
            cache.insert(&small, &Bytes::from("v"));
            let Some(Cached::Fresh(hit)) = cache.lookup(&Read::Key(large)) else {
                panic!("{policy}: a fresh hit");
            };
            assert_eq!(hit.digest, Some(crate::lookup::digest(&value)), "{policy}");
            assert_eq!(hit.digest(), Some(crate::lookup::digest(&value)));
            let Some(Cached::Fresh(hit)) = cache.lookup(&Read::Key(small)) else {
                panic!("{policy}: a fresh hit");
            };
            assert_eq!(
                hit.digest, None,
                "{policy}: a small value is hashed when read"
            );
            assert_eq!(hit.digest(), Some(crate::lookup::digest(b"v")));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_live_as_their_key_s_policy_says_and_are_swept_when_it_ends() {
        let second = Duration::from_secs(1);
        for policy in [CachePolicy::Lru, CachePolicy::S3Fifo] {
            let cache = Cache::builder()
                .policy(policy)
                .key_policy(KeyPolicy {
                    ttl: second,
                    stale_if_error: 3 * second,
                    stale_while_revalidate: second,
                    negative_ttl: 2 * second,
                    ..KeyPolicy::default()
                })
                .rule(
                    "short:*",
                    KeyPolicy {
                        ttl: second / 2,
                        ..KeyPolicy::default()
                    },
                )
                .build();
            let (plain, short) = (Key::from("k"), Key::from("short:k"));
            cache.insert(&plain, &Bytes::from("v"));
            cache.insert(&short, &Bytes::from("v"));
            cache.insert(&Key::from("short:unread"), &Bytes::from("v"));
            cache.store_read(&Read::Key(Key::from("absent")), None);
            let state = |key: &str| match cache.lookup(&Read::Key(Key::new(key.to_owned()))) {
                Some(Cached::Fresh(_)) => "fresh",
                Some(Cached::Revalidate(_)) => "revalidate",
                Some(Cached::IfError(_)) => "if-error",
                None => "none",
            };
            assert_eq!(
                [state("k"), state("short:k"), state("absent")],
                ["fresh"; 3],
                "{policy}"
            );
            tokio::time::advance(second * 3 / 2).await;
            assert_eq!(
                [state("k"), state("short:k"), state("absent")],
                ["revalidate", "none", "fresh"],
                "{policy}"
            );
            let Some(Cached::Revalidate(stale)) = cache.lookup(&Read::Key(plain.clone())) else {
                panic!("{policy}: stale");
            };
            assert_eq!(stale.source, Source::Stale);
            assert_eq!(
                (stale.fresh_for, stale.age),
                (Duration::ZERO, second * 3 / 2)
            );
            // The short rule's entries went: one read past its lifetime, one
            // swept.
            cache.reclaim_expired();
            assert_eq!(cache.len(), 2, "{policy}");
            tokio::time::advance(second).await;
            assert_eq!(
                [state("k"), state("absent")],
                ["if-error", "none"],
                "{policy}"
            );
            cache.reclaim_expired();
            assert_eq!(cache.len(), 1, "{policy}: kept for errors");
            tokio::time::advance(second * 2).await;
            assert_eq!(state("k"), "none", "{policy}");
            cache.reclaim_expired();
            assert_eq!(cache.len(), 0, "{policy}: swept when its window ended");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn entries_stored_before_the_tracking_link_was_lost_are_for_errors_only() {
        let with_stale = Cache::builder()
            .key_policy(KeyPolicy {
                stale_if_error: Duration::from_secs(60),
                stale_while_revalidate: Duration::from_secs(60),
                ..KeyPolicy::default()
            })
            .build();
        let key = Key::from("k");
        with_stale.insert(&key, &Bytes::from("old"));
        tokio::time::advance(Duration::from_millis(1)).await;
        with_stale.unverify();
        assert!(matches!(
            with_stale.lookup(&Read::Key(key.clone())),
            Some(Cached::IfError(_))
        ));
        tokio::time::advance(Duration::from_millis(1)).await;
        with_stale.insert(&key, &Bytes::from("new"));
        assert!(matches!(
            with_stale.lookup(&Read::Key(key.clone())),
            Some(Cached::Fresh(_))
        ));
        // Without stale windows, a lost link flushes as before.
        let plain = Cache::default();
        plain.insert(&key, &Bytes::from("v"));
        plain.unverify();
        assert!(plain.is_empty());
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

    #[test]
    fn a_query_is_kept_apart_from_a_key_of_the_same_bytes_and_from_other_protocols() {
        let cache = Cache::default();
        let request = Bytes::from_static(b"HGET u1 name");
        let resp2 = Read::Query(Query::new(None, false, "u1".into(), request.clone()));
        let resp3 = Read::Query(Query::new(None, true, "u1".into(), request.clone()));
        assert!(cache.store_read(&resp2, Some(&Bytes::from("$1\r\nx\r\n"))));
        assert!(cache.lookup(&resp3).is_none());
        assert!(cache.get(&Key::new(request)).is_none());
        assert!(cache.lookup(&resp2).is_some());
    }

    #[test]
    fn the_index_of_cached_reads_keeps_no_more_than_the_store_holds() {
        let cache = Cache::new(10, Duration::from_secs(60));
        for i in 0..1000 {
            let query = Query::new(
                None,
                false,
                Bytes::from(format!("k{i}")),
                Bytes::from(format!("HLEN k{i}")),
            );
            let read = Read::Query(query);
            let flights::Join::Lead(id) = cache.flights().join(&read, cache.store()) else {
                panic!("a fetch of its own");
            };
            cache.flights().land(&read, id);
            cache.store_read(&read, Some(&Bytes::from(":1\r\n")));
            cache.reclaim_expired();
        }
        let indexed = cache.flights().indexed();
        assert!(
            indexed <= 2 * cache.len() + 1,
            "{indexed} indexed, {} stored",
            cache.len()
        );
    }
}
