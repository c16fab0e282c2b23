//! twemproxy's ejection of failing servers (`auto_eject_hosts`), as
//! nutcracker 0.5 does it (`server_failure`, `server_pool_update`):
//! [`Ejection::failure_limit`] failures in a row take a server out of the
//! continuum for [`Ejection::retry_timeout`], the continuum is rebuilt over
//! the servers still in (so its keys land where nutcracker's land), and the
//! first request after that time rebuilds it with the server back in. A
//! server still failing then is ejected again by its next failures.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::continuum::{Continuum, Distribution, Weighted};

/// When a failing server leaves the pool, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// Failures in a row (no connection, a lost one, no reply in time) that
    /// eject a server; twemproxy's `server_failure_limit`.
    pub failure_limit: u32,
    /// How long an ejected server stays out; twemproxy's
    /// `server_retry_timeout`.
    pub retry_timeout: Duration,
}

/// The pool's ejection state.
#[derive(Debug)]
pub(super) struct Ejecting {
    policy: Ejection,
    distribution: Distribution,
    /// The pool's servers, in its order, and their addresses.
    servers: Vec<Weighted>,
    addrs: Vec<String>,
    /// Failures in a row, per server.
    failures: Box<[AtomicU32]>,
    /// When the first ejected server is due back, in milliseconds since
    /// `epoch` (at least 1); 0 while none is out.
    next_return: AtomicU64,
    epoch: Instant,
    live: RwLock<Live>,
    ejections: Box<[metrics::Counter]>,
    ejected: Box<[metrics::Gauge]>,
}

/// The continuum over the servers that are in, and until when the others
/// are out.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) continuum: Continuum,
    out_until: Vec<Option<Instant>>,
}

impl Ejecting {
    /// Every one of `servers` (at `addrs`) in.
    pub(super) fn new(
        policy: Ejection,
        distribution: Distribution,
        servers: Vec<Weighted>,
        addrs: Vec<String>,
    ) -> Self {
        Self {
            policy,
            distribution,
            failures: servers.iter().map(|_| AtomicU32::new(0)).collect(),
            next_return: AtomicU64::new(0),
            epoch: Instant::now(),
            live: RwLock::new(Live {
                continuum: Continuum::new(distribution, &servers, |_| true),
                out_until: vec![None; servers.len()],
            }),
            ejections: addrs
                .iter()
                .map(|addr| metrics::counter!("redis_proxy_shard_ejections_total", "node" => addr.clone()))
                .collect(),
            ejected: addrs
                .iter()
                .map(|addr| metrics::gauge!("redis_proxy_shard_ejected", "node" => addr.clone()))
                .collect(),
            servers,
            addrs,
        }
    }

    /// The continuum now, after bringing back the servers whose time out
    /// is over.
    pub(super) fn live(&self) -> RwLockReadGuard<'_, Live> {
        let due = self.next_return.load(Ordering::Acquire);
        if due != 0 && self.millis(Instant::now()) >= due {
            self.bring_back();
        }
        self.live.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether server `index` is out now.
    pub(super) fn is_out(&self, live: &Live, index: usize) -> bool {
        live.out_until[index].is_some_and(|until| until > Instant::now())
    }

    /// A request to server `index` failed: at the limit, it is ejected.
    pub(super) fn failed(&self, index: usize) {
        let failures = self.failures[index].fetch_add(1, Ordering::AcqRel) + 1;
        if failures < self.policy.failure_limit {
            return;
        }
        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        self.failures[index].store(0, Ordering::Release);
        if live.out_until[index].is_some() {
            return;
        }
        let now = Instant::now();
        live.out_until[index] = Some(now + self.policy.retry_timeout);
        self.rebuild(&mut live);
        self.ejections[index].increment(1);
        self.ejected[index].set(1.0);
        tracing::warn!(
            server = self.addrs[index],
            failures,
            "ejected from the pool for {} (shard_auto_eject_hosts): its keys go to the other servers",
            humantime::format_duration(self.policy.retry_timeout)
        );
    }

    /// A request to server `index` was answered: its failures are no longer
    /// in a row.
    pub(super) fn answered(&self, index: usize) {
        if self.failures[index].load(Ordering::Relaxed) != 0 {
            self.failures[index].store(0, Ordering::Relaxed);
        }
    }

    fn bring_back(&self) {
        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut back = Vec::new();
        for (index, out) in live.out_until.iter_mut().enumerate() {
            if out.is_some_and(|until| until <= now) {
                *out = None;
                back.push(index);
            }
        }
        if back.is_empty() {
            return;
        }
        self.rebuild(&mut live);
        for index in back {
            self.ejected[index].set(0.0);
            tracing::info!(
                server = self.addrs[index],
                "back in the pool after its retry timeout"
            );
        }
    }

    /// The continuum over the servers in, and when the next one is due back.
    fn rebuild(&self, live: &mut Live) {
        let out = &live.out_until;
        live.continuum = Continuum::new(self.distribution, &self.servers, |i| out[i].is_none());
        let next = live.out_until.iter().flatten().min();
        let next = next.map_or(0, |&until| self.millis(until).max(1));
        self.next_return.store(next, Ordering::Release);
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}
