//! [`Output`]: the replies of one connection waiting to be written.
//!
//! Small replies are encoded into one buffer; a large value is not copied but
//! queued as the `Bytes` the cache or the backend holds, and written from there
//! with vectored writes. Ten clients reading one cached 100 MB value cost ten
//! references to it, not a gigabyte of copies. What is queued is counted, whether
//! copied or referenced, so that a connection's pending output can be bounded.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pub(crate) use crate::protocol::Sink;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

/// Values at least this long are queued by reference rather than copied.
pub(super) const REFERENCE_AT: usize = 16 * 1024;

/// The replies of one connection not yet written, in order.
#[derive(Debug, Default)]
pub(crate) struct Output {
    /// Pieces ahead of `buffer`, in order: frozen stretches of it and values
    /// queued by reference.
    queued: VecDeque<Bytes>,
    /// The newest small replies, after everything in `queued`.
    buffer: BytesMut,
    /// Bytes in `queued`, at the front of `buffer` and both: what is pending.
    queued_len: usize,
}

impl Sink for Output {
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buffer
    }

    fn put_value(&mut self, value: &Bytes) {
        if value.len() < REFERENCE_AT {
            self.buffer.extend_from_slice(value);
            return;
        }
        self.freeze_buffer();
        self.queued_len += value.len();
        self.queued.push_back(value.clone());
    }
}

impl Output {
    /// An empty output whose buffer starts with `capacity` bytes.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            buffer: BytesMut::with_capacity(capacity),
            ..Self::default()
        }
    }

    /// Bytes waiting to be written.
    pub(crate) fn pending(&self) -> usize {
        self.queued_len + self.buffer.len()
    }

    /// Whether nothing waits to be written.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    fn freeze_buffer(&mut self) {
        if !self.buffer.is_empty() {
            let frozen = self.buffer.split().freeze();
            self.queued_len += frozen.len();
            self.queued.push_back(frozen);
        }
    }

    /// Writes what it can in one call: the pending pieces as one vectored
    /// write. Returns how many bytes were written (0 only when nothing waits).
    ///
    /// Cancel-safe: the write is one call of the stream's `poll_write_vectored`,
    /// which either wrote its bytes (and they are consumed) or wrote nothing.
    pub(crate) async fn write_some<W: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut W,
    ) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_write_some(stream, cx)).await
    }

    /// [`Output::write_some`] as a poll: for a caller that reads the same
    /// stream while it writes.
    pub(crate) fn poll_write_some<W: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        let stream = Pin::new(stream);
        if self.queued.is_empty() {
            if self.buffer.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let n = ready!(stream.poll_write(cx, &self.buffer))?;
            self.buffer.advance(n);
            if self.buffer.is_empty() {
                // Everything written: start again at the front of the allocation.
                self.buffer.clear();
            }
            return Poll::Ready(zero_is_closed(n));
        }
        let mut slices = [IoSlice::new(&[]); 64];
        let mut count = 0;
        for piece in self.queued.iter().take(slices.len() - 1) {
            slices[count] = IoSlice::new(piece);
            count += 1;
        }
        if count < slices.len() && count == self.queued.len() && !self.buffer.is_empty() {
            slices[count] = IoSlice::new(&self.buffer);
            count += 1;
        }
        let n = ready!(stream.poll_write_vectored(cx, &slices[..count]))?;
        self.consume(n);
        Poll::Ready(zero_is_closed(n))
    }

    /// Drops the first `n` written bytes.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            match self.queued.front_mut() {
                Some(piece) => {
                    let take = n.min(piece.len());
                    piece.advance(take);
                    self.queued_len -= take;
                    n -= take;
                    if piece.is_empty() {
                        self.queued.pop_front();
                    }
                }
                None => {
                    self.buffer.advance(n);
                    n = 0;
                }
            }
        }
    }
}

/// A write of zero bytes means the peer can take no more: its end is closed.
fn zero_is_closed(n: usize) -> std::io::Result<usize> {
    if n == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn drain(output: &mut Output) -> Vec<u8> {
        let mut written = Vec::new();
        while !output.is_empty() {
            output.write_some(&mut written).await.unwrap();
        }
        written
    }

    #[tokio::test]
    async fn small_and_large_pieces_come_out_in_order() {
        let mut output = Output::with_capacity(16);
        let large = Bytes::from(vec![b'L'; REFERENCE_AT]);
        output.buffer().extend_from_slice(b"head ");
        output.put_value(&Bytes::from_static(b"small "));
        output.put_value(&large);
        output.buffer().extend_from_slice(b" tail");
        assert_eq!(output.pending(), 5 + 6 + REFERENCE_AT + 5);
        let written = drain(&mut output).await;
        let mut expected = b"head small ".to_vec();
        expected.extend_from_slice(&large);
        expected.extend_from_slice(b" tail");
        assert_eq!(written, expected);
        assert_eq!(output.pending(), 0);
    }

    #[test]
    fn a_large_value_is_referenced_not_copied() {
        let mut output = Output::default();
        let large = Bytes::from(vec![0u8; 1 << 20]);
        for _ in 0..10 {
            output.put_value(&large);
        }
        assert_eq!(output.pending(), 10 << 20);
        assert!(
            output
                .queued
                .iter()
                .all(|piece| piece.as_ptr() == large.as_ptr()),
            "every reply points at the one value"
        );
    }

    #[tokio::test]
    async fn a_write_cut_short_resumes_where_it_stopped() {
        /// Takes at most 7 bytes per write.
        struct Trickle(Vec<u8>);
        impl AsyncWrite for Trickle {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                let n = buf.len().min(7);
                self.0.extend_from_slice(&buf[..n]);
                std::task::Poll::Ready(Ok(n))
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }
        }
        let mut output = Output::default();
        let large = Bytes::from((0..REFERENCE_AT).map(|i| i as u8).collect::<Vec<_>>());
        output.buffer().extend_from_slice(b"$16384\r\n");
        output.put_value(&large);
        output.buffer().extend_from_slice(b"\r\n");
        let mut sink = Trickle(Vec::new());
        while !output.is_empty() {
            output.write_some(&mut sink).await.unwrap();
        }
        assert_eq!(sink.0.len(), 8 + REFERENCE_AT + 2);
        assert_eq!(&sink.0[8..8 + REFERENCE_AT], &large[..]);
        assert!(sink.0.ends_with(b"\r\n"));
    }
}
