//! The Redis-protocol front-end: unmodified Redis clients read keys through the
//! same stack and cache as HTTP.
//!
//! ```text
//! bytes ─▶ decode (requests) ─▶ command ─▶ session (plan: keys, or a reply of its own)
//!       ─▶ shared stack (one key per lookup) ─▶ reply (RESP2 / RESP3) ─▶ output ─▶ bytes
//! ```
//!
//! The decoder is written for this proxy (see [`decode`]) because requests must
//! be bounded before they are buffered; replies are encoded with
//! `redis-protocol`. A connection decodes every complete request it has received
//! as one batch and runs the batch's keys through the stack side by side, so a
//! pipelining client costs one read and one write per batch, as with Redis.
//! Connection-level commands (`HELLO`, `CLIENT`, `SELECT`, `INFO`, …) never
//! reach the stack: the session answers them from its own state, in order with
//! the reads around them. Accepting, limiting and draining connections is the
//! lifecycle every listener shares (the `net` module); this module is only the
//! protocol.
//!
//! What one connection may hold is bounded, so that no client can take the
//! memory of others: its unparsed input (64 MiB, and all connections' together
//! `client_input_limit`), the time an incomplete request may take
//! (`request_timeout`), its pending replies (`client_output_limit`) and how long
//! they may wait for the client to read them (`client_write_timeout`).

mod client;
mod clients;
mod command;
mod connection;
mod dedicated;
mod info;
mod lookups;
mod output;
mod pause;
mod session;
mod tracking;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::auth::Access;
use crate::cache::Cache;
use crate::conn::{Protocol, Stats, Stream};
use crate::limit::Slots;
use crate::lookup::{Answer, Error, Request};
use crate::metrics::Counting;

use crate::protocol::Reply;

/// The Redis protocol over a stack `S`, with what every connection of one
/// listener shares.
pub(crate) struct Resp<S> {
    stack: S,
    requests: Counting,
    /// Keys one connection may have in flight at once.
    max_keys: usize,
    limits: Limits,
    /// Unparsed input held by all connections, beyond what each may hold for
    /// free.
    input: client::InputBudget,
    /// The stack's client slots: a dedicated session's requests hold one
    /// each, as requests through the stack do.
    client_slots: Slots,
    databases: Databases,
    info: info::Sources,
    next_id: AtomicU64,
    /// Every live connection, for `CLIENT LIST` and `CLIENT KILL`.
    clients: clients::Clients,
    /// `CLIENT PAUSE`, while it holds.
    pause: pause::Pause,
    /// Client-side caching (`CLIENT TRACKING`).
    tracking: Arc<tracking::Tracking>,
    /// Who may read, and what.
    access: Access,
    /// Transparent mode, when on.
    forwarding: Option<Arc<crate::forward::Forwarding>>,
}

/// What one connection may hold, and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Requests in flight across the proxy: each connection may have
    /// `max(1, min(64, max_clients / 8))` keys in flight, so that no single
    /// connection can fill the client limit.
    pub(crate) max_clients: usize,
    /// Bytes of replies a connection may have waiting to be written; a reply
    /// that would take it past this closes the connection.
    pub(crate) output: usize,
    /// How long pending replies may wait for the client to take any of them.
    pub(crate) write_timeout: Duration,
    /// How long a request may take to arrive once its first byte has.
    pub(crate) request_timeout: Duration,
    /// Unparsed input all connections together may hold (beyond
    /// [`FREE_INPUT`] each); a read past it closes its connection.
    pub(crate) input_total: usize,
}

/// Unparsed input each connection holds without counting against
/// [`Limits::input_total`]: every ordinary request fits, so only large ones
/// touch the shared count.
pub(crate) const FREE_INPUT: usize = 64 * 1024;

/// Asks the backend whether a database exists.
pub(crate) type CheckDatabase =
    Arc<dyn Fn(u16) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> + Send + Sync>;

/// The databases clients may `SELECT`: the backend's own, and the others the
/// backend has said exist (it is asked once per index; a Redis server's set of
/// databases is fixed when it starts).
pub(crate) struct Databases {
    /// The index of the backend's own database.
    default: i64,
    answers: Mutex<HashMap<u16, Result<(), Arc<str>>>>,
    check: CheckDatabase,
}

impl Databases {
    /// The backend's own database is `default`; `check` asks about the others.
    pub(crate) fn new(default: i64, check: CheckDatabase) -> Self {
        Self {
            default,
            answers: Mutex::default(),
            check,
        }
    }

    /// The database `SELECT index` names: `None` for the backend's own.
    fn parse(&self, index: &[u8]) -> Result<Option<u16>, Reply> {
        let index = std::str::from_utf8(index)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| Reply::error("ERR value is not an integer or out of range"))?;
        if index == self.default {
            return Ok(None);
        }
        u16::try_from(index)
            .ok()
            .map(Some)
            .ok_or_else(|| Reply::error("ERR DB index is out of range"))
    }

    /// What the backend said of `db`, if it was asked: the database to read, or
    /// the error reply for `SELECT`.
    fn known(&self, db: Option<u16>) -> Option<Result<Option<u16>, Reply>> {
        let Some(index) = db else {
            return Some(Ok(None));
        };
        let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        answers.get(&index).map(|answer| match answer {
            Ok(()) => Ok(db),
            Err(reply) => Err(Reply::error(&**reply)),
        })
    }

    /// Asks the backend about `db` and remembers what it said, unless it could
    /// not be asked.
    async fn ask(&self, db: u16) -> Result<(), Reply> {
        match (self.check)(db).await {
            Ok(()) => {
                self.remember(db, Ok(()));
                Ok(())
            }
            Err(Error::Reply(reply)) => {
                self.remember(db, Err(reply.clone()));
                Err(Reply::error(&*reply))
            }
            Err(error) => Err(Reply::error(format!("ERR {error}"))),
        }
    }

    fn remember(&self, db: u16, answer: Result<(), Arc<str>>) {
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        answers.insert(db, answer);
    }

    /// The index of `db`, as `CLIENT INFO` shows it.
    fn index(&self, db: Option<u16>) -> i64 {
        db.map_or(self.default, i64::from)
    }
}

/// What one RESP listener is made of.
pub(crate) struct Settings {
    /// The bounds on each connection.
    pub(crate) limits: Limits,
    /// The databases clients may `SELECT`.
    pub(crate) databases: Databases,
    /// The listener's connection slots and counters, for `INFO clients`/`stats`.
    pub(crate) connections: (Slots, Arc<Stats>),
    /// The listener's port, for `INFO server`.
    pub(crate) port: u16,
    /// Client authentication and key permissions.
    pub(crate) access: Access,
    /// Transparent mode, when on.
    pub(crate) forwarding: Option<Arc<crate::forward::Forwarding>>,
    /// The stack's client slots.
    pub(crate) client_slots: Slots,
    /// With `--invalidation tracking`: client-side caching is served, with
    /// this many names remembered at most.
    pub(crate) client_tracking: Option<usize>,
}

impl<S> Resp<S> {
    /// The protocol over `stack`, whose cache is `cache`.
    pub(crate) fn new(stack: S, cache: Cache, requests: Counting, settings: Settings) -> Self {
        let (slots, stats) = settings.connections;
        let tracking = Arc::new(tracking::Tracking::new(settings.client_tracking));
        if settings.client_tracking.is_some() {
            let told = tracking.clone();
            cache.watch(Arc::new(move |changed| told.changed(changed)));
        }
        Self {
            stack,
            requests,
            max_keys: (settings.limits.max_clients / 8).clamp(1, 64),
            limits: settings.limits,
            input: client::InputBudget::default(),
            client_slots: settings.client_slots,
            databases: settings.databases,
            info: info::Sources {
                cache,
                slots,
                stats,
                port: settings.port,
                started: Instant::now(),
                baseline: std::sync::Mutex::default(),
            },
            next_id: AtomicU64::new(1),
            clients: clients::Clients::default(),
            pause: pause::Pause::default(),
            tracking,
            access: settings.access,
            forwarding: settings.forwarding,
        }
    }
}

impl<S> Protocol for Resp<S>
where
    S: Service<Request, Response = Answer, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    fn name(&self) -> &'static str {
        "resp"
    }

    fn refusal(&self) -> &'static [u8] {
        b"-ERR max number of clients reached\r\n"
    }

    async fn serve(self: Arc<Self>, stream: Stream, peer: SocketAddr, stop: CancellationToken) {
        let local = stream.local_addr().unwrap_or(peer);
        connection::serve(stream, peer, local, &self, stop).await;
    }
}
