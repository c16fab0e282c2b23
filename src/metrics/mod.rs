//! What the proxy measures, recorded through the `metrics` facade.
//!
//! The library never installs a recorder: the binary installs Prometheus's and
//! renders `/metrics` with it; an application that embeds the library decides for
//! itself (with no recorder, every record is a no-op). Handles are resolved once,
//! when their owner is built, so the hot path pays one atomic add per request.
//! Figures that already exist as state elsewhere (cache statistics, requests
//! holding a client slot, open connections) are not counted twice: the admin
//! listener reads them and publishes them when `/metrics` is scraped.
//!
//! ```text
//! redis_proxy_requests_total{protocol="http|resp",outcome="hit|miss|not_found|shed|timeout|wrong_type|backend_error|error"}
//! redis_proxy_requests_shed_total
//! redis_proxy_requests_in_flight                      gauge
//! redis_proxy_connections{protocol="http|resp|admin"} gauge
//! redis_proxy_cache_{hits,misses,evictions,expirations}_total
//! redis_proxy_cache_entries                           gauge
//! redis_proxy_cache_invalidations_total, redis_proxy_cache_flushes_total
//! redis_proxy_backend_request_duration_seconds        histogram
//! redis_proxy_backend_errors_total
//! ```

use metrics::Counter;

use crate::lookup::{Error, Lookup, Source};

/// Which front-end answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `GET /{key}`
    Http,
    /// The Redis protocol.
    Resp,
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
const OUTCOMES: [&str; 8] = [
    "hit",
    "miss",
    "not_found",
    "shed",
    "timeout",
    "wrong_type",
    "backend_error",
    "error",
];

/// The buckets of the backend latency histogram, in seconds: from a pipelined
/// miss's sub-millisecond to the default 5 s timeout.
pub const BACKEND_DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The name of the backend latency histogram (for a recorder's bucket settings).
pub const BACKEND_DURATION: &str = "redis_proxy_backend_request_duration_seconds";

/// The request counters of one front-end.
#[derive(Debug, Clone)]
pub(crate) struct Requests {
    outcomes: [Counter; OUTCOMES.len()],
    shed: Counter,
}

impl Requests {
    /// Handles for `protocol`'s counters from the recorder installed now.
    pub(crate) fn new(protocol: Protocol) -> Self {
        let label = protocol.label();
        Self {
            outcomes: OUTCOMES.map(|outcome| {
                metrics::counter!("redis_proxy_requests_total", "protocol" => label, "outcome" => outcome)
            }),
            shed: metrics::counter!("redis_proxy_requests_shed_total"),
        }
    }

    /// Counts one answered request.
    pub(crate) fn record(&self, result: &Result<Lookup, Error>) {
        let outcome = match result {
            Ok(Lookup { value: None, .. }) => 2,
            Ok(Lookup {
                source: Source::Cache,
                ..
            }) => 0,
            Ok(Lookup {
                source: Source::Backend,
                ..
            }) => 1,
            Err(Error::Overloaded) => {
                self.shed.increment(1);
                3
            }
            Err(Error::Timeout) => 4,
            Err(error) if error.is_wrong_type() => 5,
            Err(Error::Reply(_) | Error::Unavailable { .. }) => 6,
            Err(_) => 7,
        };
        self.outcomes[outcome].increment(1);
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

/// Describes every metric to the recorder installed now (its `# HELP` lines).
pub(crate) fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "redis_proxy_requests_total",
        "Requests answered, by protocol and outcome."
    );
    describe_counter!(
        "redis_proxy_requests_shed_total",
        "Requests refused at once beyond max_clients."
    );
    describe_gauge!(
        "redis_proxy_requests_in_flight",
        "Requests holding a client slot."
    );
    describe_gauge!(
        "redis_proxy_connections",
        "Open client connections, by listener."
    );
    describe_counter!(
        "redis_proxy_cache_hits_total",
        "Reads answered from a live cache entry."
    );
    describe_counter!(
        "redis_proxy_cache_misses_total",
        "Reads that found no live entry."
    );
    describe_counter!(
        "redis_proxy_cache_evictions_total",
        "Live entries removed to make room."
    );
    describe_counter!(
        "redis_proxy_cache_expirations_total",
        "Entries removed after their TTL."
    );
    describe_gauge!(
        "redis_proxy_cache_entries",
        "Entries in the cache, expired ones not yet reclaimed included."
    );
    describe_counter!(
        "redis_proxy_cache_invalidations_total",
        "Keys dropped because Redis said they changed."
    );
    describe_counter!(
        "redis_proxy_cache_flushes_total",
        "Whole-cache flushes: FLUSHALL, or a lost tracking connection."
    );
    describe_histogram!(
        BACKEND_DURATION,
        metrics::Unit::Seconds,
        "Time of one GET against the backing Redis, connection wait included."
    );
    describe_counter!(
        "redis_proxy_backend_errors_total",
        "GETs against the backing Redis that failed."
    );
}
