//! One client connection: decode a batch of pipelined requests, run them
//! through the shared stack while writing the replies in order, repeat.
//!
//! A batch is every complete request already received, up to `max_keys`
//! requests to the stack (a key of an `MGET` is one). They run concurrently,
//! at most `max_keys` at a time (an `MGET` larger than that runs in waves),
//! so one connection can never hold more than `max_keys` of the proxy's
//! `max_clients` slots, however deep it pipelines. Replies are encoded as
//! their results arrive and written while later ones are still being looked
//! up; a client that reads keeps little pending, and one that does not read
//! holds no client slot while its replies wait.
//!
//! In transparent mode a command that starts a state (`MULTI`, `SUBSCRIBE`,
//! a blocking read) hands the connection to a dedicated session (see
//! `super::dedicated`) until the state ends.

mod batch;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::Resp;
use super::client::{Bound, Close};
use super::command::Command;
use super::lookups::Lookups;
use super::session::{Planned, Session};
use crate::backend::Outgoing;
use crate::lookup::{Answer, Error, Request};
use crate::metrics::Tally;
use crate::protocol::{Reply, Sink, encoded};
use crate::throttle::{Throttle, held_back};
use batch::{Batch, Order, Results, get_reply, mget_reply, relayed};

pub(super) use super::client::Client;

/// Serves one connection until the client leaves, sends `QUIT`, breaks the
/// protocol or a bound, or the proxy shuts down (in-flight replies are written
/// first).
pub(super) async fn serve<S, T>(
    stream: T,
    peer: SocketAddr,
    local: SocketAddr,
    resp: &Resp<S>,
    stop: CancellationToken,
) where
    S: Service<Request, Response = Answer, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
    T: AsyncRead + AsyncWrite + Unpin,
{
    // The connection's own: it ends at shutdown, when a reload revokes its
    // user, or on `CLIENT KILL`.
    let stop = stop.child_token();
    let id = resp.next_id.fetch_add(1, Ordering::Relaxed);
    let registered = resp.clients.register(id, (peer, local), stop.clone());
    let mut connection = Connection {
        client: Client::new(stream, resp.limits, &resp.input),
        resp,
        stack: resp.stack.clone(),
        session: Session::new(registered.entry.clone(), resp.access.initial()),
        planned: VecDeque::new(),
        lookups: Lookups::default(),
        results: Results::default(),
        stash: None,
        dedicate: None,
    };
    let close = connection.run(&stop).await;
    stop.cancel();
    connection.session.stop_tracking(resp);
    let protocol = connection.session.protocol;
    connection.client.close(close, protocol).await;
}

struct Connection<'a, S: Service<Request>, T> {
    client: Client<'a, T>,
    resp: &'a Resp<S>,
    /// The connection's own handle to the stack, so that a lookup costs no clone.
    stack: S,
    session: Session,
    // The batch being answered, each with whether its reply is not to be
    // sent (`CLIENT REPLY`); kept between batches for their allocations.
    planned: VecDeque<(Planned, bool)>,
    lookups: Lookups<S::Future>,
    results: Results,
    /// Transparent mode: a request decoded but left for the next batch, since
    /// it may not run beside this batch's (a read after a write).
    stash: Option<Vec<Bytes>>,
    /// Transparent mode: a command that starts a state, served on a dedicated
    /// connection once the batch before it is answered.
    dedicate: Option<Vec<Bytes>>,
}

impl<S, T> Connection<'_, S, T>
where
    S: Service<Request, Response = Answer, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
    T: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self, stop: &CancellationToken) -> Close {
        loop {
            if let Some(forwarding) = &self.resp.forwarding
                && forwarding.table().is_none()
                && let Err(error) = forwarding.load().await
            {
                static FAILED: Throttle = Throttle::new();
                if let Some(held) = FAILED.admit() {
                    tracing::warn!(%error, "cannot read the backend's command table{}", held_back(held));
                }
            }
            // A request held back by `CLIENT PAUSE` waits here, before it runs.
            let held = (self.stash.as_ref()).and_then(|held| {
                let write = || self.class(held) == crate::forward::Class::Write;
                self.resp.pause.holding(held, write)
            });
            if let Some(write) = held {
                tokio::select! {
                    () = self.resp.pause.wait(write) => {}
                    () = stop.cancelled() => return Close::Gone,
                }
            }
            let batch = self.decode();
            let answered = self.answer().await;
            self.session.publish_command();
            if let Err(close) = answered {
                return close;
            }
            // Client-side caching's messages, after the replies to the reads
            // before them.
            let entry = &self.session.entry;
            entry
                .mailbox
                .drain(self.session.protocol, false, self.client.output.buffer());
            let read_more = match self.client.flush_reading().await {
                Ok(read_more) => read_more,
                Err(close) => return close,
            };
            if let Some(close) = batch.end {
                return close;
            }
            if let Some(first) = self.dedicate.take() {
                let dedicated = super::dedicated::serve(
                    &mut self.client,
                    &mut self.session,
                    self.resp,
                    first,
                    stop,
                );
                if let Err(close) = dedicated.await {
                    return close;
                }
            }
            if let Err(close) = self.client.account_input() {
                return close;
            }
            if batch.more || read_more {
                continue;
            }
            // With client-side caching served, a message for the client
            // wakes the connection too; it is written by the next turn.
            let read = match self.resp.tracking.served() {
                false => self.client.read(stop).await,
                true => {
                    let (client, entry) = (&mut self.client, &self.session.entry);
                    tokio::select! {
                        read = client.read(stop) => read,
                        () = entry.mailbox.ready.notified() => Ok(()),
                    }
                }
            };
            if let Err(close) = read {
                return close;
            }
        }
    }

    /// Takes the complete requests at the front of the input as one batch: their
    /// plans in `planned`, what the stack is asked in `lookups`.
    fn decode(&mut self) -> Batch {
        let forward = self.resp.forwarding.is_some();
        // Transparent mode: what the batch holds so far, to keep reads and
        // writes apart (see `Order`).
        let mut order = Order::default();
        while self.lookups.keys.len() < self.resp.max_keys {
            let args = match self.stash.take() {
                Some(args) => args,
                None => match self.client.next_request() {
                    Ok(Some(args)) => args,
                    Ok(None) => return Batch::done(),
                    Err(error) => return Batch::end(Close::Protocol(error)),
                },
            };
            if (forward && !order.admits(self.class(&args))) || self.pauses(&args) {
                self.stash = Some(args);
                return Batch::more();
            }
            self.session.last_command = Some(super::clients::Name::new(&args[0]));
            let command = Command::parse(args, forward);
            let quit = command == Command::Quit;
            let planned = self
                .session
                .plan(command, &mut self.lookups.keys, self.resp);
            let unsent = self.session.unsent();
            match planned {
                Planned::Dedicate(args) => {
                    self.dedicate = Some(args);
                    return Batch::more();
                }
                // Its +OK is the last reply; anything after it is ignored.
                planned if quit => {
                    self.planned.push_back((planned, unsent));
                    return Batch::end(Close::Done);
                }
                // Requests after it read the database it selects, if it
                // exists, or are answered in the protocol it chooses: they
                // wait until the backend has said.
                planned @ (Planned::Select(_) | Planned::Hello(..)) => {
                    self.planned.push_back((planned, unsent));
                    return Batch::more();
                }
                planned => self.planned.push_back((planned, unsent)),
            }
        }
        Batch::more()
    }

    /// Whether `CLIENT PAUSE` holds `args` back now.
    fn pauses(&self, args: &[Bytes]) -> bool {
        let write = || self.class(args) == crate::forward::Class::Write;
        self.resp.pause.holding(args, write).is_some()
    }

    /// Transparent mode: whether a request reads through the cache, may write,
    /// or neither.
    fn class(&self, args: &[Bytes]) -> crate::forward::Class {
        use crate::forward::Class;
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

    /// Runs the batch's requests and encodes every reply in order, writing what
    /// is encoded while later ones are still being answered. Every answer is
    /// counted in the request metrics, however soon it came.
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
            self.encode_ready(tally).await?;
            if self.planned.is_empty() {
                return Ok(());
            }
            let write = !self.client.output.is_empty();
            let lookups = &mut self.lookups;
            let looking = lookups.is_busy();
            let stack = &mut self.stack;
            let window = self.resp.max_keys;
            tokio::select! {
                biased;
                result = std::future::poll_fn(|cx| lookups.poll_next(cx, stack, window)), if looking => {
                    let result = result.expect("a lookup for every request waiting for one");
                    tally.count_answer(&result);
                    self.results.push(result);
                    // Results waiting for their turn are replies in all but name.
                    if self.client.output_over(self.results.bytes) {
                        return Err(Close::Bound(Bound::Output));
                    }
                }
                written = self.client.write_some(), if write => written?,
            }
        }
    }

    /// Encodes the planned replies whose results are in, front to back; a
    /// database being selected is asked about here, in its turn.
    async fn encode_ready(&mut self, tally: &mut Tally) -> Result<(), Close> {
        // Results already in need no waiting: take them first.
        while let Some(result) = self.lookups.take_ready() {
            tally.count_answer(&result);
            self.results.push(result);
        }
        let protocol = self.session.protocol;
        let timeout = self.client.limits().request_timeout;
        while let Some((item, unsent)) = self.planned.front() {
            // A reply `CLIENT REPLY` keeps from the client is encoded all the
            // same (its result taken in turn), and dropped.
            let waiting_over =
                matches!(item, Planned::MGet(..)) && self.client.output_over(self.results.bytes);
            let mut dropped;
            let out = match unsent {
                true => {
                    dropped = super::output::Output::default();
                    &mut dropped
                }
                false => &mut self.client.output,
            };
            match item {
                Planned::Reply(reply, protocol) => reply.encode(*protocol, out),
                Planned::Get(protocol) => {
                    let Some(result) = self.results.pop() else {
                        return Ok(());
                    };
                    get_reply(result).encode(*protocol, out);
                }
                &Planned::MGet(n, protocol) => {
                    // One array: encoded once every result is in. Until then the
                    // results count toward the pending output.
                    if waiting_over {
                        return Err(Close::Bound(Bound::Output));
                    }
                    if self.results.len() < n {
                        return Ok(());
                    }
                    mget_reply(self.results.take(n)).encode(protocol, out);
                }
                Planned::Relay => {
                    let Some(result) = self.results.pop() else {
                        return Ok(());
                    };
                    relayed(result, protocol, out);
                }
                Planned::RelayAppended(section) => {
                    let Some(result) = self.results.pop() else {
                        return Ok(());
                    };
                    match result {
                        Ok(Answer::Reply(reply)) => match batch::appended(&reply, section) {
                            Some(reply) => out.put_value(&reply),
                            None => out.put_value(&reply),
                        },
                        other => relayed(other, protocol, out),
                    }
                }
                Planned::Auth(credentials) => {
                    let forwarding = self.resp.forwarding.as_deref();
                    let reply = forward_auth(forwarding, timeout, credentials.clone()).await;
                    out.put_value(&reply);
                }
                Planned::Hello(credentials, protocol, setname) => {
                    let forwarding = self.resp.forwarding.as_deref();
                    let reply = forward_auth(forwarding, timeout, credentials.clone()).await;
                    if &reply[..] == b"+OK\r\n" {
                        let (protocol, setname) = (*protocol, setname.clone());
                        let hello = self.session.hello_done(protocol, setname, self.resp);
                        hello.encode(self.session.protocol, out);
                    } else {
                        out.put_value(&reply);
                    }
                }
                Planned::Unblock(listed, slot, reason) => {
                    let forwarding = self.resp.forwarding.as_deref();
                    let asked = unblock(forwarding, timeout, *listed, *slot, reason.clone());
                    out.put_value(&asked.await);
                }
                Planned::Dedicate(_) => unreachable!("a dedicated command is never queued"),
                &Planned::Select(db) => {
                    let reply = match self.resp.databases.ask(db).await {
                        Ok(()) => {
                            self.session.select(Some(db), &self.resp.databases);
                            Reply::OK
                        }
                        Err(reply) => reply,
                    };
                    reply.encode(protocol, out);
                }
            }
            self.planned.pop_front();
            if self.client.output_over(0) {
                return Err(Close::Bound(Bound::Output));
            }
        }
        Ok(())
    }
}

/// `AUTH` with no proxy users in transparent mode: asked of Redis on a
/// connection of its own (the shared ones keep the URL's credentials),
/// and Redis's answer relayed.
async fn forward_auth(
    forwarding: Option<&crate::forward::Forwarding>,
    timeout: std::time::Duration,
    credentials: super::command::Credentials,
) -> Bytes {
    let Some(forwarding) = forwarding else {
        return Bytes::from_static(b"+OK\r\n");
    };
    let asked = async {
        let mut link = forwarding.backend().bare(None).await?;
        let command = match credentials.named {
            true => encoded(&[&b"AUTH"[..], &credentials.user, &credentials.password]),
            false => encoded(&[&b"AUTH"[..], &credentials.password]),
        };
        link.write(&command).await?;
        let reply = link.read().await;
        link.close().await;
        reply.map(|frame| frame.bytes)
    };
    asked_of_redis(timeout, "check AUTH", asked).await
}

/// Redis's reply to what `asked` asks, within `timeout`; an error reply
/// saying why not (`what` names it when time runs out).
async fn asked_of_redis(
    timeout: std::time::Duration,
    what: &str,
    asked: impl std::future::Future<Output = Result<Bytes, crate::backend::Error>>,
) -> Bytes {
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(error)) => Bytes::from(format!(
            "-ERR {}\r\n",
            crate::Error::from(error)
                .to_string()
                .replace(['\r', '\n'], " ")
        )),
        Err(_) => Bytes::from(format!("-ERR timed out asking redis to {what}\r\n")),
    }
}

/// `CLIENT UNBLOCK` of the connection Redis lists at `listed` (a client's
/// dedicated one), on the node of `slot`: its id found with `CLIENT LIST`,
/// then Redis's own answer relayed (`:0` when it is not listed).
async fn unblock(
    forwarding: Option<&crate::forward::Forwarding>,
    timeout: std::time::Duration,
    listed: SocketAddr,
    slot: Option<u16>,
    reason: Option<Bytes>,
) -> Bytes {
    let Some(forwarding) = forwarding else {
        return Bytes::from_static(b":0\r\n");
    };
    let backend = forwarding.backend();
    let asked = async {
        let list = Outgoing::read(encoded(&["CLIENT", "LIST", "TYPE", "normal"]), None, false);
        let list = backend.send(slot, list).await?.bulk().flatten();
        let wanted = format!("addr={listed} ");
        let id = (list.as_deref().map(String::from_utf8_lossy)).and_then(|list| {
            let line = list.lines().find(|line| line.contains(&wanted))?;
            let id = line.strip_prefix("id=")?.split(' ').next()?;
            Some(id.to_owned())
        });
        let Some(id) = id else {
            return Ok(Bytes::from_static(b":0\r\n"));
        };
        let mut command = vec![
            Bytes::from_static(b"CLIENT"),
            Bytes::from_static(b"UNBLOCK"),
        ];
        command.push(Bytes::from(id));
        command.extend(reason);
        let unblock = Outgoing::write(encoded(&command), None, false);
        backend.send(slot, unblock).await.map(|frame| frame.bytes)
    };
    asked_of_redis(timeout, "CLIENT UNBLOCK", asked).await
}
