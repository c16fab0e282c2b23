//! Serving an axum router on a [`LimitedListener`] with hyper directly.
//!
//! `axum::serve` offers neither a span per connection nor a bound on how long a
//! client may take to send its request headers, and without the latter a client
//! that trickles its headers (slowloris) holds a connection slot forever. Here each
//! connection runs in a span carrying the client's address, headers must arrive
//! within `header_timeout`, and shutdown is graceful: listening stops, idle
//! keep-alive connections close, requests in flight finish.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::LimitedListener;

/// Serves `router` on `listener` until `stop` is cancelled, then waits for the
/// requests in flight. `name` labels the connection spans (`http`, `admin`).
pub async fn serve(
    listener: LimitedListener,
    router: Router,
    header_timeout: Duration,
    name: &'static str,
    stop: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let mut listener = listener;
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept_limited() => accepted,
            () = stop.cancelled() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let span = tracing::info_span!("connection", protocol = name, client = %addr);
        tokio::spawn(
            async move {
                tracing::debug!("connected");
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
                tracing::debug!("disconnected");
            }
            .instrument(span),
        );
    }
    drop(listener);
    graceful.shutdown().await;
}
