//! The exact-LRU policy (`--cache-policy lru`, the default) with one global TTL.
//!
//! Every entry lives in one slot of a slab (`slots`), threaded on two intrusive
//! doubly linked lists by slot index, and found through a hash table of slot
//! indexes (`index`), so every operation below is O(1):
//!
//! - the recency list, most recently used first: the LRU itself;
//! - the insertion list, newest first. Every entry lives for the same TTL, so the
//!   oldest insertion is always the first to expire.
//!
//! The insertion list is what makes "an expired entry acts as if it was never
//! stored" exact: when the store is full and the oldest insertion has expired, that
//! entry goes, not the least recently used live one. Expired entries are also
//! reclaimed when read, and a few at a time on every insert, so memory held by
//! dead values does not wait for capacity pressure.
//!
//! The layout is written for memory, because a cache's size is counted in keys
//! and its cost in bytes per key. A general-purpose LRU map (the `lru` crate) costs
//! a boxed node per entry and per index, and keeps the caller's key buffer alive;
//! a key parsed out of a client's read buffer would pin that whole buffer. Here an
//! entry is a 56-byte slot plus one allocation holding its key followed by its
//! value, and a 4-byte index in the hash table. Readers get the value as a
//! [`Bytes`] slice of that allocation: shared, never copied.
//!
//! Times are passed in rather than read, so the store is a pure data structure.

use std::time::Duration;

use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashTable};
use std::hash::BuildHasher;
use tokio::time::Instant;

use super::policy::{Policy, Stats};

/// How many expired entries one insert reclaims at most, beyond what it needs to
/// make room. Bounded so an insert never stalls the lock on a long sweep.
const RECLAIM_PER_INSERT: usize = 2;

/// The end of a list, and the end of the free list.
const NIL: u32 = u32::MAX;

/// The most slots a store has: slot indexes are `u32`, and [`NIL`] is reserved.
const MAX_SLOTS: usize = NIL as usize;

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

/// One entry, or a free slot (empty `data`, `recency.next` threading the free list).
#[derive(Debug)]
struct Slot {
    /// The key's length (4 bytes, little-endian), the key, then the value, in one
    /// allocation. Empty in a free slot.
    data: Bytes,
    /// Nanoseconds from the store's epoch (negative before it).
    expires_at: i64,
    recency: Links,
    insertion: Links,
}

/// Bytes before the key in [`Slot::data`]: its length.
const KEY_LEN: usize = 4;

impl Slot {
    /// Lays out `key` and `value` as [`Slot::data`] holds them.
    fn data(key: &[u8], value: &[u8]) -> Option<Bytes> {
        let key_len = u32::try_from(key.len()).ok()?;
        let mut data = Vec::with_capacity(KEY_LEN + key.len() + value.len());
        data.extend_from_slice(&key_len.to_le_bytes());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        Some(Bytes::from(data))
    }

    fn key_end(&self) -> usize {
        match self.data.first_chunk::<KEY_LEN>() {
            Some(len) => KEY_LEN + u32::from_le_bytes(*len) as usize,
            None => 0,
        }
    }

    fn key(&self) -> &[u8] {
        self.data.get(KEY_LEN..self.key_end()).unwrap_or_default()
    }

    fn value(&self) -> Bytes {
        self.data.slice(self.key_end()..)
    }
}

/// Which of the two lists an operation acts on.
#[derive(Debug, Clone, Copy)]
enum List {
    Recency,
    Insertion,
}

/// An LRU map from key to value with a capacity in keys and one TTL for all entries.
#[derive(Debug)]
pub(crate) struct Lru {
    /// Slot indexes, hashed by the key their slot holds.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    slots: Vec<Slot>,
    /// The first free slot, or [`NIL`].
    free: u32,
    recency: Ends,
    insertion: Ends,
    capacity: usize,
    /// The instant that slot times count from.
    epoch: Instant,
    ttl: Duration,
    stats: Stats,
}

impl Lru {
    /// An empty store holding at most `capacity` keys (and never more than
    /// 4,294,967,295), each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            slots: Vec::new(),
            free: NIL,
            recency: EMPTY,
            insertion: EMPTY,
            capacity: capacity.clamp(1, MAX_SLOTS),
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

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The slot holding `key`.
    fn find(&self, key: &[u8]) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hash(key), |&i| slots[i as usize].key() == key)
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
        let hash = self.hash(self.slots[i as usize].key());
        if let Ok(found) = self.index.find_entry(hash, |&j| j == i) {
            found.remove();
        }
        self.unlink(List::Recency, i);
        self.unlink(List::Insertion, i);
        let slot = &mut self.slots[i as usize];
        slot.data = Bytes::new();
        slot.recency.next = self.free;
        self.free = i;
    }

    /// A free slot holding `data`, taken from the free list or the end of the slab.
    fn allocate(&mut self, data: Bytes, expires_at: i64) -> u32 {
        let slot = Slot {
            data,
            expires_at,
            recency: UNLINKED,
            insertion: UNLINKED,
        };
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

    /// Removes up to `budget` expired entries, oldest insertion first.
    fn reclaim_expired(&mut self, now: i64, budget: usize) {
        for _ in 0..budget {
            let oldest = self.insertion.tail;
            // Uniform TTL: if the oldest insertion is live, every entry is.
            if oldest == NIL || self.slots[oldest as usize].expires_at > now {
                return;
            }
            self.remove_slot(oldest);
            self.stats.expirations += 1;
        }
    }
}

impl Policy for Lru {
    fn remove(&mut self, key: &[u8]) {
        if let Some(i) = self.find(key) {
            self.remove_slot(i);
        }
    }

    fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free = NIL;
        self.recency = EMPTY;
        self.insertion = EMPTY;
    }

    /// The live value of `key` and when it expires; the entry becomes the most
    /// recently used. `None` when absent or expired (an expired entry is removed on
    /// the way).
    fn get(&mut self, key: &[u8], now: Instant) -> Option<(Bytes, Instant)> {
        let Some(i) = self.find(key) else {
            self.stats.misses += 1;
            return None;
        };
        let now_offset = self.offset(now);
        let slot = &self.slots[i as usize];
        if slot.expires_at <= now_offset {
            self.remove_slot(i);
            self.stats.expirations += 1;
            self.stats.misses += 1;
            return None;
        }
        let fresh_for = Duration::from_nanos(slot.expires_at.abs_diff(now_offset));
        let value = slot.value();
        self.move_to_front(List::Recency, i);
        self.stats.hits += 1;
        Some((value, now + fresh_for))
    }

    /// Stores `value` under `key` as the most recently used entry, expiring `ttl`
    /// after `now`. When the store is full, an expired entry makes room if there is
    /// one; otherwise the least recently used entry is evicted.
    fn insert(&mut self, key: Bytes, value: Bytes, now: Instant) {
        let Some(data) = Slot::data(&key, &value) else {
            return; // A key longer than any front-end accepts.
        };
        let now = self.offset(now);
        let ttl = i64::try_from(self.ttl.as_nanos()).unwrap_or(i64::MAX);
        let expires_at = now.saturating_add(ttl);
        let budget = RECLAIM_PER_INSERT + usize::from(self.index.len() == self.capacity);
        self.reclaim_expired(now, budget);

        if let Some(i) = self.find(&key) {
            let slot = &mut self.slots[i as usize];
            slot.data = data;
            slot.expires_at = expires_at;
            self.move_to_front(List::Recency, i);
            self.move_to_front(List::Insertion, i);
            return;
        }
        if self.index.len() == self.capacity {
            self.remove_slot(self.recency.tail);
            self.stats.evictions += 1;
        }
        let i = self.allocate(data, expires_at);
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(self.hasher.hash_one(&key[..]), i, |&j| {
                hasher.hash_one(slots[j as usize].key())
            });
        self.push_front(List::Recency, i);
        self.push_front(List::Insertion, i);
    }

    /// How many entries are stored, counting expired ones not yet reclaimed.
    fn len(&self) -> usize {
        self.index.len()
    }

    /// What the store has done so far.
    fn stats(&self) -> Stats {
        self.stats
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
    fn a_slot_is_56_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 56);
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
}
