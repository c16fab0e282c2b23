//! The client's side of one connection: its stream, the requests it has sent
//! and the replies it has not taken, with the bounds on each. Both the
//! pipelined connection loop and a dedicated session read and write through
//! it.
//!
//! Bounds, each ending the connection when passed (see [`Limits`]): pending
//! replies over `output` bytes, or waiting longer than `write_timeout` for the
//! client to take any; a request taking longer than `request_timeout` to
//! arrive once it has begun; unparsed input beyond what all connections
//! together may hold.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::output::Output;
use super::{FREE_INPUT, Limits};
use crate::protocol::{Decoder, Protocol, ProtocolError, Reply};
use crate::throttle::{Throttle, held_back};

/// Why a connection is closed.
#[derive(Debug)]
pub(super) enum Close {
    /// The client sent `QUIT`, or its stream ended.
    Done,
    /// The client broke the protocol: it is told so.
    Protocol(ProtocolError),
    /// A bound was passed: the client is told which, when it may still read.
    Bound(Bound),
    /// The stream failed, or the proxy is stopping.
    Gone,
}

/// The bounds on one connection (see [`Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bound {
    /// Pending replies over `Limits::output` bytes.
    Output,
    /// Pending replies not taken for `Limits::write_timeout`.
    Write,
    /// A request not complete within `Limits::request_timeout`.
    Request,
    /// Unparsed input of all connections over `Limits::input_total`.
    Input,
}

impl Bound {
    fn name(self) -> &'static str {
        match self {
            Bound::Output => "output",
            Bound::Write => "write",
            Bound::Request => "request",
            Bound::Input => "input",
        }
    }

    /// What the client is told, if it is told anything.
    fn message(self) -> Option<&'static str> {
        match self {
            Bound::Output => Some(
                "ERR client output buffer limit reached: replies waiting for this client would pass --client-output-limit",
            ),
            // It does not read: telling it is pointless.
            Bound::Write => None,
            Bound::Request => {
                Some("ERR Protocol error: request not completed within --request-timeout")
            }
            Bound::Input => Some("ERR the proxy holds too much unparsed input; try again later"),
        }
    }
}

/// Unparsed input held by every connection of a listener, beyond what each
/// holds for free, against `Limits::input_total`.
#[derive(Debug, Default)]
pub(crate) struct InputBudget {
    held: AtomicUsize,
}

impl InputBudget {
    /// Counts `more` bytes against `total`; `false` (and nothing counted) when
    /// that would pass it.
    fn hold(&self, more: usize, total: usize) -> bool {
        let mut now = self.held.load(Ordering::Relaxed);
        loop {
            if now.saturating_add(more) > total {
                return false;
            }
            match self.held.compare_exchange_weak(
                now,
                now + more,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => now = actual,
            }
        }
    }

    fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// What a connection's input buffer starts with, and shrinks back to.
const INPUT_CAPACITY: usize = 16 * 1024;

/// The client's side of one connection.
pub(super) struct Client<'a, T> {
    stream: T,
    decoder: Decoder,
    input: BytesMut,
    /// Replies not yet written, in order.
    pub(super) output: Output,
    limits: Limits,
    budget: &'a InputBudget,
    /// Unparsed input counted against the budget.
    held: usize,
}

impl<'a, T> Client<'a, T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    pub(super) fn new(stream: T, limits: Limits, budget: &'a InputBudget) -> Self {
        Self {
            stream,
            decoder: Decoder::default(),
            input: BytesMut::with_capacity(INPUT_CAPACITY),
            output: Output::with_capacity(INPUT_CAPACITY),
            limits,
            budget,
            held: 0,
        }
    }

    /// The bounds of this connection.
    pub(super) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The next complete request received, if one is.
    ///
    /// # Errors
    ///
    /// The client broke the protocol.
    pub(super) fn next_request(&mut self) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        self.decoder.decode(&mut self.input)
    }

    /// Whether the pending replies are past the output bound.
    pub(super) fn output_over(&self, more: usize) -> bool {
        self.output.pending() + more > self.limits.output
    }

    /// Writes some of the pending replies, as soon as the client takes them.
    pub(super) async fn write_some(&mut self) -> Result<(), Close> {
        self.output
            .write_some(&mut self.stream)
            .await
            .map(drop)
            .map_err(|_| Close::Gone)
    }

    /// Writes every pending reply, giving up if the client takes none of it
    /// for the write timeout.
    pub(super) async fn flush(&mut self) -> Result<(), Close> {
        self.write_pending(false).await.map(drop)
    }

    /// [`Client::flush`], reading the client's next requests meanwhile (into
    /// the input, within its bounds, not yet answered): a client that sends a
    /// whole pipeline before it reads a reply (redis-py's pipelines do) would
    /// otherwise wait on the proxy while the proxy waits on it. Returns
    /// whether any input arrived.
    pub(super) async fn flush_reading(&mut self) -> Result<bool, Close> {
        self.write_pending(true).await
    }

    async fn write_pending(&mut self, mut reading: bool) -> Result<bool, Close> {
        let timeout = self.limits.write_timeout;
        let mut read = false;
        let mut written_at = Instant::now();
        while !self.output.is_empty() {
            if reading && self.input.capacity() - self.input.len() < 4096 {
                self.input.reserve(INPUT_CAPACITY);
            }
            let (stream, input, output) = (&mut self.stream, &mut self.input, &mut self.output);
            let step = std::future::poll_fn(|cx| {
                if let Poll::Ready(written) = output.poll_write_some(stream, cx) {
                    return Poll::Ready(Step::Wrote(written));
                }
                if !reading {
                    return Poll::Pending;
                }
                tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, input).map(Step::Read)
            });
            match tokio::time::timeout_at(written_at + timeout, step).await {
                Err(_) => return Err(Close::Bound(Bound::Write)),
                Ok(Step::Wrote(Ok(_))) => written_at = Instant::now(),
                Ok(Step::Wrote(Err(_))) => return Err(Close::Gone),
                // The client is done sending, or its end failed: what it
                // sent is still answered, and the next read tells.
                Ok(Step::Read(Ok(0) | Err(_))) => reading = false,
                Ok(Step::Read(Ok(_))) => {
                    read = true;
                    self.account_input()?;
                }
            }
        }
        Ok(read)
    }

    /// Reads more input. A request begun but not complete must be completed
    /// within the request timeout.
    pub(super) async fn read(&mut self, stop: &CancellationToken) -> Result<(), Close> {
        let partial = !self.input.is_empty() || self.decoder.held() > 0;
        if !partial && self.input.capacity() > 4 * INPUT_CAPACITY {
            // A large request has been answered: its buffer goes with it.
            self.input = BytesMut::with_capacity(INPUT_CAPACITY);
        } else if self.input.capacity() - self.input.len() < 4096 {
            self.input.reserve(INPUT_CAPACITY);
        }
        let deadline = partial.then(|| Instant::now() + self.limits.request_timeout);
        let read = self.stream.read_buf(&mut self.input);
        let read = async {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, read)
                    .await
                    .map_err(|_| Close::Bound(Bound::Request)),
                None => Ok(read.await),
            }
        };
        tokio::select! {
            read = read => match read? {
                Ok(0) | Err(_) => Err(Close::Done),
                Ok(_) => self.account_input(),
            },
            () = stop.cancelled() => Err(Close::Gone),
        }
    }

    /// Reads more input, without a deadline: for a dedicated session, which
    /// waits on Redis and the client at once.
    pub(super) async fn read_more(&mut self) -> Result<(), Close> {
        if self.input.capacity() - self.input.len() < 4096 {
            self.input.reserve(INPUT_CAPACITY);
        }
        match self.stream.read_buf(&mut self.input).await {
            Ok(0) | Err(_) => Err(Close::Done),
            Ok(_) => self.account_input(),
        }
    }

    /// Brings the input counted against the shared bound in line with what the
    /// connection holds now.
    pub(super) fn account_input(&mut self) -> Result<(), Close> {
        let holding = (self.input.len() + self.decoder.held()).saturating_sub(FREE_INPUT);
        if holding > self.held {
            if !self
                .budget
                .hold(holding - self.held, self.limits.input_total)
            {
                return Err(Close::Bound(Bound::Input));
            }
        } else if holding < self.held {
            self.budget.release(self.held - holding);
        }
        self.held = holding;
        Ok(())
    }

    /// Tells the client why the connection ends, when it ends on a bound or a
    /// protocol error, and closes it.
    pub(super) async fn close(mut self, close: Close, protocol: Protocol) {
        let message = match &close {
            Close::Protocol(error) => {
                tracing::debug!(%error, "protocol error; closing");
                Some(format!("ERR Protocol error: {error}"))
            }
            Close::Bound(bound) => {
                static CLOSED: Throttle = Throttle::new();
                if let Some(held) = CLOSED.admit() {
                    tracing::warn!(
                        bound = bound.name(),
                        "closing a connection past a bound{}",
                        held_back(held)
                    );
                }
                if *bound == Bound::Output {
                    // The replies that passed the bound are dropped: the point of it.
                    self.output = Output::default();
                }
                bound.message().map(str::to_owned)
            }
            Close::Done | Close::Gone => None,
        };
        if let Some(message) = message {
            Reply::error(message).encode(protocol, &mut self.output);
            let _ = self.flush().await;
        }
        let _ = self.stream.shutdown().await;
        if self.held > 0 {
            self.budget.release(self.held);
        }
    }
}

/// What one poll of a connection that reads and writes at once did.
enum Step {
    Wrote(std::io::Result<usize>),
    Read(std::io::Result<usize>),
}
