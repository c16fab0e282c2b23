//! A bound TCP listener with its connection slots and counters.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
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
        {
            let mut spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
            if spare.is_none() {
                *spare = std::fs::File::open("/dev/null").ok();
            }
        }
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
    /// connection.
    ///
    /// When the process is out of descriptors (EMFILE), a client would wait in
    /// the backlog with no answer. One descriptor is kept spare for this: it is
    /// given up to accept that client, which is sent `refusal` and closed at
    /// once, and taken back. Should even that fail, accepting pauses for a
    /// moment instead of spinning.
    pub(crate) async fn accept(&self, refusal: &[u8]) -> (TcpStream, SocketAddr) {
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
                Err(error) if error.raw_os_error() == Some(libc::EMFILE) => {
                    if !self.refuse_with_spare(refusal).await {
                        tracing::error!(%error, "out of file descriptors; accepting again in 100ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "accept failed; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Frees the spare descriptor, accepts one connection with it, refuses it,
    /// and takes the descriptor back; whether a connection was refused.
    async fn refuse_with_spare(&self, refusal: &[u8]) -> bool {
        let spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner).take();
        let refused = match spare {
            Some(spare) => {
                drop(spare);
                match self.inner.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.try_write(refusal);
                        tracing::warn!("out of file descriptors: refused a connection");
                        true
                    }
                    Err(_) => false,
                }
            }
            None => false,
        };
        let mut spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner);
        if spare.is_none() {
            *spare = std::fs::File::open("/dev/null").ok();
        }
        refused
    }
}

/// The descriptor kept spare for telling a client the process is out of them.
static SPARE: Mutex<Option<std::fs::File>> = Mutex::new(None);

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
