//! [`SharedLru`]: the exact-LRU store read by every thread at once (see the
//! parent module's documentation for how reads stay exact without writing to
//! shared memory).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

use super::Lru;
use crate::cache::eviction::{Found, Lifetime, Space, Stats, Store, Value, kept_digest};

/// How many expired entries one sweep step removes before it lets readers in
/// again.
const RECLAIM_STEP: usize = 1024;

/// How many accesses a reader records before they are applied.
pub(super) const RECORD: usize = 256;

/// The most reader locks a [`SharedLru`] has.
const MAX_READERS: usize = 64;

/// One thread's reader lock: its access record and its counts, on a cache line
/// of its own so that no other thread's hits write to it.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(super) struct Reader(Mutex<Record>);

#[derive(Debug, Default)]
pub(super) struct Record {
    /// `(time, slot)` of each hit since the last change to the store.
    pub(super) accesses: Vec<(i64, u32)>,
    hits: u64,
    misses: u64,
}

/// An [`Lru`] that every thread reads at once, with exact LRU eviction (see the
/// module's documentation).
pub(crate) struct SharedLru {
    core: UnsafeCell<Lru>,
    pub(super) readers: Box<[Reader]>,
    /// Accesses of all readers, merged when they are applied (kept to reuse its
    /// allocation; only touched while every reader lock is held).
    merged: UnsafeCell<Vec<(i64, u32)>>,
}

// SAFETY: `core` and `merged` are read only while holding a reader lock and
// written only while holding every reader lock (see `read` and `write`), so a
// `&mut` to either never coexists with any other reference.
unsafe impl Sync for SharedLru {}

impl std::fmt::Debug for SharedLru {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLru")
            .field("readers", &self.readers.len())
            .finish_non_exhaustive()
    }
}

/// The reader lock this thread uses: threads are numbered as they first read,
/// and share locks only beyond [`MAX_READERS`] threads.
fn reader_index(readers: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static THREAD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    THREAD.with(|n| *n) % readers
}

impl SharedLru {
    /// An empty store holding at most `capacity` keys and `max_bytes` bytes.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        let readers = (2 * threads).clamp(4, MAX_READERS);
        Self {
            core: UnsafeCell::new(Lru::with_max_bytes(capacity, max_bytes)),
            readers: (0..readers).map(|_| Reader::default()).collect(),
            merged: UnsafeCell::new(Vec::new()),
        }
    }

    pub(super) fn lock(reader: &Reader) -> MutexGuard<'_, Record> {
        // A record's invariants hold between statements: a poisoned lock is fine.
        reader.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the store with this thread's reader lock held.
    fn read<R>(&self, f: impl FnOnce(&Lru, &mut Record) -> R) -> R {
        let mut record = Self::lock(&self.readers[reader_index(self.readers.len())]);
        // SAFETY: a reader lock is held, so no writer holds them all: nothing
        // changes the store while this shared reference lives.
        let core = unsafe { &*self.core.get() };
        f(core, &mut record)
    }

    /// Runs `f` on the store with every reader lock held, after applying every
    /// recorded access in time order.
    fn write<R>(&self, f: impl FnOnce(&mut Lru) -> R) -> R {
        let mut guards: [Option<MutexGuard<'_, Record>>; MAX_READERS] =
            [const { None }; MAX_READERS];
        for (guard, reader) in guards.iter_mut().zip(self.readers.iter()) {
            *guard = Some(Self::lock(reader));
        }
        // SAFETY: every reader lock is held: no other reference to the store or
        // to `merged` exists until they are released at the end of this call.
        let (core, merged) = unsafe { (&mut *self.core.get(), &mut *self.merged.get()) };
        merged.clear();
        for record in guards.iter_mut().flatten() {
            merged.append(&mut record.accesses);
        }
        if !merged.is_empty() {
            // Each record is in time order already; a stable sort keeps a
            // thread's equal-time accesses in the order it made them.
            merged.sort_by_key(|&(at, _)| at);
            for &(_, slot) in merged.iter() {
                core.touch(slot);
            }
        }
        f(core)
    }

    /// The live value of `name` in `space` and when it expires, read under
    /// this thread's reader lock alone (see the module's documentation).
    fn read_entry(&self, space: Space, name: &[u8], now: Instant) -> Option<Found> {
        let (found, record_full) = self.read(|core, record| match core.peek(space, name, now) {
            Ok((i, found)) => {
                record.accesses.push((core.offset(now), i));
                if found.is_fresh() {
                    record.hits += 1;
                } else {
                    record.misses += 1;
                }
                (Ok(found), record.accesses.len() >= RECORD)
            }
            Err(None) => {
                record.misses += 1;
                (Err(false), false)
            }
            Err(Some(_)) => (Err(true), false),
        });
        match found {
            Ok(hit) => {
                if record_full {
                    self.write(|_| ());
                }
                Some(hit)
            }
            Err(false) => None,
            // Expired: removed as it is read, which changes the store, so the
            // read is repeated as a write.
            Err(true) => self.write(|core| core.get_in(space, name, now)),
        }
    }
}

impl Store for SharedLru {
    fn get(&self, space: Space, name: &[u8], now: Instant) -> Option<Found> {
        self.read_entry(space, name, now)
    }

    fn contains(&self, space: Space, name: &[u8], now: Instant) -> bool {
        self.read(|core, _| core.peek(space, name, now).is_ok())
    }

    fn insert(
        &self,
        space: Space,
        name: &[u8],
        value: Value<'_>,
        lifetime: Lifetime,
        now: Instant,
    ) -> bool {
        let digest = value.and_then(|value| kept_digest(value));
        self.write(|core| core.insert_digested(space, name, value, digest, lifetime, now))
    }

    fn remove(&self, space: Space, name: &[u8]) {
        self.write(|core| core.remove_in(space, name));
    }

    fn remove_everywhere(&self, name: &[u8]) {
        self.write(|core| core.remove_everywhere(name));
    }

    fn clear(&self) {
        self.write(Lru::clear);
    }

    fn resize(&self, capacity: usize, max_bytes: usize, now: Instant) -> bool {
        self.write(|core| core.resize(capacity, max_bytes, now));
        true
    }

    /// In steps of [`RECLAIM_STEP`] entries, so readers wait for one step at
    /// most.
    fn reclaim_expired(&self, now: Instant) -> usize {
        let mut total = 0;
        loop {
            let step = self.write(|core| core.reclaim_expired(now, RECLAIM_STEP));
            total += step;
            if step < RECLAIM_STEP {
                return total;
            }
        }
    }

    fn len(&self) -> usize {
        self.read(|core, _| core.len())
    }

    fn bytes(&self) -> usize {
        self.read(|core, _| core.bytes())
    }

    /// Every reader's hits and misses included.
    fn stats(&self) -> Stats {
        let mut stats = self.read(|core, _| core.stats());
        for reader in self.readers.iter() {
            let record = Self::lock(reader);
            stats.hits += record.hits;
            stats.misses += record.misses;
        }
        stats
    }
}
