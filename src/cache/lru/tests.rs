//! The exact-LRU store against its specification and a reference model.
use super::shared::RECORD;
use super::slab::SHARE_AT;
use super::*;
use crate::cache::eviction::{Store, TEST_LIFETIME};

const TTL: Duration = TEST_LIFETIME.ttl;

fn store(capacity: usize) -> Lru {
    Lru::new(capacity)
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
            // Tests store entries of one lifetime: one class.
            List::Insertion => self.classes.first().map_or(NIL, |c| c.insertion.head),
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
    s.insert_in(Space::Keys(Some(3)), b"large", &large, now);
    s.insert_in(Space::Keys(None), b"small", &Bytes::from("v"), now);
    let found = s.get_in(Space::Keys(Some(3)), b"large", now).unwrap();
    assert_eq!(found.digest, Some(crate::lookup::digest(&large)));
    assert_eq!(found.value, Some(large));
    assert_eq!(
        s.get_in(Space::Keys(None), b"small", now).unwrap().digest,
        None
    );
    // A new value under the same key brings its own digest.
    let other = Bytes::from(vec![8u8; SHARE_AT + 1]);
    s.insert_in(Space::Keys(Some(3)), b"large", &other, now);
    let found = s.get_in(Space::Keys(Some(3)), b"large", now).unwrap();
    assert_eq!(found.digest, Some(crate::lookup::digest(&other)));
}

#[test]
fn databases_keep_equal_names_apart() {
    let now = Instant::now();
    let mut s = store(8);
    s.insert_in(Space::Keys(None), b"k", &Bytes::from("default"), now);
    s.insert_in(Space::Keys(Some(2)), b"k", &Bytes::from("two"), now);
    s.insert_in(Space::Keys(Some(3)), b"other", &Bytes::from("three"), now);
    assert_eq!(
        s.get_in(Space::Keys(None), b"k", now).unwrap().value,
        Some(Bytes::from("default"))
    );
    assert_eq!(
        s.get_in(Space::Keys(Some(2)), b"k", now).unwrap().value,
        Some(Bytes::from("two"))
    );
    assert!(s.get_in(Space::Keys(Some(3)), b"k", now).is_none());
    s.remove_in(Space::Keys(Some(2)), b"k");
    assert!(s.get_in(Space::Keys(Some(2)), b"k", now).is_none());
    assert!(
        s.get_in(Space::Keys(None), b"k", now).is_some(),
        "only database 2 lost it"
    );
    s.insert_in(Space::Keys(Some(2)), b"k", &Bytes::from("two"), now);
    s.remove_everywhere(b"k");
    assert!(s.get_in(Space::Keys(None), b"k", now).is_none());
    assert!(s.get_in(Space::Keys(Some(2)), b"k", now).is_none());
    assert!(s.get_in(Space::Keys(Some(3)), b"other", now).is_some());
}

/// What an entry of a one-byte name and a nine-byte value costs: its slot,
/// its index and one 32-byte chunk of the allocator for the ten bytes.
const SMALL_ENTRY: usize = 40 + 12 + 32;

#[test]
fn an_entry_costs_its_slot_index_and_allocations() {
    let now = Instant::now();
    let mut s = store(100);
    s.insert(Bytes::from("a"), Bytes::from_static(b"123456789"), now);
    assert_eq!(s.bytes(), SMALL_ENTRY);
    // 58 bytes take an 80-byte chunk.
    s.insert(Bytes::from("b"), Bytes::from(vec![b'v'; 57]), now);
    assert_eq!(s.bytes(), SMALL_ENTRY + 40 + 12 + 80);
    // A shared value: the name's allocation holds the value's handle and
    // digest (32 + 8 + 1 bytes: a 64-byte chunk); the value has its own
    // chunk (5,000 bytes and its header: 5,008) and its reference count's (32).
    s.insert(Bytes::from("c"), Bytes::from(vec![b'v'; 5000]), now);
    assert_eq!(s.bytes(), SMALL_ENTRY + 132 + 40 + 12 + 64 + 5008 + 32);
    s.remove(b"b");
    assert_eq!(s.bytes(), SMALL_ENTRY + 40 + 12 + 64 + 5008 + 32);
}

#[test]
fn the_byte_capacity_evicts_in_lru_order() {
    let now = Instant::now();
    let mut s = Lru::with_max_bytes(100, 3 * SMALL_ENTRY);
    for key in ["a", "b", "c"] {
        s.insert(Bytes::from(key), Bytes::from_static(b"123456789"), now);
    }
    assert_eq!(s.bytes(), 3 * SMALL_ENTRY);
    assert!(cached(&mut s, "a", now)); // order of use, oldest first: b c a
    s.insert(Bytes::from("d"), Bytes::from_static(b"123456789"), now);
    assert_eq!(s.list(List::Recency), ["d", "a", "c"]);
    // A larger entry (132 bytes) pushes out two.
    s.insert(Bytes::from("e"), Bytes::from(vec![b'v'; 57]), now);
    assert_eq!(s.list(List::Recency), ["e", "d"]);
    assert_eq!(s.bytes(), SMALL_ENTRY + 132);
    assert_eq!(s.stats().evictions, 3);
}

#[test]
fn a_value_over_the_byte_capacity_is_not_stored_and_drops_the_old_one() {
    let now = Instant::now();
    let mut s = Lru::with_max_bytes(100, 100);
    assert!(s.insert_in(Space::Keys(None), b"k", &Bytes::from("small"), now));
    let large = Bytes::from(vec![b'v'; 50]);
    assert!(!s.insert_in(Space::Keys(None), b"k", &large, now));
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
    let s = SharedLru::new(3, usize::MAX);
    for key in ["a", "b", "c"] {
        s.insert(
            Space::Keys(None),
            key.as_bytes(),
            Some(&Bytes::from(key)),
            TEST_LIFETIME,
            now,
        );
    }
    // Read a on another thread, then b on this one: the order of use is c a b.
    std::thread::scope(|scope| {
        scope.spawn(|| assert!(s.get(Space::Keys(None), b"a", now).is_some()));
    });
    assert!(s.get(Space::Keys(None), b"b", Instant::now()).is_some());
    s.insert(
        Space::Keys(None),
        b"d",
        Some(&Bytes::from("d")),
        TEST_LIFETIME,
        Instant::now(),
    );
    assert!(
        s.get(Space::Keys(None), b"c", Instant::now()).is_none(),
        "c was least recently read"
    );
    for key in ["a", "b", "d"] {
        assert!(
            s.get(Space::Keys(None), key.as_bytes(), Instant::now())
                .is_some(),
            "{key}"
        );
    }
    let stats = s.stats();
    assert_eq!((stats.hits, stats.misses, stats.evictions), (5, 1, 1));
}

#[test]
fn a_full_access_record_is_applied_at_once() {
    let now = Instant::now();
    let s = SharedLru::new(4, usize::MAX);
    s.insert(
        Space::Keys(None),
        b"k",
        Some(&Bytes::from("v")),
        TEST_LIFETIME,
        now,
    );
    for _ in 0..RECORD * 3 {
        assert!(s.get(Space::Keys(None), b"k", now).is_some());
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
    let s = SharedLru::new(4, usize::MAX);
    s.insert(
        Space::Keys(None),
        b"k",
        Some(&Bytes::from("v")),
        TEST_LIFETIME,
        t0,
    );
    assert!(s.get(Space::Keys(None), b"k", t0 + TTL).is_none());
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
        let s = SharedLru::new(capacity, usize::MAX);
        let mut model = Model::default();
        let mut elapsed = Duration::ZERO;
        for (n, op) in ops.into_iter().enumerate() {
            let now = start + elapsed;
            match op {
                Op::Get(key) => {
                    let got = s.get(Space::Keys(None), &[key], now)
                        .map(|found| u32::from_be_bytes(found.value.unwrap()[..].try_into().unwrap()));
                    proptest::prop_assert_eq!(got, model.get(key, elapsed), "op {}", n);
                }
                Op::Insert(key) => {
                    let value = u32::try_from(n).unwrap();
                    s.insert(Space::Keys(None), &[key], Some(&Bytes::copy_from_slice(&value.to_be_bytes())), TEST_LIFETIME, now);
                    model.insert(key, value, elapsed, capacity);
                }
                Op::Remove(key) => {
                    s.remove(Space::Keys(None), &[key]);
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
