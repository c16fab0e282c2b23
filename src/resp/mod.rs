//! The Redis-protocol front-end: unmodified Redis clients read keys through the
//! same stack and cache as HTTP.
//!
//! ```text
//! bytes ─▶ decode (requests) ─▶ command ─▶ connection (batch, session state)
//!       ─▶ shared stack (one key per lookup) ─▶ reply (RESP2 / RESP3) ─▶ bytes
//! ```
//!
//! The decoder is written for this proxy (see [`decode`]) because requests must
//! be bounded before they are buffered; replies are encoded with
//! `redis-protocol`. A connection decodes every complete request it has received
//! as one batch and runs the batch's keys through the stack side by side, so a
//! pipelining client costs one read and one write per batch, as with Redis.
//! Connection-level commands (`HELLO`, `CLIENT`, `INFO`, …) never reach the
//! stack: they are answered from the connection's own state, in order with the
//! reads around them. Accepting, limiting and draining connections is the
//! lifecycle every listener shares (the `net` module); this module is only the
//! protocol.

mod command;
mod connection;
pub mod decode;
mod info;
mod reply;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::cache::Cache;
use crate::limit::Slots;
use crate::lookup::{Error, Key, Lookup};
use crate::metrics::{self, Requests};
use crate::net::{Protocol, Stats};

pub use decode::{Decoder, ProtocolError};

/// The Redis protocol over a stack `S`, with what every connection of one
/// listener shares.
pub(crate) struct Resp<S> {
    stack: S,
    requests: Requests,
    /// Keys one connection may have in flight at once.
    max_keys: usize,
    info: info::Sources,
    next_id: AtomicU64,
}

/// What one RESP listener is made of.
pub(crate) struct Settings {
    /// Requests in flight across the proxy: each connection may have
    /// `max(1, min(64, max_clients / 8))` keys in flight, so that no single
    /// connection can fill the client limit.
    pub(crate) max_clients: usize,
    /// The listener's connection slots and counters, for `INFO clients`/`stats`.
    pub(crate) connections: (Slots, Arc<Stats>),
    /// The listener's port, for `INFO server`.
    pub(crate) port: u16,
}

impl<S> Resp<S> {
    /// The protocol over `stack`, whose cache is `cache`.
    pub(crate) fn new(stack: S, cache: Cache, settings: Settings) -> Self {
        let (slots, stats) = settings.connections;
        Self {
            stack,
            requests: Requests::new(metrics::Protocol::Resp),
            max_keys: (settings.max_clients / 8).clamp(1, 64),
            info: info::Sources {
                cache,
                slots,
                stats,
                port: settings.port,
                started: Instant::now(),
            },
            next_id: AtomicU64::new(1),
        }
    }
}

impl<S> Protocol for Resp<S>
where
    S: Service<Key, Response = Lookup, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    fn name(&self) -> &'static str {
        "resp"
    }

    fn refusal(&self) -> &'static [u8] {
        b"-ERR max number of clients reached\r\n"
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, stop: CancellationToken) {
        connection::serve(stream, peer, &self, stop).await;
    }
}
