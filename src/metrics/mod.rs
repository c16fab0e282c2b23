//! Prometheus metrics: what is counted where, and the `/metrics` text.
//!
//! The hot path pays for one atomic add per request (the outcome counter, whose
//! handles are resolved once). Everything that already exists as state elsewhere
//! (cache statistics, requests holding a client slot, open connections) is read
//! when `/metrics` is scraped instead of being counted twice.
//!
//! ```text
//! redis_proxy_requests_total{protocol="http|resp",outcome="hit|miss|not_found|shed|timeout|wrong_type|backend_error|error"}
//! redis_proxy_requests_shed_total
//! redis_proxy_requests_in_flight                      gauge
//! redis_proxy_connections{protocol="http|resp|admin"} gauge
//! redis_proxy_cache_{hits,misses,evictions,expirations}_total
//! redis_proxy_cache_entries                           gauge
//! redis_proxy_backend_request_duration_seconds        histogram
//! redis_proxy_backend_errors_total
//! ```

use std::sync::{Arc, OnceLock};

use metrics::Counter;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::Semaphore;

use crate::cache::Cache;
use crate::layers::Failure;
use crate::lookup::{Lookup, Source};

/// Which front-end answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `GET /{key}`
    Http,
    /// The Redis protocol.
    Resp,
}

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

/// Seconds; from a cached hit's sub-millisecond to the default 5 s timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The process's metrics recorder and the counters the hot path uses.
struct Registry {
    handle: PrometheusHandle,
    requests: [[Counter; OUTCOMES.len()]; 2],
    shed: Counter,
}

static REGISTRY: OnceLock<Option<Registry>> = OnceLock::new();

/// Installs the Prometheus recorder for this process, once; later calls are free.
/// When another recorder was installed first (an embedding application's), the
/// proxy's own `/metrics` is empty and its counters go to that recorder.
pub fn install() {
    registry();
}

fn registry() -> Option<&'static Registry> {
    REGISTRY
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("redis_proxy_backend_request_duration_seconds".into()),
                    DURATION_BUCKETS,
                )
                .expect("buckets are not empty")
                .install_recorder()
                .map_err(|error| tracing::warn!(%error, "metrics recorder not installed"))
                .ok()?;
            describe();
            let per_protocol = |protocol: &'static str| {
                OUTCOMES.map(|outcome| {
                    metrics::counter!("redis_proxy_requests_total", "protocol" => protocol, "outcome" => outcome)
                })
            };
            Some(Registry {
                handle,
                requests: [per_protocol("http"), per_protocol("resp")],
                shed: metrics::counter!("redis_proxy_requests_shed_total"),
            })
        })
        .as_ref()
}

fn describe() {
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
    describe_histogram!(
        "redis_proxy_backend_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time of one GET against the backing Redis, connection wait included."
    );
    describe_counter!(
        "redis_proxy_backend_errors_total",
        "GETs against the backing Redis that failed."
    );
}

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds buffered histogram samples into their buckets every [`UPKEEP_INTERVAL`].
///
/// The exporter buffers every sample until upkeep runs; without this task, a proxy
/// that is never scraped would hold every backend latency it ever measured.
pub async fn run_upkeep() {
    let Some(registry) = registry() else { return };
    let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
    loop {
        ticks.tick().await;
        registry.handle.run_upkeep();
    }
}

/// Counts one invalidation from Redis: keys evicted, or a whole-cache flush.
pub fn record_invalidation(invalidation: &crate::backend::Invalidation) {
    if registry().is_none() {
        return;
    }
    match invalidation {
        crate::backend::Invalidation::Keys(keys) => {
            metrics::counter!("redis_proxy_cache_invalidations_total").increment(keys.len() as u64)
        }
        crate::backend::Invalidation::All => {
            metrics::counter!("redis_proxy_cache_flushes_total").increment(1)
        }
    }
}

/// Counts one answered request.
pub fn record_request(protocol: Protocol, result: &Result<Lookup, Failure>) {
    let Some(registry) = registry() else { return };
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
        Err(Failure::Overloaded) => {
            registry.shed.increment(1);
            3
        }
        Err(Failure::Timeout) => 4,
        Err(Failure::Backend(e)) if e.is_wrong_type() => 5,
        Err(Failure::Backend(_)) => 6,
        Err(Failure::Internal(_)) => 7,
    };
    let protocol = match protocol {
        Protocol::Http => 0,
        Protocol::Resp => 1,
    };
    registry.requests[protocol][outcome].increment(1);
}

/// A fixed number of slots handed out by a semaphore: client slots of the stack,
/// connection slots of a listener. How many are taken is a gauge for free.
#[derive(Debug, Clone)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    size: usize,
}

impl Slots {
    /// `size` free slots.
    pub fn new(size: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// The semaphore that hands the slots out.
    pub fn semaphore(&self) -> &Arc<Semaphore> {
        &self.semaphore
    }

    /// How many slots there are.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many slots are taken now.
    pub fn taken(&self) -> usize {
        self.size.saturating_sub(self.semaphore.available_permits())
    }
}

/// Live figures read at scrape time.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The shared cache.
    pub cache: Cache,
    /// Client slots of the stack: requests in flight.
    pub clients: Slots,
    /// Connection slots per listener name.
    pub connections: Vec<(&'static str, Slots)>,
}

/// The Prometheus text exposition of every metric.
pub fn render(sources: &Sources) -> String {
    let Some(registry) = registry() else {
        return String::new();
    };
    let stats = sources.cache.stats();
    metrics::counter!("redis_proxy_cache_hits_total").absolute(stats.hits);
    metrics::counter!("redis_proxy_cache_misses_total").absolute(stats.misses);
    metrics::counter!("redis_proxy_cache_evictions_total").absolute(stats.evictions);
    metrics::counter!("redis_proxy_cache_expirations_total").absolute(stats.expirations);
    metrics::gauge!("redis_proxy_cache_entries").set(sources.cache.len() as f64);
    metrics::gauge!("redis_proxy_requests_in_flight").set(sources.clients.taken() as f64);
    for (protocol, slots) in &sources.connections {
        metrics::gauge!("redis_proxy_connections", "protocol" => *protocol)
            .set(slots.taken() as f64);
    }
    registry.handle.run_upkeep();
    registry.handle.render()
}
