//! A bound TCP listener with its connection slots and counters.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::Stats;
use crate::limit::Slots;

/// A bound listener that allows `max_connections` open connections.
#[derive(Debug)]
pub(crate) struct Listener {
    inner: TcpListener,
    slots: Slots,
    stats: Arc<Stats>,
}

impl Listener {
    /// Binds `addr`, allowing `max_connections` open connections.
    ///
    /// # Errors
    ///
    /// The operating system's reason when the address cannot be bound.
    pub(crate) async fn bind(addr: SocketAddr, max_connections: usize) -> io::Result<Self> {
        Ok(Self {
            inner: TcpListener::bind(addr).await?,
            slots: Slots::new(max_connections),
            stats: Arc::default(),
        })
    }

    /// The address actually bound (the port is chosen by the system for port 0).
    ///
    /// # Errors
    ///
    /// The operating system's error.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// The connection slots: how many connections may be open, and are.
    pub(crate) fn slots(&self) -> &Slots {
        &self.slots
    }

    /// What this listener has accepted and refused.
    pub(crate) fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Accepts the next connection, retrying on errors that concern only that
    /// connection and pausing on resource exhaustion (EMFILE) instead of
    /// spinning.
    pub(crate) async fn accept(&self) -> (TcpStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
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
}

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
