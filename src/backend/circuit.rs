//! Short-circuiting a failing node: after [`FAILURES`] requests in a row
//! failed (no connection, a lost one, no reply within the request timeout,
//! or Redis saying it cannot serve now: `LOADING`, `MASTERDOWN`, …), the
//! node's requests fail at once instead of each waiting for the timeout,
//! and a stale answer, where the cache has one, comes at once too.
//!
//! While the circuit is open, one request at a time goes through as a
//! trial, the first [`FIRST_TRIAL`] after it opened, then backing off to
//! [`LAST_TRIAL`] between trials. The first success closes it, a trial's or
//! the health pinger's (which always goes through, once a second).
//!
//! A closed circuit costs a request one read of a shared flag, and an answer
//! one read of the failure count: nothing is written while all goes well.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::Error;

/// Failures in a row that open the circuit.
pub(crate) const FAILURES: u32 = 3;
/// How long after the circuit opens the first trial goes.
pub(crate) const FIRST_TRIAL: Duration = Duration::from_secs(1);
/// The longest wait between trials.
pub(crate) const LAST_TRIAL: Duration = Duration::from_secs(5);
/// A trial unanswered this long no longer holds the others back.
const TRIAL_LOST: Duration = Duration::from_secs(30);

/// One node's circuit.
#[derive(Debug)]
pub(crate) struct Circuit {
    addr: String,
    /// Failures in a row.
    failures: AtomicU32,
    open: AtomicBool,
    trials: Mutex<Trials>,
    short_circuited: metrics::Counter,
}

#[derive(Debug)]
struct Trials {
    /// When the next trial may go.
    next: Instant,
    /// The wait before the next trial after this one.
    backoff: Duration,
    /// When the trial in flight went, if one is.
    in_flight: Option<Instant>,
    /// Why the circuit opened.
    reason: String,
}

/// What a request that may go is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The circuit is closed.
    Closed,
    /// The circuit is open and this request is its trial.
    Trial,
}

impl Circuit {
    /// A closed circuit for the node at `addr`.
    pub(crate) fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            trials: Mutex::new(Trials {
                next: Instant::now(),
                backoff: FIRST_TRIAL,
                in_flight: None,
                reason: String::new(),
            }),
            short_circuited: metrics::counter!(
                "redis_proxy_backend_short_circuited_total",
                "node" => addr.to_owned()
            ),
        }
    }

    /// Whether a request may go now.
    ///
    /// # Errors
    ///
    /// [`Error::ShortCircuited`] while the circuit is open and no trial is due.
    pub(crate) fn admit(&self) -> Result<Admission, Error> {
        if !self.open.load(Ordering::Relaxed) {
            return Ok(Admission::Closed);
        }
        let now = Instant::now();
        let mut trials = self.trials();
        let trial_pending = trials
            .in_flight
            .is_some_and(|since| now.duration_since(since) < TRIAL_LOST);
        if !trial_pending && now >= trials.next {
            trials.in_flight = Some(now);
            return Ok(Admission::Trial);
        }
        self.short_circuited.increment(1);
        Err(Error::ShortCircuited {
            addr: self.addr.clone(),
            reason: trials.reason.clone().into(),
            retry_in: trials.next.saturating_duration_since(now),
        })
    }

    /// Records how a request to the node ended: answered, or failed as a
    /// node fails (see [`is_node_failure`]).
    pub(crate) fn record(&self, result: Result<(), &Error>) {
        match result {
            Ok(()) => {
                if self.failures.load(Ordering::Relaxed) != 0 {
                    self.failures.store(0, Ordering::Relaxed);
                }
                if self.open.load(Ordering::Relaxed) {
                    self.close();
                }
            }
            Err(error) => {
                let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= FAILURES {
                    self.trip(failures, error);
                }
            }
        }
    }

    /// Opens the circuit, or (when it is open) puts the next trial off.
    fn trip(&self, failures: u32, error: &Error) {
        let now = Instant::now();
        let mut trials = self.trials();
        if self.open.swap(true, Ordering::Relaxed) {
            if trials.in_flight.take().is_some() {
                trials.next = now + trials.backoff;
                trials.backoff = (trials.backoff * 2).min(LAST_TRIAL);
            }
            return;
        }
        trials.reason = format!("{failures} requests in a row failed, the last with: {error}");
        trials.next = now + FIRST_TRIAL;
        trials.backoff = (FIRST_TRIAL * 2).min(LAST_TRIAL);
        trials.in_flight = None;
        tracing::warn!(
            node = %self.addr,
            %error,
            "redis node short-circuited: its requests fail at once until it answers again"
        );
    }

    fn close(&self) {
        let mut trials = self.trials();
        if self.open.swap(false, Ordering::Relaxed) {
            trials.in_flight = None;
            tracing::info!(node = %self.addr, "redis node answers again; circuit closed");
        }
    }

    /// Why the node's requests fail at once, while they do.
    pub(crate) fn open_reason(&self) -> Option<String> {
        if !self.open.load(Ordering::Relaxed) {
            return None;
        }
        let trials = self.trials();
        Some(format!(
            "redis node {} is short-circuited ({})",
            self.addr, trials.reason
        ))
    }

    fn trials(&self) -> std::sync::MutexGuard<'_, Trials> {
        self.trials.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `error` is the node's failing rather than the request's: what
/// counts towards opening its circuit.
pub(crate) fn is_node_failure(error: &Error) -> bool {
    match error {
        Error::Connect { .. }
        | Error::ConnectTimeout { .. }
        | Error::Tls { .. }
        | Error::Refused(_)
        | Error::NotRedis { .. }
        | Error::Timeout { .. }
        | Error::Lost { .. }
        | Error::Protocol(_) => true,
        Error::Reply(reply) => is_not_now(reply),
        Error::Cluster(_)
        | Error::NoPrimary(_)
        | Error::Ejected(_)
        | Error::ShortCircuited { .. }
        | Error::Stopping => false,
    }
}

/// Whether an error reply says Redis cannot serve now, whatever the request.
pub(crate) fn is_not_now(reply: &str) -> bool {
    ["LOADING", "MASTERDOWN", "CLUSTERDOWN", "BUSY"]
        .iter()
        .any(|code| {
            reply.starts_with(code) && reply.as_bytes().get(code.len()).is_none_or(|&b| b == b' ')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost() -> Error {
        Error::lost("test")
    }

    #[tokio::test(start_paused = true)]
    async fn three_failures_open_it_one_trial_goes_and_a_success_closes_it() {
        let circuit = Circuit::new("127.0.0.1:1");
        circuit.record(Err(&lost()));
        circuit.record(Err(&lost()));
        assert_eq!(circuit.admit().unwrap(), Admission::Closed);
        circuit.record(Err(&lost()));
        let refused = circuit.admit().unwrap_err();
        assert!(refused.to_string().contains("short-circuited"), "{refused}");
        assert!(circuit.open_reason().unwrap().contains("127.0.0.1:1"));

        tokio::time::advance(FIRST_TRIAL).await;
        assert_eq!(circuit.admit().unwrap(), Admission::Trial);
        assert!(circuit.admit().is_err(), "one trial at a time");
        circuit.record(Err(&lost()));
        // The next trial waits twice as long.
        tokio::time::advance(FIRST_TRIAL).await;
        assert!(circuit.admit().is_err());
        tokio::time::advance(FIRST_TRIAL).await;
        assert_eq!(circuit.admit().unwrap(), Admission::Trial);
        circuit.record(Ok(()));
        assert!(circuit.open_reason().is_none());
        assert_eq!(circuit.admit().unwrap(), Admission::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn trials_back_off_to_five_seconds() {
        let circuit = Circuit::new("n");
        for _ in 0..FAILURES {
            circuit.record(Err(&lost()));
        }
        let mut waits = Vec::new();
        for _ in 0..5 {
            let mut waited = Duration::ZERO;
            while circuit.admit().is_err() {
                tokio::time::advance(Duration::from_millis(100)).await;
                waited += Duration::from_millis(100);
            }
            waits.push(waited.as_secs());
            circuit.record(Err(&lost()));
        }
        assert_eq!(waits, [1, 2, 4, 5, 5]);
    }

    #[test]
    fn a_request_s_own_error_does_not_count() {
        assert!(!is_node_failure(&Error::Reply("WRONGTYPE x".into())));
        assert!(is_node_failure(&Error::Reply(
            "LOADING Redis is loading the dataset in memory".into()
        )));
        assert!(!is_node_failure(&Error::Reply("BUSYKEY x".into())));
        assert!(is_node_failure(&lost()));
    }
}
