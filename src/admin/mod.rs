//! The admin listener: liveness, readiness and Prometheus metrics.
//!
//! ```text
//! GET /healthz  200 "ok"            while the process serves
//! GET /readyz   200 "ready"         the backing Redis answered PING within the last 2 s
//!               503 "not ready: …"  otherwise (with the last error)
//! GET /metrics  200 Prometheus text exposition (see crate::metrics)
//! ```
//!
//! Readiness is not checked per request: a pinger task ([`run_pinger`]) pings Redis every
//! second, so a probe storm never becomes a Redis storm, and the answer is at most
//! about a second old.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::time::Instant;

use crate::backend::RedisService;
use crate::metrics::{self, Sources};

/// How often Redis is pinged for readiness.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// A successful ping older than this no longer counts.
pub const READY_WINDOW: Duration = Duration::from_secs(2);

/// When a check ran and what it found.
type Check = (Instant, Result<(), String>);

/// The latest readiness check, shared by the pinger and `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    last: Arc<Mutex<Option<Check>>>,
}

impl Readiness {
    /// Whether Redis answered within [`READY_WINDOW`]; otherwise why not.
    ///
    /// # Errors
    ///
    /// The reason the proxy is not ready.
    pub fn check(&self) -> Result<(), String> {
        match &*self.last.lock().unwrap_or_else(PoisonError::into_inner) {
            None => Err("redis not checked yet".into()),
            Some((at, _)) if at.elapsed() > READY_WINDOW => {
                Err("no recent answer from redis".into())
            }
            Some((_, result)) => result.clone(),
        }
    }

    fn record(&self, result: Result<(), String>) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let was_ready = matches!(&*last, Some((_, Ok(()))));
        match (&result, was_ready) {
            (Ok(()), false) => tracing::info!("redis answers; ready"),
            (Err(error), true) => tracing::warn!(%error, "redis stopped answering; not ready"),
            (Err(error), false) if last.is_none() => {
                tracing::warn!(%error, "redis is not reachable; misses fail until it is")
            }
            _ => {}
        }
        *last = Some((Instant::now(), result));
    }
}

/// Pings Redis every [`PING_INTERVAL`] on a connection of its own (outside the
/// request pool), reconnecting after a failure, and records the result.
pub async fn run_pinger(backend: RedisService, readiness: Readiness, timeout: Duration) {
    let mut ticks = tokio::time::interval(PING_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection = None;
    loop {
        ticks.tick().await;
        let ping = async {
            let conn = match &mut connection {
                Some(conn) => conn,
                None => connection.insert(backend.dedicated_connection().await?),
            };
            conn.query::<String>(&redis::cmd("PING")).await.map(drop)
        };
        let result = match tokio::time::timeout(timeout, ping).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("redis did not answer PING within {timeout:?}")),
        };
        if result.is_err() {
            connection = None;
        }
        readiness.record(result);
    }
}

#[derive(Debug, Clone)]
struct AdminState {
    readiness: Readiness,
    sources: Sources,
}

/// The admin router.
pub fn router(readiness: Readiness, sources: Sources) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { readiness, sources })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.readiness.check() {
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
        metrics::render(&state.sources),
    )
}
