//! Bound listeners: one socket per worker on one address, the connection slots
//! they share, and accepting.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use super::Stats;
use crate::limit::Slots;

/// A bound address: one listening socket, handed to each of `sockets`
/// workers as a descriptor of its own, and `max_connections` connection slots
/// that all of them share.
///
/// The socket is bound without `SO_REUSEPORT`: with it, a second process of
/// the same user could bind the same address and silently take a share of the
/// connections. Every worker's event loop watches the one socket, and whichever
/// is free first accepts a new connection; a connection then lives on the
/// worker that accepted it.
#[derive(Debug)]
pub(crate) struct Listener {
    sockets: Vec<std::net::TcpListener>,
    local: SocketAddr,
    slots: Slots,
    stats: Arc<Stats>,
}

/// How many connections may wait in the kernel to be accepted, per socket.
const BACKLOG: i32 = 1024;

impl Listener {
    /// Binds `sockets` sockets (at least one) to `addr`, allowing
    /// `max_connections` open connections across them.
    ///
    /// # Errors
    ///
    /// The operating system's reason when the address cannot be bound.
    pub(crate) fn bind(
        addr: SocketAddr,
        max_connections: usize,
        sockets: usize,
    ) -> io::Result<Self> {
        super::files::keep_spares();
        let first = bind_one(addr)?;
        let local = first.local_addr()?;
        let mut bound = Vec::with_capacity(sockets.max(1));
        for _ in 1..sockets {
            bound.push(first.try_clone()?);
        }
        bound.push(first);
        Ok(Self {
            sockets: bound,
            local,
            slots: Slots::new(max_connections),
            stats: Arc::default(),
        })
    }

    /// The address bound (the port is chosen by the system for port 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The connection slots: how many connections may be open, and are.
    pub(crate) fn slots(&self) -> &Slots {
        &self.slots
    }

    /// What this listener has accepted and refused.
    pub(crate) fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// One [`Acceptor`] per worker, each with its own descriptor of the socket.
    pub(crate) fn into_acceptors(self) -> Vec<Acceptor> {
        self.sockets
            .into_iter()
            .map(|socket| Acceptor {
                socket,
                slots: self.slots.clone(),
                stats: self.stats.clone(),
            })
            .collect()
    }
}

/// A listening socket and the slots and counters of its listener: what one
/// worker accepts connections with.
#[derive(Debug)]
pub(crate) struct Acceptor {
    socket: std::net::TcpListener,
    pub(crate) slots: Slots,
    pub(crate) stats: Arc<Stats>,
}

impl Acceptor {
    /// The socket, registered with the runtime of the calling thread (the worker
    /// that accepts on it).
    ///
    /// # Errors
    ///
    /// The operating system's error registering it.
    pub(crate) fn listen(self) -> io::Result<Accepting> {
        Ok(Accepting {
            inner: TcpListener::from_std(self.socket)?,
            slots: self.slots,
            stats: self.stats,
        })
    }
}

/// A socket being accepted on, in its worker's runtime.
#[derive(Debug)]
pub(crate) struct Accepting {
    inner: TcpListener,
    pub(crate) slots: Slots,
    pub(crate) stats: Arc<Stats>,
}

impl Accepting {
    /// Accepts the next connection, retrying on errors that concern only that
    /// connection.
    ///
    /// When the process is out of descriptors (EMFILE), a client would wait in
    /// the backlog with no answer: the clients waiting are refused with
    /// descriptors kept spare for it (see [`super::files::refuse_waiting`]).
    /// Should there be none to spare, accepting pauses for a moment instead of
    /// spinning.
    pub(crate) async fn accept(&self, refusal: &[u8]) -> (TcpStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    super::files::descriptors_available();
                    // Replies are small and written whole: send them without delay.
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "setting TCP_NODELAY failed");
                    }
                    return (stream, addr);
                }
                Err(error) if is_per_connection(&error) => continue,
                Err(error) if error.raw_os_error() == Some(libc::EMFILE) => {
                    if super::files::refuse_waiting(&self.inner, refusal) == 0 {
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
}

/// A listening socket on `addr`, which no other socket may share.
fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As every server does, so a restart can bind while old connections
    // linger in TIME_WAIT. (On Linux it lets no one bind a listening port.)
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
