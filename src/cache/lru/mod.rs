//! The exact-LRU policy (`--cache-policy lru`, the default), each entry living
//! as its lifetime class says.
//!
//! Three parts: the slots (`slab`, the allocation of each entry), [`Lru`], a
//! single-threaded data structure over them in which every operation is O(1),
//! and [`SharedLru`] (`shared`), which lets every thread read it at once, keeps
//! eviction exactly least-recently-used, and is the [`Store`](super::eviction::Store).
//!
//! # The data structure
//!
//! Every entry lives in one slot of a slab (`slots`), threaded on two intrusive
//! doubly linked lists by slot index, and found through a hash table of slot
//! indexes (`index`):
//!
//! - the recency list, most recently used first: the LRU itself;
//! - an insertion list per lifetime class, newest first. Entries of one class
//!   (one TTL and stale windows: the global policy's, or a cache rule's) live
//!   equally long, so the oldest insertion of a class is its first to expire.
//!
//! The insertion lists are what make "an expired entry acts as if it was never
//! stored" exact: when the store is full and the oldest insertion of a class
//! has outlived its lifetime, that entry goes, not the least recently used
//! live one. Such entries are also reclaimed when read, a few on every insert,
//! and in bulk by [`Lru::reclaim_expired`] (the cache runs it every second),
//! so memory held by dead values does not wait for capacity pressure. Finding
//! them costs one look per class: a store has a handful (at most
//! [`CLASSES`]).
//!
//! Capacity is counted in keys and, optionally, in bytes of memory (what
//! each entry's slot, index and allocations really take, [`Slot::cost`]):
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

mod shared;
mod slab;
#[cfg(test)]
mod tests;

use std::hash::BuildHasher;
use std::time::Duration;

use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashTable};
use tokio::time::Instant;

use super::eviction::{Found, Space, Stats};
#[cfg(test)]
use super::eviction::{TEST_LIFETIME, kept_digest};
use super::rules::Lifetime;
use slab::{CLASSES, EMPTY, Ends, Links, NIL, Slot, UNLINKED};

pub(crate) use shared::SharedLru;

/// How many expired entries one insert reclaims at most, beyond what it needs to
/// make room. Bounded so an insert never stalls the lock on a long sweep.
const RECLAIM_PER_INSERT: usize = 2;

/// The most slots a store has: slot indexes are `u32`, and [`NIL`] is reserved.
const MAX_SLOTS: usize = NIL as usize;

/// Which of the two lists an operation acts on.
#[derive(Debug, Clone, Copy)]
enum List {
    Recency,
    Insertion,
}

/// Entries that live equally long, and their insertion list.
#[derive(Debug)]
struct Class {
    lifetime: Lifetime,
    /// How long an entry is fresh, in nanoseconds.
    ttl: i64,
    /// How long past its freshness an entry is kept, in nanoseconds.
    stale: i64,
    insertion: Ends,
}

/// An LRU map from key to value with a capacity in keys (and optionally in
/// bytes), each entry living as its class says. Single-threaded; see
/// [`SharedLru`].
#[derive(Debug)]
pub(crate) struct Lru {
    /// Slot indexes, hashed by the database and name their slot holds.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    slots: Vec<Slot>,
    /// The first free slot, or [`NIL`].
    free: u32,
    recency: Ends,
    /// The lifetimes entries have had, in the order first seen.
    classes: Vec<Class>,
    capacity: usize,
    max_bytes: usize,
    /// What every entry costs in memory ([`Slot::cost`]).
    bytes: usize,
    /// The databases whose keys have held entries: where a name is looked
    /// for when Redis invalidates it (its messages do not say which database).
    dbs: Vec<Space>,
    /// The instant that slot times count from.
    epoch: Instant,
    stats: Stats,
}

impl Lru {
    /// An empty store holding at most `capacity` keys (and never more than
    /// 4,294,967,295).
    #[cfg(test)]
    pub(crate) fn new(capacity: usize) -> Self {
        Self::with_max_bytes(capacity, usize::MAX)
    }

    /// An empty store holding at most `capacity` keys, whose entries cost at
    /// most `max_bytes` bytes of memory.
    pub(crate) fn with_max_bytes(capacity: usize, max_bytes: usize) -> Self {
        Self {
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            slots: Vec::new(),
            free: NIL,
            recency: EMPTY,
            classes: Vec::new(),
            capacity: capacity.clamp(1, MAX_SLOTS),
            max_bytes,
            bytes: 0,
            dbs: Vec::new(),
            epoch: Instant::now(),
            stats: Stats::default(),
        }
    }

    /// `at` as nanoseconds from the epoch, saturating.
    pub(super) fn offset(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.epoch) {
            Some(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            None => i64::try_from(self.epoch.duration_since(at).as_nanos())
                .map_or(i64::MIN, |before| -before),
        }
    }

    fn hash(&self, space: Space, name: &[u8]) -> u64 {
        self.hasher.hash_one((space, name))
    }

    /// The slot holding `name` in `space`.
    fn find(&self, space: Space, name: &[u8]) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hash(space, name), |&i| {
                let slot = &slots[i as usize];
                slot.key() == name && slot.space() == space
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

    /// The ends of `list` that slot `i` is on (its class's insertion list).
    fn ends(&mut self, list: List, i: u32) -> &mut Ends {
        match list {
            List::Recency => &mut self.recency,
            List::Insertion => {
                let class = self.slots[i as usize].class();
                &mut self.classes[class].insertion
            }
        }
    }

    fn unlink(&mut self, list: List, i: u32) {
        let Links { prev, next } = std::mem::replace(self.links(list, i), UNLINKED);
        match prev {
            NIL => self.ends(list, i).head = next,
            prev => self.links(list, prev).next = next,
        }
        match next {
            NIL => self.ends(list, i).tail = prev,
            next => self.links(list, next).prev = prev,
        }
    }

    fn push_front(&mut self, list: List, i: u32) {
        let head = self.ends(list, i).head;
        *self.links(list, i) = Links {
            prev: NIL,
            next: head,
        };
        match head {
            NIL => self.ends(list, i).tail = i,
            head => self.links(list, head).prev = i,
        }
        self.ends(list, i).head = i;
    }

    fn move_to_front(&mut self, list: List, i: u32) {
        if self.ends(list, i).head != i {
            self.unlink(list, i);
            self.push_front(list, i);
        }
    }

    /// The class of entries living `lifetime`, and the nanoseconds they stay
    /// fresh; `None` when the store already tells [`CLASSES`] lifetimes apart.
    fn class(&mut self, lifetime: Lifetime) -> Option<(usize, i64)> {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let ttl = nanos(lifetime.ttl);
        if let Some(k) = self.classes.iter().position(|c| c.lifetime == lifetime) {
            return Some((k, ttl));
        }
        if self.classes.len() == CLASSES {
            return None;
        }
        self.classes.push(Class {
            lifetime,
            ttl,
            stale: nanos(lifetime.keep().saturating_sub(lifetime.ttl)),
            insertion: EMPTY,
        });
        Some((self.classes.len() - 1, ttl))
    }

    /// When slot `i`'s lifetime ends, in nanoseconds from the epoch.
    fn ends_at(&self, i: u32) -> i64 {
        let slot = &self.slots[i as usize];
        slot.expires_at
            .saturating_add(self.classes[slot.class()].stale)
    }

    /// Empties slot `i`: out of the index, off both lists, onto the free list.
    fn remove_slot(&mut self, i: u32) {
        let slot = &self.slots[i as usize];
        let hash = self.hash(slot.space(), slot.key());
        if let Ok(found) = self.index.find_entry(hash, |&j| j == i) {
            found.remove();
        }
        self.unlink(List::Recency, i);
        self.unlink(List::Insertion, i);
        self.bytes -= self.slots[i as usize].cost();
        let slot = &mut self.slots[i as usize];
        slot.empty();
        slot.recency.next = self.free;
        self.free = i;
    }

    /// A free slot made into `slot`, taken from the free list or the end of the slab.
    fn allocate(&mut self, slot: Slot) -> u32 {
        self.bytes += slot.cost();
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

    /// Removes up to `budget` entries whose lifetime has ended, oldest
    /// insertion of each class first; returns how many went.
    fn reclaim(&mut self, now: i64, budget: usize) -> usize {
        let mut reclaimed = 0;
        for class in 0..self.classes.len() {
            while reclaimed < budget {
                let oldest = self.classes[class].insertion.tail;
                // One lifetime per class: if its oldest insertion lives, all do.
                if oldest == NIL || self.ends_at(oldest) > now {
                    break;
                }
                self.remove_slot(oldest);
                self.stats.expirations += 1;
                reclaimed += 1;
            }
        }
        reclaimed
    }

    /// Removes up to `budget` expired entries, oldest first; returns how many.
    pub(crate) fn reclaim_expired(&mut self, now: Instant, budget: usize) -> usize {
        let now = self.offset(now);
        self.reclaim(now, budget)
    }

    /// Makes room for one entry: an oldest insertion whose lifetime has
    /// ended, else the least recently used entry.
    fn make_room(&mut self, now: i64) {
        if self.reclaim(now, 1) == 0 {
            self.remove_slot(self.recency.tail);
            self.stats.evictions += 1;
        }
    }

    /// The slot of the entry `name` in `space` (fresh or stale) as a read
    /// finds it, without moving it (what a concurrent reader may do);
    /// `Err(Some(i))` when slot `i` holds it past its lifetime.
    pub(super) fn peek(
        &self,
        space: Space,
        name: &[u8],
        now: Instant,
    ) -> Result<(u32, Found), Option<u32>> {
        let i = self.find(space, name).ok_or(None)?;
        let now_offset = self.offset(now);
        if self.ends_at(i) <= now_offset {
            return Err(Some(i));
        }
        let slot = &self.slots[i as usize];
        let class = &self.classes[slot.class()];
        // Fresh until `expires_at`, stored one TTL before it.
        let stored_at = slot.expires_at.saturating_sub(class.ttl);
        let found = Found {
            value: slot.value(),
            age: Duration::from_nanos(now_offset.saturating_sub(stored_at).max(0).unsigned_abs()),
            lifetime: class.lifetime,
            digest: slot.digest(),
        };
        Ok((i, found))
    }

    /// Moves slot `i` to the front of the recency list: a read of it.
    pub(super) fn touch(&mut self, i: u32) {
        self.move_to_front(List::Recency, i);
    }

    /// The entry `name` in `space`, fresh or stale, now the most recently
    /// used. `None` when absent or past its lifetime (such an entry is
    /// removed on the way).
    pub(crate) fn get_in(&mut self, space: Space, name: &[u8], now: Instant) -> Option<Found> {
        match self.peek(space, name, now) {
            Ok((i, found)) => {
                self.touch(i);
                if found.is_fresh() {
                    self.stats.hits += 1;
                } else {
                    self.stats.misses += 1;
                }
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

    /// Stores `value` under `name` in `space` as the most recently used entry,
    /// living [`TEST_LIFETIME`] from `now`; see [`Lru::insert_digested`].
    #[cfg(test)]
    pub(crate) fn insert_in(
        &mut self,
        space: Space,
        name: &[u8],
        value: &Bytes,
        now: Instant,
    ) -> bool {
        self.insert_digested(
            space,
            name,
            Some(value),
            kept_digest(value),
            TEST_LIFETIME,
            now,
        )
    }

    /// Stores `value` (`None`: an absence) under `name` in `space` as the
    /// most recently used entry, living `lifetime` from `now`. When the store
    /// is full (in keys or in bytes), entries past their lifetime make room
    /// first, then the least recently used ones. A value that alone exceeds
    /// the byte capacity is not stored, and the key's old entry goes. Returns
    /// whether the value was stored.
    ///
    /// The digest the entry keeps for `value` (see [`kept_digest`]) is
    /// computed by the caller: hashing a large value takes longer than
    /// anything else an insert does, and need not hold the lock.
    pub(crate) fn insert_digested(
        &mut self,
        space: Space,
        name: &[u8],
        value: Option<&Bytes>,
        digest: Option<u64>,
        lifetime: Lifetime,
        now: Instant,
    ) -> bool {
        let now = self.offset(now);
        let filled = self.class(lifetime).and_then(|(class, ttl)| {
            Slot::fill(space, name, value, digest, (now.saturating_add(ttl), class))
        });
        let Some(slot) = filled.filter(|slot| slot.cost() <= self.max_bytes) else {
            if let Some(i) = self.find(space, name) {
                self.remove_slot(i);
            }
            return false;
        };
        let budget = RECLAIM_PER_INSERT + usize::from(self.index.len() == self.capacity);
        self.reclaim(now, budget);

        let i = match self.find(space, name) {
            Some(i) => {
                // Off its old class's insertion list, onto the new one's.
                self.unlink(List::Insertion, i);
                self.bytes = self.bytes - self.slots[i as usize].cost() + slot.cost();
                let old = std::mem::replace(&mut self.slots[i as usize], slot);
                self.slots[i as usize].recency = old.recency;
                self.move_to_front(List::Recency, i);
                self.push_front(List::Insertion, i);
                i
            }
            None => {
                while self.index.len() >= self.capacity {
                    self.make_room(now);
                }
                if matches!(space, Space::Keys(_)) && !self.dbs.contains(&space) {
                    self.dbs.push(space);
                }
                let hash = self.hash(space, name);
                let i = self.allocate(slot);
                let (slots, hasher) = (&self.slots, &self.hasher);
                self.index.insert_unique(hash, i, |&j| {
                    let slot = &slots[j as usize];
                    hasher.hash_one((slot.space(), slot.key()))
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

    /// Drops `name` in `space` if it is stored (an invalidation).
    pub(crate) fn remove_in(&mut self, space: Space, name: &[u8]) {
        if let Some(i) = self.find(space, name) {
            self.remove_slot(i);
        }
    }

    /// Drops `name` in the keys of every database that has held entries.
    pub(crate) fn remove_everywhere(&mut self, name: &[u8]) {
        for k in 0..self.dbs.len() {
            let space = self.dbs[k];
            self.remove_in(space, name);
        }
    }

    /// Holds at most `capacity` keys and `max_bytes` bytes from now on:
    /// expired entries go first, then the least recently used, down to
    /// both. O(entries evicted).
    pub(crate) fn resize(&mut self, capacity: usize, max_bytes: usize, now: Instant) {
        self.capacity = capacity.clamp(1, MAX_SLOTS);
        self.max_bytes = max_bytes;
        let now = self.offset(now);
        while self.index.len() > self.capacity
            || (self.bytes > self.max_bytes && !self.index.is_empty())
        {
            self.make_room(now);
        }
    }

    /// Drops every entry (a flush).
    pub(crate) fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free = NIL;
        self.recency = EMPTY;
        for class in &mut self.classes {
            class.insertion = EMPTY;
        }
        self.bytes = 0;
    }

    /// The fresh value of `key` (in the backend's own database) and when it
    /// stops being fresh; see [`Lru::get_in`].
    #[cfg(test)]
    pub(crate) fn get(&mut self, key: &[u8], now: Instant) -> Option<(Bytes, Instant)> {
        self.get_in(Space::Keys(None), key, now)
            .filter(Found::is_fresh)
            .and_then(|found| Some((found.value.clone()?, now + found.lifetime.ttl - found.age)))
    }

    /// Stores `value` under `key` (in the backend's own database); see
    /// [`Lru::insert_in`].
    #[cfg(test)]
    pub(crate) fn insert(&mut self, key: Bytes, value: Bytes, now: Instant) {
        self.insert_in(Space::Keys(None), &key, &value, now);
    }

    /// Drops `key` (in the backend's own database) if it is stored.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, key: &[u8]) {
        self.remove_in(Space::Keys(None), key);
    }

    /// How many entries are stored, counting expired ones not yet reclaimed.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// What every entry costs in memory, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// What the store has done so far.
    pub(crate) fn stats(&self) -> Stats {
        self.stats
    }
}
