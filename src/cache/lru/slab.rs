//! The exact-LRU store's slots: one per entry, each owning one allocation
//! that holds the entry's database, name and value (or a shared handle to a
//! large value), laid out for the fewest bytes per entry.
//!
//! This is the store's only unsafe code: an allocation's layout is computed
//! from the slot's lengths and flags alone, so the slot needs no pointer to
//! each part.

use std::ptr::NonNull;

use bytes::Bytes;

use super::super::eviction::{DIGEST_AT, INDEX_COST, Space, allocated, shared_value};

/// Values of at least this many bytes are shared with readers rather than
/// copied to them.
pub(crate) const SHARE_AT: usize = DIGEST_AT;

/// The end of a list, and the end of the free list.
pub(super) const NIL: u32 = u32::MAX;

/// Where a shared allocation keeps the value's digest: after the `Bytes`.
const DIGEST_OFFSET: usize = std::mem::size_of::<Bytes>();

/// `Slot::key_len` bit: the allocation holds the value as a `Bytes` (shared).
const SHARED: u32 = 1 << 31;
/// `Slot::key_len` bit: the allocation starts with a two-byte database index.
const IN_DB: u32 = 1 << 30;
/// `Slot::key_len` bit: the entry is a cached reply ([`Space::Replies`]).
const REPLIES: u32 = 1 << 29;
/// `Slot::key_len` bit: a cached reply in RESP3.
const RESP3: u32 = 1 << 28;
/// `Slot::key_len` bit: the entry remembers an absence (it has no value).
const ABSENT: u32 = 1 << 27;
/// Where `Slot::key_len` holds the entry's lifetime class.
const CLASS_SHIFT: u32 = 20;
/// How many lifetime classes a store can tell apart.
pub(super) const CLASSES: usize = 1 << (27 - CLASS_SHIFT);
/// `Slot::key_len` bits that hold the name's length: names of 1 MiB and
/// more are not cached.
const LEN_MASK: u32 = (1 << CLASS_SHIFT) - 1;

/// A slot's neighbours on one list, by slot index.
#[derive(Debug, Clone, Copy)]
pub(super) struct Links {
    /// Towards the head (newer, or more recently used).
    pub(super) prev: u32,
    /// Towards the tail (older, or less recently used).
    pub(super) next: u32,
}

pub(super) const UNLINKED: Links = Links {
    prev: NIL,
    next: NIL,
};

/// The head (newest) and tail (oldest) of one list.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ends {
    pub(super) head: u32,
    pub(super) tail: u32,
}

pub(super) const EMPTY: Ends = Ends {
    head: NIL,
    tail: NIL,
};

/// The allocation of one entry, owned by its slot; `None` in a free slot.
///
/// ```text
/// inline (value < SHARE_AT):   [db: u16 LE, if IN_DB] [name] [value]            align 1
/// shared (value >= SHARE_AT):  [value: Bytes] [digest: u64] [db: u16 LE, if IN_DB] [name]   align 8
/// ```
///
/// The rest of the entry's space (whether it is a cached reply, and in which
/// protocol) is in flags of `Slot::key_len`.
#[derive(Debug, Default)]
pub(super) struct Data(Option<NonNull<u8>>);

// SAFETY: the allocation is owned by exactly one slot, and holds plain bytes and
// at most one `Bytes`, which is `Send + Sync`.
unsafe impl Send for Data {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Data {}

impl Data {
    /// Whether the slot is free.
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

/// One entry, or a free slot (empty `data`, `recency.next` threading the free list).
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) data: Data,
    /// When the entry stops being fresh: nanoseconds from the store's epoch
    /// (negative before it).
    pub(super) expires_at: i64,
    pub(super) recency: Links,
    pub(super) insertion: Links,
    /// The name's length, the lifetime class, and the [`SHARED`], [`IN_DB`],
    /// [`REPLIES`], [`RESP3`] and [`ABSENT`] flags.
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

    /// The entry's lifetime class: an index into its store's classes.
    pub(super) fn class(&self) -> usize {
        ((self.key_len >> CLASS_SHIFT) as usize) & (CLASSES - 1)
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

    /// Where the entry lives.
    pub(super) fn space(&self) -> Space {
        let db = self.db();
        if self.key_len & REPLIES == 0 {
            Space::Keys(db)
        } else {
            Space::Replies {
                db,
                resp3: self.key_len & RESP3 != 0,
            }
        }
    }

    /// The entry's name.
    pub(super) fn key(&self) -> &[u8] {
        if self.data.is_empty() {
            return &[];
        }
        let db = if self.key_len & IN_DB != 0 { 2 } else { 0 };
        let start = self.layout().0 + db;
        &self.bytes()[start..start + self.name_len()]
    }

    /// The digest kept with a shared value.
    pub(super) fn digest(&self) -> Option<u64> {
        match self.data.0 {
            // SAFETY: a shared allocation holds an initialized `u64` at
            // `DIGEST_OFFSET`, aligned since the allocation is aligned for `Bytes`.
            Some(ptr) if self.is_shared() => unsafe {
                Some(ptr.as_ptr().add(DIGEST_OFFSET).cast::<u64>().read())
            },
            _ => None,
        }
    }

    /// The entry's value: a copy of an inline one, a shared handle to a
    /// larger one; `None` for a remembered absence.
    pub(super) fn value(&self) -> Option<Bytes> {
        if self.key_len & ABSENT != 0 {
            return None;
        }
        Some(match self.data.0 {
            // SAFETY: a shared allocation starts with an initialized `Bytes`.
            Some(ptr) if self.is_shared() => unsafe { (*ptr.as_ptr().cast::<Bytes>()).clone() },
            Some(_) => {
                let start = self.name_len() + if self.key_len & IN_DB != 0 { 2 } else { 0 };
                Bytes::copy_from_slice(&self.bytes()[start..])
            }
            None => Bytes::new(),
        })
    }

    /// What the entry costs in memory: its slot, its place in the index, its
    /// allocation and, for a shared value, the value's own (see
    /// [`shared_value`]). Zero for a free slot.
    pub(super) fn cost(&self) -> usize {
        if self.data.is_empty() {
            return 0;
        }
        let value = if self.is_shared() {
            shared_value(self.value_len as usize)
        } else {
            0
        };
        std::mem::size_of::<Slot>() + INDEX_COST + allocated(self.layout().1.size()) + value
    }

    /// Fills a free slot with a copy of `name` (in `db`) and `value` (`None`:
    /// an absence), of lifetime `class`; `None` when the name or value is too
    /// long to describe.
    pub(super) fn fill(
        space: Space,
        name: &[u8],
        value: Option<&Bytes>,
        digest: Option<u64>,
        (expires_at, class): (i64, usize),
    ) -> Option<Slot> {
        let name_len = u32::try_from(name.len()).ok().filter(|&n| n <= LEN_MASK)?;
        let absent = if value.is_none() { ABSENT } else { 0 };
        let value = value.cloned().unwrap_or_default();
        let value = &value;
        let value_len = u32::try_from(value.len()).ok()?;
        let shared = value.len() >= SHARE_AT;
        let (db, space_flags) = match space {
            Space::Keys(db) => (db, 0),
            Space::Replies { db, resp3 } => (db, REPLIES | if resp3 { RESP3 } else { 0 }),
        };
        let mut slot = Slot {
            data: Data(None),
            expires_at,
            recency: UNLINKED,
            insertion: UNLINKED,
            key_len: name_len
                | (((class & (CLASSES - 1)) as u32) << CLASS_SHIFT)
                | absent
                | space_flags
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
    pub(super) fn empty(&mut self) {
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
