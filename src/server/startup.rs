//! The startup line: the bound addresses and the effective configuration,
//! any password redacted, every value in the form the configuration takes it.

use std::net::SocketAddr;

use crate::config::{Config, LogFormat};

/// The startup line: the bound addresses and the effective configuration, any
/// password redacted, every value in the form the configuration takes it. In
/// JSON one object, which tools read; in the pretty format one line per
/// concern, which people read.
pub(super) fn log_startup(
    config: &Config,
    addrs: [SocketAddr; 3],
    connections: [usize; 2],
    worker_threads: usize,
) {
    match config.log_format {
        LogFormat::Json => log_one_line(config, addrs, connections, worker_threads),
        _ => log_by_concern(config, addrs, connections, worker_threads),
    }
}

fn log_one_line(
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
        sentinel_master = config.sentinel_master.as_deref().unwrap_or("none"),
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
        max_connections = config.effective_max_connections().get(),
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

fn log_by_concern(
    config: &Config,
    [http, resp, admin]: [SocketAddr; 3],
    connections: [usize; 2],
    worker_threads: usize,
) {
    let duration = humantime::format_duration;
    tracing::info!(%http, %resp, %admin, worker_threads, "listening");
    tracing::info!(
        redis_url = %config.redis_url,
        redis_mode = %config.redis_mode,
        read_from = %config.read_from,
        sentinel_master = config.sentinel_master.as_deref().unwrap_or("none"),
        forward_commands = config.forward_commands,
        redis_connect_timeout = %duration(config.redis_connect_timeout),
        "  backend"
    );
    tracing::info!(
        cache_ttl = %duration(config.cache_ttl),
        cache_capacity = config.cache_capacity.get(),
        cache_max_bytes = %config.effective_cache_max_bytes(),
        cache_max_value_bytes = %config.effective_cache_max_value_bytes(),
        cache_policy = %config.cache_policy,
        invalidation = %config.invalidation,
        "  cache"
    );
    tracing::info!(
        max_clients = config.max_clients.get(),
        max_parallel = config.effective_max_parallel().get(),
        request_timeout = %duration(config.request_timeout),
        http_connections = connections[0],
        resp_connections = connections[1],
        client_output_limit = %config.client_output_limit,
        client_write_timeout = %duration(config.client_write_timeout),
        client_input_limit = %config.client_input_limit,
        shutdown_grace = %duration(config.shutdown_grace),
        "  limits"
    );
    tracing::info!(
        client_password = if config.client_password.is_some() { "***" } else { "none" },
        users = config.users.len(),
        tls_cert = %path_or_none(config.tls_cert.as_deref()),
        tls_client_ca = %path_or_none(config.tls_client_ca.as_deref()),
        redis_tls_ca = %path_or_none(config.redis_tls_ca.as_deref()),
        "  security"
    );
}

/// A file option for the startup line.
fn path_or_none(path: Option<&std::path::Path>) -> std::borrow::Cow<'_, str> {
    path.map_or("none".into(), |path| path.to_string_lossy())
}
