//! Serving a bound proxy: the worker threads and what runs beside them
//! (readiness pings, the shutdown signal, the cache's sweeps), the three
//! protocols over their listeners, and the drain at the end.

use std::future::Future;
use std::sync::Arc;

use hyper_util::service::TowerToHyperService;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::{Error, Proxy, startup};
use crate::admin::{self, Gauges};
use crate::backend::{self, Health, RedisService};
use crate::conn::Protocol;
use crate::http::{self, Hyper};
use crate::layers::Stack;
use crate::metrics::{self, Requests};
use crate::net::{self, Listener};
use crate::resp::{self, Resp};
use crate::worker::Workers;

/// How often expired cache entries are swept.
const RECLAIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// See [`Proxy::serve`].
pub(super) async fn serve(
    proxy: Proxy,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addrs = proxy.local_addrs();
    let workers = Workers::start(proxy.workers).map_err(Error::Workers)?;
    let connections = [proxy.http.slots().size(), proxy.resp.slots().size()];
    startup::log_startup(&proxy.config, addrs, connections, workers.len());
    let stop = CancellationToken::new();
    let health = Health::new(workers.len());
    let _background = background(&proxy, &workers, &health, &stop, shutdown);
    let requests = Requests::new();
    let resp = resp_protocol(&proxy, &requests, addrs[1].port());
    let header_timeout = proxy.config.request_timeout;
    let http = http_protocol(&proxy.stack, &requests, &proxy.access, header_timeout);
    let admin = admin_protocol(&proxy, &requests, health);
    let tls = proxy.tls.clone().map(|server| net::Tls {
        server,
        handshake_timeout: proxy.config.request_timeout,
    });
    let grace = proxy.config.shutdown_grace;
    let mut serving = front_ends(&workers, proxy.http, proxy.resp, (http, resp), tls, &stop);
    for acceptor in proxy.admin.into_acceptors() {
        let serve = net::serve(acceptor, admin.clone(), None, stop.clone());
        serving.push(tokio::spawn(serve));
    }
    drain(serving, &stop, grace).await;
    // Stops every worker: connections still open past the grace are dropped.
    drop(workers);
    tracing::info!("stopped");
    Ok(())
}

/// What runs beside the listeners until the returned handles are dropped:
/// each worker's readiness pings (through its own lanes), the shutdown
/// signal's watcher, and the cache's sweeps.
fn background(
    proxy: &Proxy,
    workers: &Workers,
    health: &Health,
    stop: &CancellationToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Vec<AbortOnDropHandle<()>> {
    let config = &proxy.config;
    let ping_timeout = config.redis_connect_timeout + config.request_timeout;
    let mut tasks: Vec<_> = (0..workers.len())
        .map(|lane| {
            let backend = proxy.stack.backend().backend().clone();
            let pinger = backend::run_pinger(backend, health.clone(), lane, ping_timeout);
            AbortOnDropHandle::new(workers.spawn(lane, pinger))
        })
        .collect();
    let stop = stop.clone();
    tasks.push(AbortOnDropHandle::new(tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown signal received; draining in-flight requests");
        stop.cancel();
    })));
    let cache = proxy.stack.cache().clone();
    tasks.push(AbortOnDropHandle::new(tokio::spawn(
        cache.run_reclaimer(RECLAIM_INTERVAL),
    )));
    tasks
}

/// The Redis protocol over the stack, for the RESP listener on `port`.
fn resp_protocol(proxy: &Proxy, requests: &Requests, port: u16) -> Arc<Resp<Stack<RedisService>>> {
    let (config, stack) = (&proxy.config, &proxy.stack);
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
    Arc::new(Resp::new(
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
            connections: (proxy.resp.slots().clone(), proxy.resp.stats().clone()),
            port,
            access: proxy.access.clone(),
            forwarding: proxy.forwarding.clone(),
            client_slots: stack.client_slots().clone(),
            client_tracking: (config.invalidation == crate::config::InvalidationMode::Tracking)
                .then_some(config.client_tracking_max_keys.get()),
        },
    ))
}

/// HTTP over the stack: the key path without a router, every request a key
/// lookup on the connection's own handle to the stack. A client must send
/// its request headers within `header_timeout`.
fn http_protocol(
    stack: &Stack<RedisService>,
    requests: &Requests,
    access: &crate::auth::Access,
    header_timeout: std::time::Duration,
) -> Arc<impl Protocol> {
    let (stack, access) = (stack.clone(), access.clone());
    let counting = requests.counting(metrics::Protocol::Http);
    let key_service =
        move |peer| http::KeyService::new(stack.clone(), counting.clone(), access.clone(), peer);
    Arc::new(Hyper::new("http", key_service, header_timeout))
}

/// The admin endpoints: readiness from `health`, metrics with the gauges
/// published at each scrape.
fn admin_protocol(proxy: &Proxy, requests: &Requests, health: Health) -> Arc<impl Protocol> {
    let gauges = Gauges {
        requests: requests.clone(),
        cache: proxy.stack.cache().clone(),
        in_flight: proxy.stack.client_slots().clone(),
        connections: vec![
            ("http", proxy.http.slots().clone()),
            ("resp", proxy.resp.slots().clone()),
            ("admin", proxy.admin.slots().clone()),
        ],
        backend: proxy.stack.backend().backend().clone(),
    };
    let render = proxy.render.clone();
    let backend = proxy.stack.backend().backend().clone();
    let views = admin::views::Views {
        cache: proxy.stack.cache().clone(),
        requests: requests.clone(),
        backend: backend.clone(),
        default_db: u16::try_from(proxy.stack.backend().default_db()).unwrap_or(0),
        config: proxy.shown.clone(),
        started: std::time::SystemTime::now(),
    };
    let router = admin::router(
        Arc::new(move || match (backend.short_circuited(), health.check()) {
            (Some(open), Err(reason)) => Err(format!("{open}; {reason}")),
            (Some(open), Ok(())) => Err(open),
            (None, checked) => checked,
        }),
        Arc::new(move || {
            gauges.publish();
            render()
        }),
        views,
    );
    Arc::new(Hyper::new(
        "admin",
        move |_| TowerToHyperService::new(router.clone()),
        proxy.config.request_timeout,
    ))
}

/// Every worker serving the HTTP and RESP listeners.
fn front_ends<H, R>(
    workers: &Workers,
    http: Listener,
    resp: Listener,
    (http_protocol, resp_protocol): (Arc<H>, Arc<R>),
    tls: Option<net::Tls>,
    stop: &CancellationToken,
) -> Vec<JoinHandle<()>>
where
    H: Protocol + Send + Sync + 'static,
    R: Protocol + Send + Sync + 'static,
{
    http.into_acceptors()
        .into_iter()
        .zip(resp.into_acceptors())
        .enumerate()
        .map(|(worker, (http, resp))| {
            let (http_protocol, resp_protocol) = (http_protocol.clone(), resp_protocol.clone());
            let (stop, tls) = (stop.clone(), tls.clone());
            workers.spawn(worker, async move {
                tokio::join!(
                    net::serve(http, http_protocol, tls.clone(), stop.clone()),
                    net::serve(resp, resp_protocol, tls, stop),
                );
            })
        })
        .collect()
}

/// Waits for every listener to finish after `stop`, for `grace` at most.
async fn drain(serving: Vec<JoinHandle<()>>, stop: &CancellationToken, grace: std::time::Duration) {
    let all = futures_util::future::join_all(serving);
    tokio::select! {
        _ = all => {}
        () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "grace period over; closing the remaining connections");
        }
    }
}
