//! What the proxy measures, recorded through the `metrics` facade.
//!
//! The library never installs a recorder: the binary installs Prometheus's and
//! renders `/metrics` with it; an application that embeds the library decides for
//! itself (with no recorder, every record is a no-op). Handles are resolved once,
//! when their owner is built. Requests are counted per thread and published at
//! scrape time (see [`Requests`]), so the hot path writes no memory another
//! thread writes.
//! Figures that already exist as state elsewhere (cache statistics, requests
//! holding a client slot, open connections) are not counted twice: the admin
//! listener reads them and publishes them when `/metrics` is scraped.
//!
//! ```text
//! redis_proxy_requests_total{protocol="http|resp",outcome="hit|miss|stale|not_found|shed|timeout|wrong_type|backend_error|error"}
//! redis_proxy_requests_shed_total
//! redis_proxy_requests_in_flight                      gauge
//! redis_proxy_connections{protocol="http|resp|admin"} gauge
//! redis_proxy_cache_{hits,misses,evictions,expirations}_total
//! redis_proxy_cache_entries, redis_proxy_cache_bytes   gauge
//! redis_proxy_backend_node_{up,in_flight}{node}       gauge
//! redis_proxy_backend_node_errors_total{node}
//! redis_proxy_stale_served_total{reason="error|revalidate"}, redis_proxy_negative_hits_total
//! redis_proxy_backend_short_circuited_total{node}
//! redis_proxy_cache_invalidations_total, redis_proxy_cache_flushes_total
//! redis_proxy_backend_request_duration_seconds        histogram
//! redis_proxy_backend_errors_total
//! redis_proxy_auth_failures_total{protocol="http|resp"}
//! redis_proxy_tls_handshake_failures_total{protocol="http|resp"}
//! ```

pub(crate) mod quantiles;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Counter;

use crate::lookup::{Answer, Error, Lookup, Source};

/// Which front-end answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `GET /{key}`
    Http = 0,
    /// The Redis protocol.
    Resp = 1,
}

impl Protocol {
    fn label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Resp => "resp",
        }
    }
}

/// The outcomes of a request, in the order of [`Requests`]'s counters.
const OUTCOMES: [&str; 9] = [
    "hit",
    "miss",
    "not_found",
    "shed",
    "timeout",
    "wrong_type",
    "backend_error",
    "error",
    "stale",
];

/// The buckets of the backend latency histogram, in seconds: from a pipelined
/// miss's sub-millisecond to the default 5 s timeout.
pub const BACKEND_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The name of the backend latency histogram (for a recorder's bucket settings).
pub const BACKEND_DURATION: &str = "redis_proxy_backend_request_duration_seconds";

/// Failed authentications, by protocol.
pub(crate) const AUTH_FAILURES: &str = "redis_proxy_auth_failures_total";

/// TLS handshakes that failed or timed out, by protocol.
pub(crate) const TLS_HANDSHAKE_FAILURES: &str = "redis_proxy_tls_handshake_failures_total";

/// The request counters of every front-end.
///
/// Counted per thread, each in cells of its own, so that requests on different
/// worker threads never write to the same memory; the sums are handed to the
/// recorder when `/metrics` is scraped ([`Requests::publish`]). A front-end
/// counts through its [`Counting`] handle.
#[derive(Debug, Clone)]
pub(crate) struct Requests {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Per thread slot, per protocol, per outcome.
    cells: Box<[Cells]>,
    /// The recorder's counters, per protocol, per outcome.
    outcomes: [[Counter; OUTCOMES.len()]; 2],
    shed: Counter,
}

/// One thread's counts, on a cache line of their own.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Cells([[AtomicU64; OUTCOMES.len()]; 2]);

/// Threads counted apart: workers (by index, modulo) and one slot for the rest.
const THREAD_SLOTS: usize = 64;

/// What a front-end counts its requests with.
#[derive(Debug, Clone)]
pub(crate) enum Counting {
    /// Into per-thread cells, published at scrape time (the proxy's listeners).
    Cells(Requests, Protocol),
    /// Straight into the recorder's counters (a router mounted in another
    /// application, whose `/metrics` is its own).
    Direct(Arc<[Counter; OUTCOMES.len()]>, Counter),
}

impl Requests {
    /// Cells for every thread, and handles from the recorder installed now.
    pub(crate) fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                cells: (0..=THREAD_SLOTS).map(|_| Cells::default()).collect(),
                outcomes: [Protocol::Http, Protocol::Resp].map(outcome_counters),
                shed: metrics::counter!("redis_proxy_requests_shed_total"),
            }),
        }
    }

    /// The handle `protocol`'s front-end counts with.
    pub(crate) fn counting(&self, protocol: Protocol) -> Counting {
        Counting::Cells(self.clone(), protocol)
    }

    /// The sums so far: per protocol (HTTP, RESP), each outcome by name.
    pub(crate) fn totals(&self) -> [(&'static str, Vec<(&'static str, u64)>); 2] {
        [Protocol::Http, Protocol::Resp].map(|protocol| {
            let sums = OUTCOMES
                .iter()
                .enumerate()
                .map(|(outcome, &name)| {
                    let sum = self
                        .inner
                        .cells
                        .iter()
                        .map(|cells| cells.0[protocol as usize][outcome].load(Ordering::Relaxed))
                        .sum();
                    (name, sum)
                })
                .collect();
            (protocol.label(), sums)
        })
    }

    /// Hands the sums to the recorder.
    pub(crate) fn publish(&self) {
        let mut shed = 0;
        for (protocol, counters) in self.inner.outcomes.iter().enumerate() {
            for (outcome, counter) in counters.iter().enumerate() {
                let sum: u64 = self
                    .inner
                    .cells
                    .iter()
                    .map(|cells| cells.0[protocol][outcome].load(Ordering::Relaxed))
                    .sum();
                counter.absolute(sum);
                if outcome == SHED {
                    shed += sum;
                }
            }
        }
        self.inner.shed.absolute(shed);
    }
}

fn outcome_counters(protocol: Protocol) -> [Counter; OUTCOMES.len()] {
    let label = protocol.label();
    OUTCOMES.map(|outcome| {
        metrics::counter!("redis_proxy_requests_total", "protocol" => label, "outcome" => outcome)
    })
}

impl Counting {
    /// Counts straight into the recorder installed now, for `protocol`.
    pub(crate) fn direct(protocol: Protocol) -> Self {
        Counting::Direct(
            Arc::new(outcome_counters(protocol)),
            metrics::counter!("redis_proxy_requests_shed_total"),
        )
    }

    /// Counts one answered request.
    pub(crate) fn record(&self, result: &Result<Lookup, Error>) {
        let mut tally = Tally::default();
        tally.count(result);
        self.add(&tally);
    }

    /// Adds requests counted locally.
    pub(crate) fn add(&self, tally: &Tally) {
        match self {
            Counting::Cells(requests, protocol) => {
                let slot = crate::worker::current().map_or(THREAD_SLOTS, |i| i % THREAD_SLOTS);
                let cells = &requests.inner.cells[slot].0[*protocol as usize];
                for (cell, &n) in cells.iter().zip(&tally.0) {
                    if n > 0 {
                        cell.fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
            Counting::Direct(outcomes, shed) => {
                for (counter, &n) in outcomes.iter().zip(&tally.0) {
                    if n > 0 {
                        counter.increment(n);
                    }
                }
                if tally.0[SHED] > 0 {
                    shed.increment(tally.0[SHED]);
                }
            }
        }
    }
}

/// The index of `shed` in [`OUTCOMES`].
const SHED: usize = 3;

/// Requests counted by outcome, locally (for a batch of pipelined requests).
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally([u64; OUTCOMES.len()]);

impl Tally {
    /// Counts one answered request.
    pub(crate) fn count(&mut self, result: &Result<Lookup, Error>) {
        match result {
            Ok(lookup) => self.count_lookup(lookup),
            Err(error) => self.count_error(error),
        }
    }

    /// Counts one answered request of the stack: a lookup as
    /// [`Tally::count`], a forwarded command only when it failed in the stack
    /// (shed, timed out, backend unavailable); its reply is Redis's, counted
    /// in `redis_proxy_forwarded_commands_total`.
    pub(crate) fn count_answer(&mut self, result: &Result<Answer, Error>) {
        match result {
            Ok(Answer::Lookup(lookup)) => self.count_lookup(lookup),
            Ok(Answer::Reply(_)) => {}
            Err(error) => self.count_error(error),
        }
    }

    fn count_lookup(&mut self, lookup: &Lookup) {
        let outcome = match lookup {
            Lookup { value: None, .. } => 2,
            Lookup {
                source: Source::Cache,
                ..
            } => 0,
            Lookup {
                source: Source::Stale,
                ..
            } => 8,
            Lookup { .. } => 1,
        };
        self.0[outcome] += 1;
    }

    fn count_error(&mut self, error: &Error) {
        let outcome = match error {
            Error::Overloaded => SHED,
            Error::Timeout => 4,
            error if error.is_wrong_type() => 5,
            Error::Reply(_) | Error::Unavailable { .. } => 6,
            _ => 7,
        };
        self.0[outcome] += 1;
    }

    /// Whether nothing was counted.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|&n| n == 0)
    }
}

/// Counts what Redis's invalidations did: keys evicted, or whole-cache flushes.
pub(crate) fn record_invalidation(keys: Option<usize>) {
    match keys {
        Some(keys) => {
            metrics::counter!("redis_proxy_cache_invalidations_total").increment(keys as u64)
        }
        None => metrics::counter!("redis_proxy_cache_flushes_total").increment(1),
    }
}

/// The paths a forwarded command may take, as `redis_proxy_forwarded_commands_total`
/// labels them.
const FORWARD_PATHS: [&str; 7] = [
    "refused",
    "dedicated",
    "cached",
    "shared",
    "everywhere",
    "scan",
    "split",
];

thread_local! {
    /// This thread's handles of `redis_proxy_forwarded_commands_total`, by
    /// command and path: registering a labelled counter costs a hash of its
    /// labels and an allocation, once per command instead of once per request.
    static FORWARDED: std::cell::RefCell<HashMap<Vec<u8>, [Option<Counter>; FORWARD_PATHS.len()]>> =
        std::cell::RefCell::default();
}

/// Counts one command of transparent mode, by name and the path it took
/// (see [`FORWARD_PATHS`]). A name Redis does not know is counted as
/// `unknown`: a client's made-up names must not make a series each.
pub(crate) fn record_forwarded(command: &[u8], known: bool, path: &'static str) {
    let name = crate::protocol::Name::lower(if known { command } else { b"unknown" });
    let Some(index) = FORWARD_PATHS.iter().position(|p| *p == path) else {
        return;
    };
    FORWARDED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(counter) = cache.get(name.as_bytes()).and_then(|paths| paths[index].as_ref()) {
            counter.increment(1);
            return;
        }
        let label = String::from_utf8_lossy(name.as_bytes()).into_owned();
        let counter = metrics::counter!("redis_proxy_forwarded_commands_total", "command" => label, "path" => path);
        counter.increment(1);
        cache.entry(name.as_bytes().to_vec()).or_default()[index] = Some(counter);
    });
}

/// Counts a failed attempt to open a connection to the Redis node at `node`.
pub(crate) fn record_connect_failure(node: &str) {
    metrics::counter!("redis_proxy_backend_connect_failures_total", "node" => node.to_owned())
        .increment(1);
}

/// Moves the count of dedicated connections in use by `change`.
pub(crate) fn dedicated_connections(change: i64) {
    metrics::gauge!("redis_proxy_dedicated_connections").increment(change as f64);
}

/// Every counter, and its `# HELP` line.
const COUNTERS: &[(&str, &str)] = &[
    (
        "redis_proxy_requests_total",
        "Requests answered, by protocol and outcome.",
    ),
    (
        "redis_proxy_requests_shed_total",
        "Requests refused at once beyond max_clients.",
    ),
    (
        "redis_proxy_cache_hits_total",
        "Reads answered from a live cache entry.",
    ),
    (
        "redis_proxy_cache_misses_total",
        "Reads that found no live entry.",
    ),
    (
        "redis_proxy_cache_evictions_total",
        "Live entries removed to make room.",
    ),
    (
        "redis_proxy_cache_expirations_total",
        "Entries removed after their TTL.",
    ),
    (
        "redis_proxy_cache_invalidations_total",
        "Keys dropped because Redis said they changed.",
    ),
    (
        "redis_proxy_cache_flushes_total",
        "Whole-cache flushes: FLUSHALL, or a lost tracking connection.",
    ),
    (
        "redis_proxy_backend_errors_total",
        "Requests to the backing Redis that failed.",
    ),
    (
        "redis_proxy_forwarded_commands_total",
        "Transparent mode: commands for the backend, by name and path (shared, cached, dedicated).",
    ),
    (
        "redis_proxy_cluster_node_requests_total",
        "Cluster mode: requests sent to each node, redirections included.",
    ),
    (
        "redis_proxy_cluster_node_errors_total",
        "Cluster mode: requests that found a node unreachable.",
    ),
    (
        "redis_proxy_config_reloads_total",
        "Configuration reloads (SIGHUP), by result: ok or error.",
    ),
    (
        "redis_proxy_backend_node_errors_total",
        "Requests to each backend node that failed (error replies aside).",
    ),
    (
        "redis_proxy_shard_ejections_total",
        "Sharded mode: servers ejected after failures in a row (shard_auto_eject_hosts).",
    ),
    (
        "redis_proxy_cluster_refreshes_total",
        "Cluster mode: slot maps read (CLUSTER SLOTS).",
    ),
    (
        AUTH_FAILURES,
        "Authentications refused: wrong password, unknown or disabled user.",
    ),
    (
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed or did not finish within request_timeout.",
    ),
];

/// Every gauge, and its `# HELP` line.
const GAUGES: &[(&str, &str)] = &[
    (
        "redis_proxy_requests_in_flight",
        "Requests holding a client slot.",
    ),
    (
        "redis_proxy_connections",
        "Open client connections, by listener.",
    ),
    (
        "redis_proxy_cache_entries",
        "Entries in the cache, expired ones not yet reclaimed included.",
    ),
    (
        "redis_proxy_config_last_reload_success_timestamp_seconds",
        "When the configuration was last reloaded and applied, in Unix seconds.",
    ),
    (
        "redis_proxy_cache_bytes",
        "Memory the cache's entries take, as cache_max_bytes bounds it.",
    ),
    (
        "redis_proxy_backend_node_up",
        "Each backend node: 1 when requests go to it, 0 short-circuited or ejected.",
    ),
    (
        "redis_proxy_backend_node_in_flight",
        "Requests to each backend node waiting for a reply.",
    ),
    (
        "redis_proxy_shard_ejected",
        "Sharded mode: 1 while a server is ejected.",
    ),
    (
        "redis_proxy_dedicated_connections",
        "Transparent mode: backend connections dedicated to one client's state.",
    ),
];

/// Describes every metric to the recorder installed now (its `# HELP` lines).
pub(crate) fn describe() {
    for &(name, help) in COUNTERS {
        metrics::describe_counter!(name, help);
    }
    for &(name, help) in GAUGES {
        metrics::describe_gauge!(name, help);
    }
    metrics::describe_histogram!(
        BACKEND_DURATION,
        metrics::Unit::Seconds,
        "Time of one request to the backing Redis, queueing on its connection included."
    );
}
