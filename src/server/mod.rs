//! Wiring: builds the backend, cache and stack from a [`Config`], binds the
//! three listeners (HTTP, RESP, admin), serves until the shutdown signal, then
//! drains within the grace period.

mod http_server;
mod listener;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::FutureExt;
use hyper::service::service_fn;
use hyper_util::service::TowerToHyperService;

use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness};
use crate::backend::{self, Invalidation, InvalidationSink, RedisService};
use crate::cache::Cache;
use crate::config::{Config, InvalidationMode};
use crate::http;
use crate::layers::{Stack, StackBuilder};
use crate::metrics::{self, Slots, Sources};
use crate::resp;
use crate::task::AbortOnDrop;

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
    /// A listener's address could not be read.
    #[error("listener failed: {0}")]
    Listener(std::io::Error),
}

/// A proxy with its listeners bound, ready to serve.
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    stack: Stack<RedisService>,
    clients: Slots,
    backend: RedisService,
    cache: Cache,
    http: LimitedListener,
    resp: LimitedListener,
    admin: LimitedListener,
}

impl Proxy {
    /// Builds every part and binds the listeners; nothing is served yet.
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] when an address is taken or not allowed, and
    /// [`Error::Backend`] when the Redis URL is not usable.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        metrics::install();
        let cache =
            Cache::with_policy(config.cache_policy, config.cache_capacity, config.cache_ttl);
        let tracking = (config.invalidation == InvalidationMode::Tracking).then(|| {
            let cache = cache.clone();
            InvalidationSink(Arc::new(move |invalidation| {
                metrics::record_invalidation(&invalidation);
                match invalidation {
                    Invalidation::Keys(keys) => cache.invalidate(&keys),
                    Invalidation::All => cache.flush(),
                }
            }))
        });
        let backend = RedisService::new(
            &config.redis_url,
            &backend::Options {
                pool_size: config.redis_pool_size.get(),
                connect_timeout: config.redis_connect_timeout,
                response_timeout: config.request_timeout,
                tracking,
            },
        )?;
        let clients = Slots::new(config.max_clients.get());
        let stack = StackBuilder {
            clients: clients.clone(),
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
        let admin = bind("--admin-addr", config.admin_addr).await?;
        Ok(Self {
            config,
            stack,
            clients,
            backend,
            cache,
            http,
            resp,
            admin,
        })
    }

    /// The addresses the HTTP, RESP and admin listeners are bound to.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    pub fn local_addrs(&self) -> std::io::Result<[SocketAddr; 3]> {
        Ok([
            self.http.local_addr()?,
            self.resp.local_addr()?,
            self.admin.local_addr()?,
        ])
    }

    /// Serves until `shutdown` completes, then stops accepting on every listener,
    /// lets in-flight requests finish within the configured grace period, and
    /// returns.
    ///
    /// # Errors
    ///
    /// [`Error::Listener`] when a listener's address cannot be read.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let [http_addr, resp_addr, admin_addr] = self.local_addrs().map_err(Error::Listener)?;
        let Proxy {
            config,
            stack,
            clients,
            backend,
            cache,
            http,
            resp,
            admin,
        } = self;
        tracing::info!(
            http = %http_addr,
            resp = %resp_addr,
            admin = %admin_addr,
            redis_url = %config.redis_url,
            cache_ttl = ?config.cache_ttl,
            cache_capacity = config.cache_capacity.get(),
            cache_policy = ?config.cache_policy,
            invalidation = ?config.invalidation,
            max_clients = config.max_clients.get(),
            max_parallel = config.effective_max_parallel().get(),
            request_timeout = ?config.request_timeout,
            max_connections = config.max_connections.get(),
            redis_pool_size = config.redis_pool_size.get(),
            redis_connect_timeout = ?config.redis_connect_timeout,
            shutdown_grace = ?config.shutdown_grace,
            "listening"
        );

        let readiness = Readiness::default();
        let _pinger = AbortOnDrop(tokio::spawn(admin::run_pinger(
            backend,
            readiness.clone(),
            config.redis_connect_timeout + config.request_timeout,
        )));
        let _upkeep = AbortOnDrop(tokio::spawn(metrics::run_upkeep()));
        let stop = CancellationToken::new();
        let _signal = AbortOnDrop(tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                tracing::info!("shutdown signal received; draining in-flight requests");
                stop.cancel();
            }
        }));

        let sources = Sources {
            cache: cache.clone(),
            clients,
            connections: vec![
                ("http", http.slots()),
                ("resp", resp.slots()),
                ("admin", admin.slots()),
            ],
        };
        let resp_shared = Arc::new(resp::Shared::new(
            stack.clone(),
            cache,
            config.max_clients.get(),
            config.max_connections.get(),
            resp_addr.port(),
        ));
        // A client must send its request headers within the request timeout.
        let header_timeout = config.request_timeout;
        let all = async {
            tokio::join!(
                http_server::serve(
                    http,
                    // The key path without a router: every request is a key lookup.
                    service_fn(move |request| {
                        http::respond(stack.clone(), request).map(Ok::<_, Infallible>)
                    }),
                    header_timeout,
                    "http",
                    stop.clone()
                ),
                resp::serve(resp, resp_shared, stop.clone()),
                http_server::serve(
                    admin,
                    TowerToHyperService::new(admin::router(readiness, sources)),
                    header_timeout,
                    "admin",
                    stop.clone()
                ),
            )
        };
        let grace = config.shutdown_grace;
        tokio::select! {
            _ = all => {}
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
