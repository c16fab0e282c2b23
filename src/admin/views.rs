//! What the admin listener shows of the proxy's state as JSON, and the
//! dashboard page that reads it:
//!
//! ```text
//! GET /hotkeys[?n=N]  the N (20) most requested keys over the hot-key window
//! GET /bigkeys[?n=N]  the N (20) largest values cached
//! GET /stats          requests, cache, latency quantiles, backend nodes
//! GET /config         the effective configuration, every secret "***"
//! GET /               the dashboard (HTML, CSS and script served from here)
//! ```

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::backend::Backend;
use crate::cache::{Cache, HotKey};
use crate::metrics::Requests;
use crate::metrics::quantiles::{self, Latencies};

/// The dashboard: one self-contained page.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Keys listed unless `?n=` says otherwise, and at most.
const DEFAULT_KEYS: usize = 20;
const MAX_KEYS: usize = 1000;

/// What the views read.
#[derive(Clone)]
pub(crate) struct Views {
    pub(crate) cache: Cache,
    pub(crate) requests: Requests,
    pub(crate) backend: Backend,
    /// The database of keys that name none (the URL's).
    pub(crate) default_db: u16,
    /// The effective configuration as `/config` shows it, and the bounds
    /// `/stats` reports; replaced on a reload.
    pub(crate) config: Arc<RwLock<Shown>>,
    pub(crate) started: SystemTime,
}

/// The configuration as the views show it.
#[derive(Debug, Clone)]
pub(crate) struct Shown {
    /// `/config`'s body.
    pub(crate) json: Value,
    pub(crate) capacity: usize,
    pub(crate) max_bytes: usize,
    /// When it was last reloaded (never: `None`).
    pub(crate) reloaded_at: Option<SystemTime>,
}

impl std::fmt::Debug for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Views").finish_non_exhaustive()
    }
}

/// `?n=N` of a request: how many keys (an `n` that is not a number is the
/// default).
fn count(query: Option<&str>) -> usize {
    (query.unwrap_or_default().split('&'))
        .find_map(|pair| pair.strip_prefix("n=")?.parse().ok())
        .unwrap_or(DEFAULT_KEYS)
        .min(MAX_KEYS)
}

fn json_response(value: &Value) -> impl IntoResponse + use<> {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        value.to_string(),
    )
}

pub(crate) async fn hotkeys(
    State(views): State<Views>,
    RawQuery(query): RawQuery,
) -> impl IntoResponse {
    let body = match views.cache.hot_keys(count(query.as_deref())) {
        Some(hot) => json!({
            "window_seconds": round(hot.window.as_secs_f64()),
            "keys": hot.keys.iter().map(|key| views.key(key, true)).collect::<Vec<_>>(),
        }),
        None => json!({
            "window_seconds": 0,
            "keys": [],
            "disabled": "hot keys are not counted (start with --hot-keys)",
        }),
    };
    json_response(&body)
}

pub(crate) async fn bigkeys(
    State(views): State<Views>,
    RawQuery(query): RawQuery,
) -> impl IntoResponse {
    let keys: Vec<Value> = (views.cache.big_keys(count(query.as_deref())).iter())
        .map(|key| views.key(key, false))
        .collect();
    json_response(&json!({ "keys": keys }))
}

pub(crate) async fn config(State(views): State<Views>) -> impl IntoResponse {
    json_response(&views.shown().json)
}

pub(crate) async fn stats(State(views): State<Views>) -> impl IntoResponse {
    json_response(&views.stats())
}

pub(crate) async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        DASHBOARD,
    )
}

impl Views {
    fn shown(&self) -> Shown {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn key(&self, key: &HotKey, counts: bool) -> Value {
        let mut value = json!({
            "key": repr(&key.name),
            "db": key.db.unwrap_or(self.default_db),
            "bytes": key.bytes,
        });
        if counts {
            value["hits"] = key.hits.into();
            value["misses"] = key.misses.into();
        }
        value
    }

    fn stats(&self) -> Value {
        let shown = self.shown();
        let totals = self.requests.totals();
        let sum = |outcome: &str| -> u64 {
            (totals.iter().flat_map(|(_, sums)| sums))
                .filter(|(name, _)| *name == outcome)
                .map(|(_, n)| n)
                .sum()
        };
        let mut requests = serde_json::Map::new();
        for (protocol, sums) in &totals {
            let mut outcomes: serde_json::Map<String, Value> = sums
                .iter()
                .map(|(name, n)| ((*name).to_owned(), (*n).into()))
                .collect();
            outcomes.insert(
                "total".into(),
                sums.iter().map(|(_, n)| n).sum::<u64>().into(),
            );
            requests.insert((*protocol).to_owned(), outcomes.into());
        }
        let backend: Vec<Value> = (self.backend.node_states().into_iter())
            .map(|node| {
                json!({
                    "node": node.addr,
                    "state": node.state,
                    "errors": node.errors,
                    "in_flight": node.in_flight,
                })
            })
            .collect();
        json!({
            "uptime_seconds": round(since(self.started).as_secs_f64()),
            "hits": sum("hit"),
            "misses": sum("miss"),
            "stale": sum("stale"),
            "not_found": sum("not_found"),
            "requests": requests,
            "cache": {
                "entries": self.cache.len(),
                "bytes": self.cache.bytes(),
                "capacity": shown.capacity,
                "max_bytes": shown.max_bytes,
            },
            "latency_us": {
                "hits": latency(&quantiles::HITS),
                "misses": latency(&quantiles::MISSES),
            },
            "backend": backend,
            "config_reloaded_at": shown.reloaded_at.map(unix_seconds),
        })
    }
}

/// p50 and p99 of `latencies`, in microseconds, and how many were timed.
fn latency(latencies: &Latencies) -> Value {
    let micros = |q: f64| latencies.quantile(q).map(|d| round(d.as_secs_f64() * 1e6));
    json!({
        "p50": micros(0.5),
        "p99": micros(0.99),
        "timed": latencies.count(),
    })
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn since(at: SystemTime) -> Duration {
    SystemTime::now().duration_since(at).unwrap_or_default()
}

fn unix_seconds(at: SystemTime) -> f64 {
    round(
        at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64(),
    )
}

/// `bytes` as redis-cli writes a key: printable ASCII as it is, `\` and `"`
/// escaped, `\n`, `\r`, `\t`, `\a`, `\b` by name, any other byte `\xNN`.
pub(crate) fn repr(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        match byte {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x07 => out.push_str("\\a"),
            0x08 => out.push_str("\\b"),
            0x20..=0x7e => out.push(byte as char),
            _ => out.push_str(&format!("\\x{byte:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_written_as_redis_cli_writes_them() {
        assert_eq!(repr(b"user:1"), "user:1");
        assert_eq!(repr(b"a\"b\\c"), "a\\\"b\\\\c");
        assert_eq!(repr(b"\xff\x00\n"), "\\xff\\x00\\n");
        assert_eq!(
            repr("ключ".as_bytes()),
            "\\xd0\\xba\\xd0\\xbb\\xd1\\x8e\\xd1\\x87"
        );
    }
}
