//! Each part of the proxy made from the configuration: the cache, the
//! listeners' TLS, the backend and transparent mode over it, the stack, the
//! listeners themselves.

use std::sync::Arc;
use std::time::Duration;

use super::Error;
use crate::backend::{Invalidation, InvalidationSink, RedisService};
use crate::cache::{Cache, KeyPolicy};
use crate::config::{Config, InvalidationMode, ListenAddr, RedisMode};
use crate::forward::Forwarding;
use crate::layers::{Stack, StackBuilder};
use crate::metrics;
use crate::net::{self, Listener};
use crate::tls::{ServerFiles, ServerTls};

/// Connections the admin listener takes at most: probes and scrapers, not clients.
const ADMIN_CONNECTIONS: usize = 64;

/// The worker threads to run: `--worker-threads`, else one per core.
pub(super) fn worker_count(config: &Config) -> usize {
    config.worker_threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n.get(),
    )
}

/// An empty cache as configured.
/// How entries live: the global policy, and each rule's pattern and policy
/// (a rule's unset settings the global ones).
pub(super) fn policies(config: &Config) -> (KeyPolicy, Vec<(String, KeyPolicy)>) {
    let global = KeyPolicy {
        ttl: config.cache_ttl,
        negative_ttl: config.cache_negative_ttl,
        stale_if_error: config.cache_stale_if_error,
        stale_while_revalidate: config.cache_stale_while_revalidate,
        cache: true,
        max_value_bytes: config.effective_cache_max_value_bytes().bytes(),
    };
    let rules = (config.cache_rules.iter())
        .map(|rule| {
            let policy = KeyPolicy {
                ttl: rule.ttl.unwrap_or(global.ttl),
                negative_ttl: rule.negative_ttl.unwrap_or(global.negative_ttl),
                stale_if_error: rule.stale_if_error.unwrap_or(global.stale_if_error),
                stale_while_revalidate: rule
                    .stale_while_revalidate
                    .unwrap_or(global.stale_while_revalidate),
                cache: rule.cache,
                max_value_bytes: rule
                    .max_value_bytes
                    .map_or(global.max_value_bytes, |bytes| bytes.bytes()),
            };
            (rule.pattern.clone(), policy)
        })
        .collect();
    (global, rules)
}

pub(super) fn cache(config: &Config) -> Cache {
    let (global, rules) = policies(config);
    let mut builder = Cache::builder()
        .capacity(config.cache_capacity.get())
        .policy(config.cache_policy)
        .max_bytes(config.effective_cache_max_bytes().bytes())
        .key_policy(global)
        .stale_after(stale_after(config.request_timeout))
        .hot_keys(config.hot_keys.then_some(config.hot_keys_window));
    for (pattern, policy) in &rules {
        builder = builder.rule(pattern, *policy);
    }
    builder.build()
}

/// How long a read with a stale answer waits for its fetch: long enough for
/// a slow reply, short enough that the stale answer beats the request
/// timeout by a margin (a quarter of it, at most 100 ms).
fn stale_after(request_timeout: Duration) -> Duration {
    request_timeout.saturating_sub((request_timeout / 4).min(Duration::from_millis(100)))
}

/// The listeners' TLS, when a certificate is configured.
///
/// # Errors
///
/// A file that cannot be used, naming its option.
pub(super) fn server_tls(config: &Config) -> Result<Option<Arc<ServerTls>>, Error> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
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
    Ok(Some(Arc::new(tls)))
}

/// The backend as configured, invalidating `cache` with tracking.
///
/// # Errors
///
/// [`Error::Backend`] for a URL or TLS file that cannot be used.
pub(super) fn backend(
    config: &Config,
    cache: &Cache,
    workers: usize,
) -> Result<RedisService, Error> {
    let mut backend = RedisService::builder(config.redis_url.as_str())
        .connect_timeout(config.redis_connect_timeout)
        .response_timeout(config.request_timeout)
        .workers(workers);
    if config.invalidation == InvalidationMode::Tracking {
        backend = backend.tracking(invalidation_sink(cache.clone()));
    }
    match config.redis_mode {
        RedisMode::Cluster => backend = backend.cluster(config.read_from),
        RedisMode::Sharded => {
            // Validated when the configuration was loaded.
            let (servers, placement) = config
                .shard_pool()
                .map_err(|e| Error::Backend(crate::Error::unavailable(e.to_string())))?;
            let auth = config
                .shard_redis_auth
                .as_ref()
                .map(|secret| secret.expose().to_owned());
            backend = backend.sharded(servers, placement, auth, config.shard_redis_db);
        }
        RedisMode::Sentinel => {
            let master = config.sentinel_master.clone().unwrap_or_default();
            let password = config
                .sentinel_password
                .as_ref()
                .map(|secret| secret.expose().to_owned());
            backend = backend.sentinel(master, password, config.read_from);
        }
        _ => {}
    }
    if let Some(ca) = &config.redis_tls_ca {
        backend = backend.tls_ca(ca);
    }
    if let (Some(cert), Some(key)) = (&config.redis_tls_cert, &config.redis_tls_key) {
        backend = backend.tls_client_certificate(cert, key);
    }
    backend.build().map_err(Error::Backend)
}

/// Transparent mode over `backend`, when it is on.
pub(super) fn forwarding(
    config: &Config,
    backend: &RedisService,
    cache: &Cache,
) -> Option<Arc<Forwarding>> {
    config.forward_commands.then(|| {
        Arc::new(Forwarding::new(
            backend.backend().clone(),
            cache.clone(),
            config.forward_admin_commands,
            config.max_dedicated_connections.get(),
        ))
    })
}

/// The stack over `backend` with the configured limits.
pub(super) fn stack(config: &Config, backend: RedisService, cache: Cache) -> Stack<RedisService> {
    let mut stack = StackBuilder::new(backend)
        .client_limit(config.max_clients.get())
        .timeout(config.request_timeout)
        .cache(cache);
    if let Some(parallel) = config.max_parallel {
        stack = stack.parallel_limit(parallel.get());
    }
    stack.build()
}

/// The HTTP, RESP and admin listeners, bound, their connection limits fitted
/// to the open-files limit.
///
/// # Errors
///
/// [`Error::Bind`] naming the option of an address that cannot be bound.
pub(super) async fn listeners(config: &Config, workers: usize) -> Result<[Listener; 3], Error> {
    // Every connection is a descriptor: the listeners take no more than the
    // open-files limit leaves room for. Beside them: each worker's lanes (two
    // protocols, and a tracking listener each), dedicated connections in
    // transparent mode, and some spare.
    let wanted = config.effective_max_connections().get();
    let dedicated = if config.forward_commands {
        config.max_dedicated_connections.get()
    } else {
        0
    };
    let others = 4 * workers + dedicated + 64;
    let limits = [wanted, wanted, ADMIN_CONNECTIONS.min(wanted)];
    let fitted = net::fit_connections(&limits, others, config.max_connections.is_some());
    // Every worker accepts on the two front-ends; the admin listener is the
    // serving thread's.
    Ok([
        bind("--http-addr", &config.http_addr, fitted[0], workers).await?,
        bind("--resp-addr", &config.resp_addr, fitted[1], workers).await?,
        bind("--admin-addr", &config.admin_addr, fitted[2], 1).await?,
    ])
}

async fn bind(
    option: &'static str,
    addr: &ListenAddr,
    max_connections: usize,
    workers: usize,
) -> Result<Listener, Error> {
    let bound = async {
        let resolved = addr.resolve().await?;
        Listener::bind(resolved, max_connections, workers)
    };
    bound.await.map_err(|source| Error::Bind {
        option,
        addr: addr.to_string(),
        source,
    })
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
        Invalidation::Unverified => {
            metrics::record_invalidation(None);
            cache.unverify();
        }
    })
}

/// The configuration as the admin views show it, reloaded at `reloaded_at`.
pub(super) fn shown(
    config: &Config,
    reloaded_at: Option<std::time::SystemTime>,
) -> crate::admin::views::Shown {
    crate::admin::views::Shown {
        json: config.to_json(),
        capacity: config.cache_capacity.get(),
        max_bytes: config.effective_cache_max_bytes().bytes(),
        reloaded_at,
    }
}
