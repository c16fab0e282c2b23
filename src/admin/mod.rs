//! The admin listener: liveness, readiness and Prometheus metrics.
//!
//! ```text
//! GET /healthz  200 "ok"            while the process serves
//! GET /readyz   200 "ready"         the backend can serve now
//!               503 "not ready: …"  otherwise, with the reason
//! GET /metrics  200 Prometheus text exposition
//! ```
//!
//! The router knows neither the backend nor the metrics recorder: it is given a
//! readiness check and a renderer, so that it can be tested, and reused, alone.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::cache::Cache;
use crate::limit::Slots;
use crate::metrics::Requests;

/// Says whether the proxy can serve requests now, and if not, why.
pub(crate) type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Renders the metrics text.
pub(crate) type Render = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    ready: ReadinessCheck,
    render: Render,
}

/// The admin router.
pub(crate) fn router(ready: ReadinessCheck, render: Render) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { ready, render })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match (state.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        (state.render)(),
    )
}

/// Figures that live elsewhere as state, read and handed to the metrics
/// recorder when `/metrics` is scraped rather than counted a second time.
#[derive(Debug, Clone)]
pub(crate) struct Gauges {
    /// The request counters, kept per thread until now.
    pub(crate) requests: Requests,
    /// The shared cache.
    pub(crate) cache: Cache,
    /// Client slots of the stack: requests in flight.
    pub(crate) in_flight: Slots,
    /// Connection slots per listener name.
    pub(crate) connections: Vec<(&'static str, Slots)>,
}

impl Gauges {
    /// Hands the current figures to the recorder.
    pub(crate) fn publish(&self) {
        self.requests.publish();
        let stats = self.cache.stats();
        metrics::counter!("redis_proxy_cache_hits_total").absolute(stats.hits);
        metrics::counter!("redis_proxy_cache_misses_total").absolute(stats.misses);
        metrics::counter!("redis_proxy_cache_evictions_total").absolute(stats.evictions);
        metrics::counter!("redis_proxy_cache_expirations_total").absolute(stats.expirations);
        metrics::gauge!("redis_proxy_cache_entries").set(self.cache.len() as f64);
        metrics::gauge!("redis_proxy_requests_in_flight").set(self.in_flight.taken() as f64);
        for (protocol, slots) in &self.connections {
            metrics::gauge!("redis_proxy_connections", "protocol" => *protocol)
                .set(slots.taken() as f64);
        }
    }
}
