//! Whether the backing Redis can serve requests now: a pinger task
//! ([`run_pinger`]) on each worker asks the topology every second through
//! that worker's own lanes (the connections its requests use) and records the
//! answer in a [`Health`] that readiness probes read.
//!
//! Readiness is not checked per probe: a probe storm never becomes a Redis storm,
//! and the answer is at most about a second old.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::Backend;

/// How often Redis is pinged.
pub const PING_INTERVAL: Duration = Duration::from_secs(1);
/// A successful ping older than this no longer counts.
pub const READY_WINDOW: Duration = Duration::from_secs(2);

/// When a check ran and what it found.
type Check = (Instant, Result<(), String>);

/// The latest health check of each of the backend's lanes (one per worker, see
/// `RedisService`), shared by their pingers and whoever asks.
#[derive(Debug, Clone)]
pub struct Health {
    lanes: Arc<Mutex<Vec<Option<Check>>>>,
}

impl Health {
    /// No check yet of `lanes` lanes.
    pub fn new(lanes: usize) -> Self {
        Self {
            lanes: Arc::new(Mutex::new(vec![None; lanes.max(1)])),
        }
    }

    /// Whether every lane answered within [`READY_WINDOW`]; otherwise why one did
    /// not.
    ///
    /// # Errors
    ///
    /// The reason Redis cannot serve now.
    pub fn check(&self) -> Result<(), String> {
        let lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        for lane in lanes.iter() {
            match lane {
                None => return Err("redis not checked yet".into()),
                Some((at, _)) if at.elapsed() > READY_WINDOW => {
                    return Err("no recent answer from redis".into());
                }
                Some((_, Err(reason))) => return Err(reason.clone()),
                Some((_, Ok(()))) => {}
            }
        }
        Ok(())
    }

    fn record(&self, lane: usize, result: Result<(), String>) {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(last) = lanes.get_mut(lane) else {
            return;
        };
        let was_ready = matches!(&*last, Some((_, Ok(()))));
        let first = last.is_none();
        *last = Some((Instant::now(), result));
        // Said once for the proxy, not once per lane.
        let others_failed = lanes
            .iter()
            .enumerate()
            .any(|(other, check)| other != lane && matches!(check, Some((_, Err(_)))));
        match (&lanes[lane], was_ready) {
            (Some((_, Ok(()))), false) if lanes.iter().all(|c| matches!(c, Some((_, Ok(()))))) => {
                tracing::info!("redis answers; ready")
            }
            (Some((_, Err(error))), true) if !others_failed => {
                tracing::warn!(%error, "redis stopped answering; not ready")
            }
            (Some((_, Err(error))), false) if first && !others_failed => {
                tracing::warn!(%error, "redis is not reachable; misses fail until it is")
            }
            _ => {}
        }
    }
}

/// Checks every [`PING_INTERVAL`] that a request could be served now: the
/// calling thread's lane to each node answers `PING` (so a lane that cannot
/// connect, say to a Redis at its `maxclients`, is not ready, with Redis's
/// reason). Each check is bounded by `timeout`; the result goes to `health`
/// under `lane`. Run one on each worker, for its lanes.
pub(crate) async fn run_pinger(backend: Backend, health: Health, lane: usize, timeout: Duration) {
    let mut ticks = tokio::time::interval(PING_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = match tokio::time::timeout(timeout, backend.ready()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!(
                "redis did not answer PING within {}",
                humantime::format_duration(timeout)
            )),
        };
        health.record(lane, result);
    }
}
