//! Serving HTTP on a [`LimitedListener`] with hyper directly.
//!
//! `axum::serve` offers neither a span per connection nor a bound on how long a
//! client may take to send its request headers, and without the latter a client
//! that trickles its headers (slowloris) holds a connection slot forever. Here each
//! connection runs in a span carrying the client's address, headers must arrive
//! within `header_timeout`, and shutdown is graceful: listening stops, idle
//! keep-alive connections close, requests in flight finish.

use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio_util::sync::CancellationToken;
use tower::BoxError;
use tracing::Instrument;

use super::LimitedListener;

/// Serves `service` on `listener` until `stop` is cancelled, then waits for the
/// requests in flight. `name` labels the connection spans (`http`, `admin`).
pub async fn serve<S, B>(
    listener: LimitedListener,
    service: S,
    header_timeout: Duration,
    name: &'static str,
    stop: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
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
        let connection =
            graceful.watch(builder.serve_connection(TokioIo::new(stream), service.clone()));
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
