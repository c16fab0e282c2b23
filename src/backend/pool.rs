//! The bb8 connection manager: redis-rs multiplexed connections that remember
//! when they broke, so the pool never hands a dead one out again, and that, with
//! tracking on, report Redis's invalidation messages and their own loss.

use std::sync::{Arc, Mutex, PoisonError};

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, FromRedisValue, IntoConnectionInfo, ProtocolVersion, PushInfo,
    PushKind, RedisError, Value,
};

use super::RedisUrl;
use super::{Error, Invalidation, InvalidationSink, Options};
use crate::task::AbortOnDrop;

/// Opens connections to one Redis for bb8.
#[derive(Clone)]
pub(crate) struct Manager {
    client: Client,
    config: AsyncConnectionConfig,
    tracking: Option<Tracking>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("client", &self.client)
            .field("tracking", &self.tracking.is_some())
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

impl Manager {
    /// A manager for `url` with the timeouts in `options`.
    ///
    /// # Errors
    ///
    /// Returns redis-rs's error when the URL is not usable.
    pub(crate) fn new(url: &RedisUrl, options: &Options) -> Result<Self, RedisError> {
        let mut info = url.as_str().into_connection_info()?;
        let mut config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout));
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
            client: Client::open(info)?,
            config,
            tracking: options.tracking.clone().map(|sink| Tracking {
                sink,
                ping_timeout: options.connect_timeout,
            }),
        })
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

    /// Runs one command on this connection; see [`Handle::query`].
    ///
    /// # Errors
    ///
    /// [`Error::Reply`] for an error reply, [`Error::Connection`] otherwise.
    pub(crate) async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, Error> {
        self.handle.query(cmd).await
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
    type Error = RedisError;

    async fn connect(&self) -> Result<Connection, RedisError> {
        let mut inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let broken = Arc::new(AtomicBool::new(false));
        let mut pinger = None;
        if let Some(tracking) = &self.tracking {
            // Before the connection reads its first key: every key read on it is
            // tracked, or the connection is never used.
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .query_async::<()>(&mut inner)
                .await?;
            pinger = Some(AbortOnDrop(tokio::spawn(watch(
                inner.clone(),
                broken.clone(),
                tracking.clone(),
            ))));
        }
        Ok(Connection {
            handle: Handle { inner, broken },
            _pinger: pinger,
        })
    }

    /// Checked on every checkout, so it costs no round trip: a connection that a
    /// request (holding a handle) found broken after it went back to the pool is
    /// discarded here instead of being handed out again.
    async fn is_valid(&self, conn: &mut Connection) -> Result<(), RedisError> {
        if conn.is_broken() {
            return Err(RedisError::from((
                redis::ErrorKind::Io,
                "connection is broken",
            )));
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

/// Keeps the latest connection error bb8 reported, so that a request that timed
/// out waiting for a connection can say why (bb8 itself only says "timed out").
#[derive(Debug, Clone, Default)]
pub(super) struct LastError(Arc<Mutex<Option<String>>>);

impl LastError {
    pub(super) fn get(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl bb8::ErrorSink<RedisError> for LastError {
    fn sink(&self, error: RedisError) {
        tracing::warn!(%error, "connecting to redis failed");
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<RedisError>> {
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
