//! The bb8 connection manager: redis-rs multiplexed connections that remember
//! when they broke, so the pool never hands a dead one out again.

use std::sync::{Arc, Mutex, PoisonError};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, FromRedisValue, RedisError};

use super::{Error, Options};
use crate::config::RedisUrl;

/// Opens connections to one Redis for bb8.
#[derive(Debug, Clone)]
pub struct Manager {
    client: Client,
    config: AsyncConnectionConfig,
}

impl Manager {
    /// A manager for `url` with the timeouts in `options`.
    ///
    /// # Errors
    ///
    /// Returns redis-rs's error when the URL is not usable.
    pub fn new(url: &RedisUrl, options: &Options) -> Result<Self, RedisError> {
        Ok(Self {
            client: Client::open(url.as_str())?,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(options.response_timeout)),
        })
    }
}

/// A pooled connection to Redis.
#[derive(Debug)]
pub struct Connection {
    inner: MultiplexedConnection,
    broken: bool,
}

impl Connection {
    /// Runs one command; a failure of the connection itself (not an error reply)
    /// marks it broken so the pool drops it.
    ///
    /// # Errors
    ///
    /// [`Error::Reply`] for an error reply, [`Error::Connection`] otherwise.
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &redis::Cmd) -> Result<T, Error> {
        cmd.query_async(&mut self.inner).await.map_err(|e| {
            if e.is_io_error()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error()
                || e.is_timeout()
            {
                self.broken = true;
            }
            Error::from_redis(&e)
        })
    }
}

impl Connection {
    /// Whether a command failed on this connection in a way that retires it.
    pub fn is_broken(&self) -> bool {
        self.broken
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Connection;
    type Error = RedisError;

    async fn connect(&self) -> Result<Connection, RedisError> {
        let inner = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok(Connection {
            inner,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Connection) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(&mut conn.inner).await
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        conn.broken
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
