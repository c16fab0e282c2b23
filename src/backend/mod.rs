//! The backing Redis: a bb8 pool of redis-rs connections and [`RedisService`],
//! the Tower service that answers a key with Redis's `GET`.
//!
//! The pool's manager is ours rather than bb8-redis's because bb8-redis never
//! reports a connection as broken: a multiplexed connection whose socket died
//! would go back into the pool and fail every request handed to it until the
//! pool's idle reaper noticed, minutes later. Here a request that sees an I/O
//! error, a dropped connection or a response timeout marks its connection broken
//! and bb8 discards it on return.
//!
//! A request abandoned halfway (its caller timed out) cannot corrupt the next
//! reply on the same connection: redis-rs's multiplexed connection matches
//! replies to requests in order and discards the reply of a dropped request.
//!
//! Concurrent GETs are sent together as one pipeline (see `batch`). Errors are
//! the crate's protocol-neutral [`crate::Error`] from this module's boundary on:
//! Redis's error replies become [`crate::Error::Reply`], everything that keeps
//! Redis from answering [`crate::Error::Unavailable`], its response timeout
//! [`crate::Error::Timeout`].

mod batch;
mod cluster;
mod health;
mod pool;
mod url;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use redis::RedisError;
use tower::Service;

use crate::lookup::{Key, Query};

pub(crate) use cluster::Cluster;
pub use cluster::{ReadFrom, slot};
pub use health::{Health, run_pinger};
pub use url::RedisUrl;

pub(crate) use pool::{Manager, RawStream};

/// Why a key could not be read from Redis, inside this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Error {
    /// No connection to Redis could be had in time.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error reply, such as `WRONGTYPE …`.
    #[error("{0}")]
    Reply(String),
    /// The connection failed during the request.
    #[error("redis connection failed: {0}")]
    Connection(String),
    /// Redis did not reply within the response timeout; the connection was retired.
    #[error("redis did not reply in time")]
    Timeout,
}

impl Error {
    /// Whether Redis refused because the key holds a value that is not a string.
    pub(crate) fn is_wrong_type(&self) -> bool {
        matches!(self, Error::Reply(reply) if reply.starts_with("WRONGTYPE"))
    }

    fn from_redis(error: &RedisError) -> Self {
        if error.is_timeout() {
            return Error::Timeout;
        }
        match error.code() {
            Some(code) if error.kind() != redis::ErrorKind::Io => {
                Error::Reply(match error.detail() {
                    Some(detail) => format!("{code} {detail}"),
                    None => code.to_owned(),
                })
            }
            _ => Error::Connection(error.to_string()),
        }
    }
}

impl From<Error> for crate::Error {
    fn from(error: Error) -> Self {
        match error {
            // Redis's own response timeout and the stack's mean the same to a client.
            Error::Timeout => crate::Error::Timeout,
            Error::Reply(reply) => crate::Error::Reply(reply.into()),
            Error::Unavailable(_) | Error::Connection(_) => crate::Error::Unavailable {
                message: error.to_string().into(),
                cause: None,
            },
        }
    }
}

/// What Redis said about keys the proxy has read (with `--invalidation tracking`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// These keys changed or went away.
    Keys(Vec<Bytes>),
    /// Anything may have changed: a `FLUSHALL`/`FLUSHDB`, or a tracked connection
    /// was lost (Redis forgets what a closed connection read, so no further
    /// invalidations would come for those keys).
    All,
}

/// Receives invalidations, synchronously, from the connection driver that read
/// them: before any reply that follows them on that connection is delivered.
pub type InvalidationSink = Arc<dyn Fn(Invalidation) + Send + Sync>;

/// How the pool talks to Redis: what [`RedisServiceBuilder`] collects.
#[derive(Clone)]
struct Options {
    pool_size: u32,
    /// Worker threads, each with a lane of its own (0: one lane for every thread).
    workers: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
    tracking: Option<InvalidationSink>,
    /// TLS for a `rediss://` URL; `None` with one: the system's roots.
    tls: Option<crate::tls::ClientTls>,
    /// Every connection runs `READONLY` first (a cluster replica read from).
    readonly: bool,
    /// The URL names a Redis Cluster's seed nodes; reads go where this says.
    cluster: Option<ReadFrom>,
}

/// How a [`RedisService`] is made: [`RedisService::builder`].
#[derive(Clone)]
#[must_use]
pub struct RedisServiceBuilder {
    url: String,
    options: Options,
}

impl std::fmt::Debug for RedisServiceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServiceBuilder")
            .field("pool_size", &self.options.pool_size)
            .field("connect_timeout", &self.options.connect_timeout)
            .field("response_timeout", &self.options.response_timeout)
            .field("tracking", &self.options.tracking.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisServiceBuilder {
    /// Connections kept open to Redis at most (default 16).
    pub fn pool_size(mut self, size: u32) -> Self {
        self.options.pool_size = size.max(1);
        self
    }

    /// Bound on opening one connection's TCP connection (default 1 s); the
    /// handshake after it is bounded by the response timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// A reply not received by then fails its request and retires its
    /// connection; also the bound on a connection's handshake and on waiting for
    /// a pooled connection (default 5 s).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.options.response_timeout = timeout;
        self
    }

    /// Gives each of `workers` worker threads (see `crate::worker`) a lane of its
    /// own: a pool of `pool_size / workers` connections (rounded up) and a batch
    /// queue, so that a worker's misses never wait on another thread. Threads
    /// that are not workers share one more lane.
    pub(crate) fn workers(mut self, workers: usize) -> Self {
        self.options.workers = workers;
        self
    }

    /// TLS to Redis for a `rediss://` URL, from the proxy's configuration: its CA
    /// and client certificate (without it, a `rediss://` URL is verified against
    /// the system's roots).
    pub(crate) fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.options.tls = Some(tls);
        self
    }

    /// The URL names the seed nodes of a Redis Cluster (comma-separated): keys
    /// are read from the node that serves their slot, from a replica with
    /// [`ReadFrom::ReplicaPreferred`].
    pub(crate) fn cluster(mut self, read_from: ReadFrom) -> Self {
        self.options.cluster = Some(read_from);
        self
    }

    /// Turns on server-assisted invalidation: every connection speaks RESP3 and
    /// runs `CLIENT TRACKING ON` before it is used, and what Redis says about
    /// changed keys goes to `sink`.
    pub fn tracking(mut self, sink: InvalidationSink) -> Self {
        self.options.tracking = Some(sink);
        self
    }

    /// A service over a new pool. No connection is opened until the first
    /// request, so the proxy starts (and serves what it can) while Redis is down.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Unavailable`] when redis-rs rejects the URL.
    pub fn build(mut self) -> Result<RedisService, crate::Error> {
        let url = RedisUrl::parse(&self.url).map_err(crate::Error::unavailable)?;
        if url.is_tls() && self.options.tls.is_none() {
            let tls = crate::tls::ClientTls::load(&crate::tls::ClientFiles::default())
                .map_err(|error| crate::Error::unavailable(error.to_string()))?;
            self.options.tls = Some(tls);
        }
        if !url.is_tls() {
            self.options.tls = None;
        }
        if let Some(read_from) = self.options.cluster.take() {
            let seeds = url.nodes();
            let service = RedisService::new(&seeds[0], self.options.clone())?;
            let cluster = cluster::Cluster::new(seeds, self.options, read_from);
            let _ = service.shared.cluster.set(Arc::new(cluster));
            return Ok(service);
        }
        if url.nodes().len() > 1 {
            return Err(crate::Error::unavailable(
                "the Redis URL names several nodes: only a cluster (--redis-mode cluster) has several",
            ));
        }
        RedisService::new(&url, self.options).map_err(Into::into)
    }
}

/// Reads one key from the backing Redis with `GET`.
///
/// Cloning is cheap: clones share one pool. The service is always ready; waiting
/// for a free connection happens inside the call, bounded by the response
/// timeout.
#[derive(Debug, Clone)]
pub struct RedisService {
    // One reference count to bump: the service is cloned for every miss.
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// One lane per worker thread, and one for every other thread (the last).
    lanes: Box<[Lane]>,
    /// The database the URL names: the one every pooled connection has selected.
    default_db: i64,
    /// How long a request waits for a pooled connection.
    wait_timeout: Duration,
    latency: metrics::Histogram,
    errors: metrics::Counter,
    /// How connections are opened: for the forwarding path's own.
    manager: Manager,
    /// Transparent mode, when on: what cached reads other than `GET` run on.
    forwarding: std::sync::OnceLock<Arc<crate::forward::Forwarding>>,
    /// With `--redis-mode cluster`: the cluster every key is read from (the
    /// lanes above are then the first seed's, unused for keys).
    cluster: std::sync::OnceLock<Arc<cluster::Cluster>>,
}

/// What one thread's misses go through: a pool and a batch queue of its own.
#[derive(Debug)]
struct Lane {
    pool: bb8::Pool<Manager>,
    last_connect_error: pool::LastError,
    queue: batch::Queue,
}

impl RedisService {
    /// A service for the Redis at `url` (`redis://[user:pass@]host:port[/db]`),
    /// every other setting at its default until set.
    pub fn builder(url: impl Into<String>) -> RedisServiceBuilder {
        RedisServiceBuilder {
            url: url.into(),
            options: Options {
                pool_size: 16,
                workers: 0,
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(5),
                tracking: None,
                tls: None,
                readonly: false,
                cluster: None,
            },
        }
    }

    fn new(url: &RedisUrl, options: Options) -> Result<Self, Error> {
        let manager = Manager::new(url, &options).map_err(|e| Error::Unavailable(e.to_string()))?;
        let lanes = options.workers + 1;
        let per_lane = options.pool_size.div_ceil(options.workers.max(1) as u32);
        let lane = || {
            let last_connect_error = pool::LastError::default();
            let pool = bb8::Pool::builder()
                .max_size(per_lane)
                // A request waits for a connection as long as it may wait at
                // all; a failed attempt to connect ends the wait at once (see
                // `connection`).
                .connection_timeout(options.response_timeout)
                .retry_connection(false)
                // Checkout checks only the connection's broken flag (no PING):
                // see `Manager::is_valid`.
                .test_on_check_out(true)
                // Requests hold a connection only to take a handle, so LIFO hands
                // the same few connections out again and again: concurrent misses
                // share them, and redis-rs writes their GETs in one go (as
                // twemproxy does with one server connection) instead of one
                // system call each.
                .queue_strategy(bb8::QueueStrategy::Lifo)
                .error_sink(Box::new(last_connect_error.clone()))
                .build_unchecked(manager.clone());
            Lane {
                pool,
                last_connect_error,
                queue: batch::Queue::default(),
            }
        };
        Ok(Self {
            shared: Arc::new(Shared {
                lanes: (0..lanes).map(|_| lane()).collect(),
                default_db: url.db(),
                wait_timeout: options.response_timeout,
                latency: metrics::histogram!("redis_proxy_backend_request_duration_seconds"),
                errors: metrics::counter!("redis_proxy_backend_errors_total"),
                manager,
                forwarding: std::sync::OnceLock::new(),
                cluster: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The index of the lane of the calling thread.
    fn lane_index(&self) -> usize {
        let others = self.shared.lanes.len() - 1;
        crate::worker::current().map_or(others, |worker| worker.min(others))
    }

    fn lane(&self) -> &Lane {
        &self.shared.lanes[self.lane_index()]
    }

    /// A pooled connection. While the pool has none, a failed attempt to open
    /// one fails the wait at once with Redis's reason, rather than at the end of
    /// the wait with no reason.
    async fn connection(&self) -> Result<bb8::PooledConnection<'static, Manager>, Error> {
        let (shared, lane) = (&self.shared, self.lane());
        let unavailable = |cause: Option<String>| {
            Error::Unavailable(cause.unwrap_or_else(|| "no connection could be opened".into()))
        };
        loop {
            let failed = lane.last_connect_error.failed();
            tokio::select! {
                got = lane.pool.get_owned() => return got.map_err(|e| match e {
                    bb8::RunError::User(e) => e,
                    bb8::RunError::TimedOut if lane.pool.state().connections == 0 => {
                        unavailable(lane.last_connect_error.get())
                    }
                    bb8::RunError::TimedOut => Error::Unavailable(format!(
                        "every pooled connection stayed busy for {}",
                        humantime::format_duration(shared.wait_timeout)
                    )),
                }),
                () = failed => {
                    if lane.pool.state().connections == 0 {
                        return Err(unavailable(lane.last_connect_error.get()));
                    }
                }
            }
        }
    }

    /// Whether a request could be served now: a pooled connection answers
    /// `PING`. What readiness reports.
    async fn check(&self) -> Result<(), Error> {
        if let Some(cluster) = self.shared.cluster.get() {
            return cluster.check().await;
        }
        self.check_node().await
    }

    /// [`RedisService::check`] of this one node.
    async fn check_node(&self) -> Result<(), Error> {
        let mut handle = self.connection().await?.handle();
        handle.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    /// How the service opens connections to Redis.
    pub(crate) fn manager(&self) -> &Manager {
        &self.shared.manager
    }

    /// The cluster behind the service, in cluster mode.
    pub(crate) fn cluster(&self) -> Option<Arc<Cluster>> {
        self.shared.cluster.get().cloned()
    }

    /// Serves cached reads other than `GET` (see [`Query`]) through
    /// transparent mode's shared connections.
    pub(crate) fn set_forwarding(&self, forwarding: Arc<crate::forward::Forwarding>) {
        let _ = self.shared.forwarding.set(forwarding);
    }

    async fn get(self, key: Key) -> Result<Option<Bytes>, crate::Error> {
        if let Some(cluster) = self.shared.cluster.get() {
            return cluster.clone().get(key).await;
        }
        self.get_from_node(key).await
    }

    /// A cached read other than `GET`: its request, run through transparent
    /// mode's shared connections.
    async fn query(self, query: Query) -> Result<Option<Bytes>, crate::Error> {
        let start = std::time::Instant::now();
        let Some(forwarding) = self.shared.forwarding.get() else {
            return Err(crate::Error::internal(
                "a cached read without transparent mode",
            ));
        };
        let result = forwarding.clone().fetch(query).await;
        self.shared.latency.record(start.elapsed().as_secs_f64());
        result
    }

    /// A read of `key` from this one node (see [`RedisService::get`]).
    async fn get_from_node(self, key: Key) -> Result<Option<Bytes>, crate::Error> {
        let start = std::time::Instant::now();
        let (reply, first) = self.lane().queue.join(key);
        if first {
            tokio::spawn(self.clone().flush());
        }
        let result = reply
            .await
            .unwrap_or_else(|_| Err(Error::Connection("the batch was abandoned".into())));
        self.shared.latency.record(start.elapsed().as_secs_f64());
        // A key holding another type is the client's problem, not the backend's.
        if matches!(&result, Err(e) if !e.is_wrong_type()) {
            self.shared.errors.increment(1);
        }
        result.map_err(Into::into)
    }

    /// Sends the GETs queued by now as one pipeline and answers each.
    async fn flush(self) {
        let this = &self;
        batch::flush(
            &self.lane().queue,
            |keys| async move { this.fetch(&keys).await },
        )
        .await;
    }

    async fn fetch(&self, keys: &[Key]) -> Result<Vec<batch::Reply>, Error> {
        let handle = self.connection().await?.handle();
        match self.fetch_on(handle, keys).await {
            // A pooled connection can die while idle (Redis restarted, or killed
            // the client): the pool only learns it when a request fails on it,
            // and other pooled connections may have died with it. GET is
            // idempotent, so the batch is tried once more, on a connection opened
            // for it (which then joins the pool).
            Err(Error::Connection(cause)) => {
                tracing::debug!(%cause, "pooled connection was dead; retrying on a new one");
                let pool = &self.lane().pool;
                let fresh = pool.dedicated_connection().await?;
                let fetched = self.fetch_on(fresh.handle(), keys).await;
                let _ = pool.add(fresh);
                fetched
            }
            other => other,
        }
    }

    /// Sends one `GET` per key as a pipeline on `handle` (a pooled connection
    /// goes back to the pool at once; the batch runs on a handle to it). Keys in
    /// another database than the
    /// connection's are grouped behind a `SELECT` of theirs, and the pipeline
    /// ends by selecting the connection's own again, so every pipeline leaves
    /// its connection as it found it (Redis runs one connection's commands in
    /// order, and a pipeline is written whole).
    async fn fetch_on(
        &self,
        mut handle: pool::Handle,
        keys: &[Key],
    ) -> Result<Vec<batch::Reply>, Error> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&i| keys[i].db());
        // What each reply of the pipeline answers: a key (its index) or a SELECT.
        let mut answers = Vec::with_capacity(keys.len() + 2);
        let mut pipeline = redis::pipe();
        let mut selected = None;
        for &i in &order {
            let db = keys[i].db();
            if db != selected {
                let target = db.map_or(self.shared.default_db, i64::from);
                pipeline.cmd("SELECT").arg(target);
                answers.push(None);
                selected = db;
            }
            pipeline.cmd("GET").arg(&keys[i][..]);
            answers.push(Some(i));
        }
        if selected.is_some() {
            pipeline.cmd("SELECT").arg(self.shared.default_db);
            answers.push(None);
        }
        // Error replies come back per command instead of failing the pipeline.
        pipeline.ignore_errors();
        let replies: Vec<redis::RedisResult<redis::Value>> =
            handle.query_pipeline(&pipeline).await?;
        if replies.len() != answers.len() {
            return Err(Error::Connection(format!(
                "{} replies to {} commands",
                replies.len(),
                answers.len()
            )));
        }
        let mut out: Vec<batch::Reply> = vec![Ok(None); keys.len()];
        // A failed SELECT fails its group's keys: their GETs ran elsewhere.
        let mut failed_select = None;
        for (answer, reply) in answers.into_iter().zip(replies) {
            match answer {
                None => failed_select = reply.err().map(|e| Error::from_redis(&e)),
                Some(i) => {
                    out[i] = match (&failed_select, reply) {
                        (Some(error), _) => Err(error.clone()),
                        (None, Ok(value)) => value_of(value),
                        (None, Err(error)) => Err(Error::from_redis(&error)),
                    };
                }
            }
        }
        Ok(out)
    }

    /// Whether database `db` exists in the backing Redis: `SELECT db` answered
    /// `OK`. The connection selects its own database again in the same
    /// pipeline.
    ///
    /// # Errors
    ///
    /// Redis's error reply (`ERR DB index is out of range`) as
    /// [`crate::Error::Reply`], or why Redis could not be asked.
    pub async fn check_database(&self, db: u16) -> Result<(), crate::Error> {
        if self.shared.cluster.get().is_some() {
            // Redis Cluster has database 0 only.
            return Err(Error::Reply("ERR SELECT is not allowed in cluster mode".into()).into());
        }
        let mut handle = self.connection().await?.handle();
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("SELECT")
            .arg(db)
            .cmd("SELECT")
            .arg(self.shared.default_db)
            .ignore_errors();
        let replies: Vec<redis::RedisResult<redis::Value>> =
            handle.query_pipeline(&pipeline).await?;
        match replies.into_iter().next() {
            Some(Ok(_)) => Ok(()),
            Some(Err(error)) => Err(Error::from_redis(&error).into()),
            None => Err(Error::Connection("no reply to SELECT".into()).into()),
        }
    }

    /// The database the URL names, which keys without one are read in.
    pub fn default_db(&self) -> i64 {
        self.shared.default_db
    }
}

impl RedisService {
    /// `ASKING` then `GET key` on one connection: a read of a slot being
    /// imported by this node (after an `ASK` redirection).
    async fn get_asking(&self, key: &Key) -> Result<Option<Bytes>, crate::Error> {
        let mut handle = self.connection().await?.handle();
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("ASKING")
            .cmd("GET")
            .arg(&key[..])
            .ignore_errors();
        let replies: Vec<redis::RedisResult<redis::Value>> =
            handle.query_pipeline(&pipeline).await?;
        match replies.into_iter().nth(1) {
            Some(Ok(value)) => value_of(value).map_err(Into::into),
            Some(Err(error)) => Err(Error::from_redis(&error).into()),
            None => Err(Error::Connection("no reply to GET after ASKING".into()).into()),
        }
    }
}

/// What a `GET` reply means: a value, absence, or (for anything else) an error.
fn value_of(value: redis::Value) -> batch::Reply {
    match value {
        // `Bytes::from(Vec)` takes the buffer over; the value is not copied.
        redis::Value::BulkString(bytes) => Ok(Some(Bytes::from(bytes))),
        redis::Value::Nil => Ok(None),
        other => Err(Error::Reply(format!(
            "ERR unexpected reply to GET: {other:?}"
        ))),
    }
}

impl Service<Key> for RedisService {
    type Response = Option<Bytes>;
    type Error = crate::Error;
    // Boxed: a miss costs a network round trip, next to which one allocation is
    // noise, and naming the pool's future types is not possible.
    type Future = Pin<Box<dyn Future<Output = Result<Option<Bytes>, crate::Error>> + Send>>;

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
    type Future = Pin<Box<dyn Future<Output = Result<Option<Bytes>, crate::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, query: Query) -> Self::Future {
        Box::pin(self.clone().query(query))
    }
}
