//! One client connection: decode a batch of pipelined requests, run their keys
//! through the shared stack while writing the replies in order, repeat.
//!
//! A batch is every complete request already received, up to `max_keys` keys.
//! The keys of a batch run concurrently, at most `max_keys` at a time (an `MGET`
//! larger than that runs in waves), so one connection can never hold more than
//! `max_keys` of the proxy's `max_clients` slots, however deep it pipelines.
//! Replies are encoded as their results arrive and written while later keys are
//! still being looked up; a client that reads keeps little pending, and one that
//! does not read holds no client slot while its replies wait.
//!
//! Bounds, each ending the connection when passed (see [`super::Limits`]):
//! pending replies over `output` bytes, or waiting longer than `write_timeout`
//! for the client to take any; a request taking longer than `request_timeout`
//! to arrive once it has begun; unparsed input beyond what all connections
//! together may hold.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::BytesMut;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tower::Service;

use super::command::Command;
use super::lookups::Lookups;
use super::output::{Output, Sink};
use super::session::{Planned, Session};
use super::{FREE_INPUT, Resp};
use crate::forward::Class;
use crate::protocol::Reply;
use crate::protocol::{Decoder, ProtocolError};

mod relay;
use crate::lookup::{Answer, Error, Lookup, Request};
use crate::metrics::Tally;

/// Why a connection is closed.
#[derive(Debug)]
enum Close {
    /// The client sent `QUIT`, or its stream ended.
    Done,
    /// The client broke the protocol: it is told so.
    Protocol(ProtocolError),
    /// A bound was passed: the client is told which, when it may still read.
    Bound(Bound),
    /// The stream failed, or the proxy is stopping.
    Gone,
}

/// The bounds on one connection (see [`super::Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
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

/// What one batch may hold in transparent mode. Reads through the cache and
/// writes take different paths to Redis (the cache and its fetches; the
/// shared connection), so a batch holds one kind or the other: a read after a
/// write waits for the write's reply (and the invalidation that comes with it),
/// and a write after a read waits for the read's answer, as if the pipeline
/// ran on one connection.
#[derive(Default)]
struct Order {
    lookups: bool,
    writes: bool,
}

impl Order {
    /// Whether a request of `class` may join the batch (and it then has).
    fn admits(&mut self, class: Class) -> bool {
        match class {
            Class::Lookup if self.writes => false,
            Class::Lookup => {
                self.lookups = true;
                true
            }
            Class::Write if self.lookups => false,
            Class::Write => {
                self.writes = true;
                true
            }
            Class::Neutral => true,
        }
    }
}

/// How decoding a batch ended.
struct Batch {
    /// The batch ends the connection (`QUIT`, or the protocol error).
    end: Option<Close>,
    /// More complete requests may wait in the buffer (the batch was cut short).
    more: bool,
}

/// What a connection's input buffer starts with, and shrinks back to.
const INPUT_CAPACITY: usize = 16 * 1024;

/// Serves one connection until the client leaves, sends `QUIT`, breaks the
/// protocol or a bound, or the proxy shuts down (in-flight replies are written
/// first).
pub(super) async fn serve<S, T>(
    stream: T,
    peer: SocketAddr,
    local: SocketAddr,
    resp: &Resp<S>,
    stop: tokio_util::sync::CancellationToken,
) where
    S: Service<Request, Response = Answer, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut connection = Connection {
        stream,
        resp,
        stack: resp.stack.clone(),
        session: Session::new(
            resp.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            local,
            resp.access.initial(),
        ),
        decoder: Decoder::default(),
        input: BytesMut::with_capacity(INPUT_CAPACITY),
        output: Output::with_capacity(INPUT_CAPACITY),
        planned: VecDeque::new(),
        lookups: Lookups::default(),
        results: Results::default(),
        held: 0,
        stash: None,
        dedicate: None,
    };
    let close = connection.run(&stop).await;
    connection.close(close).await;
}

struct Connection<'a, S: Service<Request>, T> {
    stream: T,
    resp: &'a Resp<S>,
    /// The connection's own handle to the stack, so that a lookup costs no clone.
    stack: S,
    session: Session,
    decoder: Decoder,
    input: BytesMut,
    output: Output,
    // The batch being answered; kept between batches for their allocations.
    planned: VecDeque<Planned>,
    lookups: Lookups<S::Future>,
    results: Results,
    /// Unparsed input counted against the shared bound (see `Resp::hold_input`).
    held: usize,
    /// Transparent mode: a request decoded but left for the next batch, since
    /// it may not run beside this batch's (a read after a write).
    stash: Option<Vec<bytes::Bytes>>,
    /// Transparent mode: a command that starts a state, served on a dedicated
    /// connection once the batch before it is answered.
    dedicate: Option<Vec<bytes::Bytes>>,
}

impl<S, T> Connection<'_, S, T>
where
    S: Service<Request, Response = Answer, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
    T: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self, stop: &tokio_util::sync::CancellationToken) -> Close {
        loop {
            if let Some(forwarding) = &self.resp.forwarding
                && forwarding.table().is_none()
                && let Err(error) = forwarding.load().await
            {
                tracing::warn!(%error, "cannot read the backend's command table");
            }
            let batch = self.decode();
            if let Err(close) = self.answer().await {
                return close;
            }
            if let Err(close) = self.flush().await {
                return close;
            }
            if let Some(close) = batch.end {
                return close;
            }
            if let Some(first) = self.dedicate.take()
                && let Err(close) = self.relay(first, stop).await
            {
                return close;
            }
            if let Err(close) = self.account_input() {
                return close;
            }
            if batch.more {
                continue;
            }
            if let Err(close) = self.read(stop).await {
                return close;
            }
        }
    }

    /// Takes the complete requests at the front of the input as one batch: their
    /// plans in `planned`, their keys in `lookups`.
    fn decode(&mut self) -> Batch {
        let mut batch = Batch {
            end: None,
            more: false,
        };
        let forward = self.resp.forwarding.is_some();
        // Transparent mode: what the batch holds so far, to keep reads and
        // writes apart (see `Order`).
        let mut order = Order::default();
        while self.lookups.keys.len() < self.resp.max_keys {
            let args = match self.stash.take() {
                Some(args) => Ok(Some(args)),
                None => self.decoder.decode(&mut self.input),
            };
            match args {
                Ok(Some(args)) => {
                    if forward {
                        let class = self.class(&args);
                        if !order.admits(class) {
                            self.stash = Some(args);
                            batch.more = true;
                            return batch;
                        }
                    }
                    let command = Command::parse(args, forward);
                    let quit = command == Command::Quit;
                    let keys = &mut self.lookups.keys;
                    let planned = self.session.plan(command, keys, self.resp);
                    let select = matches!(planned, Planned::Select(_));
                    if let Planned::Dedicate(args) = planned {
                        self.dedicate = Some(args);
                        batch.more = true;
                        return batch;
                    }
                    self.planned.push_back(planned);
                    if quit {
                        // Its +OK is the last reply; anything after it is ignored.
                        batch.end = Some(Close::Done);
                        return batch;
                    }
                    if select {
                        // Requests after it read the database it selects, if it
                        // exists: they wait until the backend has said.
                        batch.more = true;
                        return batch;
                    }
                }
                Ok(None) => return batch,
                Err(error) => {
                    batch.end = Some(Close::Protocol(error));
                    return batch;
                }
            }
        }
        batch.more = true;
        batch
    }

    /// Transparent mode: whether a request reads through the cache, may write,
    /// or neither.
    fn class(&self, args: &[bytes::Bytes]) -> Class {
        let name = &args[0];
        if name.eq_ignore_ascii_case(b"get") || name.eq_ignore_ascii_case(b"mget") {
            return Class::Lookup;
        }
        if super::command::find(name).is_some() && !name.eq_ignore_ascii_case(b"command") {
            return Class::Neutral;
        }
        match &self.resp.forwarding {
            Some(forwarding) => forwarding.class(args),
            None => Class::Neutral,
        }
    }

    /// Looks up the batch's keys and encodes every reply in order, writing what
    /// is encoded while later keys are still being looked up.
    async fn answer(&mut self) -> Result<(), Close> {
        let mut tally = Tally::default();
        let answered = self.answer_counted(&mut tally).await;
        if !tally.is_empty() {
            self.resp.requests.add(&tally);
        }
        answered
    }

    async fn answer_counted(&mut self, tally: &mut Tally) -> Result<(), Close> {
        loop {
            self.encode_ready().await?;
            if self.planned.is_empty() {
                return Ok(());
            }
            let write = !self.output.is_empty();
            let lookups = &mut self.lookups;
            let looking = lookups.is_busy();
            let stack = &mut self.stack;
            let window = self.resp.max_keys;
            tokio::select! {
                biased;
                result = std::future::poll_fn(|cx| lookups.poll_next(cx, stack, window)), if looking => {
                    let result = result.expect("a lookup for every read waiting for one");
                    tally.count_answer(&result);
                    self.results.push(result);
                    // Results waiting for their turn are replies in all but name.
                    if self.output.pending() + self.results.bytes > self.resp.limits.output {
                        return Err(Close::Bound(Bound::Output));
                    }
                }
                written = self.output.write_some(&mut self.stream), if write => {
                    written.map_err(|_| Close::Gone)?;
                }
            }
        }
    }

    /// Encodes the planned replies whose results are in, front to back; a
    /// database being selected is asked about here, in its turn.
    async fn encode_ready(&mut self) -> Result<(), Close> {
        // Results already in need no waiting: take them first.
        while let Some(result) = self.lookups.take_ready() {
            self.results.push(result);
        }
        while let Some(item) = self.planned.front() {
            match item {
                Planned::Reply(reply, protocol) => reply.encode(*protocol, &mut self.output),
                Planned::Get(protocol) => {
                    let Some(result) = self.results.pop() else {
                        return Ok(());
                    };
                    get_reply(result).encode(*protocol, &mut self.output);
                }
                &Planned::MGet(n, protocol) => {
                    // One array: encoded once every result is in. Until then the
                    // results count toward the pending output.
                    if self.output.pending() + self.results.bytes > self.resp.limits.output {
                        return Err(Close::Bound(Bound::Output));
                    }
                    if self.results.len() < n {
                        return Ok(());
                    }
                    mget_reply(self.results.take(n)).encode(protocol, &mut self.output);
                }
                Planned::Relay => {
                    let Some(result) = self.results.pop() else {
                        return Ok(());
                    };
                    match result {
                        // The reply as Redis sent it.
                        Ok(Answer::Reply(reply))
                        | Ok(Answer::Lookup(Lookup {
                            value: Some(reply), ..
                        })) => self.output.put_value(&reply),
                        Ok(Answer::Lookup(_)) => {
                            Reply::Null.encode(self.session.protocol, &mut self.output)
                        }
                        Err(error) => {
                            error_reply(&error).encode(self.session.protocol, &mut self.output)
                        }
                    }
                }
                Planned::Dedicate(_) => unreachable!("a dedicated command is never queued"),
                &Planned::Select(db) => {
                    let protocol = self.session.protocol;
                    let reply = match self.resp.databases.ask(db).await {
                        Ok(()) => {
                            self.session.select(Some(db));
                            Reply::OK
                        }
                        Err(reply) => reply,
                    };
                    reply.encode(protocol, &mut self.output);
                }
            }
            self.planned.pop_front();
            if self.output.pending() > self.resp.limits.output {
                return Err(Close::Bound(Bound::Output));
            }
        }
        Ok(())
    }

    /// Writes every pending reply, giving up if the client takes none of it for
    /// the write timeout.
    async fn flush(&mut self) -> Result<(), Close> {
        let timeout = self.resp.limits.write_timeout;
        while !self.output.is_empty() {
            match tokio::time::timeout(timeout, self.output.write_some(&mut self.stream)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(Close::Gone),
                Err(_) => return Err(Close::Bound(Bound::Write)),
            }
        }
        Ok(())
    }

    /// Reads more input. A request begun but not complete must be completed
    /// within the request timeout.
    async fn read(&mut self, stop: &tokio_util::sync::CancellationToken) -> Result<(), Close> {
        let partial = !self.input.is_empty() || self.decoder.held() > 0;
        if !partial && self.input.capacity() > 4 * INPUT_CAPACITY {
            // A large request has been answered: its buffer goes with it.
            self.input = BytesMut::with_capacity(INPUT_CAPACITY);
        } else if self.input.capacity() - self.input.len() < 4096 {
            self.input.reserve(INPUT_CAPACITY);
        }
        let deadline = partial.then(|| Instant::now() + self.resp.limits.request_timeout);
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

    /// Brings the input counted against the shared bound in line with what the
    /// connection holds now.
    fn account_input(&mut self) -> Result<(), Close> {
        let holding = (self.input.len() + self.decoder.held()).saturating_sub(FREE_INPUT);
        if holding > self.held {
            if !self.resp.hold_input(holding - self.held) {
                return Err(Close::Bound(Bound::Input));
            }
        } else if holding < self.held {
            self.resp.release_input(self.held - holding);
        }
        self.held = holding;
        Ok(())
    }

    /// Tells the client why the connection ends, when it ends on a bound or a
    /// protocol error, and closes it.
    async fn close(mut self, close: Close) {
        let message = match &close {
            Close::Protocol(error) => {
                tracing::debug!(%error, "protocol error; closing");
                Some(format!("ERR Protocol error: {error}"))
            }
            Close::Bound(bound) => {
                tracing::warn!(bound = bound.name(), "closing a connection past a bound");
                if *bound == Bound::Output {
                    // The replies that passed the bound are dropped: the point of it.
                    self.output = Output::default();
                }
                bound.message().map(str::to_owned)
            }
            Close::Done | Close::Gone => None,
        };
        if let Some(message) = message {
            Reply::error(message).encode(self.session.protocol, &mut self.output);
            let _ = self.flush().await;
        }
        let _ = self.stream.shutdown().await;
        if self.held > 0 {
            self.resp.release_input(self.held);
        }
    }
}

/// Lookup results waiting for their replies to be encoded, in key order, and
/// the bytes of their values.
#[derive(Default)]
struct Results {
    queue: VecDeque<Result<Answer, Error>>,
    bytes: usize,
}

impl Results {
    fn push(&mut self, result: Result<Answer, Error>) {
        self.bytes += value_len(&result);
        self.queue.push_back(result);
    }

    fn pop(&mut self) -> Option<Result<Answer, Error>> {
        let result = self.queue.pop_front()?;
        self.bytes -= value_len(&result);
        Some(result)
    }

    fn take(&mut self, n: usize) -> Vec<Result<Answer, Error>> {
        (0..n).filter_map(|_| self.pop()).collect()
    }

    fn len(&self) -> usize {
        self.queue.len()
    }
}

fn value_len(result: &Result<Answer, Error>) -> usize {
    match result {
        Ok(Answer::Lookup(Lookup {
            value: Some(value), ..
        }))
        | Ok(Answer::Reply(value)) => value.len(),
        _ => 0,
    }
}

fn value_reply(answer: Answer) -> Reply {
    match answer {
        Answer::Lookup(Lookup {
            value: Some(value), ..
        }) => Reply::Bulk(value),
        Answer::Lookup(_) => Reply::Null,
        // A GET is never forwarded: its key goes through the cache.
        Answer::Reply(_) => Reply::error("ERR unexpected reply"),
    }
}

fn get_reply(result: Result<Answer, Error>) -> Reply {
    match result {
        Ok(answer) => value_reply(answer),
        Err(error) => error_reply(&error),
    }
}

/// The reply to `MGET`: an array of values, nil for a key holding another type
/// (as Redis answers), or the first other error for the whole command.
fn mget_reply(results: Vec<Result<Answer, Error>>) -> Reply {
    let mut values = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(answer) => values.push(value_reply(answer)),
            Err(error) if error.is_wrong_type() => values.push(Reply::Null),
            Err(error) => return error_reply(&error),
        }
    }
    Reply::Array(values)
}

/// The error reply for a failed lookup, in this one place: the backend's own
/// error replies pass through as they are; anything else is `ERR` and the
/// error's short text. Server-side failures are logged with their cause.
fn error_reply(error: &Error) -> Reply {
    match error {
        Error::Reply(reply) => Reply::error(&**reply),
        Error::Overloaded | Error::Timeout => Reply::error(format!("ERR {error}")),
        _ => {
            let cause = std::error::Error::source(error).map(ToString::to_string);
            tracing::warn!(%error, ?cause, "request failed");
            Reply::error(format!("ERR {error}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::limit::Slots;
    use crate::lookup::Source;
    use crate::resp::{Databases, Limits};
    use bytes::Bytes;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::io::DuplexStream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;

    /// A stand-in stack: `value:<x>` is found with the value `x`, `large:<x>` with
    /// a 100 KiB value, `db` with the database it was read in, `wrongtype` holds
    /// another type, `down` fails, `slow:<x>` waits for the gate; anything else
    /// is missing. Counts how many lookups run at once.
    #[derive(Clone)]
    struct FakeStack {
        gate: Arc<Semaphore>,
        running: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
        /// What `large:<x>` is found with: one value shared by every reply.
        large: Bytes,
    }

    impl FakeStack {
        fn new() -> Self {
            Self {
                gate: Arc::new(Semaphore::new(0)),
                running: Arc::default(),
                peak: Arc::default(),
                large: Bytes::from(vec![b'x'; 100 * 1024]),
            }
        }
    }

    impl Service<Request> for FakeStack {
        type Response = Answer;
        type Error = Error;
        type Future = std::pin::Pin<Box<dyn Future<Output = Result<Answer, Error>> + Send>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request) -> Self::Future {
            let Request::Get(key) = request else {
                panic!("only keys are looked up here: {request:?}");
            };
            let this = self.clone();
            Box::pin(async move {
                let now = this.running.fetch_add(1, Ordering::SeqCst) + 1;
                this.peak.fetch_max(now, Ordering::SeqCst);
                let found = |value: &[u8]| Lookup {
                    value: Some(Bytes::copy_from_slice(value)),
                    source: Source::Cache,
                    fresh_for: Duration::from_secs(1),
                    age: Duration::ZERO,
                    digest: None,
                };
                let result = match &key[..] {
                    b"db" => Ok(found(format!("{:?}", key.db()).as_bytes())),
                    k if k.starts_with(b"large:") => Ok(Lookup {
                        value: Some(this.large.clone()),
                        source: Source::Cache,
                        fresh_for: Duration::from_secs(1),
                        age: Duration::ZERO,
                        digest: None,
                    }),
                    b"wrongtype" => Err(Error::Reply("WRONGTYPE wrong kind".into())),
                    b"down" => Err(Error::unavailable("redis unavailable: down")),
                    k if k.starts_with(b"value:") => Ok(found(&k[6..])),
                    k if k.starts_with(b"slow:") => {
                        let _pass = this.gate.acquire().await.unwrap();
                        Ok(found(&k[5..]))
                    }
                    _ => Ok(Lookup {
                        value: None,
                        source: Source::Backend,
                        fresh_for: Duration::ZERO,
                        age: Duration::ZERO,
                        digest: None,
                    }),
                };
                this.running.fetch_sub(1, Ordering::SeqCst);
                result.map(Answer::Lookup)
            })
        }
    }

    fn limits(max_clients: usize) -> Limits {
        Limits {
            max_clients,
            output: 1 << 20,
            write_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            input_total: 1 << 20,
        }
    }

    /// Databases 0 to 15 exist; the backend's own is 0.
    fn databases() -> Databases {
        Databases::new(
            0,
            Arc::new(|db| {
                Box::pin(async move {
                    if db < 16 {
                        Ok(())
                    } else {
                        Err(Error::Reply("ERR DB index is out of range".into()))
                    }
                })
            }),
        )
    }

    fn protocol_with(stack: FakeStack, limits: Limits) -> Arc<Resp<FakeStack>> {
        Arc::new(Resp::new(
            stack,
            Cache::new(4, Duration::from_secs(1)),
            crate::metrics::Counting::direct(crate::metrics::Protocol::Resp),
            crate::resp::Settings {
                limits,
                databases: databases(),
                connections: (Slots::new(4), Arc::default()),
                port: 6380,
                access: crate::auth::Access::open(),
                forwarding: None,
            },
        ))
    }

    fn protocol(stack: FakeStack, max_clients: usize) -> Arc<Resp<FakeStack>> {
        protocol_with(stack, limits(max_clients))
    }

    /// A connection served in a task; the test is its client, over a pipe of
    /// `capacity` bytes.
    fn connect_with(
        resp: Arc<Resp<FakeStack>>,
        stop: CancellationToken,
        capacity: usize,
    ) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(capacity);
        let addr = SocketAddr::from(([127, 0, 0, 1], 5000));
        let task = tokio::spawn(async move { serve(server, addr, addr, &resp, stop).await });
        (client, task)
    }

    /// A connection served in a task; the test is its client.
    fn connect(
        resp: Arc<Resp<FakeStack>>,
        stop: CancellationToken,
    ) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        connect_with(resp, stop, 64 * 1024)
    }

    async fn read_exactly(client: &mut DuplexStream, n: usize) -> String {
        let mut buf = vec![0u8; n];
        client.read_exact(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order() {
        let (mut client, _task) =
            connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
        client
            .write_all(b"GET value:a\r\nPING\r\nGET nothing\r\n*3\r\n$4\r\nMGET\r\n$7\r\nvalue:b\r\n$1\r\nx\r\n")
            .await
            .unwrap();
        let expected = "$1\r\na\r\n+PONG\r\n$-1\r\n*2\r\n$1\r\nb\r\n$-1\r\n";
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
    }

    #[tokio::test]
    async fn errors_become_error_replies_and_mget_hides_wrong_types() {
        let (mut client, _task) =
            connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
        client
            .write_all(
                b"GET wrongtype\r\nGET down\r\nMGET value:a wrongtype\r\nMGET value:a down\r\n",
            )
            .await
            .unwrap();
        let expected = "-WRONGTYPE wrong kind\r\n\
                        -ERR redis unavailable: down\r\n\
                        *2\r\n$1\r\na\r\n$-1\r\n\
                        -ERR redis unavailable: down\r\n";
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
    }

    #[tokio::test]
    async fn one_connection_never_has_more_than_max_keys_in_flight() {
        let stack = FakeStack::new();
        // max_clients 16: two keys in flight per connection.
        let (mut client, _task) = connect(protocol(stack.clone(), 16), CancellationToken::new());
        let request: String = (0..10).map(|i| format!("GET slow:{i}\r\n")).collect();
        client.write_all(request.as_bytes()).await.unwrap();
        while stack.running.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        stack.gate.add_permits(100);
        let expected: String = (0..10).map(|i| format!("$1\r\n{i}\r\n")).collect();
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
        assert_eq!(stack.peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn quit_is_answered_and_closes_what_follows_unread() {
        let (mut client, task) =
            connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
        client
            .write_all(b"PING\r\nQUIT\r\nGET value:a\r\n")
            .await
            .unwrap();
        let mut all = String::new();
        client.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "+PONG\r\n+OK\r\n");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_protocol_error_follows_the_replies_before_it_and_closes() {
        let (mut client, task) =
            connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
        client
            .write_all(b"GET value:a\r\n*1\r\n$-7\r\n")
            .await
            .unwrap();
        let mut all = String::new();
        client.read_to_string(&mut all).await.unwrap();
        assert_eq!(
            all,
            "$1\r\na\r\n-ERR Protocol error: invalid bulk length\r\n"
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn hello_3_changes_how_nil_is_written() {
        let (mut client, _task) =
            connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
        client.write_all(b"HELLO 3\r\n").await.unwrap();
        let mut first = [0u8; 4];
        client.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"%7\r\n");
        // Drain the rest of the map, then ask for a missing key.
        client.write_all(b"PING\r\n").await.unwrap();
        let mut rest = Vec::new();
        let mut byte = [0u8; 1];
        while !rest.ends_with(b"+PONG\r\n") {
            client.read_exact(&mut byte).await.unwrap();
            rest.push(byte[0]);
        }
        client.write_all(b"GET nothing\r\n").await.unwrap();
        assert_eq!(read_exactly(&mut client, 3).await, "_\r\n");
    }

    #[tokio::test]
    async fn on_stop_the_replies_in_flight_are_written_before_the_connection_ends() {
        let stack = FakeStack::new();
        let stop = CancellationToken::new();
        let (mut client, task) = connect(protocol(stack.clone(), 1024), stop.clone());
        client.write_all(b"GET slow:z\r\n").await.unwrap();
        while stack.running.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        stop.cancel();
        stack.gate.add_permits(1);
        assert_eq!(read_exactly(&mut client, 7).await, "$1\r\nz\r\n");
        task.await.unwrap();
    }

    #[tokio::test]
    async fn select_switches_the_database_the_reads_go_to() {
        let (mut client, _task) =
            connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
        client
            .write_all(b"GET db\r\nSELECT 2\r\nGET db\r\nSELECT 0\r\nGET db\r\nSELECT 99\r\nGET db\r\nSELECT x\r\n")
            .await
            .unwrap();
        let expected = "$4\r\nNone\r\n+OK\r\n$7\r\nSome(2)\r\n+OK\r\n$4\r\nNone\r\n\
                        -ERR DB index is out of range\r\n$4\r\nNone\r\n\
                        -ERR value is not an integer or out of range\r\n";
        assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
    }

    #[tokio::test]
    async fn an_mget_past_the_output_limit_closes_the_connection() {
        let mut limits = limits(1024);
        limits.output = 1 << 20;
        let (mut client, task) = connect_with(
            protocol_with(FakeStack::new(), limits),
            CancellationToken::new(),
            64 * 1024,
        );
        // Twenty 100 KiB values in one reply: 2 MB against a 1 MiB bound.
        let request = format!(
            "MGET {}\r\n",
            (0..20)
                .map(|i| format!("large:{i}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let mut all = String::new();
        client.read_to_string(&mut all).await.unwrap();
        assert!(
            all.starts_with("-ERR client output buffer limit reached"),
            "{all}"
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn replies_within_the_limit_are_all_written_to_a_reader() {
        // max_clients 64: batches of eight keys, 800 KiB of replies each against a
        // 1 MiB bound; each batch is written before the next is looked up.
        let mut limits = limits(64);
        limits.output = 1 << 20;
        let (mut client, _task) = connect_with(
            protocol_with(FakeStack::new(), limits),
            CancellationToken::new(),
            8 * 1024,
        );
        let request: String = (0..40).map(|i| format!("GET large:{i}\r\n")).collect();
        client.write_all(request.as_bytes()).await.unwrap();
        let header = b"$102400\r\n".len();
        let total = 40 * (header + 100 * 1024 + 2);
        let mut got = vec![0u8; total];
        client.read_exact(&mut got).await.unwrap();
        assert!(got.starts_with(b"$102400\r\nxxx"));
        assert!(got.ends_with(b"xxx\r\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_is_let_go_after_the_write_timeout() {
        let (mut client, task) = connect_with(
            protocol(FakeStack::new(), 1024),
            CancellationToken::new(),
            1024,
        );
        client.write_all(b"GET large:a\r\n").await.unwrap();
        // Nothing is read: the 100 KiB reply cannot be written whole.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            task.is_finished(),
            "still waiting for a client that does not read"
        );
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_incomplete_request_must_arrive_within_the_request_timeout() {
        let (mut client, task) =
            connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
        client
            .write_all(b"*2\r\n$3\r\nGET\r\n$10\r\nabc")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let mut all = String::new();
        client.read_to_string(&mut all).await.unwrap();
        assert_eq!(
            all,
            "-ERR Protocol error: request not completed within --request-timeout\r\n"
        );
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_not_timed_out() {
        let (mut client, task) =
            connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
        client.write_all(b"PING\r\n").await.unwrap();
        assert_eq!(read_exactly(&mut client, 7).await, "+PONG\r\n");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!task.is_finished());
        client.write_all(b"PING\r\n").await.unwrap();
        assert_eq!(read_exactly(&mut client, 7).await, "+PONG\r\n");
    }

    #[tokio::test]
    async fn unparsed_input_past_the_shared_bound_closes_the_connection_and_is_given_back() {
        let mut limits = limits(1024);
        limits.input_total = 256 * 1024;
        let resp = protocol_with(FakeStack::new(), limits);
        let (mut client, task) = connect_with(resp.clone(), CancellationToken::new(), 1 << 20);
        // One argument of 512 KiB, sent but for its end.
        client
            .write_all(b"*2\r\n$3\r\nGET\r\n$524288\r\n")
            .await
            .unwrap();
        client.write_all(&vec![b'k'; 400 * 1024]).await.unwrap();
        let mut all = String::new();
        client.read_to_string(&mut all).await.unwrap();
        assert_eq!(
            all,
            "-ERR the proxy holds too much unparsed input; try again later\r\n"
        );
        task.await.unwrap();
        assert_eq!(resp.input_held.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_large_request_counts_while_it_arrives_and_not_after() {
        let resp = protocol(FakeStack::new(), 1024);
        let (mut client, _task) = connect_with(resp.clone(), CancellationToken::new(), 1 << 20);
        let name = "k".repeat(200 * 1024);
        client
            .write_all(format!("*2\r\n$3\r\nGET\r\n${}\r\n", name.len()).as_bytes())
            .await
            .unwrap();
        client
            .write_all(&name.as_bytes()[..150 * 1024])
            .await
            .unwrap();
        while resp.input_held.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        client
            .write_all(&name.as_bytes()[150 * 1024..])
            .await
            .unwrap();
        client.write_all(b"\r\n").await.unwrap();
        assert_eq!(read_exactly(&mut client, 5).await, "$-1\r\n");
        client.write_all(b"PING\r\n").await.unwrap();
        assert_eq!(read_exactly(&mut client, 7).await, "+PONG\r\n");
        assert_eq!(resp.input_held.load(Ordering::Relaxed), 0);
    }
}
