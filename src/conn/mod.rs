//! A client connection as a listener hands it to a front-end: the stream
//! (TCP, or TLS over it), the listener's counts, and the [`Protocol`] trait
//! each front-end implements. The listener (`net`) and the front-ends (`http`,
//! `resp`, `admin`) both use this module, so neither imports the other.

mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio_util::sync::CancellationToken;

pub(crate) use stream::Stream;

/// What one kind of listener does with its connections.
pub(crate) trait Protocol: Send + Sync + 'static {
    /// The `protocol` field of each connection's span: `http`, `resp`, `admin`.
    fn name(&self) -> &'static str;

    /// What a client beyond the connection limit is sent before the connection
    /// is closed.
    fn refusal(&self) -> &'static [u8];

    /// Serves one connection until the client leaves or breaks the protocol.
    /// When `stop` is cancelled, it reads no new request, answers the ones in
    /// flight and returns.
    fn serve(
        self: Arc<Self>,
        stream: Stream,
        peer: SocketAddr,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// Counts of what one listener accepted, for `INFO`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Connections accepted, refused ones included.
    pub(crate) received: AtomicU64,
    /// Connections refused beyond the limit.
    pub(crate) rejected: AtomicU64,
}
