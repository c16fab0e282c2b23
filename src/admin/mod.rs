//! The admin listener: liveness, readiness, Prometheus metrics, and views of
//! the proxy's state (see [`views`]).
//!
//! ```text
//! GET /healthz  200 "ok"            while the process serves
//! GET /readyz   200 "ready"         the backend can serve now
//!               503 "not ready: …"  otherwise, with the reason
//! GET /metrics  200 Prometheus text exposition
//! GET /hotkeys, /bigkeys, /stats, /config (JSON), / (the dashboard)
//! ```
//!
//! The router knows neither the backend nor the metrics recorder: it is given a
//! readiness check, a renderer and the views' sources, so that it can be
//! tested, and reused, alone.

pub(crate) mod views;

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
pub(crate) fn router(ready: ReadinessCheck, render: Render, views: views::Views) -> Router {
    let views = Router::new()
        .route("/", get(views::dashboard))
        .route("/hotkeys", get(views::hotkeys))
        .route("/bigkeys", get(views::bigkeys))
        .route("/stats", get(views::stats))
        .route("/config", get(views::config))
        .with_state(views);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { ready, render })
        .merge(views)
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
    /// The backend, whose nodes' figures are published.
    pub(crate) backend: crate::backend::Backend,
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
        metrics::gauge!("redis_proxy_cache_bytes").set(self.cache.bytes() as f64);
        for node in self.backend.node_states() {
            let up = if node.state == "up" { 1.0 } else { 0.0 };
            metrics::gauge!("redis_proxy_backend_node_up", "node" => node.addr.clone()).set(up);
            metrics::gauge!("redis_proxy_backend_node_in_flight", "node" => node.addr.clone())
                .set(node.in_flight as f64);
            metrics::counter!("redis_proxy_backend_node_errors_total", "node" => node.addr)
                .absolute(node.errors);
        }
        metrics::gauge!("redis_proxy_requests_in_flight").set(self.in_flight.taken() as f64);
        for (protocol, slots) in &self.connections {
            metrics::gauge!("redis_proxy_connections", "protocol" => *protocol)
                .set(slots.taken() as f64);
        }
    }
}
