//! One connection to Redis, spoken RESP on by the proxy itself: requests are
//! written as bytes, replies cut into [`Frame`]s as they arrive and handed on
//! as the bytes Redis sent. Opened by [`super::connect::Connector`]; used by a
//! lane (pipelined, shared) or by one client's session (dedicated).

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{COPY_BELOW, Error};
use crate::protocol::{self, Frame, Kind};

/// A byte stream to Redis: TCP, or TLS over it.
pub(crate) trait RawStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawStream for T {}

/// What a link reads into at first, and grows by.
const INPUT: usize = 16 * 1024;

/// The largest reply given an allocation of its own size before it arrives:
/// Redis's largest bulk string (`proto-max-bulk-len`'s default, 512 MiB).
/// A longer length from a server is not trusted with an allocation up front.
const MAX_OWN: usize = 512 * 1024 * 1024 + 64;

/// A connection to Redis, with what it has read but not yet taken.
pub(crate) struct Link {
    stream: Box<dyn RawStream>,
    input: BytesMut,
    /// Redis's id for the connection (`CLIENT ID`), when asked.
    pub(crate) id: i64,
    /// The connection's local address: the `addr` Redis lists it by.
    pub(crate) local: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link over `stream`, before its handshake.
    pub(crate) fn new(stream: Box<dyn RawStream>, local: Option<std::net::SocketAddr>) -> Self {
        Self {
            stream,
            input: BytesMut::with_capacity(INPUT),
            id: 0,
            local,
        }
    }

    /// Writes `bytes` whole.
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).await.map_err(Error::io)
    }

    /// The next reply or push, waiting for it to arrive whole.
    pub(crate) async fn read(&mut self) -> Result<Frame, Error> {
        loop {
            if let Some(frame) = self.take()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// A reply already received whole, if there is one.
    pub(crate) fn take(&mut self) -> Result<Option<Frame>, Error> {
        protocol::take(&mut self.input).map_err(Error::Protocol)
    }

    /// What has been read and not taken: for telling what a server that is
    /// not Redis sent.
    pub(crate) fn unread(&self) -> &[u8] {
        &self.input
    }

    /// Reads more of what Redis sends.
    ///
    /// A large value (a bulk reply of [`COPY_BELOW`] bytes or more) is read
    /// into an allocation of exactly its size: the cache then keeps it as it
    /// came, holding no more memory than the value.
    pub(crate) async fn fill(&mut self) -> Result<(), Error> {
        let large =
            protocol::bulk_end(&self.input).filter(|end| (COPY_BELOW..MAX_OWN).contains(end));
        match large {
            Some(end) if self.input.capacity() != end => {
                let mut own = BytesMut::with_capacity(end);
                own.extend_from_slice(&self.input);
                self.input = own;
            }
            Some(_) => {}
            None if self.input.capacity() - self.input.len() < 4096 => self.input.reserve(INPUT),
            None => {}
        }
        match self.stream.read_buf(&mut self.input).await {
            Ok(0) => Err(Error::lost("closed by redis")),
            Ok(_) => Ok(()),
            Err(error) => Err(Error::io(error)),
        }
    }

    /// Closes the link, telling Redis first.
    pub(crate) async fn close(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// Whether `frame` is a RESP3 push: out of band, not the reply to a request.
pub(crate) fn is_push(frame: &Frame) -> bool {
    frame.kind == Kind::Push
}
