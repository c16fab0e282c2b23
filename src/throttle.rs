//! Log lines that could come once per request while something is down (every
//! miss failing while Redis is away, every client past a bound under attack):
//! the first is logged, then at most one per interval, carrying how many were
//! held back since the last one. The recovery is logged where it is seen.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a throttled line is logged at most.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// One throttled log line (a `static` at its call site).
#[derive(Debug)]
pub(crate) struct Throttle {
    /// When the line was last logged, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub(crate) const fn new() -> Self {
        Self {
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back)` when the line is to be logged now, `None` when it is
    /// held back (and counted).
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, held) = &mut *state;
        match last {
            Some(at) if now.duration_since(*at) < INTERVAL => {
                *held += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held))
            }
        }
    }
}

/// What a throttled line adds about the lines held back: nothing when none
/// were, else "(57 more in the last 10s)".
pub(crate) fn held_back(held: u64) -> String {
    match held {
        0 => String::new(),
        n => format!(
            " ({n} more in the last {})",
            humantime::format_duration(INTERVAL)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_passes_then_one_per_interval_with_the_count() {
        let throttle = Throttle::new();
        let t0 = Instant::now();
        assert_eq!(throttle.admit_at(t0), Some(0));
        for i in 1..=57 {
            assert_eq!(throttle.admit_at(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(throttle.admit_at(t0 + INTERVAL), Some(57));
        assert_eq!(
            throttle.admit_at(t0 + INTERVAL + Duration::from_secs(1)),
            None
        );
        assert_eq!(held_back(57), " (57 more in the last 10s)");
        assert_eq!(held_back(0), "");
    }
}
