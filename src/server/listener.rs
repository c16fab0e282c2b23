//! A TCP listener that keeps at most N connections open.
//!
//! Each accepted stream carries a semaphore permit that is released when the
//! stream is dropped, so "open connections" is counted exactly, whichever side
//! closes. While every slot is taken the HTTP listener stops accepting, and new
//! connections wait in the kernel's backlog, as most HTTP servers do; the RESP
//! listener accepts and refuses them with an error, as Redis does.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use crate::metrics::Slots;

/// A bound TCP listener with a limit on open connections.
#[derive(Debug)]
pub struct LimitedListener {
    inner: TcpListener,
    slots: Slots,
}

impl LimitedListener {
    /// Binds `addr`, allowing `max_connections` open connections.
    ///
    /// # Errors
    ///
    /// The operating system's reason when the address cannot be bound.
    pub async fn bind(addr: SocketAddr, max_connections: usize) -> io::Result<Self> {
        Ok(Self {
            inner: TcpListener::bind(addr).await?,
            slots: Slots::new(max_connections),
        })
    }

    /// The address actually bound (the port is chosen by the system for port 0).
    ///
    /// # Errors
    ///
    /// The operating system's error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The connection slots, for the open-connections gauge.
    pub fn slots(&self) -> Slots {
        self.slots.clone()
    }

    /// Accepts the next connection once a slot is free.
    pub async fn accept_limited(&mut self) -> (Limited<TcpStream>, SocketAddr) {
        let permit = self
            .slots
            .semaphore()
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, addr) = accept(&self.inner).await;
        (Limited::new(stream, permit), addr)
    }
}

impl LimitedListener {
    /// Accepts the next connection at once, with a slot if one is free: the caller
    /// refuses a connection that comes without one (what Redis does at `maxclients`).
    pub async fn accept_or_refuse(&self) -> (TcpStream, SocketAddr, Option<OwnedSemaphorePermit>) {
        let (stream, addr) = accept(&self.inner).await;
        let slot = self.slots.semaphore().clone().try_acquire_owned().ok();
        (stream, addr, slot)
    }
}

/// Accepts one connection, retrying on errors that concern only that connection
/// and pausing on resource exhaustion (EMFILE) instead of spinning.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                // Replies are small and written whole: send them without delay.
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "setting TCP_NODELAY failed");
                }
                return (stream, addr);
            }
            Err(error) if is_per_connection(&error) => continue,
            Err(error) => {
                tracing::error!(%error, "accept failed; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl axum::serve::Listener for LimitedListener {
    type Io = Limited<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.accept_limited().await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

pin_project! {
    /// A stream holding one of its listener's connection slots until dropped.
    #[derive(Debug)]
    pub struct Limited<T> {
        #[pin]
        io: T,
        _slot: OwnedSemaphorePermit,
    }
}

impl<T> Limited<T> {
    fn new(io: T, slot: OwnedSemaphorePermit) -> Self {
        Self { io, _slot: slot }
    }
}

impl<T: AsyncRead> AsyncRead for Limited<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for Limited<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
