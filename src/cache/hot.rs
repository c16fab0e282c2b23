//! Which keys are requested most (`/hotkeys`): a Space-Saving summary
//! (Metwally, Agrawal, El Abbadi) of [`CAPACITY`] counters per worker
//! thread, so that a request writes only memory its own thread writes, in
//! two halves of the window: the current one counts, the previous one is
//! kept, and the reclaimer turns them every half window. A report merges
//! every thread's two halves.
//!
//! Memory is bounded whatever the traffic: a key not counted takes the place
//! of the least-counted one, inheriting its count as its possible error.
//! Any key requested more than `N / CAPACITY` times in a half of `N`
//! requests on one thread is counted, and a count is over by at most that
//! much.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hashbrown::HashTable;
use tokio::time::Instant;

/// Counters per thread and half window.
pub(crate) const CAPACITY: usize = 1024;

/// One key's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotKey {
    /// The database (`None`: the backend's own, that of `redis_url`).
    pub db: Option<u16>,
    /// The key's name.
    pub name: Box<[u8]>,
    /// Requests answered from the cache while counted.
    pub hits: u64,
    /// Requests that went to Redis while counted.
    pub misses: u64,
    /// The size of its value when last answered from the cache.
    pub bytes: u64,
}

/// The most requested keys, most requested first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotKeys {
    /// What the counts cover: the window, or less since the counting began.
    pub window: Duration,
    /// The keys.
    pub keys: Vec<HotKey>,
}

/// The summaries of every thread.
#[derive(Debug)]
pub(crate) struct Hot {
    half: Duration,
    /// When the current half began, and the one before it.
    turned: Mutex<(Instant, Option<Instant>)>,
    slots: Box<[Slot]>,
}

/// One thread's halves, on cache lines of their own.
#[repr(align(128))]
#[derive(Debug)]
struct Slot(Mutex<Halves>);

#[derive(Debug, Default)]
struct Halves {
    current: Summary,
    previous: Summary,
}

impl Hot {
    /// Counting over `window`, for `threads` worker threads (and one slot
    /// for every other thread).
    pub(crate) fn new(window: Duration, threads: usize) -> Self {
        Self {
            half: window / 2,
            turned: Mutex::new((Instant::now(), None)),
            slots: (0..=threads.max(1))
                .map(|_| Slot(Mutex::default()))
                .collect(),
        }
    }

    /// Counts one request of `name` in `db`: answered from the cache when
    /// `bytes` is `Some` (its value's size), else sent to Redis.
    pub(crate) fn record(&self, db: Option<u16>, name: &[u8], bytes: Option<usize>) {
        self.halves().current.record(db, name, bytes);
    }

    /// `name` in `db` was stored with a value of `bytes`: what a counted
    /// key's value weighs, before a hit says.
    pub(crate) fn sized(&self, db: Option<u16>, name: &[u8], bytes: usize) {
        let mut halves = self.halves();
        let summary = &mut halves.current;
        if let Some(at) = summary.find(summary.hash(db, name), db, name) {
            summary.counters[at].bytes = bytes as u64;
        }
    }

    /// The calling thread's halves.
    fn halves(&self) -> std::sync::MutexGuard<'_, Halves> {
        let others = self.slots.len() - 1;
        let slot = crate::worker::current().map_or(others, |worker| worker % others.max(1));
        self.slots[slot]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a new half when the current one is over.
    pub(crate) fn turn_if_due(&self, now: Instant) {
        let mut turned = self.turned.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_duration_since(turned.0) < self.half {
            return;
        }
        *turned = (now, Some(turned.0));
        drop(turned);
        for slot in &self.slots {
            let mut halves = slot.0.lock().unwrap_or_else(PoisonError::into_inner);
            halves.previous = std::mem::take(&mut halves.current);
        }
    }

    /// The `n` most requested keys over both halves of every thread.
    pub(crate) fn top(&self, n: usize) -> HotKeys {
        let (current, previous) = *self.turned.lock().unwrap_or_else(PoisonError::into_inner);
        let window = Instant::now().saturating_duration_since(previous.unwrap_or(current));
        let mut merged = Summary::with_capacity(usize::MAX);
        for slot in &self.slots {
            let halves = slot.0.lock().unwrap_or_else(PoisonError::into_inner);
            for counter in halves
                .current
                .counters
                .iter()
                .chain(&halves.previous.counters)
            {
                merged.add(counter);
            }
        }
        let mut counters = merged.counters;
        counters.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        HotKeys {
            window,
            keys: counters
                .into_iter()
                .take(n)
                .map(|counter| HotKey {
                    db: counter.db,
                    name: counter.key,
                    hits: counter.hits,
                    misses: counter.misses,
                    bytes: counter.bytes,
                })
                .collect(),
        }
    }
}

/// One key's counter.
#[derive(Debug, Clone)]
struct Counter {
    db: Option<u16>,
    key: Box<[u8]>,
    hash: u64,
    /// Requests counted, the inherited error included.
    count: u64,
    hits: u64,
    misses: u64,
    bytes: u64,
}

/// A Space-Saving summary: at most `capacity` counters in a min-heap by
/// count, indexed by key.
#[derive(Debug)]
struct Summary {
    capacity: usize,
    hasher: foldhash::fast::FixedState,
    /// Positions in `counters`, by the key's hash.
    index: HashTable<u32>,
    counters: Vec<Counter>,
}

impl Default for Summary {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl Summary {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
            index: HashTable::new(),
            counters: Vec::new(),
        }
    }

    fn hash(&self, db: Option<u16>, name: &[u8]) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one((db, name))
    }

    fn find(&self, hash: u64, db: Option<u16>, name: &[u8]) -> Option<usize> {
        let counters = &self.counters;
        self.index
            .find(hash, |&at| {
                let counter = &counters[at as usize];
                counter.db == db && *counter.key == *name
            })
            .map(|&at| at as usize)
    }

    /// O(1) for a key counted near the top, O(log capacity) otherwise.
    fn record(&mut self, db: Option<u16>, name: &[u8], bytes: Option<usize>) {
        let hash = self.hash(db, name);
        let (hit, miss) = match bytes {
            Some(_) => (1, 0),
            None => (0, 1),
        };
        let at = match self.find(hash, db, name) {
            Some(at) => {
                let counter = &mut self.counters[at];
                counter.count += 1;
                counter.hits += hit;
                counter.misses += miss;
                at
            }
            None if self.counters.len() < self.capacity => {
                self.push(Counter {
                    db,
                    key: name.into(),
                    hash,
                    count: 1,
                    hits: hit,
                    misses: miss,
                    bytes: 0,
                });
                return self.sift_up(self.counters.len() - 1, bytes);
            }
            None => {
                // The least counted gives its place, and its count as the
                // newcomer's possible error.
                let old = self.counters[0].hash;
                self.index
                    .find_entry(old, |&at| at == 0)
                    .expect("the root is indexed")
                    .remove();
                let least = self.counters[0].count;
                self.counters[0] = Counter {
                    db,
                    key: name.into(),
                    hash,
                    count: least + 1,
                    hits: hit,
                    misses: miss,
                    bytes: 0,
                };
                let counters = &self.counters;
                self.index
                    .insert_unique(hash, 0, |&at| counters[at as usize].hash);
                0
            }
        };
        if let Some(bytes) = bytes {
            self.counters[at].bytes = bytes as u64;
        }
        self.sift_down(at);
    }

    /// Adds `counter`'s counts (merging summaries for a report).
    fn add(&mut self, counter: &Counter) {
        match self.find(counter.hash, counter.db, &counter.key) {
            Some(at) => {
                let merged = &mut self.counters[at];
                merged.count += counter.count;
                merged.hits += counter.hits;
                merged.misses += counter.misses;
                merged.bytes = merged.bytes.max(counter.bytes);
            }
            None => self.push(counter.clone()),
        }
    }

    fn push(&mut self, counter: Counter) {
        let at = self.counters.len() as u32;
        let hash = counter.hash;
        self.counters.push(counter);
        let counters = &self.counters;
        self.index
            .insert_unique(hash, at, |&at| counters[at as usize].hash);
    }

    fn sift_up(&mut self, mut at: usize, bytes: Option<usize>) {
        if let Some(bytes) = bytes {
            self.counters[at].bytes = bytes as u64;
        }
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.counters[parent].count <= self.counters[at].count {
                break;
            }
            self.swap(at, parent);
            at = parent;
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        loop {
            let (left, right) = (2 * at + 1, 2 * at + 2);
            let mut least = at;
            for child in [left, right] {
                if child < self.counters.len()
                    && self.counters[child].count < self.counters[least].count
                {
                    least = child;
                }
            }
            if least == at {
                return;
            }
            self.swap(at, least);
            at = least;
        }
    }

    /// Swaps two counters and their places in the index.
    fn swap(&mut self, a: usize, b: usize) {
        const MOVING: usize = u32::MAX as usize;
        let (hash_a, hash_b) = (self.counters[a].hash, self.counters[b].hash);
        self.repoint(hash_a, a, MOVING);
        self.repoint(hash_b, b, a);
        self.repoint(hash_a, MOVING, b);
        self.counters.swap(a, b);
    }

    /// The index entry of the counter at `from` (of `hash`) now says `to`.
    fn repoint(&mut self, hash: u64, from: usize, to: usize) {
        if let Some(at) = self.index.find_mut(hash, |&at| at as usize == from) {
            *at = to as u32;
        }
    }
}

/// Values tracked by size (`/bigkeys`).
pub(crate) const BIG: usize = 256;

/// The largest values stored, by key: the [`BIG`] largest seen stored (the
/// size each had when it was stored as one of them), of which a report
/// gives those still cached.
#[derive(Debug, Default)]
pub(crate) struct Big {
    /// The sizes tracked, unordered, at most [`BIG`]; and once full, the
    /// smallest among them, below which a value is not looked at.
    largest: Mutex<(Vec<Weighed>, u64)>,
}

/// A value's size, its database and key.
type Weighed = (u64, Option<u16>, Box<[u8]>);

impl Big {
    /// `name` in `db` was stored with a value of `bytes`: O(1) for a value
    /// no larger than the smallest tracked, O([`BIG`]) otherwise.
    pub(crate) fn stored(&self, db: Option<u16>, name: &[u8], bytes: usize) {
        let bytes = bytes as u64;
        let mut guard = self.largest.lock().unwrap_or_else(PoisonError::into_inner);
        let (largest, floor) = &mut *guard;
        if largest.len() == BIG && bytes <= *floor {
            return;
        }
        if let Some(known) = largest
            .iter_mut()
            .find(|(_, d, n)| *d == db && **n == *name)
        {
            known.0 = bytes;
        } else if largest.len() < BIG {
            largest.push((bytes, db, name.into()));
        } else {
            let smallest = (0..largest.len())
                .min_by_key(|&i| largest[i].0)
                .expect("full");
            largest[smallest] = (bytes, db, name.into());
        }
        if largest.len() == BIG {
            *floor = largest.iter().map(|(bytes, ..)| *bytes).min().unwrap_or(0);
        }
    }

    /// The `n` largest for which `cached` says yes, largest first.
    pub(crate) fn top(&self, n: usize, cached: impl Fn(Option<u16>, &[u8]) -> bool) -> Vec<HotKey> {
        let mut largest = self
            .largest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone();
        largest.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(&b.2)));
        largest
            .into_iter()
            .filter(|(_, db, name)| cached(*db, name))
            .take(n)
            .map(|(bytes, db, name)| HotKey {
                db,
                name,
                hits: 0,
                misses: 0,
                bytes,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_counted_exactly_while_there_is_room() {
        let mut summary = Summary::with_capacity(8);
        for (key, times) in [(&b"a"[..], 5), (b"b", 3), (b"c", 1)] {
            for _ in 0..times {
                summary.record(None, key, Some(10));
            }
        }
        summary.record(Some(1), b"a", None);
        let counts: Vec<(Option<u16>, &[u8], u64)> = {
            let mut c: Vec<_> = summary
                .counters
                .iter()
                .map(|c| (c.db, &*c.key, c.count))
                .collect();
            c.sort();
            c
        };
        assert_eq!(
            counts,
            [
                (None, &b"a"[..], 5),
                (None, b"b", 3),
                (None, b"c", 1),
                (Some(1), b"a", 1)
            ]
        );
        check_heap(&summary);
    }

    #[test]
    fn beyond_its_room_the_heavy_keys_stay_and_memory_does_not_grow() {
        let mut summary = Summary::with_capacity(64);
        // Four heavy keys among 10,000 distinct light ones: 12,500 requests,
        // so any key requested more than 12,500 / 64 = 195 times is counted,
        // over by at most that.
        for i in 0..10_000u32 {
            summary.record(None, format!("light:{i}").as_bytes(), None);
            if i % 4 == 0 {
                summary.record(None, format!("heavy:{}", i % 16 / 4).as_bytes(), Some(1));
            }
        }
        assert_eq!(summary.counters.len(), 64);
        assert_eq!(summary.index.len(), 64);
        check_heap(&summary);
        let mut heavy: Vec<&Counter> = summary
            .counters
            .iter()
            .filter(|c| c.key.starts_with(b"heavy"))
            .collect();
        heavy.sort_by_key(|c| c.key.clone());
        assert_eq!(heavy.len(), 4);
        for counter in heavy {
            // 625 requests each.
            assert!((625..=625 + 195).contains(&counter.count), "{counter:?}");
            assert!(counter.hits + 195 >= 625, "{counter:?}");
        }
    }

    #[test]
    fn the_report_merges_threads_and_halves_most_requested_first() {
        let hot = Hot::new(Duration::from_secs(60), 2);
        for _ in 0..3 {
            hot.record(None, b"x", Some(4));
        }
        hot.record(None, b"y", None);
        hot.turn_if_due(Instant::now() + Duration::from_secs(31));
        hot.record(None, b"y", None);
        hot.record(None, b"y", None);
        hot.record(None, b"y", None);
        let top = hot.top(10);
        let keys: Vec<(&[u8], u64, u64, u64)> = top
            .keys
            .iter()
            .map(|k| (&*k.name, k.hits, k.misses, k.bytes))
            .collect();
        assert_eq!(keys, [(&b"y"[..], 0, 4, 0), (b"x", 3, 0, 4)]);
        // A second turn drops the first half's counts.
        hot.turn_if_due(Instant::now() + Duration::from_secs(62));
        assert_eq!(hot.top(10).keys.len(), 1);
        hot.turn_if_due(Instant::now() + Duration::from_secs(93));
        assert!(hot.top(10).keys.is_empty());
    }

    #[test]
    fn the_largest_values_stored_are_kept_and_reported_while_cached() {
        let big = Big::default();
        for i in 0..(BIG as u64 + 100) {
            big.stored(None, format!("k{i}").as_bytes(), i as usize);
        }
        big.stored(None, b"k5", 1_000_000);
        let top = big.top(3, |_, name| name != b"k355");
        let names: Vec<(&[u8], u64)> = top.iter().map(|k| (&*k.name, k.bytes)).collect();
        assert_eq!(
            names,
            [(&b"k5"[..], 1_000_000), (b"k354", 354), (b"k353", 353)]
        );
        assert_eq!(big.largest.lock().unwrap().0.len(), BIG);
    }

    #[test]
    #[ignore = "a timing, run by hand: cargo test --release --lib -- --ignored hot_key_cost"]
    fn hot_key_cost() {
        let hot = Hot::new(Duration::from_secs(60), 2);
        let keys: Vec<Vec<u8>> = (0..1000)
            .map(|i| format!("key:{i:012}").into_bytes())
            .collect();
        let start = std::time::Instant::now();
        let n = 10_000_000;
        for i in 0..n {
            hot.record(None, &keys[(i * 7919) % 1000], Some(100));
        }
        eprintln!(
            "{:.1} ns per request",
            start.elapsed().as_nanos() as f64 / n as f64
        );
    }

    fn check_heap(summary: &Summary) {
        for (at, counter) in summary.counters.iter().enumerate() {
            if at > 0 {
                assert!(summary.counters[(at - 1) / 2].count <= counter.count);
            }
            assert_eq!(
                summary.find(counter.hash, counter.db, &counter.key),
                Some(at)
            );
        }
    }
}
