//! The exact-LRU policy (`--cache-policy lru`, the default) with one global TTL.
//!
//! Two parts: [`Lru`], a single-threaded data structure in which every operation
//! is O(1), and [`SharedLru`], which lets every thread read it at once and keeps
//! eviction exactly least-recently-used.
//!
//! # The data structure
//!
//! Every entry lives in one slot of a slab (`slots`), threaded on two intrusive
//! doubly linked lists by slot index, and found through a hash table of slot
//! indexes (`index`):
//!
//! - the recency list, most recently used first: the LRU itself;
//! - the insertion list, newest first. Every entry lives for the same TTL, so the
//!   oldest insertion is always the first to expire.
//!
//! The insertion list is what makes "an expired entry acts as if it was never
//! stored" exact: when the store is full and the oldest insertion has expired, that
//! entry goes, not the least recently used live one. Expired entries are also
//! reclaimed when read, a few on every insert, and in bulk by
//! [`Lru::reclaim_expired`] (the cache runs it every second), so memory held by
//! dead values does not wait for capacity pressure.
//!
//! Capacity is counted in keys and, optionally, in bytes (names plus values):
//! beyond either, entries go in the same order, expired first, then least
//! recently used.
//!
//! The layout is written for memory, because a cache's size is counted in keys
//! and its cost in bytes per key. An entry is a 40-byte slot, a 4-byte index in the
//! hash table, and one allocation: for a value under [`SHARE_AT`] bytes, the
//! entry's database, name and value, copied in at insert and copied out on a hit
//! (a small copy costs less than a shared reference count that every thread's
//! hits would write to); for a larger one, its database and name, and the value
//! as the `Bytes` it was fetched in, shared with every reader without a copy.
//! Keys parsed out of a client's read buffer are always copied, so a cached key
//! never pins that buffer.
//!
//! # Reading from every thread at once
//!
//! A hit reads the table and moves its entry to the front of the recency list,
//! and under one lock that move is a write to memory every core shares: with
//! several threads, hits spend their time handing the lock's and the list's
//! cache lines between cores. [`SharedLru`] splits the lock instead: each thread
//! has a reader lock of its own (its own cache line), and a hit takes only that
//! one. Under it, the hit looks the key up, copies the value out, and appends
//! `(time, slot)` to its lock's access record instead of moving the entry. Every
//! operation that changes the store (insert, remove, reclaim, and so every
//! eviction) takes all the reader locks, and before it does anything else it
//! replays every record, all threads' merged in time order, onto the recency
//! list. So no eviction decision is ever made on a stale order, and the order it
//! is made on is exactly that of the reads: the least recently *read* entry goes,
//! as with one lock. A record is drained when it fills ([`RECORD`] accesses), so
//! memory stays bounded. Records refer to slots by index; as every change to the
//! store drains them first, a recorded slot still holds the entry that was read.

use std::cell::UnsafeCell;
use std::hash::BuildHasher;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashTable};
use tokio::time::Instant;

use super::policy::{Found, Stats, kept_digest};

/// How many expired entries one insert reclaims at most, beyond what it needs to
/// make room. Bounded so an insert never stalls the lock on a long sweep.
const RECLAIM_PER_INSERT: usize = 2;

/// The end of a list, and the end of the free list.
const NIL: u32 = u32::MAX;

/// The most slots a store has: slot indexes are `u32`, and [`NIL`] is reserved.
const MAX_SLOTS: usize = NIL as usize;

/// Values of at least this many bytes are shared with readers rather than
/// copied to them.
pub(crate) const SHARE_AT: usize = 2048;

/// Where a shared allocation keeps the value's digest: after the `Bytes`.
const DIGEST_OFFSET: usize = std::mem::size_of::<Bytes>();

/// `Slot::key_len` bit: the allocation holds the value as a `Bytes` (shared).
const SHARED: u32 = 1 << 31;
/// `Slot::key_len` bit: the allocation starts with a two-byte database index.
const IN_DB: u32 = 1 << 30;
/// `Slot::key_len` bits that hold the name's length.
const LEN_MASK: u32 = IN_DB - 1;

/// A slot's neighbours on one list, by slot index.
#[derive(Debug, Clone, Copy)]
struct Links {
    /// Towards the head (newer, or more recently used).
    prev: u32,
    /// Towards the tail (older, or less recently used).
    next: u32,
}

const UNLINKED: Links = Links {
    prev: NIL,
    next: NIL,
};

/// The head (newest) and tail (oldest) of one list.
#[derive(Debug, Clone, Copy)]
struct Ends {
    head: u32,
    tail: u32,
}

const EMPTY: Ends = Ends {
    head: NIL,
    tail: NIL,
};

/// The allocation of one entry, owned by its slot; `None` in a free slot.
///
/// ```text
/// inline (value < SHARE_AT):   [db: u16 LE, if IN_DB] [name] [value]            align 1
/// shared (value >= SHARE_AT):  [value: Bytes] [digest: u64] [db: u16 LE, if IN_DB] [name]   align 8
/// ```
#[derive(Debug, Default)]
struct Data(Option<NonNull<u8>>);

// SAFETY: the allocation is owned by exactly one slot, and holds plain bytes and
// at most one `Bytes`, which is `Send + Sync`.
unsafe impl Send for Data {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Data {}

impl Data {
    /// Whether the slot is free.
    fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// One entry, or a free slot (empty `data`, `recency.next` threading the free list).
#[derive(Debug)]
struct Slot {
    data: Data,
    /// Nanoseconds from the store's epoch (negative before it).
    expires_at: i64,
    recency: Links,
    insertion: Links,
    /// The name's length, and the [`SHARED`] and [`IN_DB`] flags.
    key_len: u32,
    /// The value's length.
    value_len: u32,
}

impl Slot {
    fn name_len(&self) -> usize {
        (self.key_len & LEN_MASK) as usize
    }

    fn is_shared(&self) -> bool {
        self.key_len & SHARED != 0
    }

    /// Where the database index starts, and the allocation's layout.
    fn layout(&self) -> (usize, std::alloc::Layout) {
        let db = if self.key_len & IN_DB != 0 { 2 } else { 0 };
        let (start, size, align) = if self.is_shared() {
            let start = DIGEST_OFFSET + std::mem::size_of::<u64>();
            (
                start,
                start + db + self.name_len(),
                std::mem::align_of::<Bytes>(),
            )
        } else {
            (0, db + self.name_len() + self.value_len as usize, 1)
        };
        let layout = std::alloc::Layout::from_size_align(size.max(1), align)
            .expect("an entry's size fits a layout");
        (start, layout)
    }

    /// The allocation's bytes from its start, for reading; empty for a free slot.
    fn bytes(&self) -> &[u8] {
        match self.data.0 {
            // SAFETY: `data` points to an allocation of `layout().size()` bytes,
            // initialized when the slot was filled and not changed since.
            Some(ptr) => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr(), self.layout().1.size())
            },
            None => &[],
        }
    }

    /// The database the entry lives in.
    fn db(&self) -> Option<u16> {
        if self.key_len & IN_DB == 0 {
            return None;
        }
        let start = self.layout().0;
        let db = &self.bytes()[start..start + 2];
        Some(u16::from_le_bytes([db[0], db[1]]))
    }

    /// The entry's name.
    fn key(&self) -> &[u8] {
        if self.data.is_empty() {
            return &[];
        }
        let db = if self.key_len & IN_DB != 0 { 2 } else { 0 };
        let start = self.layout().0 + db;
        &self.bytes()[start..start + self.name_len()]
    }

    /// The digest kept with a shared value.
    fn digest(&self) -> Option<u64> {
        match self.data.0 {
            // SAFETY: a shared allocation holds an initialized `u64` at
            // `DIGEST_OFFSET`, aligned since the allocation is aligned for `Bytes`.
            Some(ptr) if self.is_shared() => unsafe {
                Some(ptr.as_ptr().add(DIGEST_OFFSET).cast::<u64>().read())
            },
            _ => None,
        }
    }

    /// The entry's value: a copy of an inline one, a shared handle to a larger one.
    fn value(&self) -> Bytes {
        match self.data.0 {
            // SAFETY: a shared allocation starts with an initialized `Bytes`.
            Some(ptr) if self.is_shared() => unsafe { (*ptr.as_ptr().cast::<Bytes>()).clone() },
            Some(_) => {
                let start = self.name_len() + if self.key_len & IN_DB != 0 { 2 } else { 0 };
                Bytes::copy_from_slice(&self.bytes()[start..])
            }
            None => Bytes::new(),
        }
    }

    /// Names plus values: what the byte capacity counts.
    fn size(&self) -> usize {
        self.name_len() + self.value_len as usize
    }

    /// Fills a free slot with a copy of `name` (in `db`) and `value`; `None` when
    /// the name or value is too long to describe.
    fn fill(
        db: Option<u16>,
        name: &[u8],
        value: &Bytes,
        digest: Option<u64>,
        expires_at: i64,
    ) -> Option<Slot> {
        let name_len = u32::try_from(name.len()).ok().filter(|&n| n <= LEN_MASK)?;
        let value_len = u32::try_from(value.len()).ok()?;
        let shared = value.len() >= SHARE_AT;
        let mut slot = Slot {
            data: Data(None),
            expires_at,
            recency: UNLINKED,
            insertion: UNLINKED,
            key_len: name_len
                | if shared { SHARED } else { 0 }
                | if db.is_some() { IN_DB } else { 0 },
            value_len,
        };
        let (start, layout) = slot.layout();
        // SAFETY: `layout` has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) })
            .unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        let mut at = start;
        // SAFETY: every write below stays within `layout.size()` bytes, which
        // `layout()` computed from exactly these parts; a shared allocation is
        // aligned for `Bytes`.
        unsafe {
            if shared {
                ptr.as_ptr().cast::<Bytes>().write(value.clone());
                let digest = digest.unwrap_or_else(|| crate::lookup::digest(value));
                ptr.as_ptr().add(DIGEST_OFFSET).cast::<u64>().write(digest);
            }
            if let Some(db) = db {
                std::ptr::copy_nonoverlapping(db.to_le_bytes().as_ptr(), ptr.as_ptr().add(at), 2);
                at += 2;
            }
            std::ptr::copy_nonoverlapping(name.as_ptr(), ptr.as_ptr().add(at), name.len());
            at += name.len();
            if !shared {
                std::ptr::copy_nonoverlapping(value.as_ptr(), ptr.as_ptr().add(at), value.len());
            }
        }
        slot.data = Data(Some(ptr));
        Some(slot)
    }

    /// Frees the allocation; the slot is free afterwards.
    fn empty(&mut self) {
        if let Some(ptr) = self.data.0.take() {
            let (_, layout) = self.layout();
            // SAFETY: `ptr` was allocated with this layout by `fill`; a shared
            // allocation holds an initialized `Bytes`, dropped once here.
            unsafe {
                if self.is_shared() {
                    std::ptr::drop_in_place(ptr.as_ptr().cast::<Bytes>());
                }
                std::alloc::dealloc(ptr.as_ptr(), layout);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.empty();
    }
}

/// Which of the two lists an operation acts on.
#[derive(Debug, Clone, Copy)]
enum List {
    Recency,
    Insertion,
}

/// An LRU map from key to value with a capacity in keys (and optionally in
/// bytes) and one TTL for all entries. Single-threaded; see [`SharedLru`].
#[derive(Debug)]
pub(crate) struct Lru {
    /// Slot indexes, hashed by the database and name their slot holds.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    slots: Vec<Slot>,
    /// The first free slot, or [`NIL`].
    free: u32,
    recency: Ends,
    insertion: Ends,
    capacity: usize,
    max_bytes: usize,
    /// Names plus values of every entry.
    bytes: usize,
    /// The databases that have held entries: where a name is looked for when
    /// Redis invalidates it (its messages do not say which database).
    dbs: Vec<Option<u16>>,
    /// The instant that slot times count from.
    epoch: Instant,
    ttl: Duration,
    stats: Stats,
}

impl Lru {
    /// An empty store holding at most `capacity` keys (and never more than
    /// 4,294,967,295), each for `ttl`.
    #[cfg(test)]
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self::with_max_bytes(capacity, usize::MAX, ttl)
    }

    /// An empty store holding at most `capacity` keys and `max_bytes` bytes of
    /// names and values.
    pub(crate) fn with_max_bytes(capacity: usize, max_bytes: usize, ttl: Duration) -> Self {
        Self {
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            slots: Vec::new(),
            free: NIL,
            recency: EMPTY,
            insertion: EMPTY,
            capacity: capacity.clamp(1, MAX_SLOTS),
            max_bytes,
            bytes: 0,
            dbs: Vec::new(),
            epoch: Instant::now(),
            ttl,
            stats: Stats::default(),
        }
    }

    /// `at` as nanoseconds from the epoch, saturating.
    fn offset(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.epoch) {
            Some(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            None => i64::try_from(self.epoch.duration_since(at).as_nanos())
                .map_or(i64::MIN, |before| -before),
        }
    }

    fn hash(&self, db: Option<u16>, name: &[u8]) -> u64 {
        self.hasher.hash_one((db, name))
    }

    /// The slot holding `name` in `db`.
    fn find(&self, db: Option<u16>, name: &[u8]) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hash(db, name), |&i| {
                let slot = &slots[i as usize];
                slot.key() == name && slot.db() == db
            })
            .copied()
    }

    fn links(&mut self, list: List, i: u32) -> &mut Links {
        let slot = &mut self.slots[i as usize];
        match list {
            List::Recency => &mut slot.recency,
            List::Insertion => &mut slot.insertion,
        }
    }

    fn ends(&mut self, list: List) -> &mut Ends {
        match list {
            List::Recency => &mut self.recency,
            List::Insertion => &mut self.insertion,
        }
    }

    fn unlink(&mut self, list: List, i: u32) {
        let Links { prev, next } = std::mem::replace(self.links(list, i), UNLINKED);
        match prev {
            NIL => self.ends(list).head = next,
            prev => self.links(list, prev).next = next,
        }
        match next {
            NIL => self.ends(list).tail = prev,
            next => self.links(list, next).prev = prev,
        }
    }

    fn push_front(&mut self, list: List, i: u32) {
        let head = self.ends(list).head;
        *self.links(list, i) = Links {
            prev: NIL,
            next: head,
        };
        match head {
            NIL => self.ends(list).tail = i,
            head => self.links(list, head).prev = i,
        }
        self.ends(list).head = i;
    }

    fn move_to_front(&mut self, list: List, i: u32) {
        if self.ends(list).head != i {
            self.unlink(list, i);
            self.push_front(list, i);
        }
    }

    /// Empties slot `i`: out of the index, off both lists, onto the free list.
    fn remove_slot(&mut self, i: u32) {
        let slot = &self.slots[i as usize];
        let hash = self.hash(slot.db(), slot.key());
        if let Ok(found) = self.index.find_entry(hash, |&j| j == i) {
            found.remove();
        }
        self.unlink(List::Recency, i);
        self.unlink(List::Insertion, i);
        self.bytes -= self.slots[i as usize].size();
        let slot = &mut self.slots[i as usize];
        slot.empty();
        slot.recency.next = self.free;
        self.free = i;
    }

    /// A free slot made into `slot`, taken from the free list or the end of the slab.
    fn allocate(&mut self, slot: Slot) -> u32 {
        self.bytes += slot.size();
        match self.free {
            NIL => {
                let i = u32::try_from(self.slots.len()).expect("at most MAX_SLOTS slots");
                self.slots.push(slot);
                i
            }
            i => {
                self.free = self.slots[i as usize].recency.next;
                self.slots[i as usize] = slot;
                i
            }
        }
    }

    /// Removes up to `budget` expired entries, oldest insertion first; returns
    /// how many went.
    fn reclaim(&mut self, now: i64, budget: usize) -> usize {
        for reclaimed in 0..budget {
            let oldest = self.insertion.tail;
            // Uniform TTL: if the oldest insertion is live, every entry is.
            if oldest == NIL || self.slots[oldest as usize].expires_at > now {
                return reclaimed;
            }
            self.remove_slot(oldest);
            self.stats.expirations += 1;
        }
        budget
    }

    /// Removes up to `budget` expired entries, oldest first; returns how many.
    pub(crate) fn reclaim_expired(&mut self, now: Instant, budget: usize) -> usize {
        let now = self.offset(now);
        self.reclaim(now, budget)
    }

    /// Makes room for one entry: the oldest insertion if it has expired, else
    /// the least recently used entry.
    fn make_room(&mut self, now: i64) {
        if self.reclaim(now, 1) == 0 {
            self.remove_slot(self.recency.tail);
            self.stats.evictions += 1;
        }
    }

    /// The slot of the live entry `name` in `db`, its value and expiry, without
    /// moving it (what a concurrent reader may do); `Err(Some(i))` when slot `i`
    /// holds it expired.
    fn peek(
        &self,
        db: Option<u16>,
        name: &[u8],
        now: Instant,
    ) -> Result<(u32, Found), Option<u32>> {
        let i = self.find(db, name).ok_or(None)?;
        let now_offset = self.offset(now);
        let slot = &self.slots[i as usize];
        if slot.expires_at <= now_offset {
            return Err(Some(i));
        }
        let fresh_for = Duration::from_nanos(slot.expires_at.abs_diff(now_offset));
        let found = Found {
            value: slot.value(),
            expires_at: now + fresh_for,
            digest: slot.digest(),
        };
        Ok((i, found))
    }

    /// Moves slot `i` to the front of the recency list: a read of it.
    fn touch(&mut self, i: u32) {
        self.move_to_front(List::Recency, i);
    }

    /// The live entry `name` in `db`, now the most recently used. `None` when
    /// absent or expired (an expired entry is removed on the way).
    pub(crate) fn get_in(&mut self, db: Option<u16>, name: &[u8], now: Instant) -> Option<Found> {
        match self.peek(db, name, now) {
            Ok((i, found)) => {
                self.touch(i);
                self.stats.hits += 1;
                Some(found)
            }
            Err(expired) => {
                if let Some(i) = expired {
                    self.remove_slot(i);
                    self.stats.expirations += 1;
                }
                self.stats.misses += 1;
                None
            }
        }
    }

    /// Stores `value` under `name` in `db` as the most recently used entry,
    /// expiring `ttl` after `now`. When the store is full (in keys or in bytes),
    /// expired entries make room first, then the least recently used ones. A value
    /// that alone exceeds the byte capacity is not stored, and the key's old
    /// entry goes. Returns whether the value was stored.
    #[cfg(test)]
    pub(crate) fn insert_in(
        &mut self,
        db: Option<u16>,
        name: &[u8],
        value: &Bytes,
        now: Instant,
    ) -> bool {
        self.insert_digested(db, name, value, kept_digest(value), now)
    }

    /// [`Lru::insert_in`], with the digest the entry keeps for `value` (see
    /// [`kept_digest`]), computed by the caller: hashing a large value takes
    /// longer than anything else an insert does, and need not hold the lock.
    pub(crate) fn insert_digested(
        &mut self,
        db: Option<u16>,
        name: &[u8],
        value: &Bytes,
        digest: Option<u64>,
        now: Instant,
    ) -> bool {
        let now = self.offset(now);
        let ttl = i64::try_from(self.ttl.as_nanos()).unwrap_or(i64::MAX);
        let expires_at = now.saturating_add(ttl);
        let fits = name.len().saturating_add(value.len()) <= self.max_bytes;
        let filled = fits
            .then(|| Slot::fill(db, name, value, digest, expires_at))
            .flatten();
        let Some(slot) = filled else {
            if let Some(i) = self.find(db, name) {
                self.remove_slot(i);
            }
            return false;
        };
        let budget = RECLAIM_PER_INSERT + usize::from(self.index.len() == self.capacity);
        self.reclaim(now, budget);

        let i = match self.find(db, name) {
            Some(i) => {
                self.bytes = self.bytes - self.slots[i as usize].size() + slot.size();
                let old = std::mem::replace(&mut self.slots[i as usize], slot);
                self.slots[i as usize].recency = old.recency;
                self.slots[i as usize].insertion = old.insertion;
                self.move_to_front(List::Recency, i);
                self.move_to_front(List::Insertion, i);
                i
            }
            None => {
                while self.index.len() >= self.capacity {
                    self.make_room(now);
                }
                if !self.dbs.contains(&db) {
                    self.dbs.push(db);
                }
                let hash = self.hash(db, name);
                let i = self.allocate(slot);
                let (slots, hasher) = (&self.slots, &self.hasher);
                self.index.insert_unique(hash, i, |&j| {
                    let slot = &slots[j as usize];
                    hasher.hash_one((slot.db(), slot.key()))
                });
                self.push_front(List::Recency, i);
                self.push_front(List::Insertion, i);
                i
            }
        };
        // Over the byte capacity: older entries go, never the one just stored
        // (it fits alone, so the loop stops once it is the last).
        while self.bytes > self.max_bytes && self.recency.tail != i {
            self.make_room(now);
        }
        true
    }

    /// Drops `name` in `db` if it is stored (an invalidation).
    pub(crate) fn remove_in(&mut self, db: Option<u16>, name: &[u8]) {
        if let Some(i) = self.find(db, name) {
            self.remove_slot(i);
        }
    }

    /// Drops `name` in every database that has held entries.
    pub(crate) fn remove_everywhere(&mut self, name: &[u8]) {
        for k in 0..self.dbs.len() {
            let db = self.dbs[k];
            self.remove_in(db, name);
        }
    }

    /// Drops every entry (a flush).
    pub(crate) fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free = NIL;
        self.recency = EMPTY;
        self.insertion = EMPTY;
        self.bytes = 0;
    }

    /// The live value of `key` (in the backend's own database); see [`Lru::get_in`].
    #[cfg(test)]
    pub(crate) fn get(&mut self, key: &[u8], now: Instant) -> Option<(Bytes, Instant)> {
        self.get_in(None, key, now)
            .map(|found| (found.value, found.expires_at))
    }

    /// Stores `value` under `key` (in the backend's own database); see
    /// [`Lru::insert_in`].
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: Bytes, value: Bytes, now: Instant) {
        self.insert_in(None, &key, &value, now);
    }

    /// Drops `key` (in the backend's own database) if it is stored.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, key: &[u8]) {
        self.remove_in(None, key);
    }

    /// How many entries are stored, counting expired ones not yet reclaimed.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Names plus values of every entry, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// What the store has done so far.
    pub(crate) fn stats(&self) -> Stats {
        self.stats
    }
}

/// How many accesses a reader records before they are applied.
const RECORD: usize = 256;

/// The most reader locks a [`SharedLru`] has.
const MAX_READERS: usize = 64;

/// One thread's reader lock: its access record and its counts, on a cache line
/// of its own so that no other thread's hits write to it.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Reader(Mutex<Record>);

#[derive(Debug, Default)]
struct Record {
    /// `(time, slot)` of each hit since the last change to the store.
    accesses: Vec<(i64, u32)>,
    hits: u64,
    misses: u64,
}

/// An [`Lru`] that every thread reads at once, with exact LRU eviction (see the
/// module's documentation).
pub(crate) struct SharedLru {
    core: UnsafeCell<Lru>,
    readers: Box<[Reader]>,
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
    pub(crate) fn new(capacity: usize, max_bytes: usize, ttl: Duration) -> Self {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        let readers = (2 * threads).clamp(4, MAX_READERS);
        Self {
            core: UnsafeCell::new(Lru::with_max_bytes(capacity, max_bytes, ttl)),
            readers: (0..readers).map(|_| Reader::default()).collect(),
            merged: UnsafeCell::new(Vec::new()),
        }
    }

    fn lock(reader: &Reader) -> MutexGuard<'_, Record> {
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

    /// The live value of `name` in `db` and when it expires, read under this
    /// thread's reader lock alone (see the module's documentation).
    pub(crate) fn get(&self, db: Option<u16>, name: &[u8], now: Instant) -> Option<Found> {
        let (found, record_full) = self.read(|core, record| match core.peek(db, name, now) {
            Ok((i, found)) => {
                record.accesses.push((core.offset(now), i));
                record.hits += 1;
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
            Err(true) => self.write(|core| core.get_in(db, name, now)),
        }
    }

    /// See [`Lru::insert_in`].
    pub(crate) fn insert(&self, db: Option<u16>, name: &[u8], value: &Bytes, now: Instant) -> bool {
        let digest = kept_digest(value);
        self.write(|core| core.insert_digested(db, name, value, digest, now))
    }

    /// See [`Lru::remove_in`].
    pub(crate) fn remove(&self, db: Option<u16>, name: &[u8]) {
        self.write(|core| core.remove_in(db, name));
    }

    /// See [`Lru::remove_everywhere`].
    pub(crate) fn remove_everywhere(&self, name: &[u8]) {
        self.write(|core| core.remove_everywhere(name));
    }

    /// Drops every entry.
    pub(crate) fn clear(&self) {
        self.write(Lru::clear);
    }

    /// See [`Lru::reclaim_expired`].
    pub(crate) fn reclaim_expired(&self, now: Instant, budget: usize) -> usize {
        self.write(|core| core.reclaim_expired(now, budget))
    }

    /// Entries stored, expired ones not yet reclaimed included.
    pub(crate) fn len(&self) -> usize {
        self.read(|core, _| core.len())
    }

    /// Names plus values of every entry, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.read(|core, _| core.bytes())
    }

    /// What the store has done so far, every reader's hits and misses included.
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.read(|core, _| core.stats());
        for reader in self.readers.iter() {
            let record = Self::lock(reader);
            stats.hits += record.hits;
            stats.misses += record.misses;
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn store(capacity: usize) -> Lru {
        Lru::new(capacity, TTL)
    }

    fn put(store: &mut Lru, key: &str, now: Instant) {
        store.insert(
            Bytes::copy_from_slice(key.as_bytes()),
            Bytes::from(format!("value of {key}")),
            now,
        );
    }

    fn cached(store: &mut Lru, key: &str, now: Instant) -> bool {
        store.get(key.as_bytes(), now).is_some()
    }

    #[test]
    fn get_returns_the_stored_value() {
        let now = Instant::now();
        let mut s = store(2);
        put(&mut s, "a", now);
        assert_eq!(
            s.get(b"a", now),
            Some((Bytes::from("value of a"), now + TTL))
        );
        assert_eq!(s.get(b"b", now), None);
        assert_eq!(s.stats().hits, 1);
        assert_eq!(s.stats().misses, 1);
    }

    #[test]
    fn least_recently_used_entry_is_evicted_at_capacity() {
        let now = Instant::now();
        let mut s = store(3);
        put(&mut s, "a", now);
        put(&mut s, "b", now);
        put(&mut s, "c", now);
        assert!(cached(&mut s, "a", now)); // order of use, oldest first: b c a
        put(&mut s, "d", now); // evicts b
        assert!(!cached(&mut s, "b", now));
        assert!(cached(&mut s, "a", now));
        assert!(cached(&mut s, "c", now));
        assert!(cached(&mut s, "d", now));
        assert_eq!(s.len(), 3);
        assert_eq!(s.stats().evictions, 1);
    }

    #[test]
    fn reinserting_a_key_does_not_evict_another() {
        let now = Instant::now();
        let mut s = store(2);
        put(&mut s, "a", now);
        put(&mut s, "b", now);
        put(&mut s, "a", now);
        assert!(cached(&mut s, "a", now));
        assert!(cached(&mut s, "b", now));
        assert_eq!(s.stats().evictions, 0);
    }

    #[test]
    fn entry_expires_exactly_at_its_ttl() {
        let now = Instant::now();
        let mut s = store(2);
        put(&mut s, "a", now);
        assert!(cached(&mut s, "a", now + TTL - Duration::from_nanos(1)));
        assert!(!cached(&mut s, "a", now + TTL));
        assert_eq!(s.len(), 0, "an expired entry is removed when read");
        assert_eq!(s.stats().expirations, 1);
    }

    #[test]
    fn reinsert_restarts_the_ttl() {
        let now = Instant::now();
        let mut s = store(2);
        put(&mut s, "a", now);
        put(&mut s, "a", now + Duration::from_secs(5));
        assert!(cached(&mut s, "a", now + Duration::from_secs(12)));
    }

    #[test]
    fn expired_entry_makes_room_before_a_live_one_is_evicted() {
        let t0 = Instant::now();
        let mut s = store(3);
        put(&mut s, "a", t0);
        put(&mut s, "b", t0 + Duration::from_secs(1));
        put(&mut s, "c", t0 + Duration::from_secs(2));
        let t1 = t0 + Duration::from_secs(3);
        assert!(cached(&mut s, "a", t1)); // recency, oldest first: b c a
        // a has expired, b and c have not; b is the least recently used.
        let t2 = t0 + TTL + Duration::from_millis(500);
        put(&mut s, "d", t2);
        assert!(
            cached(&mut s, "b", t2),
            "a live entry was evicted for an expired one"
        );
        assert!(cached(&mut s, "c", t2));
        assert!(cached(&mut s, "d", t2));
        assert!(!cached(&mut s, "a", t2));
        assert_eq!(s.stats().evictions, 0);
        assert_eq!(s.stats().expirations, 1);
    }

    #[test]
    fn inserts_reclaim_expired_entries_without_capacity_pressure() {
        let t0 = Instant::now();
        let mut s = store(100);
        for i in 0..10 {
            put(&mut s, &format!("old{i}"), t0);
        }
        let later = t0 + TTL;
        for i in 0..5 {
            put(&mut s, &format!("new{i}"), later);
        }
        // Each insert reclaims up to two expired entries: all ten are gone.
        assert_eq!(s.len(), 5);
        assert_eq!(s.stats().expirations, 10);
    }

    #[test]
    fn removed_and_cleared_entries_are_gone_from_both_indexes() {
        let now = Instant::now();
        let mut s = store(3);
        for key in ["a", "b", "c"] {
            put(&mut s, key, now);
        }
        s.remove(b"b");
        assert!(!cached(&mut s, "b", now));
        assert_eq!((s.len(), s.index.len()), (2, 2));
        assert_eq!(s.list(List::Recency), ["c", "a"]);
        assert_eq!(s.list(List::Insertion), ["c", "a"]);
        s.clear();
        assert_eq!((s.len(), s.index.len()), (0, 0));
        assert!(s.list(List::Recency).is_empty());
        put(&mut s, "d", now);
        assert!(cached(&mut s, "d", now));
    }

    #[test]
    fn a_slot_is_40_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 40);
    }

    #[test]
    fn empty_keys_and_values_are_stored() {
        let now = Instant::now();
        let mut s = store(2);
        s.insert(Bytes::new(), Bytes::from("v"), now);
        s.insert(Bytes::from("k"), Bytes::new(), now);
        assert_eq!(s.get(b"", now).unwrap().0, Bytes::from("v"));
        assert_eq!(s.get(b"k", now).unwrap().0, Bytes::new());
    }

    #[test]
    fn freed_slots_are_reused() {
        let now = Instant::now();
        let mut s = store(3);
        for key in ["a", "b", "c"] {
            put(&mut s, key, now);
        }
        s.remove(b"a");
        s.remove(b"b");
        put(&mut s, "d", now);
        put(&mut s, "e", now);
        put(&mut s, "f", now); // full again: evicts c
        assert_eq!(s.slots.len(), 3, "the slab grew instead of reusing slots");
        assert_eq!(s.list(List::Recency), ["f", "e", "d"]);
        for key in ["d", "e", "f"] {
            assert_eq!(
                s.get(key.as_bytes(), now).map(|(value, _)| value),
                Some(Bytes::from(format!("value of {key}")))
            );
        }
    }

    #[test]
    fn both_lists_follow_use_and_insertion() {
        let now = Instant::now();
        let mut s = store(4);
        for key in ["a", "b", "c"] {
            put(&mut s, key, now);
        }
        assert!(cached(&mut s, "a", now));
        put(&mut s, "b", now);
        assert_eq!(s.list(List::Recency), ["b", "a", "c"]);
        assert_eq!(s.list(List::Insertion), ["b", "c", "a"]);
    }

    #[test]
    fn stored_entries_keep_no_reference_to_the_callers_buffers() {
        let now = Instant::now();
        let mut s = store(2);
        let request = Bytes::from(b"GET key and the rest of a read buffer".to_vec());
        let response = Bytes::from(b"value".to_vec());
        s.insert(request.slice(4..7), response.slice(..), now);
        assert!(request.is_unique(), "the key still points into the buffer");
        assert!(
            response.is_unique(),
            "the value still points into the buffer"
        );
        let (value, _) = s.get(b"key", now).unwrap();
        assert_eq!(value, Bytes::from("value"));
    }

    /// What a store does, as a reference model: a list of entries, expired ones
    /// treated as absent, the least recently used live one evicted when full.
    #[derive(Default)]
    struct Model {
        /// (key, value, expires at, last used), in no particular order.
        entries: Vec<(u8, u32, Duration, u64)>,
        clock: u64,
    }

    impl Model {
        fn live(&mut self, now: Duration) {
            self.entries.retain(|entry| entry.2 > now);
        }

        fn get(&mut self, key: u8, now: Duration) -> Option<u32> {
            self.live(now);
            self.clock += 1;
            let clock = self.clock;
            let entry = self.entries.iter_mut().find(|entry| entry.0 == key)?;
            entry.3 = clock;
            Some(entry.1)
        }

        fn insert(&mut self, key: u8, value: u32, now: Duration, capacity: usize) {
            self.live(now);
            self.clock += 1;
            self.entries.retain(|entry| entry.0 != key);
            if self.entries.len() == capacity {
                let lru = (0..self.entries.len())
                    .min_by_key(|&i| self.entries[i].3)
                    .unwrap();
                self.entries.remove(lru);
            }
            self.entries.push((key, value, now + TTL, self.clock));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Get(u8),
        Insert(u8),
        Remove(u8),
        Wait(u64),
        Clear,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (0..12u8).prop_map(Op::Get),
            8 => (0..12u8).prop_map(Op::Insert),
            1 => (0..12u8).prop_map(Op::Remove),
            3 => (0..6_000u64).prop_map(Op::Wait),
            1 => Just(Op::Clear),
        ]
    }

    proptest::proptest! {
        /// Any sequence of operations reads the same as the reference model.
        #[test]
        fn behaves_like_the_reference_model(
            capacity in 1..6usize,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let start = Instant::now();
            let mut s = store(capacity);
            let mut model = Model::default();
            let mut elapsed = Duration::ZERO;
            for (n, op) in ops.into_iter().enumerate() {
                let now = start + elapsed;
                match op {
                    Op::Get(key) => {
                        let got = s.get(&[key], now).map(|(value, expires_at)| {
                            assert!(expires_at > now && expires_at <= now + TTL);
                            u32::from_be_bytes(value[..].try_into().unwrap())
                        });
                        proptest::prop_assert_eq!(got, model.get(key, elapsed), "op {}", n);
                    }
                    Op::Insert(key) => {
                        let value = u32::try_from(n).unwrap();
                        s.insert(
                            Bytes::copy_from_slice(&[key]),
                            Bytes::copy_from_slice(&value.to_be_bytes()),
                            now,
                        );
                        model.insert(key, value, elapsed, capacity);
                    }
                    Op::Remove(key) => {
                        s.remove(&[key]);
                        model.entries.retain(|entry| entry.0 != key);
                    }
                    Op::Wait(millis) => elapsed += Duration::from_millis(millis),
                    Op::Clear => {
                        s.clear();
                        model.entries.clear();
                    }
                }
                proptest::prop_assert!(s.len() <= capacity);
                let occupied = s.slots.iter().filter(|slot| !slot.data.is_empty()).count();
                proptest::prop_assert_eq!(occupied, s.len());
                proptest::prop_assert_eq!(s.list(List::Recency).len(), s.len());
                proptest::prop_assert_eq!(s.list(List::Insertion).len(), s.len());
            }
        }
    }

    impl Lru {
        /// The keys on `list`, head first.
        fn list(&self, list: List) -> Vec<String> {
            let mut keys = Vec::new();
            let mut i = match list {
                List::Recency => self.recency.head,
                List::Insertion => self.insertion.head,
            };
            while i != NIL {
                let slot = &self.slots[i as usize];
                keys.push(String::from_utf8(slot.key().to_vec()).unwrap());
                i = match list {
                    List::Recency => slot.recency.next,
                    List::Insertion => slot.insertion.next,
                };
            }
            keys
        }
    }

    #[test]
    fn capacity_of_one_keeps_only_the_last_key() {
        let now = Instant::now();
        let mut s = store(1);
        for key in ["a", "b", "c"] {
            put(&mut s, key, now);
        }
        assert!(cached(&mut s, "c", now));
        assert!(!cached(&mut s, "a", now));
        assert!(!cached(&mut s, "b", now));
        assert_eq!(s.stats().evictions, 2);
    }

    #[test]
    fn small_values_are_copied_out_and_large_ones_shared() {
        let now = Instant::now();
        let mut s = store(4);
        let large = Bytes::from(vec![7u8; SHARE_AT]);
        s.insert(Bytes::from("large"), large.clone(), now);
        s.insert(
            Bytes::from("small"),
            Bytes::from(vec![1u8; SHARE_AT - 1]),
            now,
        );
        let (read, _) = s.get(b"large", now).unwrap();
        assert_eq!(read.as_ptr(), large.as_ptr(), "a large value is not copied");
        let (first, _) = s.get(b"small", now).unwrap();
        let (second, _) = s.get(b"small", now).unwrap();
        assert_eq!(first, second);
        assert_ne!(
            first.as_ptr(),
            second.as_ptr(),
            "a small value is copied out"
        );
        drop((read, first, second));
        s.remove(b"large");
        assert!(large.is_unique(), "a removed entry lets go of its value");
    }

    #[test]
    fn large_values_keep_their_digest_and_small_ones_none() {
        let now = Instant::now();
        let mut s = store(4);
        let large = Bytes::from(vec![7u8; SHARE_AT]);
        s.insert_in(Some(3), b"large", &large, now);
        s.insert_in(None, b"small", &Bytes::from("v"), now);
        let found = s.get_in(Some(3), b"large", now).unwrap();
        assert_eq!(found.digest, Some(crate::lookup::digest(&large)));
        assert_eq!(found.value, large);
        assert_eq!(s.get_in(None, b"small", now).unwrap().digest, None);
        // A new value under the same key brings its own digest.
        let other = Bytes::from(vec![8u8; SHARE_AT + 1]);
        s.insert_in(Some(3), b"large", &other, now);
        let found = s.get_in(Some(3), b"large", now).unwrap();
        assert_eq!(found.digest, Some(crate::lookup::digest(&other)));
    }

    #[test]
    fn databases_keep_equal_names_apart() {
        let now = Instant::now();
        let mut s = store(8);
        s.insert_in(None, b"k", &Bytes::from("default"), now);
        s.insert_in(Some(2), b"k", &Bytes::from("two"), now);
        s.insert_in(Some(3), b"other", &Bytes::from("three"), now);
        assert_eq!(
            s.get_in(None, b"k", now).unwrap().value,
            Bytes::from("default")
        );
        assert_eq!(
            s.get_in(Some(2), b"k", now).unwrap().value,
            Bytes::from("two")
        );
        assert!(s.get_in(Some(3), b"k", now).is_none());
        s.remove_in(Some(2), b"k");
        assert!(s.get_in(Some(2), b"k", now).is_none());
        assert!(
            s.get_in(None, b"k", now).is_some(),
            "only database 2 lost it"
        );
        s.insert_in(Some(2), b"k", &Bytes::from("two"), now);
        s.remove_everywhere(b"k");
        assert!(s.get_in(None, b"k", now).is_none());
        assert!(s.get_in(Some(2), b"k", now).is_none());
        assert!(s.get_in(Some(3), b"other", now).is_some());
    }

    #[test]
    fn the_byte_capacity_evicts_in_lru_order() {
        let now = Instant::now();
        // Each entry is a one-byte name and a nine-byte value: ten bytes.
        let mut s = Lru::with_max_bytes(100, 30, TTL);
        for key in ["a", "b", "c"] {
            s.insert(Bytes::from(key), Bytes::from_static(b"123456789"), now);
        }
        assert_eq!(s.bytes(), 30);
        assert!(cached(&mut s, "a", now)); // order of use, oldest first: b c a
        s.insert(Bytes::from("d"), Bytes::from_static(b"123456789"), now);
        assert_eq!(s.list(List::Recency), ["d", "a", "c"]);
        // A value twice the size pushes out two.
        s.insert(
            Bytes::from("e"),
            Bytes::from_static(b"1234567890123456789"),
            now,
        );
        assert_eq!(s.list(List::Recency), ["e", "d"]);
        assert_eq!(s.bytes(), 30);
        assert_eq!(s.stats().evictions, 3);
    }

    #[test]
    fn a_value_over_the_byte_capacity_is_not_stored_and_drops_the_old_one() {
        let now = Instant::now();
        let mut s = Lru::with_max_bytes(100, 10, TTL);
        assert!(s.insert_in(None, b"k", &Bytes::from("small"), now));
        assert!(!s.insert_in(None, b"k", &Bytes::from("much too large"), now));
        assert!(s.get(b"k", now).is_none(), "the old value would be stale");
        assert_eq!((s.len(), s.bytes()), (0, 0));
    }

    #[test]
    fn reclaim_expired_takes_only_expired_entries_within_its_budget() {
        let t0 = Instant::now();
        let mut s = store(100);
        for i in 0..10 {
            put(&mut s, &format!("old{i}"), t0);
        }
        put(&mut s, "new", t0 + Duration::from_secs(5));
        assert_eq!(s.reclaim_expired(t0 + TTL, 4), 4);
        assert_eq!(s.reclaim_expired(t0 + TTL, 100), 6);
        assert_eq!(s.reclaim_expired(t0 + TTL, 100), 0, "the live entry stays");
        assert_eq!(s.len(), 1);
        assert_eq!(s.stats().expirations, 10);
    }

    #[test]
    fn the_shared_store_applies_reads_before_it_evicts() {
        let now = Instant::now();
        let s = SharedLru::new(3, usize::MAX, TTL);
        for key in ["a", "b", "c"] {
            s.insert(None, key.as_bytes(), &Bytes::from(key), now);
        }
        // Read a on another thread, then b on this one: the order of use is c a b.
        std::thread::scope(|scope| {
            scope.spawn(|| assert!(s.get(None, b"a", now).is_some()));
        });
        assert!(s.get(None, b"b", Instant::now()).is_some());
        s.insert(None, b"d", &Bytes::from("d"), Instant::now());
        assert!(
            s.get(None, b"c", Instant::now()).is_none(),
            "c was least recently read"
        );
        for key in ["a", "b", "d"] {
            assert!(
                s.get(None, key.as_bytes(), Instant::now()).is_some(),
                "{key}"
            );
        }
        let stats = s.stats();
        assert_eq!((stats.hits, stats.misses, stats.evictions), (5, 1, 1));
    }

    #[test]
    fn a_full_access_record_is_applied_at_once() {
        let now = Instant::now();
        let s = SharedLru::new(4, usize::MAX, TTL);
        s.insert(None, b"k", &Bytes::from("v"), now);
        for _ in 0..RECORD * 3 {
            assert!(s.get(None, b"k", now).is_some());
        }
        let recorded: usize = s
            .readers
            .iter()
            .map(|reader| SharedLru::lock(reader).accesses.len())
            .sum();
        assert!(recorded < RECORD, "{recorded} accesses kept");
    }

    #[test]
    fn an_expired_entry_read_through_the_shared_store_is_removed() {
        let t0 = Instant::now();
        let s = SharedLru::new(4, usize::MAX, TTL);
        s.insert(None, b"k", &Bytes::from("v"), t0);
        assert!(s.get(None, b"k", t0 + TTL).is_none());
        assert_eq!(s.len(), 0);
        assert_eq!(s.stats().expirations, 1);
    }

    proptest::proptest! {
        /// The shared store, used from one thread, reads exactly as the model.
        #[test]
        fn the_shared_store_behaves_like_the_reference_model(
            capacity in 1..6usize,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let start = Instant::now();
            let s = SharedLru::new(capacity, usize::MAX, TTL);
            let mut model = Model::default();
            let mut elapsed = Duration::ZERO;
            for (n, op) in ops.into_iter().enumerate() {
                let now = start + elapsed;
                match op {
                    Op::Get(key) => {
                        let got = s.get(None, &[key], now)
                            .map(|found| u32::from_be_bytes(found.value[..].try_into().unwrap()));
                        proptest::prop_assert_eq!(got, model.get(key, elapsed), "op {}", n);
                    }
                    Op::Insert(key) => {
                        let value = u32::try_from(n).unwrap();
                        s.insert(None, &[key], &Bytes::copy_from_slice(&value.to_be_bytes()), now);
                        model.insert(key, value, elapsed, capacity);
                    }
                    Op::Remove(key) => {
                        s.remove(None, &[key]);
                        model.entries.retain(|entry| entry.0 != key);
                    }
                    Op::Wait(millis) => elapsed += Duration::from_millis(millis),
                    Op::Clear => {
                        s.clear();
                        model.entries.clear();
                    }
                }
                proptest::prop_assert!(s.len() <= capacity);
            }
        }
    }
}
