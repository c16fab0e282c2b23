//! The lookups of one connection's batch, answered in key order.
//!
//! A lookup is polled once as soon as it is started, and one answered then (a
//! cache hit) is kept as its result: it is never stored, queued on a waker or
//! polled again. A lookup still waiting (a miss) stays where it was started: in
//! a home, a slot of a pinned array the connection keeps for its whole life.
//! So a request allocates nothing here, neither a box for its future nor, since
//! its future never moves, one for the timer inside it (which would otherwise
//! be allocated once per miss, between the allocations of the entries the
//! misses store, and leave the cache's memory full of holes).
//!
//! Each home has a waker of its own, made with the home: a waiting lookup is
//! polled again only once it has been woken, so a connection with many
//! requests in flight (a deep pipeline of forwarded commands) does not poll
//! them all each time one reply comes.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;

use tower::Service;

use crate::lookup::{Answer, Error, Request};

/// Homes are added this many at a time, as a connection first needs them.
const HOMES_PER_BLOCK: usize = 8;

/// The lookups of one batch, in key order: keys waiting to be looked up, and
/// at most `window` lookups started and not yet taken.
pub(super) struct Lookups<F> {
    /// Keys not yet looked up.
    pub(super) keys: VecDeque<Request>,
    started: VecDeque<Started>,
    homes: Homes<F>,
}

/// A lookup that was started: its result, or the home of its future.
enum Started {
    Done(Result<Answer, Error>),
    Waiting(usize),
}

impl<F> Default for Lookups<F> {
    fn default() -> Self {
        Self {
            keys: VecDeque::new(),
            started: VecDeque::new(),
            homes: Homes::default(),
        }
    }
}

impl<F> Lookups<F>
where
    F: Future<Output = Result<Answer, Error>>,
{
    /// Whether any key is still to be looked up or answered.
    pub(super) fn is_busy(&self) -> bool {
        !self.keys.is_empty() || !self.started.is_empty()
    }

    /// The next result, in key order, if it is in already.
    pub(super) fn take_ready(&mut self) -> Option<Result<Answer, Error>> {
        match self.started.front()? {
            Started::Done(_) => match self.started.pop_front() {
                Some(Started::Done(result)) => Some(result),
                _ => unreachable!("the front was done"),
            },
            Started::Waiting(_) => None,
        }
    }

    /// Starts lookups up to `window`, polls those waiting, and answers the next
    /// result in key order once it is in; `None` when every key is answered.
    ///
    /// Every waiting lookup is polled, not only the first: one that drives a
    /// fetch that others wait for must never wait behind the one before it.
    pub(super) fn poll_next<S>(
        &mut self,
        cx: &mut Context<'_>,
        stack: &mut S,
        window: usize,
    ) -> Poll<Option<Result<Answer, Error>>>
    where
        S: Service<Request, Response = Answer, Error = Error, Future = F>,
    {
        while self.started.len() < window {
            let Some(key) = self.keys.pop_front() else {
                break;
            };
            let started = match stack.poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    let home = self.homes.take(stack.call(key));
                    match self.homes.poll(home, cx) {
                        Poll::Ready(result) => Started::Done(result),
                        Poll::Pending => Started::Waiting(home),
                    }
                }
                Poll::Ready(Err(error)) => Started::Done(Err(error)),
                Poll::Pending => {
                    // The stack's services are always ready; should one not be,
                    // the key waits its turn.
                    self.keys.push_front(key);
                    break;
                }
            };
            self.started.push_back(started);
        }
        self.homes.task.register(cx.waker());
        for started in &mut self.started {
            if let Started::Waiting(home) = *started
                && self.homes.woken(home)
                && let Poll::Ready(result) = self.homes.poll(home, cx)
            {
                *started = Started::Done(result);
            }
        }
        match self.take_ready() {
            Some(result) => Poll::Ready(Some(result)),
            None if self.started.is_empty() && self.keys.is_empty() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

/// Pinned slots for futures: blocks of [`HOMES_PER_BLOCK`], added as needed and
/// never moved or freed before the connection ends, so a future is polled
/// where it was put; each with the waker its future is polled with.
struct Homes<F> {
    blocks: Vec<Pin<Box<[Option<F>]>>>,
    wakers: Vec<(Arc<HomeWaker>, Waker)>,
    /// The connection's task: what a home's waker wakes.
    task: Arc<AtomicWaker>,
    free: Vec<usize>,
}

/// A home's waker: marks the home woken, and wakes the connection's task.
struct HomeWaker {
    woken: AtomicBool,
    task: Arc<AtomicWaker>,
}

impl std::task::Wake for HomeWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F> Default for Homes<F> {
    fn default() -> Self {
        Self {
            blocks: Vec::new(),
            wakers: Vec::new(),
            task: Arc::default(),
            free: Vec::new(),
        }
    }
}

impl<F: Future> Homes<F> {
    /// Puts `future` in a free home and returns the home.
    fn take(&mut self, future: F) -> usize {
        let home = self.free.pop().unwrap_or_else(|| {
            let first = self.blocks.len() * HOMES_PER_BLOCK;
            let block: Box<[Option<F>]> = (0..HOMES_PER_BLOCK).map(|_| None).collect();
            self.blocks.push(Box::into_pin(block));
            for _ in 0..HOMES_PER_BLOCK {
                let waker = Arc::new(HomeWaker {
                    woken: AtomicBool::new(false),
                    task: self.task.clone(),
                });
                self.wakers.push((waker.clone(), Waker::from(waker)));
            }
            // Handed out lowest first.
            self.free.extend((first + 1..first + HOMES_PER_BLOCK).rev());
            first
        });
        self.slot(home).set(Some(future));
        home
    }

    /// Whether the future in `home` was woken since it was last polled.
    fn woken(&self, home: usize) -> bool {
        self.wakers[home].0.woken.load(Ordering::Acquire)
    }

    /// Polls the future in `home` with the home's waker; once it is ready,
    /// the home is free again.
    fn poll(&mut self, home: usize, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.task.register(cx.waker());
        let (flag, waker) = &self.wakers[home];
        flag.woken.store(false, Ordering::Release);
        let waker = waker.clone();
        let mut slot = self.slot(home);
        let future = slot
            .as_mut()
            .as_pin_mut()
            .expect("a waiting home holds a future");
        let output = std::task::ready!(future.poll(&mut Context::from_waker(&waker)));
        slot.set(None);
        self.free.push(home);
        Poll::Ready(output)
    }

    fn slot(&mut self, home: usize) -> Pin<&mut Option<F>> {
        let block = self.blocks[home / HOMES_PER_BLOCK].as_mut();
        // SAFETY: the slot is projected from a pinned block, which is never moved
        // (the `Vec` moves only the boxes' pointers), and a slot is only ever
        // replaced through `Pin::set`, which drops its future in place.
        unsafe { block.map_unchecked_mut(|slots| &mut slots[home % HOMES_PER_BLOCK]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A future that is pending `polls` times, then answers `n`; it counts its
    /// drops in `dropped`.
    struct Countdown {
        polls: usize,
        n: usize,
        dropped: Arc<AtomicUsize>,
        _pinned: std::marker::PhantomPinned,
    }

    impl Future for Countdown {
        type Output = usize;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            // SAFETY: no field is structurally pinned; `polls` is a plain count.
            let this = unsafe { self.get_unchecked_mut() };
            if this.polls == 0 {
                return Poll::Ready(this.n);
            }
            this.polls -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    impl Drop for Countdown {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn homes_are_reused_once_free_and_futures_are_dropped_in_place() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let countdown = |polls, n| Countdown {
            polls,
            n,
            dropped: dropped.clone(),
            _pinned: std::marker::PhantomPinned,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut homes = Homes::default();
        let taken: Vec<usize> = (0..HOMES_PER_BLOCK + 1)
            .map(|n| homes.take(countdown(1, n)))
            .collect();
        assert_eq!(taken, (0..=HOMES_PER_BLOCK).collect::<Vec<_>>());
        assert_eq!(homes.blocks.len(), 2);
        assert!(homes.poll(3, &mut cx).is_pending());
        assert_eq!(homes.poll(3, &mut cx), Poll::Ready(3));
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        // The freed home is the next one handed out; no block is added.
        assert_eq!(homes.take(countdown(0, 99)), 3);
        assert_eq!(homes.poll(3, &mut cx), Poll::Ready(99));
        assert_eq!(homes.blocks.len(), 2);
        // Futures still waiting are dropped with the homes.
        drop(homes);
        assert_eq!(dropped.load(Ordering::Relaxed), HOMES_PER_BLOCK + 2);
    }
}
