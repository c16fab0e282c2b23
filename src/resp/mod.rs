//! The Redis-protocol front-end: unmodified Redis clients read keys through the
//! same stack and cache as HTTP.
//!
//! ```text
//! bytes ─▶ decode (requests) ─▶ command ─▶ connection (batch, session state)
//!       ─▶ shared stack (one key per lookup) ─▶ reply (RESP2 / RESP3) ─▶ bytes
//! ```
//!
//! Beyond `--max-connections` a new connection gets
//! `-ERR max number of clients reached` and is closed, as Redis does.

mod command;
mod connection;
pub mod decode;
pub mod reply;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{BoxError, Service};
use tracing::Instrument;

use crate::cache::Cache;
use crate::lookup::{Key, Lookup};
use crate::server::LimitedListener;

pub use command::Command;
pub use decode::{Decoder, ProtocolError};
pub use reply::{Protocol, Reply};

/// State every connection of one listener shares.
#[derive(Debug)]
pub struct Shared<S> {
    stack: S,
    cache: Cache,
    /// Keys one connection may have in flight at once.
    max_keys: usize,
    max_connections: usize,
    port: u16,
    started: Instant,
    next_id: AtomicU64,
    connected: AtomicUsize,
    received: AtomicU64,
    rejected: AtomicU64,
}

impl<S> Shared<S> {
    /// State for a listener on `port` serving `stack`, whose cache is `cache`.
    ///
    /// Each connection may have `max(1, min(64, max_clients / 8))` keys in flight,
    /// so that no single connection can fill the proxy's client limit.
    pub fn new(
        stack: S,
        cache: Cache,
        max_clients: usize,
        max_connections: usize,
        port: u16,
    ) -> Self {
        Self {
            stack,
            cache,
            max_keys: (max_clients / 8).clamp(1, 64),
            max_connections,
            port,
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
            received: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// The `INFO` text for `sections` (none: the default sections).
    fn info(&self, sections: &[Bytes]) -> String {
        let wanted = |name: &str| {
            sections.is_empty()
                || sections.iter().any(|s| {
                    let s = s.to_ascii_lowercase();
                    s == name.as_bytes() || s == b"all" || s == b"everything" || s == b"default"
                })
        };
        let stats = self.cache.stats();
        let uptime = self.started.elapsed().as_secs();
        let mut out = String::new();
        let mut section = |name: &str, lines: &[(&str, String)]| {
            if wanted(&name.to_ascii_lowercase()) {
                if !out.is_empty() {
                    out.push_str("\r\n");
                }
                out.push_str(&format!("# {name}\r\n"));
                for (key, value) in lines {
                    out.push_str(&format!("{key}:{value}\r\n"));
                }
            }
        };
        section(
            "Server",
            &[
                ("redis_version", connection::REDIS_VERSION.to_owned()),
                ("redis_mode", "standalone".to_owned()),
                (
                    "proxy",
                    format!("redis-proxy {}", env!("CARGO_PKG_VERSION")),
                ),
                ("process_id", std::process::id().to_string()),
                ("tcp_port", self.port.to_string()),
                ("uptime_in_seconds", uptime.to_string()),
                ("uptime_in_days", (uptime / 86_400).to_string()),
            ],
        );
        section(
            "Clients",
            &[
                (
                    "connected_clients",
                    self.connected.load(Ordering::Relaxed).to_string(),
                ),
                ("maxclients", self.max_connections.to_string()),
            ],
        );
        section("Persistence", &[("loading", "0".to_owned())]);
        section(
            "Stats",
            &[
                (
                    "total_connections_received",
                    self.received.load(Ordering::Relaxed).to_string(),
                ),
                (
                    "rejected_connections",
                    self.rejected.load(Ordering::Relaxed).to_string(),
                ),
                ("keyspace_hits", stats.hits.to_string()),
                ("keyspace_misses", stats.misses.to_string()),
                ("evicted_keys", stats.evictions.to_string()),
                ("expired_keys", stats.expirations.to_string()),
            ],
        );
        section("Replication", &[("role", "master".to_owned())]);
        out
    }
}

/// Accepts connections on `listener` until `stop` is cancelled, then waits for
/// every connection to finish its in-flight requests.
pub async fn serve<S>(listener: LimitedListener, shared: Arc<Shared<S>>, stop: CancellationToken)
where
    S: Service<Key, Response = Lookup, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    let connections = TaskTracker::new();
    loop {
        let (stream, addr, slot) = tokio::select! {
            accepted = listener.accept_or_refuse() => accepted,
            () = stop.cancelled() => break,
        };
        shared.received.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = slot else {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            connections.spawn(refuse(stream));
            continue;
        };
        let shared = shared.clone();
        let stop = stop.clone();
        let span = tracing::info_span!("connection", protocol = "resp", client = %addr);
        connections.spawn(
            async move {
                let _slot = slot;
                shared.connected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("connected");
                connection::serve(stream, addr, shared.clone(), stop).await;
                shared.connected.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!("disconnected");
            }
            .instrument(span),
        );
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Tells a client over the connection limit so, as Redis does, and closes.
async fn refuse(mut stream: tokio::net::TcpStream) {
    let reply = b"-ERR max number of clients reached\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(reply).await?;
        stream.shutdown().await
    })
    .await;
}
