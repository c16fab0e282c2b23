//! `CLIENT PAUSE timeout [WRITE|ALL]` and `CLIENT UNPAUSE` over the proxy's
//! clients, as Redis pauses its own: until the timeout passes or a client
//! unpauses, the commands of every connection wait before they run (with
//! `WRITE`, only those that may write). A connection waits before it plans
//! a command, so nothing of it runs early; `CLIENT PAUSE` and `UNPAUSE`
//! themselves never wait. The pause is the proxy's: it is not forwarded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The pause in force, if any.
#[derive(Debug, Default)]
pub(super) struct Pause {
    /// Whether a pause was set and not yet seen over: what every request
    /// reads, without the lock.
    set: AtomicBool,
    /// Until when, and whether every command waits (else only writes).
    state: Mutex<Option<(Instant, bool)>>,
    /// Woken when the pause ends early.
    lifted: Notify,
}

impl Pause {
    /// Pauses for `timeout`: every command (`all`), or writes only. A new
    /// pause replaces the old one where it lasts longer or covers more, as
    /// Redis's does.
    pub(super) fn pause(&self, timeout: Duration, all: bool) {
        let until = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = Some(match *state {
            Some((old, old_all)) if old > Instant::now() => (old.max(until), old_all || all),
            _ => (until, all),
        });
        self.set.store(true, Ordering::Release);
    }

    /// Ends the pause now.
    pub(super) fn unpause(&self) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.set.store(false, Ordering::Release);
        self.lifted.notify_waiters();
    }

    /// Until when a command (`write`: one that may write) must wait, if it
    /// must. One read of a lock while no pause is in force.
    fn holds(&self, write: bool) -> Option<Instant> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match *state {
            Some((until, _)) if until <= Instant::now() => {
                *state = None;
                self.set.store(false, Ordering::Release);
                None
            }
            Some((until, all)) if all || write => Some(until),
            _ => None,
        }
    }

    /// Whether a command must wait now.
    pub(super) fn is_holding(&self, write: bool) -> bool {
        self.holds(write).is_some()
    }

    /// Whether `args` must wait now, `write` telling whether it may write
    /// (asked only while a pause holds); `CLIENT PAUSE` and `UNPAUSE` never
    /// do. `Some(write)` when it must.
    pub(super) fn holding(&self, args: &[Bytes], write: impl FnOnce() -> bool) -> Option<bool> {
        if !self.is_holding(true) {
            return None;
        }
        let pause_command = args[0].eq_ignore_ascii_case(b"client")
            && args.get(1).is_some_and(|sub| {
                sub.eq_ignore_ascii_case(b"pause") || sub.eq_ignore_ascii_case(b"unpause")
            });
        if pause_command {
            return None;
        }
        let write = write();
        (self.is_holding(false) || write).then_some(write)
    }

    /// Waits while the pause holds a command (`write` as above).
    pub(super) async fn wait(&self, write: bool) {
        while let Some(until) = self.holds(write) {
            let lifted = self.lifted.notified();
            tokio::select! {
                () = tokio::time::sleep_until(until) => {}
                () = lifted => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn writes_wait_out_a_write_pause_and_everything_an_all_pause() {
        let pause = Pause::default();
        assert!(!pause.is_holding(true));
        pause.pause(Duration::from_secs(2), false);
        assert!(pause.is_holding(true) && !pause.is_holding(false));
        let start = Instant::now();
        pause.wait(true).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        pause.pause(Duration::from_secs(5), true);
        assert!(pause.is_holding(false));
        pause.unpause();
        assert!(!pause.is_holding(true));
    }
}
