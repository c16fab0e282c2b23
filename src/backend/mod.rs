//! The one Redis connection layer: under cached reads (`RedisService`) and
//! transparent mode's forwarding alike.
//!
//! ```text
//! Backend ─▶ Topology (standalone | cluster | sentinel | sharded): which node serves a key
//!         ─▶ Node: per worker thread and protocol, one lane
//!         ─▶ Lane: one pipelined connection, its driver task, replies in order
//!         ─▶ Link + Connector: RESP over TCP/TLS, the handshake
//! ```
//!
//! [`Backend`] is the handle both users hold: a read of a key (with replica
//! reads and their fallbacks), a request for the node of a slot, a connection
//! of a client's own, readiness. Redirections (`MOVED`, `ASK`, `TRYAGAIN`) are
//! followed here, in one place, for every kind of request. Errors are typed
//! ([`Error`]) and keep their cause; the stack's error is made from them at
//! this module's edge.

mod circuit;
mod connect;
mod error;
mod health;
mod lane;
mod link;
mod node;
mod redirect;
mod service;
mod spread;
mod topology;
mod tracking;
mod url;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::lookup::Key;
use crate::protocol::{Frame, encoded};
use redirect::{MAX_REDIRECTS, Redirect};

pub(crate) use error::Error;
pub(crate) use health::{Health, run_pinger};
pub(crate) use link::{Link, is_push};
pub(crate) use node::{NodeRef, Outgoing};
pub use service::{RedisService, RedisServiceBuilder};
pub(crate) use topology::Topology;
pub use topology::{Distribution, Ejection, KeyHash, Placement, ReadFrom, ShardServer};
pub use tracking::{Invalidation, InvalidationSink};
pub use url::RedisUrl;

/// Values shorter than this are copied out of the connection's read buffer
/// before they are handed on: a slice would keep the whole buffer alive for
/// as long as the cache keeps the value. A longer value is read into an
/// allocation of its own (see [`link::Link::fill`]).
const COPY_BELOW: usize = 64 * 1024;

/// The connection layer's handle: a topology and its nodes. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Backend {
    topology: Arc<dyn Topology>,
    /// The database the URL names: what keys without one are read in.
    default_db: i64,
}

/// One node as `/stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeState {
    pub(crate) addr: String,
    pub(crate) state: &'static str,
    pub(crate) in_flight: u64,
    pub(crate) errors: u64,
}

impl Backend {
    /// A backend over `topology`, whose URL names database `default_db`.
    pub(crate) fn new(topology: Arc<dyn Topology>, default_db: i64) -> Self {
        Self {
            topology,
            default_db,
        }
    }

    /// The database the URL names.
    pub(crate) fn default_db(&self) -> i64 {
        self.default_db
    }

    /// The unit keys are placed by (a cluster's slot); `None` with one Redis.
    pub(crate) fn slot(&self, key: &[u8]) -> Option<u16> {
        self.topology.slot(key)
    }

    /// Whether keys are spread over several nodes.
    pub(crate) fn spreads_keys(&self) -> bool {
        self.topology.spreads_keys()
    }

    /// The address of the node a keyless command goes to, once one is known.
    pub(crate) fn any_node(&self) -> Option<String> {
        self.topology
            .primary(None)
            .ok()
            .map(|node| node.addr().to_owned())
    }

    /// Whether commands whose keys are on several nodes are split by node.
    pub(crate) fn splits_commands(&self) -> bool {
        self.topology.splits_commands()
    }

    /// Every primary, in address order.
    pub(crate) fn primaries(&self) -> Vec<NodeRef> {
        self.topology.primaries()
    }

    async fn prepared(&self) -> Result<(), Error> {
        if self.topology.is_prepared() {
            return Ok(());
        }
        self.topology.prepare().await
    }

    /// The value of `key`: `GET` on the node that serves it (a replica with
    /// replica reads, its primary when the replica cannot answer or says the
    /// key is absent, since a replica may not have heard of a key just
    /// written).
    ///
    /// # Errors
    ///
    /// Redis's error reply, or why it could not be asked.
    pub(crate) async fn get(&self, key: &Key) -> Result<Option<Bytes>, Error> {
        self.prepared().await?;
        let (reader, primary) = self.topology.reader(self.topology.slot(key))?;
        let get = Outgoing::read(
            encoded(&[&b"GET"[..], key]),
            key.db(),
            reader.main_protocol(),
        );
        let from_replica = !Arc::ptr_eq(&reader, &primary);
        let value = match self.exchange(reader, get.clone()).await {
            Err(error) if from_replica && !matches!(error, Error::Reply(_)) => None,
            Ok(frame) => Some(value_of(&frame)?),
            Err(error) => return Err(error),
        };
        match value {
            Some(Some(value)) => Ok(Some(value)),
            Some(None) if !from_replica => Ok(None),
            _ => {
                let get = Outgoing {
                    resp3: primary.main_protocol(),
                    ..get
                };
                value_of(&self.exchange(primary, get).await?)
            }
        }
    }

    /// Sends `request` to the primary serving `slot` (any primary for `None`)
    /// and answers its reply as Redis sent it.
    ///
    /// # Errors
    ///
    /// Why Redis could not be asked; an error reply is a reply.
    pub(crate) async fn send(&self, slot: Option<u16>, request: Outgoing) -> Result<Frame, Error> {
        self.prepared().await?;
        let node = self.topology.primary(slot)?;
        self.exchange(node, request).await
    }

    /// Sends `request` to `node`, following the redirections a cluster answers
    /// with (at most [`MAX_REDIRECTS`]): `MOVED` to the node it names (and the
    /// map is refreshed), `ASK` there after `ASKING`, `TRYAGAIN` after a
    /// moment. `CLUSTERDOWN` is the answer, and refreshes the map.
    pub(crate) async fn exchange(
        &self,
        mut node: NodeRef,
        mut request: Outgoing,
    ) -> Result<Frame, Error> {
        for _ in 0..=MAX_REDIRECTS {
            let frame = match node.exchange(request.clone()).await {
                Ok(frame) => {
                    self.topology.outcome(&node, Ok(()));
                    frame
                }
                Err(error) => {
                    self.topology.outcome(&node, Err(&error));
                    if !matches!(error, Error::Reply(_)) {
                        self.topology.changed();
                    }
                    return Err(error);
                }
            };
            if frame
                .error_text()
                .is_some_and(|error| error.starts_with("READONLY"))
            {
                // A demoted primary: where the primary is now is due a look.
                self.topology.changed();
            }
            match Redirect::of(&frame) {
                None => return Ok(frame),
                Some(Redirect::Down) => {
                    self.topology.changed();
                    return Ok(frame);
                }
                Some(Redirect::Moved(addr)) => {
                    self.topology.changed();
                    node = self.topology.node_at(&addr)?;
                    request.asking = false;
                }
                Some(Redirect::Ask(addr)) => {
                    node = self.topology.node_at(&addr)?;
                    request.asking = true;
                }
                Some(Redirect::TryAgain) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    request.asking = false;
                }
            }
        }
        Err(Error::Cluster(
            format!("more than {MAX_REDIRECTS} redirections for one request").into(),
        ))
    }

    /// Told each time the primary is replaced (see [`Topology::switches`]).
    pub(crate) fn switches(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.topology.switches()
    }

    /// A connection of a client's own, on the primary serving `slot`, in
    /// `resp3` or RESP2 and database `db`.
    ///
    /// # Errors
    ///
    /// Why it could not be opened.
    pub(crate) async fn dedicated(
        &self,
        slot: Option<u16>,
        resp3: bool,
        db: Option<u16>,
    ) -> Result<Link, Error> {
        self.prepared().await?;
        self.topology.primary(slot)?.open(resp3, db).await
    }

    /// A connection to the primary of `slot` with no handshake: for `AUTH`
    /// asked for a client, answered as Redis answers a new connection.
    pub(crate) async fn bare(&self, slot: Option<u16>) -> Result<Link, Error> {
        self.prepared().await?;
        self.topology.primary(slot)?.open_bare().await
    }

    /// Every primary's state: address, `up`, `short-circuited` or
    /// `ejected`, requests in flight and failed so far.
    pub(crate) fn node_states(&self) -> Vec<NodeState> {
        let serving = self.topology.in_service();
        self.primaries()
            .iter()
            .map(|node| {
                let (in_flight, errors) = node.load();
                let state = if !serving.iter().any(|s| Arc::ptr_eq(s, node)) {
                    "ejected"
                } else if node.short_circuited().is_some() {
                    "short-circuited"
                } else {
                    "up"
                };
                NodeState {
                    addr: node.addr().to_owned(),
                    state,
                    in_flight,
                    errors,
                }
            })
            .collect()
    }

    /// Which nodes are short-circuited now, and why; `None` when none is.
    pub(crate) fn short_circuited(&self) -> Option<String> {
        let reasons: Vec<String> = self
            .topology
            .in_service()
            .iter()
            .filter_map(|node| node.short_circuited())
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// Whether every key could be served now.
    ///
    /// # Errors
    ///
    /// Why not.
    pub(crate) async fn ready(&self) -> Result<(), Error> {
        self.topology.ready().await
    }

    /// Whether database `db` exists in the backing Redis.
    ///
    /// # Errors
    ///
    /// Redis's error reply (`ERR DB index is out of range`), or why it could
    /// not be asked.
    pub(crate) async fn check_database(&self, db: u16) -> Result<(), Error> {
        if self.topology.spreads_keys() {
            // Redis Cluster has database 0 only.
            return Err(Error::Reply(
                "ERR SELECT is not allowed in cluster mode".into(),
            ));
        }
        self.prepared().await?;
        self.topology.primary(None)?.check_database(db).await
    }
}

/// What a `GET` reply means: a value, absence, or (for anything else) an error.
fn value_of(frame: &Frame) -> Result<Option<Bytes>, Error> {
    if let Some(error) = frame.error_text() {
        return Err(match Redirect::of(frame) {
            Some(Redirect::Down) => Error::Cluster(error.into()),
            _ => Error::Reply(error.into()),
        });
    }
    match frame.bulk() {
        Some(value) => Ok(value.map(compact)),
        None => Err(Error::Reply(
            format!(
                "ERR unexpected reply to GET: {}",
                String::from_utf8_lossy(&frame.bytes[..frame.bytes.len().min(40)])
            )
            .into(),
        )),
    }
}

/// A bulk reply's value, in an allocation of no more than its size: copied
/// when it is small (see [`COPY_BELOW`]).
pub(crate) fn compact(bytes: Bytes) -> Bytes {
    if bytes.len() < COPY_BELOW {
        Bytes::copy_from_slice(&bytes)
    } else {
        bytes
    }
}

/// A whole reply, in an allocation of no more than its size: as
/// [`compact`] for a bulk reply, and a copy for any other (only bulk replies
/// are read into an allocation of their own).
pub(crate) fn compact_reply(reply: Bytes) -> Bytes {
    if reply.first() == Some(&b'$') {
        compact(reply)
    } else {
        Bytes::copy_from_slice(&reply)
    }
}
