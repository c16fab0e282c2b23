//! [`Slots`]: a number of places, taken without waiting and given back on
//! drop, that a reload may change. The client limit of the stack and the connection limit of each listener
//! are slots; how many are taken is their gauge, read at scrape time.
//!
//! Nothing here waits: a request or a connection that finds every slot taken is
//! refused at once (503, `-ERR max number of clients reached`). The count is one
//! atomic, taken with a compare-and-swap so it never exceeds the size, even for a
//! moment, and a refusal means every slot really was taken.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A number of slots shared by every clone.
#[derive(Debug, Clone)]
pub struct Slots {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    size: AtomicUsize,
    taken: AtomicUsize,
}

/// One taken slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    inner: Arc<Inner>,
}

impl Slots {
    /// `size` free slots.
    pub fn new(size: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                size: AtomicUsize::new(size),
                taken: AtomicUsize::new(0),
            }),
        }
    }

    /// A free slot, or `None` when all are taken.
    pub fn try_take(&self) -> Option<Slot> {
        let taken = &self.inner.taken;
        let mut now = taken.load(Ordering::Relaxed);
        let size = self.inner.size.load(Ordering::Relaxed);
        loop {
            if now >= size {
                return None;
            }
            match taken.compare_exchange_weak(now, now + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => {
                    return Some(Slot {
                        inner: self.inner.clone(),
                    });
                }
                Err(actual) => now = actual,
            }
        }
    }

    /// How many slots there are.
    pub fn size(&self) -> usize {
        self.inner.size.load(Ordering::Relaxed)
    }

    /// Makes it `size` slots: more are free at once; with fewer, slots
    /// taken beyond them stay taken until given back, and none is handed
    /// out until the count is below the new size.
    pub fn resize(&self, size: usize) {
        self.inner.size.store(size, Ordering::Relaxed);
    }

    /// How many slots are taken now.
    pub fn taken(&self) -> usize {
        self.inner.taken.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.taken.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let slots = Slots::new(2);
        let a = slots.try_take().expect("first");
        let _b = slots.try_take().expect("second");
        assert!(slots.try_take().is_none(), "only two");
        assert_eq!(slots.taken(), 2);
        drop(a);
        assert_eq!(slots.taken(), 1);
        assert!(slots.try_take().is_some(), "a freed slot is taken again");
    }

    #[test]
    fn a_resize_applies_to_the_next_take() {
        let slots = Slots::new(1);
        let a = slots.try_take().expect("first");
        slots.resize(2);
        let b = slots.try_take().expect("a second after growing");
        slots.resize(1);
        drop(a);
        assert!(slots.try_take().is_none(), "still one taken, of one");
        drop(b);
        assert!(slots.try_take().is_some());
    }

    #[test]
    fn concurrent_takers_never_exceed_the_size() {
        let slots = Slots::new(3);
        let peak = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        if let Some(slot) = slots.try_take() {
                            peak.fetch_max(slots.taken(), Ordering::Relaxed);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 3);
        assert_eq!(slots.taken(), 0);
    }
}
