//! The one connection lifecycle every front-end shares: accept, connection
//! limit, span, serve, drain.
//!
//! ```text
//! Listener ─accept─▶ slot free? ──no──▶ Protocol::refusal written, closed
//!                       │ yes               (TLS listener: closed at once)
//!                       ▼
//!             span "connection" {protocol, client}
//!                       ▼
//!             TLS handshake, if the listener has TLS, within the handshake
//!             timeout; a failure closes the connection
//!                       ▼
//!             Protocol::serve(stream, peer, stop)   until the client leaves, or
//!                                                   `stop` and in-flight replies written
//! ```
//!
//! What differs between HTTP, RESP and the admin listener is only the
//! [`Protocol`]: how one connection is served, and what a client beyond the
//! connection limit is told. Everything a connection goes through before its
//! protocol sees it is written here, once, so that a new step of that path (a
//! TLS handshake, say) is added in one place for every listener.
//!
//! Beyond `max_connections`, a new connection is accepted, told so in its
//! protocol (`-ERR max number of clients reached`, a 503) and closed, as Redis
//! does: a client is never left waiting in the kernel's backlog without an
//! answer. The refusal is written without waiting, so refused connections hold
//! no descriptor and no task.

mod files;
mod listener;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::conn::{Protocol, Stats, Stream};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub(crate) use files::fit_connections;
pub(crate) use listener::{Acceptor, Listener};

/// A listener's TLS: the configuration, and how long a client may take over its
/// handshake (a slow handshake holds a connection slot like a slow request).
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    pub(crate) server: Arc<crate::tls::ServerTls>,
    pub(crate) handshake_timeout: Duration,
}

/// Accepts connections with `acceptor` until `stop` is cancelled, serving each
/// with `protocol`; then waits until every connection has answered its requests
/// in flight (the caller bounds that wait by the grace period). Runs on the
/// worker that owns the acceptor's socket.
pub(crate) async fn serve<P: Protocol>(
    acceptor: Acceptor,
    protocol: Arc<P>,
    tls: Option<Tls>,
    stop: CancellationToken,
) {
    // A TLS client cannot read a refusal written in the clear.
    let refusal = if tls.is_some() {
        &b""[..]
    } else {
        protocol.refusal()
    };
    let listener = match acceptor.listen() {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, protocol = protocol.name(), "cannot listen");
            return;
        }
    };
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept(refusal) => accepted,
            () = stop.cancelled() => break,
        };
        listener.stats.received.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = listener.slots.try_take() else {
            listener.stats.rejected.fetch_add(1, Ordering::Relaxed);
            refuse(stream, refusal);
            continue;
        };
        let span = tracing::info_span!("connection", protocol = protocol.name(), client = %peer);
        let protocol = protocol.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        connections.spawn(
            async move {
                let _slot = slot;
                tracing::debug!("connected");
                let stream = match tls {
                    None => Stream::Plain(stream),
                    Some(tls) => match handshake(stream, &tls).await {
                        Ok(stream) => stream,
                        Err(error) => {
                            tracing::debug!(%error, "TLS handshake failed; connection closed");
                            metrics::counter!(
                                crate::metrics::TLS_HANDSHAKE_FAILURES,
                                "protocol" => protocol.name()
                            )
                            .increment(1);
                            return;
                        }
                    },
                };
                protocol.serve(stream, peer, stop).await;
                tracing::debug!("disconnected");
            }
            .instrument(span),
        );
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// The TLS handshake of a new connection, within the handshake timeout. A
/// client that is not speaking TLS (a plaintext request) fails it at once.
async fn handshake(stream: TcpStream, tls: &Tls) -> std::io::Result<Stream> {
    let accept = tls.server.acceptor().accept(stream);
    match tokio::time::timeout(tls.handshake_timeout, accept).await {
        Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream))),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "no TLS handshake within {} (--request-timeout)",
                humantime::format_duration(tls.handshake_timeout)
            ),
        )),
    }
}

/// Tells a client beyond the connection limit so and closes its connection.
///
/// The message is small enough for any socket buffer, so it is written without
/// waiting, and the write half is shut down so the client reads it before the
/// end of the stream. Closing a socket that holds unread input would reset the
/// connection and could destroy the refusal before the client reads it, so what
/// the client sends is read and dropped for up to a second by a task, at most
/// [`MAX_LINGERING`] of them at once; beyond that the connection is closed at
/// once. A flood of refused connections never holds more than that many
/// descriptors.
fn refuse(mut stream: TcpStream, refusal: &'static [u8]) {
    static LINGERING: Semaphore = Semaphore::const_new(MAX_LINGERING);
    let written = stream.try_write(refusal);
    if !matches!(written, Ok(n) if n == refusal.len()) {
        tracing::debug!(?written, "refusal not written whole");
    }
    let Ok(permit) = LINGERING.try_acquire() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    });
}

/// Refused connections whose input is read and dropped before they close.
const MAX_LINGERING: usize = 64;
