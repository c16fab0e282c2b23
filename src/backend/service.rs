//! [`RedisService`]: the Tower service the cache sends its misses to. A key is
//! read with `GET`, a cached read's request is run as it is; both through the
//! connection layer ([`Backend`]), which pipelines them with everything else
//! the worker thread sends that node.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tower::Service;

use super::connect::{Connector, Settings};
use super::node::{Node, NodeOptions, Outgoing};
use super::topology::{
    Cluster, Placement, ReadFrom, Sentinel, ShardServer, Sharded, Standalone, Topology,
};
use super::{Backend, Error, InvalidationSink, RedisUrl, compact_reply};
use crate::lookup::{Command, Key, Query, Target};

/// How a [`RedisService`] is made: [`RedisService::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use redis_proxy::RedisService;
/// use redis_proxy::config::ReadFrom;
///
/// # fn main() -> Result<(), redis_proxy::Error> {
/// // One Redis over TLS, its certificate signed by our own CA.
/// let tls = RedisService::builder("rediss://:secret@redis.internal:6380/0")
///     .tls_ca("/etc/redis-proxy/redis-ca.pem")
///     .response_timeout(Duration::from_millis(500))
///     .build()?;
/// // A Redis Cluster known by two of its nodes, reads from replicas.
/// let cluster = RedisService::builder("redis://10.0.0.1:7000,redis://10.0.0.2:7000")
///     .cluster(ReadFrom::ReplicaPreferred)
///     .build()?;
/// # let _ = (tls, cluster);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct RedisServiceBuilder {
    url: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    workers: usize,
    tracking: Option<InvalidationSink>,
    tls: crate::tls::ClientFiles,
    cluster: Option<ReadFrom>,
    sentinel: Option<(String, Option<String>, ReadFrom)>,
    sharded: Option<Pool>,
}

/// A twemproxy-style pool, as [`RedisServiceBuilder::sharded`] takes it.
#[derive(Debug, Clone)]
struct Pool {
    servers: Vec<ShardServer>,
    placement: Placement,
    auth: Option<String>,
    db: u16,
}

impl std::fmt::Debug for RedisServiceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServiceBuilder")
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("tracking", &self.tracking.is_some())
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl RedisServiceBuilder {
    /// Kept for compatibility; it has no effect. The proxy keeps one
    /// pipelined connection per worker thread and protocol to each node.
    pub fn pool_size(self, _size: u32) -> Self {
        self
    }

    /// Bound on opening one connection's TCP connection (default 1 s); the
    /// handshake after it is bounded by the response timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// A reply not received by then fails its request and ends its
    /// connection; also the bound on a connection's handshake (default 5 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Gives each of `workers` worker threads (see `crate::worker`) lanes of
    /// their own, so that a worker's misses never wait on another thread.
    /// Threads that are not workers share one more set.
    pub(crate) fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// For a `rediss://` URL: the CA certificates (PEM) that sign Redis's
    /// certificate (unset: the system's roots).
    pub fn tls_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.tls.ca = Some(ca.into());
        self
    }

    /// For a `rediss://` URL: the certificate chain and key (PEM) the proxy
    /// presents to a Redis with `tls-auth-clients yes`.
    pub fn tls_client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.tls.cert_and_key = Some((cert.into(), key.into()));
        self
    }

    /// The URL names sentinels (comma-separated) that monitor `master`; the
    /// URL's credentials and database are the data nodes', `password` the
    /// sentinels' own (if they require one). Requests go to the primary the
    /// sentinels name, across failovers; misses go to its replicas (those
    /// up and in sync, from `SENTINEL REPLICAS`) with
    /// [`ReadFrom::ReplicaPreferred`].
    pub fn sentinel(
        mut self,
        master: impl Into<String>,
        password: Option<String>,
        read_from: ReadFrom,
    ) -> Self {
        self.sentinel = Some((master.into(), password, read_from));
        self
    }

    /// A twemproxy-style sharded pool instead of the URL: each key on the one
    /// of `servers` that nutcracker would put it on with the same
    /// `placement`; every server reached with `auth` (its `requirepass`) in
    /// database `db`. The URL's scheme still says whether TLS is spoken.
    pub fn sharded(
        mut self,
        servers: Vec<ShardServer>,
        placement: Placement,
        auth: Option<String>,
        db: u16,
    ) -> Self {
        self.sharded = Some(Pool {
            servers,
            placement,
            auth,
            db,
        });
        self
    }

    /// The URL names the seed nodes of a Redis Cluster (comma-separated): keys
    /// are read from the node that serves their slot, from a replica with
    /// [`ReadFrom::ReplicaPreferred`].
    pub fn cluster(mut self, read_from: ReadFrom) -> Self {
        self.cluster = Some(read_from);
        self
    }

    /// Turns on server-assisted invalidation: every connection asks Redis to
    /// track what it reads, and what Redis says about changed keys goes to
    /// `sink`.
    pub fn tracking(mut self, sink: InvalidationSink) -> Self {
        self.tracking = Some(sink);
        self
    }

    /// A service over a new connection layer. No connection is opened until
    /// the first request, so the proxy starts (and serves what it can) while
    /// Redis is down.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Unavailable`] for a URL that is not a Redis URL, TLS
    /// files that cannot be used, or several nodes without a cluster.
    pub fn build(self) -> Result<RedisService, crate::Error> {
        let url = RedisUrl::parse(&self.url).map_err(crate::Error::unavailable)?;
        let tls = if url.is_tls() {
            let tls = crate::tls::ClientTls::load(&self.tls)
                .map_err(|error| crate::Error::unavailable(error.to_string()))?;
            Some(tls)
        } else {
            None
        };
        let settings = Settings {
            connect_timeout: self.connect_timeout,
            timeout: self.response_timeout,
            tls,
        };
        let options = NodeOptions {
            workers: self.workers,
            // A tracked connection that stops answering for this long may
            // have been cut silently: its invalidations could be lost.
            tracking: self.tracking.map(|sink| (sink, self.connect_timeout)),
            per_node_metrics: false,
        };
        if let Some(pool) = self.sharded {
            let topology = sharded(&url, pool, &settings, options)?;
            return Ok(RedisService::new(Backend::new(topology, 0)));
        }
        let topology: Arc<dyn Topology> = match (self.cluster, self.sentinel) {
            (Some(read_from), _) => {
                Arc::new(Cluster::new(url.nodes(), settings, options, read_from))
            }
            (None, Some((master, password, read_from))) => {
                let sentinels = url
                    .nodes()
                    .iter()
                    .map(|node| url.sentinel_at(&node.parts().address(), password.as_deref()))
                    .collect();
                Arc::new(Sentinel::new(
                    sentinels,
                    url.clone(),
                    (master, read_from),
                    settings,
                    options,
                ))
            }
            (None, None) if url.nodes().len() > 1 => {
                return Err(crate::Error::unavailable(
                    "the Redis URL names several nodes: only a cluster (--redis-mode cluster) has several",
                ));
            }
            (None, None) => {
                let node = Node::new(Connector::new(&url, &settings), options);
                Arc::new(Standalone::new(Arc::new(node)))
            }
        };
        Ok(RedisService::new(Backend::new(topology, url.db())))
    }
}

/// The topology of a sharded pool: a node per server, reached as `url`'s
/// scheme says, with the pool's password and database.
fn sharded(
    url: &RedisUrl,
    mut pool: Pool,
    settings: &Settings,
    mut options: NodeOptions,
) -> Result<Arc<dyn Topology>, crate::Error> {
    if pool.servers.is_empty() {
        return Err(crate::Error::unavailable(
            "a sharded pool needs at least one server",
        ));
    }
    options.per_node_metrics = true;
    // nutcracker sorts a pool's servers by name (shorter first, then byte
    // by byte) when it checks them for duplicates, and keeps that order:
    // the order modula counts in.
    pool.servers
        .sort_by(|a, b| (a.name.len(), a.name.as_bytes()).cmp(&(b.name.len(), b.name.as_bytes())));
    let scheme = if url.is_tls() { "rediss" } else { "redis" };
    let auth = super::url::userinfo(pool.auth.as_deref());
    let nodes = pool
        .servers
        .iter()
        .map(|server| {
            let url = RedisUrl::parse(&format!("{scheme}://{auth}{}/{}", server.addr, pool.db))
                .map_err(crate::Error::unavailable)?;
            Ok(Arc::new(Node::new(
                Connector::new(&url, settings),
                options.clone(),
            )))
        })
        .collect::<Result<Vec<_>, crate::Error>>()?;
    Ok(Arc::new(Sharded::new(nodes, &pool.servers, pool.placement)))
}

/// Reads keys from the backing Redis with `GET`, and runs transparent mode's
/// cached reads.
///
/// Cloning is cheap: clones share one connection layer. The service is always
/// ready; waiting for a connection happens inside the call, bounded by the
/// response timeout.
#[derive(Debug, Clone)]
pub struct RedisService {
    // One reference count to bump: the service is cloned for every miss.
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    backend: Backend,
    latency: metrics::Histogram,
    errors: metrics::Counter,
}

impl RedisService {
    /// A service for the Redis at `url` (`redis://[user:pass@]host:port[/db]`),
    /// every other setting at its default until set.
    pub fn builder(url: impl Into<String>) -> RedisServiceBuilder {
        RedisServiceBuilder {
            url: url.into(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(5),
            workers: 0,
            tracking: None,
            tls: crate::tls::ClientFiles::default(),
            cluster: None,
            sentinel: None,
            sharded: None,
        }
    }

    fn new(backend: Backend) -> Self {
        Self {
            shared: Arc::new(Shared {
                backend,
                latency: metrics::histogram!("redis_proxy_backend_request_duration_seconds"),
                errors: metrics::counter!("redis_proxy_backend_errors_total"),
            }),
        }
    }

    /// The connection layer underneath, for what else stands on it.
    pub(crate) fn backend(&self) -> &Backend {
        &self.shared.backend
    }

    /// Whether database `db` exists in the backing Redis.
    ///
    /// # Errors
    ///
    /// Redis's error reply (`ERR DB index is out of range`) as
    /// [`crate::Error::Reply`], or why Redis could not be asked.
    pub async fn check_database(&self, db: u16) -> Result<(), crate::Error> {
        Ok(self.shared.backend.check_database(db).await?)
    }

    /// The database the URL names, which keys without one are read in.
    pub fn default_db(&self) -> i64 {
        self.shared.backend.default_db()
    }

    /// Times a request and counts its failure (a key holding another type is
    /// the client's problem, not the backend's).
    async fn measured<T>(
        &self,
        request: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, crate::Error> {
        let start = std::time::Instant::now();
        let result = request.await;
        let took = start.elapsed();
        self.shared.latency.record(took.as_secs_f64());
        crate::metrics::quantiles::MISSES.record(took);
        if matches!(&result, Err(error) if !error.is_wrong_type()) {
            self.shared.errors.increment(1);
        }
        result.map_err(Into::into)
    }

    async fn get(self, key: Key) -> Result<Option<Bytes>, crate::Error> {
        self.measured(self.shared.backend.get(&key)).await
    }

    /// A cached read's request; an error reply is the client's answer, not
    /// cached.
    async fn query(self, query: Query) -> Result<Option<Bytes>, crate::Error> {
        let backend = &self.shared.backend;
        let slot = backend.slot(query.key());
        let request = Outgoing::read(query.request().clone(), query.db(), query.resp3());
        let frame = self.measured(backend.send(slot, request)).await?;
        match frame.error_text() {
            Some(error) => Err(crate::Error::Reply(error.into())),
            None => Ok(Some(compact_reply(frame.bytes))),
        }
    }
}

impl RedisService {
    /// A forwarded command, sent where its target says; its reply as Redis
    /// sent it.
    async fn forward(self, command: Command) -> Result<Bytes, crate::Error> {
        let backend = &self.shared.backend;
        let (db, resp3) = (command.db, command.resp3);
        let request = if command.read_only {
            Outgoing::read(command.request, db, resp3)
        } else {
            Outgoing::write(command.request, db, resp3)
        };
        let frame = match command.target {
            Target::Slot(slot) => backend.send(slot, request).await,
            Target::Everywhere(how) => backend.send_everywhere(request, how).await,
            Target::Scan(args) => backend.scan(args, db, resp3).await,
            Target::Split(parts, how) => {
                let parts = parts
                    .into_iter()
                    .map(|(slot, bytes)| {
                        (
                            slot,
                            Outgoing {
                                bytes,
                                ..request.clone()
                            },
                        )
                    })
                    .collect();
                backend.send_split(parts, how).await
            }
        };
        // Counted, not timed: the histogram is of misses, what a cache costs.
        if frame.is_err() {
            self.shared.errors.increment(1);
        }
        Ok(frame?.bytes)
    }
}

type BoxedLookup = Pin<Box<dyn Future<Output = Result<Option<Bytes>, crate::Error>> + Send>>;

impl Service<Key> for RedisService {
    type Response = Option<Bytes>;
    type Error = crate::Error;
    // Boxed: a miss costs a network round trip, next to which one allocation
    // is noise.
    type Future = BoxedLookup;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, key: Key) -> Self::Future {
        Box::pin(self.clone().get(key))
    }
}

impl Service<Query> for RedisService {
    type Response = Option<Bytes>;
    type Error = crate::Error;
    type Future = BoxedLookup;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, query: Query) -> Self::Future {
        Box::pin(self.clone().query(query))
    }
}

impl Service<Command> for RedisService {
    type Response = Bytes;
    type Error = crate::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Bytes, crate::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, command: Command) -> Self::Future {
        Box::pin(self.clone().forward(command))
    }
}
