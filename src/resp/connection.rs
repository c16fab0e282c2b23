//! One client connection: decode a batch of pipelined requests, run their keys
//! through the shared stack, write the replies in order, repeat.
//!
//! A batch is every complete request already received, up to `max_keys` keys.
//! The keys of a batch run concurrently, at most `max_keys` at a time (an `MGET`
//! larger than that runs in waves), so one connection can never hold more than
//! `max_keys` of the proxy's `max_clients` slots, however deep it pipelines.
//! Connection-level commands (`HELLO`, `CLIENT`, …) are answered in place, in
//! order with the reads around them.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tower::{Service, ServiceExt};

use super::Resp;
use super::command::{self, Command, SUPPORTED, Spec, printable};
use super::decode::{Decoder, ProtocolError};
use super::reply::{Protocol, Reply};
use crate::lookup::{Error, Key, Lookup};

/// The version `HELLO` and `INFO` report: the Redis command set the proxy follows.
pub const REDIS_VERSION: &str = "7.0.0";

/// What one connection knows about itself.
#[derive(Debug)]
struct Session {
    id: u64,
    addr: SocketAddr,
    protocol: Protocol,
    name: Option<Bytes>,
}

/// A request of the current batch, waiting for its reply to be encoded.
enum Planned {
    /// Answered already.
    Reply(Reply, Protocol),
    /// The next lookup result answers it.
    Get(Protocol),
    /// The next `n` lookup results answer it.
    MGet(usize, Protocol),
}

/// Why the connection loop ends after this batch.
enum End {
    Quit,
    Protocol(ProtocolError),
}

/// Serves one connection until the client leaves, sends `QUIT`, breaks the
/// protocol, or the proxy shuts down (in-flight replies are written first).
pub(super) async fn serve<S, T>(
    mut stream: T,
    addr: SocketAddr,
    shared: &Resp<S>,
    stop: tokio_util::sync::CancellationToken,
) where
    S: Service<Key, Response = Lookup, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut session = Session {
        id: shared.next_id.fetch_add(1, Ordering::Relaxed),
        addr,
        protocol: Protocol::Resp2,
        name: None,
    };
    let mut decoder = Decoder::default();
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut output = BytesMut::with_capacity(16 * 1024);
    loop {
        let mut planned = Vec::new();
        let mut keys = Vec::new();
        let mut end = None;
        while keys.len() < shared.max_keys {
            match decoder.decode(&mut input) {
                Ok(Some(args)) => {
                    let command = Command::parse(args);
                    let quit = command == Command::Quit;
                    planned.push(session.plan(command, &mut keys, shared));
                    if quit {
                        // Its +OK is the last reply; anything after it is ignored.
                        end = Some(End::Quit);
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    end = Some(End::Protocol(error));
                    break;
                }
            }
        }
        let batch_full = keys.len() >= shared.max_keys;

        let results = lookups(shared, keys).await;
        for result in &results {
            shared.requests.record(result);
        }
        encode_replies(planned, results, &mut output);
        if let Some(End::Protocol(error)) = &end {
            tracing::debug!(%error, "protocol error; closing");
            Reply::error(format!("ERR Protocol error: {error}"))
                .encode(session.protocol, &mut output);
        }
        if !output.is_empty() {
            if stream.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
        }
        if end.is_some() {
            let _ = stream.shutdown().await;
            return;
        }
        if batch_full {
            continue; // more complete requests may be buffered already
        }
        if input.capacity() - input.len() < 4096 {
            input.reserve(16 * 1024);
        }
        tokio::select! {
            read = stream.read_buf(&mut input) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            () = stop.cancelled() => return,
        }
    }
}

/// Runs `keys` through the stack, at most `max_keys` at once, results in order.
async fn lookups<S>(shared: &Resp<S>, keys: Vec<Key>) -> Vec<Result<Lookup, Error>>
where
    S: Service<Key, Response = Lookup, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    let lookup = |key: Key| shared.stack.clone().oneshot(key);
    match keys.len() {
        0 => Vec::new(),
        1 => vec![lookup(keys.into_iter().next().expect("one key")).await],
        // Within the bound, every key may run at once: poll them side by side.
        n if n <= shared.max_keys => {
            futures_util::future::join_all(keys.into_iter().map(lookup)).await
        }
        // A larger MGET runs in a window of `max_keys` keys at a time.
        _ => {
            futures_util::stream::iter(keys)
                .map(lookup)
                .buffered(shared.max_keys)
                .collect()
                .await
        }
    }
}

fn encode_replies(planned: Vec<Planned>, results: Vec<Result<Lookup, Error>>, out: &mut BytesMut) {
    let mut results = results.into_iter();
    for item in planned {
        match item {
            Planned::Reply(reply, protocol) => reply.encode(protocol, out),
            Planned::Get(protocol) => {
                let result = results.next().expect("a result per key");
                get_reply(result).encode(protocol, out);
            }
            Planned::MGet(n, protocol) => {
                let mut values = Vec::with_capacity(n);
                let mut failed = None;
                for result in results.by_ref().take(n) {
                    match result {
                        Ok(lookup) => values.push(value_reply(lookup)),
                        // MGET answers nil for a key holding another type, as Redis does.
                        Err(error) if error.is_wrong_type() => values.push(Reply::Null),
                        Err(error) => {
                            failed.get_or_insert(error);
                        }
                    }
                }
                match failed {
                    Some(error) => error_reply(&error).encode(protocol, out),
                    None => Reply::Array(values).encode(protocol, out),
                }
            }
        }
    }
}

fn value_reply(lookup: Lookup) -> Reply {
    match lookup.value {
        Some(value) => Reply::Bulk(value),
        None => Reply::Null,
    }
}

fn get_reply(result: Result<Lookup, Error>) -> Reply {
    match result {
        Ok(lookup) => value_reply(lookup),
        Err(error) => error_reply(&error),
    }
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

impl Session {
    fn plan<S>(&mut self, command: Command, keys: &mut Vec<Key>, shared: &Resp<S>) -> Planned {
        let reply = match command {
            Command::Get(key) => {
                keys.push(key);
                return Planned::Get(self.protocol);
            }
            Command::MGet(more) => {
                let n = more.len();
                keys.extend(more);
                return Planned::MGet(n, self.protocol);
            }
            Command::Ping(None) => Reply::Simple("PONG"),
            Command::Ping(Some(message)) | Command::Echo(message) => Reply::Bulk(message),
            Command::Quit => Reply::OK,
            Command::Reset => {
                self.protocol = Protocol::Resp2;
                self.name = None;
                Reply::Simple("RESET")
            }
            Command::Hello { protover, setname } => self.hello(protover, setname),
            Command::Auth => Reply::OK,
            Command::Select(index) => match std::str::from_utf8(&index)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(0) => Reply::OK,
                Some(_) => Reply::error(
                    "ERR DB index is out of range: redis-proxy serves one database, index 0",
                ),
                None => Reply::error("ERR value is not an integer or out of range"),
            },
            Command::Client(args) => self.client(args),
            Command::Describe(args) => command_info(args),
            Command::Info(sections) => Reply::text(shared.info.text(&sections)),
            Command::Refused(reply) => reply,
        };
        Planned::Reply(reply, self.protocol)
    }

    fn hello(&mut self, protover: Option<Bytes>, setname: Option<Bytes>) -> Reply {
        // Validate everything before changing anything, as Redis does.
        let protocol = match protover {
            None => self.protocol,
            Some(version) => match std::str::from_utf8(&version)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => return Reply::error("NOPROTO unsupported protocol version"),
                None => {
                    return Reply::error("ERR Protocol version is not an integer or out of range");
                }
            },
        };
        if let Some(Err(reply)) = setname.map(|name| self.set_name(name)) {
            return reply;
        }
        self.protocol = protocol;
        Reply::Map(vec![
            (Reply::text("server"), Reply::text("redis")),
            (Reply::text("version"), Reply::text(REDIS_VERSION)),
            (
                Reply::text("proto"),
                Reply::Integer(match self.protocol {
                    Protocol::Resp2 => 2,
                    Protocol::Resp3 => 3,
                }),
            ),
            (Reply::text("id"), Reply::Integer(self.id as i64)),
            (Reply::text("mode"), Reply::text("standalone")),
            (Reply::text("role"), Reply::text("master")),
            (Reply::text("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn set_name(&mut self, name: Bytes) -> Result<(), Reply> {
        if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
            return Err(Reply::error(
                "ERR Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        self.name = (!name.is_empty()).then_some(name);
        Ok(())
    }

    fn client(&mut self, args: Vec<Bytes>) -> Reply {
        let sub = args[0].to_ascii_lowercase();
        match (&sub[..], args.len()) {
            (b"setname", 2) => match self.set_name(args[1].clone()) {
                Ok(()) => Reply::OK,
                Err(reply) => reply,
            },
            (b"getname", 1) => self.name.clone().map_or(Reply::Null, Reply::Bulk),
            (b"id", 1) => Reply::Integer(self.id as i64),
            (b"setinfo", 3) => Reply::OK,
            (b"info", 1) => Reply::text(format!(
                "id={} addr={} name={} db=0 resp={}\n",
                self.id,
                self.addr,
                self.name
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default(),
                match self.protocol {
                    Protocol::Resp2 => 2,
                    Protocol::Resp3 => 3,
                }
            )),
            (b"setname" | b"getname" | b"id" | b"setinfo" | b"info", _) => Reply::error(format!(
                "ERR wrong number of arguments for 'client|{}' command",
                printable(&sub)
            )),
            _ => Reply::error(format!(
                "ERR unknown subcommand '{}'. redis-proxy supports CLIENT SETNAME, GETNAME, ID, SETINFO, INFO",
                printable(&args[0])
            )),
        }
    }
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name…`, `COMMAND DOCS [name…]`.
fn command_info(args: Vec<Bytes>) -> Reply {
    let info = |spec: &Spec| {
        Reply::Array(vec![
            Reply::text(spec.name),
            Reply::Integer(spec.arity),
            Reply::Array(spec.flags.iter().map(|&f| Reply::Simple(f)).collect()),
            Reply::Integer(spec.first_key),
            Reply::Integer(spec.last_key),
            Reply::Integer(spec.step),
            // ACL categories, tips, key specifications, subcommands.
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
        ])
    };
    let Some(sub) = args.first().map(|s| s.to_ascii_lowercase()) else {
        return Reply::Array(SUPPORTED.iter().map(info).collect());
    };
    match &sub[..] {
        b"count" => Reply::Integer(SUPPORTED.len() as i64),
        b"info" => Reply::Array(
            args[1..]
                .iter()
                .map(|name| command::find(name).map_or(Reply::Null, info))
                .collect(),
        ),
        b"docs" => {
            let specs: Vec<&Spec> = if args.len() == 1 {
                SUPPORTED.iter().collect()
            } else {
                args[1..]
                    .iter()
                    .filter_map(|name| command::find(name))
                    .collect()
            };
            Reply::Map(
                specs
                    .into_iter()
                    .map(|spec| {
                        let group = if spec.flags.contains(&"readonly") {
                            "string"
                        } else {
                            "connection"
                        };
                        let doc = Reply::Map(vec![
                            (Reply::text("summary"), Reply::text(spec.summary)),
                            (Reply::text("since"), Reply::text("1.0.0")),
                            (Reply::text("group"), Reply::text(group)),
                        ]);
                        (Reply::text(spec.name), doc)
                    })
                    .collect(),
            )
        }
        _ => Reply::error(format!(
            "ERR unknown subcommand '{}'. redis-proxy supports COMMAND, COMMAND COUNT, COMMAND INFO, COMMAND DOCS",
            printable(&args[0])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::limit::Slots;
    use crate::lookup::Source;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::io::DuplexStream;
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;

    /// A stand-in stack: `value:<x>` is found with the value `x`, `wrongtype`
    /// holds another type, `down` fails, `slow:<x>` waits for the gate; anything
    /// else is missing. Counts how many lookups run at once.
    #[derive(Clone)]
    struct FakeStack {
        gate: Arc<Semaphore>,
        running: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
    }

    impl FakeStack {
        fn new() -> Self {
            Self {
                gate: Arc::new(Semaphore::new(0)),
                running: Arc::default(),
                peak: Arc::default(),
            }
        }
    }

    impl Service<Key> for FakeStack {
        type Response = Lookup;
        type Error = Error;
        type Future = std::pin::Pin<Box<dyn Future<Output = Result<Lookup, Error>> + Send>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, key: Key) -> Self::Future {
            let this = self.clone();
            Box::pin(async move {
                let now = this.running.fetch_add(1, Ordering::SeqCst) + 1;
                this.peak.fetch_max(now, Ordering::SeqCst);
                let found = |value: &[u8]| Lookup {
                    value: Some(Bytes::copy_from_slice(value)),
                    source: Source::Cache,
                    fresh_for: Duration::from_secs(1),
                    age: Duration::ZERO,
                };
                let result = match &key[..] {
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
                    }),
                };
                this.running.fetch_sub(1, Ordering::SeqCst);
                result
            })
        }
    }

    fn protocol(stack: FakeStack, max_clients: usize) -> Arc<Resp<FakeStack>> {
        Arc::new(Resp::new(
            stack,
            Cache::new(4, Duration::from_secs(1)),
            crate::resp::Settings {
                max_clients,
                connections: (Slots::new(4), Arc::default()),
                port: 6380,
            },
        ))
    }

    /// A connection served in a task; the test is its client.
    fn connect(
        resp: Arc<Resp<FakeStack>>,
        stop: CancellationToken,
    ) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let addr = SocketAddr::from(([127, 0, 0, 1], 5000));
        let task = tokio::spawn(async move { serve(server, addr, &resp, stop).await });
        (client, task)
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
}
