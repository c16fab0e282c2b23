//! Wiring: builds the backend, cache and stack from a [`Config`], binds the
//! listeners, serves until the shutdown signal, then drains within the grace period.

mod listener;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::{self, RedisService};
use crate::cache::Cache;
use crate::config::Config;
use crate::http;
use crate::layers::{Stack, StackBuilder};
use crate::resp;

pub use listener::{Limited, LimitedListener};

/// Why the proxy could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({option}): {source}")]
    Bind {
        /// The option that named the address.
        option: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The backend could not be set up.
    #[error(transparent)]
    Backend(#[from] backend::Error),
    /// The HTTP server failed.
    #[error("http server failed: {0}")]
    Serve(std::io::Error),
}

/// A proxy with its listeners bound, ready to serve.
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    stack: Stack<RedisService>,
    backend: RedisService,
    cache: Cache,
    http: LimitedListener,
    resp: LimitedListener,
}

impl Proxy {
    /// Builds every part and binds the listeners; nothing is served yet.
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] when an address is taken or not allowed, and
    /// [`Error::Backend`] when the Redis URL is not usable.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        let backend = RedisService::new(
            &config.redis_url,
            &backend::Options {
                pool_size: config.redis_pool_size.get(),
                connect_timeout: config.redis_connect_timeout,
                response_timeout: config.request_timeout,
            },
        )?;
        let cache = Cache::new(config.cache_capacity, config.cache_ttl);
        let stack = StackBuilder {
            max_clients: config.max_clients.get(),
            max_parallel: config.effective_max_parallel().get(),
            request_timeout: config.request_timeout,
            cache: cache.clone(),
        }
        .build(backend.clone());
        let bind = |option, addr| async move {
            LimitedListener::bind(addr, config.max_connections.get())
                .await
                .map_err(|source| Error::Bind {
                    option,
                    addr,
                    source,
                })
        };
        let http = bind("--http-addr", config.http_addr).await?;
        let resp = bind("--resp-addr", config.resp_addr).await?;
        Ok(Self {
            config,
            stack,
            backend,
            cache,
            http,
            resp,
        })
    }

    /// The address the HTTP listener is bound to.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The address the Redis-protocol listener is bound to.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    pub fn resp_addr(&self) -> std::io::Result<SocketAddr> {
        self.resp.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight
    /// requests finish within the configured grace period, and returns.
    ///
    /// # Errors
    ///
    /// [`Error::Serve`] when the HTTP server fails.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Proxy {
            config,
            stack,
            backend,
            cache,
            http,
            resp,
        } = self;
        let http_addr = http.local_addr().map_err(Error::Serve)?;
        let resp_addr = resp.local_addr().map_err(Error::Serve)?;
        tracing::info!(
            http = %http_addr,
            resp = %resp_addr,
            redis_url = %config.redis_url,
            cache_ttl = ?config.cache_ttl,
            cache_capacity = config.cache_capacity.get(),
            max_clients = config.max_clients.get(),
            max_parallel = config.effective_max_parallel().get(),
            request_timeout = ?config.request_timeout,
            max_connections = config.max_connections.get(),
            redis_pool_size = config.redis_pool_size.get(),
            "listening"
        );
        let _probe = AbortOnDrop(tokio::spawn(async move {
            if let Err(error) = backend.ping().await {
                tracing::warn!(%error, "redis is not reachable yet; misses will fail until it is");
            }
        }));

        let stop = CancellationToken::new();
        let _signal = AbortOnDrop(tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                tracing::info!("shutdown signal received; draining in-flight requests");
                stop.cancel();
            }
        }));

        let resp_shared = Arc::new(resp::Shared::new(
            stack.clone(),
            cache,
            config.max_clients.get(),
            config.max_connections.get(),
            resp_addr.port(),
        ));
        let http_server = axum::serve(http, http::router(stack))
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        let resp_server = resp::serve(resp, resp_shared, stop.clone());
        let both = async {
            let (http_result, ()) = tokio::join!(http_server.into_future(), resp_server);
            http_result
        };
        let grace = config.shutdown_grace;
        tokio::select! {
            result = both => result.map_err(Error::Serve)?,
            () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "grace period over; closing the remaining connections");
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Binds and serves `config` until `shutdown` completes; see [`Proxy`].
///
/// # Errors
///
/// As for [`Proxy::bind`] and [`Proxy::serve`].
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    Proxy::bind(config).await?.serve(shutdown).await
}

/// Owns a background task and stops it when dropped.
#[derive(Debug)]
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
