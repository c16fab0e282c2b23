//! Wiring: builds the backend, cache and stack from a [`Config`], binds the three
//! listeners (HTTP, RESP, admin), serves until the shutdown signal, then drains
//! within the grace period.
//!
//! This is the one place that knows every part; each part knows only its
//! neighbours on the request path (listener → connection → front-end → stack →
//! cache → backend).

mod parts;
mod reload;
mod serve;
mod startup;

pub use reload::{Reloaded, Reloader, SetLogLevel};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::admin::Render;
use crate::auth::Access;
use crate::backend::RedisService;
use crate::config::Config;
use crate::forward::Forwarding;
use crate::layers::Stack;
use crate::net::Listener;
use crate::tls::ServerTls;

/// Why the proxy could not start or keep serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({option}): {source}")]
    Bind {
        /// The option that named the address.
        option: &'static str,
        /// The address.
        addr: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The backend could not be set up.
    #[error("backend: {0}")]
    Backend(#[source] crate::Error),
    /// The worker threads could not start.
    #[error("cannot start the worker threads: {0}")]
    Workers(#[source] std::io::Error),
    /// A TLS certificate, key or CA file cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::Error),
}

/// A proxy with its listeners bound, ready to serve: what the `redis-proxy`
/// binary runs.
///
/// ```no_run
/// use redis_proxy::{Config, Proxy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = Config::from_args_and_env(
///     ["redis-proxy", "--redis-url", "redis://127.0.0.1:6379", "--resp-addr", "127.0.0.1:0"],
///     std::env::vars(),
/// )?;
/// let proxy = Proxy::bind(config).await?;
/// let [http, resp, admin] = proxy.local_addrs();
/// println!("HTTP on {http}, RESP on {resp}, admin on {admin}");
/// proxy.serve(async { tokio::signal::ctrl_c().await.unwrap() }).await?;
/// # Ok(())
/// # }
/// ```
pub struct Proxy {
    config: Config,
    stack: Stack<RedisService>,
    http: Listener,
    resp: Listener,
    admin: Listener,
    workers: usize,
    render: Render,
    access: Access,
    tls: Option<Arc<ServerTls>>,
    /// Transparent mode, when on.
    forwarding: Option<Arc<Forwarding>>,
    /// The configuration as the admin views show it.
    shown: Arc<std::sync::RwLock<crate::admin::views::Shown>>,
}

/// Re-reads the listeners' TLS certificate, key and client CA (see
/// [`Proxy::tls_reloader`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsReloader {
    tls: Option<Arc<ServerTls>>,
}

impl TlsReloader {
    /// Reads the files again: connections accepted from now on use them,
    /// established ones keep theirs. Returns the new certificate's expiry
    /// (`YYYY-MM-DD HH:MM:SS UTC`) when it can be read, and `Ok(None)` as well
    /// when the proxy has no TLS.
    ///
    /// # Errors
    ///
    /// When a file cannot be used; the files loaded before stay in use.
    pub fn reload(&self) -> Result<Option<String>, Error> {
        match &self.tls {
            Some(tls) => Ok(tls.reload()?.expires),
            None => Ok(None),
        }
    }

    /// Whether the proxy has TLS to reload.
    pub fn is_enabled(&self) -> bool {
        self.tls.is_some()
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.config)
            .field("http", &self.http)
            .field("resp", &self.resp)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Builds every part and binds the listeners; nothing is served yet.
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] when an address is taken or not allowed, and
    /// [`Error::Backend`] when the Redis URL is not usable.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        crate::metrics::describe();
        let workers = parts::worker_count(&config);
        let cache = parts::cache(&config);
        let tls = parts::server_tls(&config)?;
        let backend = parts::backend(&config, &cache, workers)?;
        let forwarding = parts::forwarding(&config, &backend, &cache);
        let stack = parts::stack(&config, backend, cache);
        let [http, resp, admin] = parts::listeners(&config, workers).await?;
        let shown = Arc::new(std::sync::RwLock::new(parts::shown(&config, None)));
        Ok(Self {
            access: Access::from_config(&config),
            shown,
            config,
            stack,
            http,
            resp,
            admin,
            workers,
            render: Arc::new(String::new),
            tls,
            forwarding,
        })
    }

    /// A handle that applies a configuration read again (see
    /// [`Reloader::reload`]) to this proxy while it serves: the binary's
    /// SIGHUP.
    pub fn reloader(&self) -> Reloader {
        Reloader::new(
            self.config.clone(),
            self.stack.cache().clone(),
            self.stack.clone(),
            self.access.clone(),
            self.shown.clone(),
        )
    }

    /// A handle that re-reads the listeners' TLS files, for a reload signal
    /// (the binary's SIGHUP).
    pub fn tls_reloader(&self) -> TlsReloader {
        TlsReloader {
            tls: self.tls.clone(),
        }
    }

    /// Serves `/metrics` with `render`, which returns the text exposition of the
    /// metrics recorder the caller installed (the proxy records through the
    /// `metrics` facade and installs no recorder of its own). Without it,
    /// `/metrics` is empty.
    #[must_use]
    pub fn metrics_exporter(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.render = Arc::new(render);
        self
    }

    /// The addresses the HTTP, RESP and admin listeners are bound to.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    pub fn local_addrs(&self) -> [SocketAddr; 3] {
        [
            self.http.local_addr(),
            self.resp.local_addr(),
            self.admin.local_addr(),
        ]
    }

    /// Serves until `shutdown` completes, then stops accepting on every listener,
    /// lets in-flight requests finish within the configured grace period, and
    /// returns.
    ///
    /// The HTTP and RESP listeners are served by worker threads, one event loop
    /// each (see `crate::worker`); the admin listener and the background tasks
    /// run where this future runs.
    ///
    /// # Errors
    ///
    /// [`Error::Workers`] when the worker threads cannot start.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        serve::serve(self, shutdown).await
    }
}

/// Binds and serves `config` until `shutdown` completes; see [`Proxy`]. `/metrics`
/// is empty: use [`Proxy::metrics_exporter`] to serve a recorder's text.
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
