//! The bb8 connection manager: redis-rs multiplexed connections that remember
//! when they broke, so the pool never hands a dead one out again, and that, with
//! tracking on, report Redis's invalidation messages and their own loss.
//!
//! The manager opens the socket itself and hands it to redis-rs for the
//! handshake, so each step has its own bound and its own message: the TCP
//! connect is bounded by `--redis-connect-timeout`, the handshake (`HELLO`,
//! `AUTH`, `SELECT`, `CLIENT TRACKING`) by `--request-timeout`. And when Redis
//! accepts a connection only to refuse it (`-ERR max number of clients
//! reached`, then a close), the reason is read and reported rather than lost
//! behind the reset that follows.

use std::sync::{Arc, Mutex, PoisonError};

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo,
    ProtocolVersion, PushInfo, PushKind, RedisError, Value,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::RedisUrl;
use super::{Error, Invalidation, InvalidationSink, Options};
use crate::task::AbortOnDrop;

/// A byte stream to Redis: TCP, or TLS over it.
pub(crate) trait RawStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawStream for T {}

/// Opens connections to one Redis for bb8.
#[derive(Clone)]
pub(crate) struct Manager {
    info: ConnectionInfo,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    tracking: Option<Tracking>,
    /// TLS to Redis (`rediss://`): the proxy runs the TLS handshake and hands
    /// redis-rs the encrypted stream.
    tls: Option<crate::tls::ClientTls>,
    /// Connections run `READONLY` (a cluster replica read from).
    readonly: bool,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("addr", &self.info.addr().to_string())
            .field("tracking", &self.tracking.is_some())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// What a tracked connection needs to watch itself.
#[derive(Clone)]
struct Tracking {
    sink: InvalidationSink,
    ping_timeout: Duration,
}

/// How often a tracked connection is pinged.
pub(crate) const TRACKING_PING_INTERVAL: Duration = Duration::from_secs(1);

/// How long a refused connection is given to say why.
const REFUSAL_WAIT: Duration = Duration::from_millis(200);

impl Manager {
    /// A manager for `url` with the timeouts in `options`.
    ///
    /// # Errors
    ///
    /// Returns redis-rs's error when the URL is not usable.
    pub(super) fn new(url: &RedisUrl, options: &Options) -> Result<Self, RedisError> {
        let mut info = url.plain().as_str().into_connection_info()?;
        let mut config =
            AsyncConnectionConfig::new().set_response_timeout(Some(options.response_timeout));
        if let Some(sink) = &options.tracking {
            // Invalidations arrive as RESP3 push messages on the connection that
            // read the key, in order with its replies.
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            info = info.set_redis_settings(settings);
            let sink = sink.clone();
            config = config.set_push_sender(move |push: PushInfo| {
                if let Some(invalidation) = invalidation(push) {
                    sink(invalidation);
                }
                Ok::<(), Infallible>(())
            });
        }
        Ok(Self {
            info,
            config,
            connect_timeout: options.connect_timeout,
            handshake_timeout: options.response_timeout,
            tracking: options.tracking.clone().map(|sink| Tracking {
                sink,
                ping_timeout: options.connect_timeout,
            }),
            tls: options.tls.clone(),
            readonly: options.readonly,
        })
    }

    /// A TCP connection to Redis, within the connect timeout.
    async fn connect_tcp(&self, host: &str, port: u16) -> Result<TcpStream, Error> {
        let connect = TcpStream::connect((host, port));
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                return Err(Error::Unavailable(format!(
                    "cannot connect to {host}:{port}: {error}"
                )));
            }
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "no TCP connection to {host}:{port} within {} (--redis-connect-timeout)",
                    humantime::format_duration(self.connect_timeout)
                )));
            }
        };
        // Requests are small and pipelined already: send them without delay.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Why Redis closed a new connection during the handshake: what it sends a
    /// fresh connection before closing it (`-ERR max number of clients
    /// reached`), if anything, within a moment.
    async fn refusal_reason(&self, host: &str, port: u16) -> Option<String> {
        let mut probe = self.connect_tcp(host, port).await.ok()?;
        let mut line = [0u8; 256];
        let n = tokio::time::timeout(REFUSAL_WAIT, probe.read(&mut line))
            .await
            .ok()?
            .ok()?;
        let text = std::str::from_utf8(line.get(..n)?).ok()?;
        let reason = text.strip_prefix('-')?.lines().next()?.trim();
        (!reason.is_empty()).then(|| reason.to_owned())
    }

    /// A connection to Redis that is not redis-rs's: TCP (and TLS for
    /// `rediss://`) within the connect timeout, no handshake. The forwarding
    /// path speaks RESP on it itself (see `crate::forward`).
    pub(crate) async fn open_raw(&self) -> Result<Box<dyn RawStream>, Error> {
        let (host, port) = self.host_port()?;
        let stream = self.connect_tcp(&host, port).await?;
        match &self.tls {
            None => Ok(Box::new(stream)),
            Some(tls) => {
                let handshake = tls.connect(&host, stream);
                match tokio::time::timeout(self.handshake_timeout, handshake).await {
                    Ok(Ok(stream)) => Ok(Box::new(stream)),
                    Ok(Err(error)) => Err(Error::Unavailable(format!(
                        "TLS handshake with Redis failed: {error}"
                    ))),
                    Err(_) => Err(Error::Unavailable(
                        "no TLS handshake with Redis within --request-timeout".into(),
                    )),
                }
            }
        }
    }

    /// The user, password and database a connection authenticates and selects.
    pub(crate) fn login(&self) -> (Option<String>, Option<String>, i64) {
        let settings = self.info.redis_settings();
        (
            settings.username().map(str::to_owned),
            settings.password().map(str::to_owned),
            settings.db(),
        )
    }

    /// The bound on a handshake and on waiting for a reply.
    pub(crate) fn response_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The host and port the URL names.
    fn host_port(&self) -> Result<(String, u16), Error> {
        match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => Ok((host.clone(), *port)),
            other => Err(Error::Unavailable(format!(
                "cannot connect to {other}: only redis:// addresses are supported"
            ))),
        }
    }

    async fn open(&self) -> Result<MultiplexedConnection, Error> {
        let (host, port) = self.host_port()?;
        let stream = self.connect_tcp(&host, port).await?;
        // The connection's driver task: its type differs with the stream's.
        type Driver = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
        let handshake = async {
            let settings = self.info.redis_settings();
            match &self.tls {
                None => {
                    MultiplexedConnection::new_with_config(settings, stream, self.config.clone())
                        .await
                        .map(|(connection, driver)| (connection, Box::pin(driver) as Driver))
                }
                Some(tls) => {
                    let stream = tls.connect(&host, stream).await.map_err(|error| {
                        RedisError::from((
                            redis::ErrorKind::Io,
                            "TLS handshake with Redis failed",
                            error.to_string(),
                        ))
                    })?;
                    MultiplexedConnection::new_with_config(settings, stream, self.config.clone())
                        .await
                        .map(|(connection, driver)| (connection, Box::pin(driver) as Driver))
                }
            }
        };
        let (mut connection, driver) = match tokio::time::timeout(self.handshake_timeout, handshake)
            .await
        {
            Ok(Ok(opened)) => opened,
            Ok(Err(error))
                if self.tls.is_none() && (error.is_io_error() || error.is_connection_dropped()) =>
            {
                // Redis may have accepted the connection only to refuse it (in
                // the clear: a refusal over TLS cannot be read on a new socket).
                return Err(Error::Unavailable(
                    match self.refusal_reason(&host, port).await {
                        Some(reason) => reason,
                        None => format!("connection to {host}:{port} failed: {error}"),
                    },
                ));
            }
            Ok(Err(error)) => return Err(Error::Unavailable(error.to_string())),
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "no answer to the connection handshake from {host}:{port} within {} (--request-timeout)",
                    humantime::format_duration(self.handshake_timeout)
                )));
            }
        };
        tokio::spawn(driver);
        if self.readonly {
            // A cluster replica answers reads of its primary's slots only after
            // READONLY.
            self.set_up(&mut connection, redis::cmd("READONLY"), "READONLY")
                .await?;
        }
        if self.tracking.is_some() {
            // Before the connection reads its first key: every key read on it is
            // tracked, or the connection is never used.
            let mut tracking = redis::cmd("CLIENT");
            tracking.arg("TRACKING").arg("ON");
            self.set_up(&mut connection, tracking, "CLIENT TRACKING ON")
                .await?;
        }
        Ok(connection)
    }

    /// Runs `command` on a new connection before it is used, within the
    /// handshake's bound.
    async fn set_up(
        &self,
        connection: &mut MultiplexedConnection,
        command: redis::Cmd,
        name: &str,
    ) -> Result<(), Error> {
        let run = command.query_async::<()>(connection);
        match tokio::time::timeout(self.handshake_timeout, run).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::from_redis(&error)),
            Err(_) => Err(Error::Unavailable(format!(
                "no answer to {name} within --request-timeout"
            ))),
        }
    }
}

/// A pooled connection to Redis.
#[derive(Debug)]
pub(crate) struct Connection {
    handle: Handle,
    /// With tracking: the task pinging this connection, stopped with it.
    _pinger: Option<AbortOnDrop>,
}

/// A handle to a pooled connection that can be used after the connection went
/// back to the pool. A multiplexed connection carries any number of requests at
/// once, so a request takes a handle and returns the connection to the pool at
/// once: the pool's size bounds connections, not requests in flight.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    inner: MultiplexedConnection,
    broken: Arc<AtomicBool>,
}

impl Connection {
    /// A handle for requests; the connection itself can go back to the pool.
    pub(crate) fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Whether a command failed on this connection in a way that retires it.
    pub(crate) fn is_broken(&self) -> bool {
        self.handle.broken.load(Ordering::Relaxed)
    }
}

impl Handle {
    /// Runs one command; a failure of the connection itself (not an error reply)
    /// marks it broken so the pool drops it.
    ///
    /// # Errors
    ///
    /// [`Error::Reply`] for an error reply, [`Error::Connection`] otherwise.
    pub(crate) async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, Error> {
        let result = cmd.query_async(&mut self.inner).await;
        result.map_err(|e| self.failed(&e))
    }

    /// Runs a pipeline, like [`Handle::query`] runs one command.
    ///
    /// # Errors
    ///
    /// [`Error::Reply`] for an error reply the pipeline does not ignore,
    /// [`Error::Connection`] otherwise.
    pub(crate) async fn query_pipeline<T: FromRedisValue>(
        &mut self,
        pipeline: &redis::Pipeline,
    ) -> Result<T, Error> {
        let result = pipeline.query_async(&mut self.inner).await;
        result.map_err(|e| self.failed(&e))
    }

    /// Marks the connection broken when `error` says it failed (rather than
    /// Redis replying with an error), and says what went wrong.
    fn failed(&self, error: &RedisError) -> Error {
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_unrecoverable_error()
            || error.is_timeout()
        {
            self.broken.store(true, Ordering::Relaxed);
        }
        Error::from_redis(error)
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Connection;
    type Error = Error;

    async fn connect(&self) -> Result<Connection, Error> {
        let inner = self.open().await?;
        let broken = Arc::new(AtomicBool::new(false));
        let pinger = self.tracking.as_ref().map(|tracking| {
            AbortOnDrop(tokio::spawn(watch(
                inner.clone(),
                broken.clone(),
                tracking.clone(),
            )))
        });
        Ok(Connection {
            handle: Handle { inner, broken },
            _pinger: pinger,
        })
    }

    /// Checked on every checkout, so it costs no round trip: a connection that a
    /// request (holding a handle) found broken after it went back to the pool is
    /// discarded here instead of being handed out again.
    async fn is_valid(&self, conn: &mut Connection) -> Result<(), Error> {
        if conn.is_broken() {
            return Err(Error::Connection("connection is broken".into()));
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.is_broken()
    }
}

/// Pings a tracked connection every [`TRACKING_PING_INTERVAL`]. A connection that
/// does not answer may be cut without either side having seen it close; Redis's
/// invalidations for what it read could be lost, so the cache is flushed and the
/// connection retired.
async fn watch(mut probe: MultiplexedConnection, broken: Arc<AtomicBool>, tracking: Tracking) {
    let mut ticks = tokio::time::interval(TRACKING_PING_INTERVAL);
    let ping_cmd = redis::cmd("PING");
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let ping = ping_cmd.query_async::<()>(&mut probe);
        if !matches!(
            tokio::time::timeout(tracking.ping_timeout, ping).await,
            Ok(Ok(()))
        ) {
            tracing::warn!("a tracked redis connection stopped answering PING; flushing the cache");
            broken.store(true, Ordering::Relaxed);
            (tracking.sink)(Invalidation::All);
            return;
        }
    }
}

/// What a push message means for the cache, if anything.
fn invalidation(push: PushInfo) -> Option<Invalidation> {
    match push.kind {
        // Redis forgets what a closed connection had read: nothing will tell the
        // proxy when those keys change.
        PushKind::Disconnection => Some(Invalidation::All),
        PushKind::Invalidate => {
            let mut keys = Vec::new();
            for value in push.data {
                match value {
                    // A null invalidation: FLUSHALL or FLUSHDB.
                    Value::Nil => return Some(Invalidation::All),
                    Value::Array(items) => {
                        keys.extend(items.into_iter().filter_map(|item| match item {
                            Value::BulkString(key) => Some(Bytes::from(key)),
                            _ => None,
                        }))
                    }
                    Value::BulkString(key) => keys.push(Bytes::from(key)),
                    _ => {}
                }
            }
            Some(Invalidation::Keys(keys))
        }
        _ => None,
    }
}

/// Keeps the latest connection error bb8 reported, so that a request that
/// waits for a connection can say why none comes (bb8 itself only says "timed
/// out"), and tells the waiting requests at once.
#[derive(Debug, Clone, Default)]
pub(super) struct LastError(Arc<(Mutex<Option<String>>, tokio::sync::Notify)>);

impl LastError {
    pub(super) fn get(&self) -> Option<String> {
        self.0
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Completes when the next connection attempt fails.
    pub(super) fn failed(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.1.notified()
    }
}

impl bb8::ErrorSink<Error> for LastError {
    fn sink(&self, error: Error) {
        tracing::warn!(%error, "connecting to redis failed");
        let reason = match error {
            Error::Unavailable(reason) => reason,
            other => other.to_string(),
        };
        *self.0.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason);
        self.0.1.notify_waiters();
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<Error>> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(kind: PushKind, data: Vec<Value>) -> PushInfo {
        PushInfo { kind, data }
    }

    #[test]
    fn invalidate_pushes_name_keys_or_everything() {
        let keys = push(
            PushKind::Invalidate,
            vec![Value::Array(vec![
                Value::BulkString(b"a".to_vec()),
                Value::BulkString(b"b".to_vec()),
            ])],
        );
        assert_eq!(
            invalidation(keys),
            Some(Invalidation::Keys(vec![Bytes::from("a"), Bytes::from("b")]))
        );
        assert_eq!(
            invalidation(push(PushKind::Invalidate, vec![Value::Nil])),
            Some(Invalidation::All)
        );
        assert_eq!(
            invalidation(push(PushKind::Disconnection, vec![])),
            Some(Invalidation::All)
        );
        assert_eq!(invalidation(push(PushKind::Message, vec![])), None);
    }
}
