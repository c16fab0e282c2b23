//! The `redis-proxy` binary: parse the configuration, start logging and the
//! Prometheus recorder, serve until SIGTERM or SIGINT. Everything else lives in
//! the library, which installs nothing process-wide itself.

use std::io::IsTerminal;
use std::process::ExitCode;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use redis_proxy::config::{Config, Invocation, LogFormat};
use tokio_util::task::AbortOnDropHandle;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    ignore_hangups_until_handled();
    return_large_allocations_at_once();
    // Before anything is bound: a bad option stops the process here.
    let config = match Config::invocation_from_args() {
        Ok(Invocation::PrintConfig(config)) => {
            print!("{}", config.to_toml());
            return ExitCode::SUCCESS;
        }
        Ok(invocation) => invocation.into_config(),
        Err(error) => {
            eprintln!("redis-proxy: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    let set_log_level = init_logging(config.log_format, &config.log_level);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }

    // This thread runs the admin listener and the background tasks; the proxy
    // starts its worker threads (`--worker-threads`) for the front-ends.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("redis-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        // Installed before anything is bound: a signal that arrives as soon as the
        // proxy reports it is listening must still shut it down gracefully.
        let shutdown = shutdown_signal().map_err(|error| {
            eprintln!("redis-proxy: cannot install signal handlers: {error}");
        })?;
        let metrics = install_metrics_recorder();
        let proxy = redis_proxy::Proxy::bind(config).await;
        let proxy = match (proxy, metrics) {
            (Ok(proxy), Some(handle)) => {
                tokio::spawn(upkeep(handle.clone()));
                Ok(proxy.metrics_exporter(move || handle.render()))
            }
            (proxy, _) => proxy,
        };
        let served = match proxy {
            Ok(proxy) => {
                let reloader = proxy.reloader().with_log_level(set_log_level);
                let _reload = reload_on_sighup(proxy.tls_reloader(), reloader);
                proxy.serve(shutdown).await
            }
            Err(error) => Err(error),
        };
        served.map_err(|error| {
            tracing::error!(%error, "redis-proxy failed");
            eprintln!("redis-proxy: {error}");
        })
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(()) => ExitCode::FAILURE,
    }
}

/// Ignores SIGHUP from the first instruction on: its default action ends the
/// process, and service managers and logrotate send it whenever they reload,
/// without asking whether the proxy has started. The handler that reloads
/// certificates replaces this once the runtime runs.
fn ignore_hangups_until_handled() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN runs no code of ours
    // in the handler; it is done before any other thread exists.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// Makes the allocator give large blocks back to the system as soon as they are
/// freed. glibc serves blocks of 128 KiB and more with their own mappings, but
/// after such a block is freed it raises that threshold (up to 32 MiB) and serves
/// later ones from its heaps, which it does not shrink: a cache of 1 MB values
/// that expire would keep its memory resident. A fixed threshold keeps large
/// values (cached or in flight) in mappings that are unmapped when freed.
fn return_large_allocations_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets a parameter of the allocator; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Installs the Prometheus recorder every metric of the proxy goes to.
fn install_metrics_recorder() -> Option<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(redis_proxy::BACKEND_DURATION.into()),
            redis_proxy::BACKEND_DURATION_BUCKETS,
        )
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(
            |error| tracing::warn!(%error, "metrics recorder not installed; /metrics is empty"),
        )
        .ok()
}

/// Folds buffered histogram samples into their buckets every 5 s. The exporter
/// buffers every sample until upkeep runs: without this task, a proxy that is
/// never scraped would hold every backend latency it ever measured.
async fn upkeep(handle: PrometheusHandle) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        ticks.tick().await;
        handle.run_upkeep();
    }
}

/// Starts logging at `level` (unless `RUST_LOG` is set and not empty);
/// returns what sets the level again, for a reload.
fn init_logging(format: LogFormat, level: &str) -> redis_proxy::SetLogLevel {
    let from_env = std::env::var("RUST_LOG").is_ok_and(|filter| !filter.trim().is_empty());
    let filter = match from_env {
        true => EnvFilter::from_default_env(),
        false => EnvFilter::new(level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::stdout().is_terminal());
    let set = |reload: Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>| -> redis_proxy::SetLogLevel {
        std::sync::Arc::new(move |level: &str| {
            if from_env {
                return Err("RUST_LOG is set and overrides log_level".to_owned());
            }
            reload(EnvFilter::new(level))
        })
    };
    match format {
        LogFormat::Json => {
            let builder = builder
                .json()
                .with_current_span(true)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            set(Box::new(move |filter| {
                handle.reload(filter).map_err(|e| e.to_string())
            }))
        }
        _ => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            set(Box::new(move |filter| {
                handle.reload(filter).map_err(|e| e.to_string())
            }))
        }
    }
}

/// On every SIGHUP, until the returned task is dropped: reads the
/// configuration again and applies it (see `Reloader`), and re-reads the TLS
/// certificate, key and client CA.
#[cfg(unix)]
fn reload_on_sighup(
    tls: redis_proxy::TlsReloader,
    reloader: redis_proxy::Reloader,
) -> Option<AbortOnDropHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; TLS files will not be reloaded");
            return None;
        }
    };
    Some(AbortOnDropHandle::new(tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            // The same flags and environment as at startup, the file read again.
            let _ = reloader.reload(Config::from_args());
            if !tls.is_enabled() {
                continue;
            }
            match tls.reload() {
                Ok(expires) => tracing::info!(
                    expires = expires.as_deref().unwrap_or("unknown"),
                    "SIGHUP: TLS certificate and key reloaded; new connections use them"
                ),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: TLS reload failed; the previous certificate stays in use")
                }
            }
        }
    })))
}

#[cfg(not(unix))]
fn reload_on_sighup(
    _tls: redis_proxy::TlsReloader,
    _reloader: redis_proxy::Reloader,
) -> Option<AbortOnDropHandle<()>> {
    None
}

/// Registers for SIGTERM and SIGINT now, and returns a future that completes on
/// the first of them.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
