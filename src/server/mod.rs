//! Wiring: builds the backend, cache and stack from a [`Config`], binds the three
//! listeners (HTTP, RESP, admin), serves until the shutdown signal, then drains
//! within the grace period.
//!
//! This is the one place that knows every part; each part knows only its
//! neighbours on the request path (listener → connection → front-end → stack →
//! cache → backend).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Gauges, Render};
use crate::auth::Access;
use crate::backend::{self, Health, Invalidation, InvalidationSink, RedisService};
use crate::cache::Cache;
use crate::config::{Config, InvalidationMode, ListenAddr, ReadFrom, RedisMode};
use crate::forward::Forwarding;
use crate::http::{self, Hyper};
use crate::layers::{Stack, StackBuilder};
use crate::metrics::{self, Requests};
use crate::net::{self, Listener};
use crate::resp::{self, Resp};
use crate::task::AbortOnDrop;
use crate::tls::{ServerFiles, ServerTls};
use crate::worker::Workers;

/// Connections the admin listener takes at most: probes and scrapers, not clients.
const ADMIN_CONNECTIONS: usize = 64;

/// How often expired cache entries are swept.
const RECLAIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

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

/// A proxy with its listeners bound, ready to serve.
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
        metrics::describe();
        let workers = config.worker_threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n.get(),
        );
        let cache = Cache::builder()
            .capacity(config.cache_capacity.get())
            .ttl(config.cache_ttl)
            .policy(config.cache_policy)
            .max_bytes(config.effective_cache_max_bytes().bytes())
            .max_value_bytes(config.effective_cache_max_value_bytes().bytes())
            .build();
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let (tls, loaded) = ServerTls::load(ServerFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: config.tls_client_ca.clone(),
                })?;
                tracing::info!(
                    certificate = %cert.display(),
                    expires = loaded.expires.as_deref().unwrap_or("unknown"),
                    client_certificates = config.tls_client_ca.is_some(),
                    "TLS on the HTTP and RESP listeners"
                );
                Some(Arc::new(tls))
            }
            _ => None,
        };
        let mut backend = RedisService::builder(config.redis_url.as_str())
            .connect_timeout(config.redis_connect_timeout)
            .response_timeout(config.request_timeout)
            .workers(workers);
        if config.invalidation == InvalidationMode::Tracking {
            backend = backend.tracking(invalidation_sink(cache.clone()));
        }
        if config.redis_mode == RedisMode::Cluster {
            backend = backend.cluster(match config.read_from {
                ReadFrom::Primary => backend::ReadFrom::Primary,
                ReadFrom::ReplicaPreferred => backend::ReadFrom::ReplicaPreferred,
            });
        }
        if let Some(ca) = &config.redis_tls_ca {
            backend = backend.tls_ca(ca);
        }
        if let (Some(cert), Some(key)) = (&config.redis_tls_cert, &config.redis_tls_key) {
            backend = backend.tls_client_certificate(cert, key);
        }
        let backend = backend.build().map_err(Error::Backend)?;
        let forwarding = config.forward_commands.then(|| {
            Arc::new(Forwarding::new(
                backend.backend().clone(),
                cache.clone(),
                config.forward_admin_commands,
                config.max_dedicated_connections.get(),
            ))
        });
        let mut stack = StackBuilder::new(backend)
            .client_limit(config.max_clients.get())
            .timeout(config.request_timeout)
            .cache(cache);
        if let Some(parallel) = config.max_parallel {
            stack = stack.parallel_limit(parallel.get());
        }
        let stack = stack.build();

        // Every connection is a descriptor: the listeners take no more than the
        // open-files limit leaves room for (backend connections, refusals).
        let wanted = config.max_connections.get();
        // Beside the listeners: each worker's lanes (two protocols, and a
        // tracking listener each), dedicated connections in transparent mode,
        // and some spare.
        let dedicated = if config.forward_commands {
            config.max_dedicated_connections.get()
        } else {
            0
        };
        let others = 4 * workers + dedicated + 64;
        let fitted = net::fit_connections(&[wanted, wanted, ADMIN_CONNECTIONS.min(wanted)], others);
        let bind = |option, addr: ListenAddr, max_connections, sockets| async move {
            let bound = async {
                let resolved = addr.resolve().await?;
                Listener::bind(resolved, max_connections, sockets)
            };
            bound.await.map_err(|source| Error::Bind {
                option,
                addr: addr.to_string(),
                source,
            })
        };
        // A socket per worker for the two front-ends; the admin listener is the
        // serving thread's.
        let http = bind("--http-addr", config.http_addr.clone(), fitted[0], workers).await?;
        let resp = bind("--resp-addr", config.resp_addr.clone(), fitted[1], workers).await?;
        let admin = bind("--admin-addr", config.admin_addr.clone(), fitted[2], 1).await?;
        Ok(Self {
            access: Access::from_config(&config),
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
        let [http_addr, resp_addr, admin_addr] = self.local_addrs();
        let Proxy {
            config,
            stack,
            http,
            resp,
            admin,
            workers,
            render,
            access,
            tls,
            forwarding,
        } = self;
        let workers = Workers::start(workers).map_err(Error::Workers)?;
        log_startup(
            &config,
            [http_addr, resp_addr, admin_addr],
            [http.slots().size(), resp.slots().size()],
            workers.len(),
        );

        // Each worker checks its own lane of the backend.
        let health = Health::new(workers.len());
        let ping_timeout = config.redis_connect_timeout + config.request_timeout;
        let _pingers: Vec<_> = (0..workers.len())
            .map(|lane| {
                AbortOnDrop(workers.spawn(
                    lane,
                    backend::run_pinger(
                        stack.backend().backend().clone(),
                        health.clone(),
                        lane,
                        ping_timeout,
                    ),
                ))
            })
            .collect();
        let stop = CancellationToken::new();
        let _signal = AbortOnDrop(tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                tracing::info!("shutdown signal received; draining in-flight requests");
                stop.cancel();
            }
        }));
        let _reclaimer = AbortOnDrop(tokio::spawn(
            stack.cache().clone().run_reclaimer(RECLAIM_INTERVAL),
        ));

        let requests = Requests::new();
        let gauges = Gauges {
            requests: requests.clone(),
            cache: stack.cache().clone(),
            in_flight: stack.client_slots().clone(),
            connections: vec![
                ("http", http.slots().clone()),
                ("resp", resp.slots().clone()),
                ("admin", admin.slots().clone()),
            ],
        };
        let databases = {
            let backend = stack.backend().clone();
            resp::Databases::new(
                backend.default_db(),
                Arc::new(move |db| {
                    let backend = backend.clone();
                    Box::pin(async move { backend.check_database(db).await })
                }),
            )
        };
        let resp_protocol = Arc::new(Resp::new(
            stack.clone(),
            stack.cache().clone(),
            requests.counting(metrics::Protocol::Resp),
            resp::Settings {
                limits: resp::Limits {
                    max_clients: config.max_clients.get(),
                    output: config.client_output_limit.bytes(),
                    write_timeout: config.client_write_timeout,
                    request_timeout: config.request_timeout,
                    input_total: config.client_input_limit.bytes(),
                },
                databases,
                connections: (resp.slots().clone(), resp.stats().clone()),
                port: resp_addr.port(),
                access: access.clone(),
                forwarding: forwarding.clone(),
                client_slots: stack.client_slots().clone(),
            },
        ));
        // A client must send its request headers within the request timeout.
        let header_timeout = config.request_timeout;
        // The key path without a router: every request is a key lookup, on the
        // connection's own handle to the stack.
        let counting = requests.counting(metrics::Protocol::Http);
        let key_service = move |peer| {
            http::KeyService::new(stack.clone(), counting.clone(), access.clone(), peer)
        };
        let http_protocol = Arc::new(Hyper::new("http", key_service, header_timeout));
        let admin_router = admin::router(
            Arc::new(move || health.check()),
            Arc::new(move || {
                gauges.publish();
                render()
            }),
        );

        let mut serving: Vec<_> = http
            .into_acceptors()
            .into_iter()
            .zip(resp.into_acceptors())
            .enumerate()
            .map(|(worker, (http, resp))| {
                let (http_protocol, resp_protocol) = (http_protocol.clone(), resp_protocol.clone());
                let stop = stop.clone();
                let tls = tls.clone().map(|server| net::Tls {
                    server,
                    handshake_timeout: config.request_timeout,
                });
                workers.spawn(worker, async move {
                    tokio::join!(
                        net::serve(http, http_protocol, tls.clone(), stop.clone()),
                        net::serve(resp, resp_protocol, tls, stop),
                    );
                })
            })
            .collect();
        let admin_protocol = Arc::new(Hyper::new(
            "admin",
            move |_| TowerToHyperService::new(admin_router.clone()),
            header_timeout,
        ));
        for acceptor in admin.into_acceptors() {
            serving.push(tokio::spawn(net::serve(
                acceptor,
                admin_protocol.clone(),
                None,
                stop.clone(),
            )));
        }
        let all = futures_util::future::join_all(serving);
        let grace = config.shutdown_grace;
        tokio::select! {
            _ = all => {}
            () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(?grace, "grace period over; closing the remaining connections");
            }
        }
        // Stops every worker: connections still open past the grace are dropped.
        drop(workers);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Evicts what Redis says changed, and counts it.
fn invalidation_sink(cache: Cache) -> InvalidationSink {
    Arc::new(move |invalidation| match invalidation {
        Invalidation::Keys(keys) => {
            metrics::record_invalidation(Some(keys.len()));
            cache.invalidate_everywhere(&keys);
        }
        Invalidation::All => {
            metrics::record_invalidation(None);
            cache.flush();
        }
    })
}

/// The startup line: the bound addresses and the effective configuration, any
/// password redacted, every value in the form the configuration takes it.
fn log_startup(
    config: &Config,
    [http, resp, admin]: [SocketAddr; 3],
    connections: [usize; 2],
    worker_threads: usize,
) {
    tracing::info!(
        http = %http,
        resp = %resp,
        admin = %admin,
        redis_url = %config.redis_url,
        redis_mode = %config.redis_mode,
        read_from = %config.read_from,
        forward_commands = config.forward_commands,
        cache_ttl = %humantime::format_duration(config.cache_ttl),
        cache_capacity = config.cache_capacity.get(),
        cache_max_bytes = %config.effective_cache_max_bytes(),
        cache_max_value_bytes = %config.effective_cache_max_value_bytes(),
        cache_policy = %config.cache_policy,
        invalidation = %config.invalidation,
        max_clients = config.max_clients.get(),
        max_parallel = config.effective_max_parallel().get(),
        request_timeout = %humantime::format_duration(config.request_timeout),
        max_connections = config.max_connections.get(),
        http_connections = connections[0],
        resp_connections = connections[1],
        client_output_limit = %config.client_output_limit,
        client_write_timeout = %humantime::format_duration(config.client_write_timeout),
        client_input_limit = %config.client_input_limit,
        redis_pool_size = config.redis_pool_size.get(),
        redis_connect_timeout = %humantime::format_duration(config.redis_connect_timeout),
        shutdown_grace = %humantime::format_duration(config.shutdown_grace),
        log_format = %config.log_format,
        worker_threads,
        client_password = if config.client_password.is_some() { "***" } else { "none" },
        users = config.users.len(),
        tls_cert = %path_or_none(config.tls_cert.as_deref()),
        tls_client_ca = %path_or_none(config.tls_client_ca.as_deref()),
        redis_tls_ca = %path_or_none(config.redis_tls_ca.as_deref()),
        "listening"
    );
}

/// A file option for the startup line.
fn path_or_none(path: Option<&std::path::Path>) -> std::borrow::Cow<'_, str> {
    path.map_or("none".into(), |path| path.to_string_lossy())
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
