//! HTTP/1.1 connections served with hyper: the [`Protocol`] of the HTTP and
//! admin listeners.
//!
//! Each connection is one hyper connection with keep-alive. Request headers must
//! arrive within the header timeout, or the connection is closed: without that
//! bound a client that trickles its headers (slowloris) would hold a connection
//! slot forever. On shutdown a connection stops taking requests, answers the one
//! in flight and closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use crate::conn::{Protocol, Stream};

/// What an HTTP client beyond the connection limit is told.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\ncontent-length: 33\r\nconnection: close\r\n\r\n\
overloaded: too many connections\n";

/// Serves HTTP/1.1 with a hyper service per connection, made by `make` for the
/// client's address.
pub(crate) struct Hyper<M> {
    name: &'static str,
    make: M,
    builder: http1::Builder,
}

impl<M> Hyper<M> {
    /// HTTP connections named `name` in their spans, each answered by a service
    /// `make` makes for it, whose request headers must arrive within
    /// `header_timeout`.
    pub(crate) fn new(name: &'static str, make: M, header_timeout: Duration) -> Self {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        Self {
            name,
            make,
            builder,
        }
    }
}

impl<M, S, B> Protocol for Hyper<M>
where
    M: Fn(SocketAddr) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn refusal(&self) -> &'static [u8] {
        REFUSAL
    }

    async fn serve(self: Arc<Self>, stream: Stream, peer: SocketAddr, stop: CancellationToken) {
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), (self.make)(peer));
        let mut connection = std::pin::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = stop.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_response() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        assert!(head.starts_with("HTTP/1.1 503 "));
    }
}
