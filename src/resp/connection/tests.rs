//! The connection loop against an in-process stack: pipelining, errors,
//! bounds, `QUIT`, `SELECT`, `HELLO`, draining on stop.
use super::*;
use crate::cache::Cache;
use crate::limit::Slots;
use crate::lookup::{Lookup, Source};
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

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Error>> {
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
            client_slots: Slots::new(1024),
            client_tracking: None,
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
    let (mut client, _task) = connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
    client
        .write_all(b"GET value:a\r\nPING\r\nGET nothing\r\n*3\r\n$4\r\nMGET\r\n$7\r\nvalue:b\r\n$1\r\nx\r\n")
        .await
        .unwrap();
    let expected = "$1\r\na\r\n+PONG\r\n$-1\r\n*2\r\n$1\r\nb\r\n$-1\r\n";
    assert_eq!(read_exactly(&mut client, expected.len()).await, expected);
}

#[tokio::test]
async fn errors_become_error_replies_and_mget_hides_wrong_types() {
    let (mut client, _task) = connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
    client
        .write_all(b"GET wrongtype\r\nGET down\r\nMGET value:a wrongtype\r\nMGET value:a down\r\n")
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
    let (mut client, task) = connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
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
    let (mut client, task) = connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
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
    let (mut client, _task) = connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
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
    let (mut client, _task) = connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
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
    let (mut client, task) = connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
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
    let (mut client, task) = connect(protocol(FakeStack::new(), 1024), CancellationToken::new());
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
    assert_eq!(resp.input.held(), 0);
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
    while resp.input.held() == 0 {
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
    assert_eq!(resp.input.held(), 0);
}
