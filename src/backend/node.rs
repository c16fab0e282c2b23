//! One Redis server the proxy talks to: how to connect to it, and a lane per
//! worker thread and protocol (see [`super::lane`]), started on first use on
//! that thread. A topology holds one node (one Redis) or many (a cluster's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Error;
use super::circuit::{Admission, Circuit};
use super::connect::{Connector, Setup, Tracking};
use super::lane::{self, Job, Lane};
use super::link::Link;
use super::tracking::InvalidationSink;
use crate::protocol::{Frame, encoded};

/// How the nodes of one backend talk to Redis.
#[derive(Clone)]
pub(crate) struct NodeOptions {
    /// Worker threads, each with lanes of its own (0: one set for every thread).
    pub(crate) workers: usize,
    /// With `--invalidation tracking`: the sink, and how long a tracked
    /// connection's ping may go unanswered.
    pub(crate) tracking: Option<(InvalidationSink, Duration)>,
    /// Count requests and errors per node (a cluster's nodes).
    pub(crate) per_node_metrics: bool,
}

/// Counters of one node.
struct Counters {
    requests: metrics::Counter,
    errors: metrics::Counter,
}

/// One Redis server.
pub(crate) struct Node {
    connector: Connector,
    options: NodeOptions,
    /// Per worker thread, and one for every other thread (the last): the
    /// RESP2 lane and the RESP3 lane.
    lanes: Box<[[OnceLock<Lane>; 2]]>,
    counters: Option<Counters>,
    /// Short-circuits the node while it fails.
    circuit: Arc<Circuit>,
    load: Load,
}

/// What `/stats` says of a node.
#[derive(Debug, Default)]
struct Load {
    in_flight: AtomicU64,
    errors: AtomicU64,
}

/// Counts a request in flight until dropped (answered, or given up).
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(count: &'a AtomicU64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.connector.addr())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// The node `connector` reaches.
    pub(crate) fn new(connector: Connector, options: NodeOptions) -> Self {
        let counters = options.per_node_metrics.then(|| {
            let addr = connector.addr().to_owned();
            Counters {
                requests: metrics::counter!("redis_proxy_cluster_node_requests_total", "node" => addr.clone()),
                errors: metrics::counter!("redis_proxy_cluster_node_errors_total", "node" => addr),
            }
        });
        Self {
            lanes: (0..=options.workers).map(|_| Default::default()).collect(),
            circuit: Arc::new(Circuit::new(connector.addr())),
            connector,
            options,
            counters,
            load: Load::default(),
        }
    }

    /// `host:port`.
    pub(crate) fn addr(&self) -> &str {
        self.connector.addr()
    }

    /// The protocol requests go in unless the client's matters: RESP3 with
    /// tracking (its invalidations come on the connection itself), else RESP2.
    pub(crate) fn main_protocol(&self) -> bool {
        self.options.tracking.is_some()
    }

    /// The calling thread's lane for `resp3`, started on first use; while it
    /// cannot connect, another thread's lane that has a connection (a Redis
    /// at its `maxclients` leaves some lanes without one, and what those
    /// lanes have is enough to serve).
    fn lane(&self, resp3: bool) -> &Lane {
        let others = self.lanes.len() - 1;
        let thread = crate::worker::current().map_or(others, |worker| worker.min(others));
        let own = self.lanes[thread][usize::from(resp3)].get_or_init(|| {
            let options = lane::Options {
                resp3,
                tracking: self.options.tracking.clone(),
                circuit: self.circuit.clone(),
            };
            Lane::spawn(self.connector.clone(), options)
        });
        if !own.is_failing() {
            return own;
        }
        self.lanes
            .iter()
            .filter_map(|lanes| lanes[usize::from(resp3)].get())
            .find(|lane| lane.is_connected())
            .unwrap_or(own)
    }

    /// Sends `request` (in `db`, after `ASKING` when `asking`) on the calling
    /// thread's lane for `resp3`; the receiver gets the reply. While the
    /// node is short-circuited, it gets the refusal at once instead (but for
    /// a trial request now and then).
    pub(crate) fn send(&self, request: Outgoing) -> oneshot::Receiver<Result<Frame, Error>> {
        match self.circuit.admit() {
            Ok(Admission::Closed | Admission::Trial) => self.send_anyway(request),
            Err(refused) => {
                let (done, reply) = oneshot::channel();
                let _ = done.send(Err(refused));
                reply
            }
        }
    }

    /// Why the node's requests fail at once, while they do.
    pub(crate) fn short_circuited(&self) -> Option<String> {
        self.circuit.open_reason()
    }

    /// [`Node::send`] whatever the circuit says.
    fn send_anyway(&self, request: Outgoing) -> oneshot::Receiver<Result<Frame, Error>> {
        if let Some(counters) = &self.counters {
            counters.requests.increment(1);
        }
        let (mut job, reply) = Job::new(request.bytes, request.db, request.idempotent);
        job.asking = request.asking;
        self.lane(request.resp3).send(job);
        reply
    }

    /// [`Node::send`], waiting for the reply.
    pub(crate) async fn exchange(&self, request: Outgoing) -> Result<Frame, Error> {
        let _in_flight = InFlight::new(&self.load.in_flight);
        let reply = self.send(request).await.unwrap_or(Err(Error::Stopping));
        if let Err(error) = &reply
            && !matches!(error, Error::Reply(_))
        {
            self.load.errors.fetch_add(1, Ordering::Relaxed);
            if let Some(counters) = &self.counters {
                counters.errors.increment(1);
            }
        }
        reply
    }

    /// Requests waiting for a reply now, and requests failed so far (error
    /// replies aside).
    pub(crate) fn load(&self) -> (u64, u64) {
        (
            self.load.in_flight.load(Ordering::Relaxed),
            self.load.errors.load(Ordering::Relaxed),
        )
    }

    /// Whether the node answers `PING` on the calling thread's lane: a
    /// request could be served now. The ping goes even while the node is
    /// short-circuited, and its answer closes the circuit.
    pub(crate) async fn ping(&self) -> Result<(), Error> {
        let ping = Outgoing::read(encoded(&["PING"]), None, self.main_protocol());
        let frame = self
            .send_anyway(ping)
            .await
            .unwrap_or(Err(Error::Stopping))?;
        match frame.error_text() {
            Some(error) => Err(Error::Refused(error)),
            None => Ok(()),
        }
    }

    /// A connection of its own, in `resp3` or RESP2 and database `db` (`None`:
    /// the URL's), for one client's state (`MULTI`, subscriptions, …).
    pub(crate) async fn open(&self, resp3: bool, db: Option<u16>) -> Result<Link, Error> {
        let setup = Setup {
            resp3,
            db,
            tracking: Tracking::Off,
            identify: false,
        };
        self.connector.open(setup).await
    }

    /// A connection with no handshake (see [`Connector::open_bare`]).
    pub(crate) async fn open_bare(&self) -> Result<Link, Error> {
        self.connector.open_bare().await
    }

    /// Whether database `db` exists: `SELECT db` on a connection of its own
    /// (lanes select databases as their requests need them, and one that
    /// fails would end the lane's connection).
    pub(crate) async fn check_database(&self, db: u16) -> Result<(), Error> {
        let mut link = self.open(false, None).await?;
        let checked = async {
            link.write(&encoded(&["SELECT", &db.to_string()])).await?;
            link.read().await
        };
        let reply = tokio::time::timeout(self.connector.timeout(), checked).await;
        let reply = reply.map_err(|_| Error::Timeout {
            what: "SELECT",
            timeout: self.connector.timeout(),
        })??;
        link.close().await;
        match reply.error_text() {
            Some(error) => Err(Error::Reply(error.into())),
            None => Ok(()),
        }
    }
}

/// A request for a node, and how it is sent.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// The request, as RESP.
    pub(crate) bytes: Bytes,
    /// The database it runs in (`None`: the URL's).
    pub(crate) db: Option<u16>,
    /// On the RESP3 lane (the reply is relayed to a RESP3 client), else RESP2.
    pub(crate) resp3: bool,
    /// After `ASKING` (an `ASK` redirection).
    pub(crate) asking: bool,
    /// A read: sent again should its connection break before the reply.
    pub(crate) idempotent: bool,
}

impl Outgoing {
    /// A read, which may be sent again.
    pub(crate) fn read(bytes: Bytes, db: Option<u16>, resp3: bool) -> Self {
        Self {
            bytes,
            db,
            resp3,
            asking: false,
            idempotent: true,
        }
    }

    /// A command that may write: sent once.
    pub(crate) fn write(bytes: Bytes, db: Option<u16>, resp3: bool) -> Self {
        Self {
            idempotent: false,
            ..Self::read(bytes, db, resp3)
        }
    }
}

/// A node shared by the topology that holds it and the requests on their way.
pub(crate) type NodeRef = Arc<Node>;
