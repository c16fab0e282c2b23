//! Transparent mode's dedicated sessions: while a client is inside a state
//! that lives on its connection to Redis (`MULTI`, `WATCH`, a blocking read,
//! subscriptions, `MONITOR`), its requests go to a connection of its own and
//! what Redis sends comes back as it arrives, pushes and pub/sub messages
//! included. When the state ends and every reply is in, the connection is
//! closed and the client returns to the shared path. A client that leaves
//! mid-state closes it too: Redis then discards the transaction, ends the
//! subscriptions and stops blocking.
//!
//! As on the shared path, every request holds one of the stack's client
//! slots until its reply comes (one beyond the limit is refused as a `GET`
//! would be), and must be answered within `--request-timeout`, plus its own
//! blocking time for a blocking command (`BLPOP k 0` may wait for ever). A
//! reply overdue ends the session: the client is told, and its connection
//! closed, since its state on Redis is lost. Writes invalidate the cache
//! when their reply arrives; inside a transaction, what each queued command
//! would write is invalidated when `EXEC` answers; a write whose reply never
//! comes (overdue, or the connection lost) invalidates all the same.
//!
//! Inside `MULTI`, the commands the proxy answers itself (`CLIENT …`,
//! `INFO`, `AUTH`, `HELLO`) are queued like any other: `+QUEUED`, and their
//! results take their place in `EXEC`'s. A command refused by the proxy
//! inside a transaction makes its `EXEC` fail, as Redis does for a command it
//! rejects while queueing.

mod request;
mod state;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::Resp;
use super::client::{Bound, Client, Close};
use super::session::Session;
use crate::backend::{Link, is_push};
use crate::forward::Forwarding;
use crate::protocol::{Frame, Protocol, Reply, Sink};
use state::{Expect, State};

/// Subscription commands: answered by confirmations, one per channel.
const SUBSCRIBING: &[&[u8]] = &[
    b"subscribe",
    b"unsubscribe",
    b"psubscribe",
    b"punsubscribe",
    b"ssubscribe",
    b"sunsubscribe",
];

/// Serves the client on a dedicated connection from `first` until its state
/// ends (`Ok`) or the client connection does.
pub(super) async fn serve<S, T>(
    client: &mut Client<'_, T>,
    session: &mut Session,
    resp: &Resp<S>,
    first: Vec<Bytes>,
    stop: &CancellationToken,
) -> Result<(), Close>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let forwarding = resp.forwarding.as_deref().expect("transparent mode");
    let protocol = session.protocol;
    let Some(_dedicated) = forwarding.dedicated.try_take() else {
        Reply::error("ERR max number of clients reached (--max-dedicated-connections)")
            .encode(protocol, &mut client.output);
        return client.flush().await;
    };
    // In a cluster the connection goes to the node of the state's keys. A
    // MULTI has none: it is answered here, and the connection opened for the
    // first command queued after it.
    let deferred = forwarding.backend().spreads_keys() && first[0].eq_ignore_ascii_case(b"multi");
    let mut first = vec![first];
    if deferred {
        match first_queued(client, protocol, stop).await? {
            Some(queued) => first.push(queued),
            None => return client.flush().await,
        }
    }
    let keyed = first.last().expect("a request");
    let slot = match forwarding.slot_of_args(keyed) {
        Ok(slot) => slot,
        Err(crossslot) if !deferred => {
            Reply::error(crossslot).encode(protocol, &mut client.output);
            return client.flush().await;
        }
        Err(_) => None,
    };
    // Subscribed before the connection opens: a switch while it does ends
    // the session too.
    let switches = forwarding.backend().switches();
    let opened = forwarding
        .backend()
        .dedicated(slot, protocol == Protocol::Resp3, session.db());
    let link = match opened.await {
        Ok(link) => link,
        Err(error) => {
            let error = crate::Error::from(error);
            Reply::error(format!("ERR {error}")).encode(protocol, &mut client.output);
            return client.flush().await;
        }
    };
    crate::metrics::dedicated_connections(1);
    let mut relay = Relay {
        client,
        session,
        resp,
        forwarding,
        link,
        switches,
        state: State::default(),
        out: BytesMut::new(),
    };
    // Where Redis lists the connection: `CLIENT UNBLOCK` of this client
    // finds it so.
    let listed = relay.link.local.map(|local| (local, slot));
    relay
        .session
        .entry
        .publish(|state| state.dedicated = listed);
    let served = relay.run(first, deferred, stop).await;
    relay.session.entry.publish(|state| {
        state.dedicated = None;
        state.subscribed = [0; 3];
        state.multi = -1;
    });
    crate::metrics::dedicated_connections(-1);
    relay.link.close().await;
    served
}

/// After a `MULTI` answered here (in a cluster): the first command queued,
/// or `None` when the transaction ends before one (`EXEC`, `DISCARD`: nothing
/// to run, answered here too).
async fn first_queued<T>(
    client: &mut Client<'_, T>,
    protocol: Protocol,
    stop: &CancellationToken,
) -> Result<Option<Vec<Bytes>>, Close>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    Reply::OK.encode(protocol, &mut client.output);
    client.flush().await?;
    loop {
        let args = match client.next_request() {
            Ok(Some(args)) => args,
            Ok(None) => {
                client.read(stop).await?;
                continue;
            }
            Err(error) => return Err(Close::Protocol(error)),
        };
        let reply = match &args[0].to_ascii_lowercase()[..] {
            b"exec" => Reply::Array(Vec::new()),
            b"discard" => Reply::OK,
            _ => return Ok(Some(args)),
        };
        reply.encode(protocol, &mut client.output);
        return Ok(None);
    }
}

/// One dedicated session: the client, its connection to Redis, the state
/// between them.
struct Relay<'r, 'c, S, T> {
    client: &'r mut Client<'c, T>,
    session: &'r mut Session,
    resp: &'r Resp<S>,
    forwarding: &'r Forwarding,
    link: Link,
    /// Told when the primary is replaced: the state on the old one is gone.
    switches: Option<tokio::sync::watch::Receiver<u64>>,
    state: State,
    /// Requests to write to Redis next.
    out: BytesMut,
}

impl<S, T> Relay<'_, '_, S, T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// Relays `first` (a `MULTI` already answered when `answered_multi`) and
    /// what follows until the state ends.
    async fn run(
        &mut self,
        first: Vec<Vec<Bytes>>,
        answered_multi: bool,
        stop: &CancellationToken,
    ) -> Result<(), Close> {
        for (i, request) in first.into_iter().enumerate() {
            self.request(request);
            if i == 0 && answered_multi {
                // The client has had its +OK.
                self.state.expect.pop_back();
                self.state.expect.push_back(Expect::Swallow { due: None });
            }
        }
        loop {
            // Requests already received go first, whole pipelines at a time.
            while !self.state.quit {
                match self.client.next_request() {
                    Ok(Some(args)) => {
                        self.unpaused(&args, stop).await?;
                        self.request(args);
                    }
                    Ok(None) => break,
                    Err(error) => return Err(Close::Protocol(error)),
                }
            }
            self.client.account_input()?;
            self.emit_local();
            // Client-side caching's messages: in RESP2 to a subscriber only, as
            // Redis sends them to a redirect target.
            let subscribed = self.state.subscriptions > 0;
            (self.session.entry.mailbox).drain(
                self.session.protocol,
                subscribed,
                self.client.output.buffer(),
            );
            if !self.out.is_empty() {
                let sent = self.link.write(&self.out).await;
                self.out.clear();
                if sent.is_err() {
                    return self.lost("ERR redis connection lost").await;
                }
            }
            if self.state.quit && self.state.expect.is_empty() {
                self.client.flush().await?;
                return Err(Close::Done);
            }
            if self.state.over() {
                return self.client.flush().await;
            }
            if self.client.output_over(0) {
                return Err(Close::Bound(Bound::Output));
            }
            self.publish();
            // What Redis sent is written before more is read from either side:
            // a client that does not read is let go after the write timeout.
            self.client.flush().await?;
            self.wait(stop).await?;
        }
    }

    /// Publishes the session's state for `CLIENT LIST`: subscriptions, the
    /// transaction's queued commands.
    fn publish(&self) {
        let state = &self.state;
        let multi = match state.multi {
            true => state.queued_count as i64,
            false => -1,
        };
        self.session.entry.publish(|published| {
            published.subscribed = state.subscribed;
            published.multi = multi;
        });
    }

    /// Waits while `CLIENT PAUSE` holds `args` (every command, or one that
    /// may write), the requests before it sent first.
    async fn unpaused(&mut self, args: &[Bytes], stop: &CancellationToken) -> Result<(), Close> {
        let write = || self.forwarding.class(args) == crate::forward::Class::Write;
        let Some(write) = self.resp.pause.holding(args, write) else {
            return Ok(());
        };
        if !self.out.is_empty() {
            let sent = self.link.write(&self.out).await;
            self.out.clear();
            if sent.is_err() {
                return self.lost("ERR redis connection lost").await;
            }
        }
        tokio::select! {
            () = self.resp.pause.wait(write) => Ok(()),
            () = stop.cancelled() => Err(Close::Gone),
        }
    }

    /// Waits for Redis or the client, whichever sends first, or for a reply
    /// to be overdue.
    async fn wait(&mut self, stop: &CancellationToken) -> Result<(), Close> {
        let due = self.state.next_due();
        let overdue = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let quit = self.state.quit;
        tokio::select! {
            filled = self.link.fill() => {
                if filled.is_err() {
                    return self.lost("ERR redis connection lost").await;
                }
                loop {
                    match self.link.take() {
                        Ok(Some(frame)) => self.frame(frame),
                        Ok(None) => return Ok(()),
                        Err(_) => return self.lost("ERR redis connection lost").await,
                    }
                }
            }
            read = self.client.read_more(), if !quit => read,
            () = overdue => {
                let message = format!("ERR timed out: no reply from redis within {} (--request-timeout)",
                    humantime::format_duration(self.client.limits().request_timeout));
                self.lost(&message).await
            }
            () = switched(self.switches.as_mut()) => {
                self.lost("ERR redis primary switched (failover): this connection's state on the old primary is gone").await
            }
            () = self.session.entry.mailbox.ready.notified() => Ok(()),
            () = stop.cancelled() => Err(Close::Gone),
        }
    }

    /// Redis closed the dedicated connection, or left a reply overdue: every
    /// reply still awaited is answered with `error`, what those requests may
    /// have written is dropped from the cache, and the client's connection
    /// ends (its state on Redis is gone with it).
    async fn lost(&mut self, error: &str) -> Result<(), Close> {
        self.forwarding.apply(&self.state.unanswered_writes());
        let protocol = self.session.protocol;
        let awaited = self
            .state
            .expect
            .iter()
            .filter(|e| e.sent_by_redis())
            .count();
        for _ in 0..awaited.max(1) {
            Reply::error(error).encode(protocol, &mut self.client.output);
        }
        let _ = self.client.flush().await;
        Err(Close::Gone)
    }

    /// Sends the proxy's own replies that have reached their turn.
    fn emit_local(&mut self) {
        while let Some(Expect::Local(_)) = self.state.expect.front() {
            if let Some(Expect::Local(reply)) = self.state.expect.pop_front() {
                self.client.output.put_value(&reply);
            }
        }
    }

    /// One frame from Redis: a pub/sub message or push goes straight to the
    /// client; a reply answers the oldest request waiting.
    fn frame(&mut self, frame: Frame) {
        let state = &mut self.state;
        let in_exec = matches!(state.expect.front(), Some(Expect::End { .. }));
        let pubsub = frame.pubsub().filter(|_| !in_exec);
        if let Some((kind, Some(count))) = &pubsub
            && SUBSCRIBING.contains(&&kind[..])
        {
            state.confirmed(kind, *count);
            state.confirmations = state.confirmations.saturating_sub(1);
            self.client.output.put_value(&frame.bytes);
            return;
        }
        let message = matches!(&pubsub, Some((kind, _)) if matches!(&kind[..], b"message" | b"pmessage" | b"smessage"));
        if is_push(&frame) || (message && state.subscriptions > 0) {
            self.client.output.put_value(&frame.bytes);
            return;
        }
        match state.expect.pop_front() {
            Some(Expect::Reply { writes, .. }) => {
                self.forwarding.apply(&writes);
                self.client.output.put_value(&frame.bytes);
            }
            Some(Expect::End { writes, local, .. }) => {
                self.forwarding.apply(&writes);
                let reply = self.splice(&frame, local);
                self.client.output.put_value(&reply);
            }
            Some(Expect::Select { db, .. }) => {
                if frame.error_text().is_none() {
                    self.session.select(db, &self.resp.databases);
                }
                self.client.output.put_value(&frame.bytes);
            }
            Some(Expect::Swallow { .. }) => {}
            Some(Expect::Local(reply)) => {
                // A local reply is never waited for: emitted before reading.
                self.client.output.put_value(&reply);
                self.client.output.put_value(&frame.bytes);
            }
            // MONITOR's feed, or a reply nobody waits for: the client's anyway.
            None => self.client.output.put_value(&frame.bytes),
        }
        self.emit_local();
    }

    /// `EXEC`'s reply with the results of the proxy's own queued commands in
    /// their places, run now that the transaction runs. A transaction that
    /// did not run (`WATCH` saw a change, or it was aborted) runs none of them.
    fn splice(&mut self, exec: &Frame, local: Vec<(usize, Vec<Bytes>)>) -> Bytes {
        let (false, Some(results)) = (local.is_empty(), exec.elements()) else {
            return exec.bytes.clone();
        };
        let total = results.len() + local.len();
        let mut out = BytesMut::new();
        out.extend_from_slice(format!("*{total}\r\n").as_bytes());
        let (mut local, mut results) = (local.into_iter().peekable(), results.into_iter());
        for place in 0..total {
            match local.next_if(|(at, _)| *at == place) {
                Some((_, args)) => self
                    .answer_locally(args)
                    .encode(self.session.protocol, &mut out),
                None => {
                    if let Some(result) = results.next() {
                        out.extend_from_slice(&result);
                    }
                }
            }
        }
        out.freeze()
    }
}

/// Returns when the primary is replaced; never without `switches`.
async fn switched(switches: Option<&mut tokio::sync::watch::Receiver<u64>>) {
    let changed = match switches {
        Some(switches) => switches.changed().await.is_ok(),
        None => false,
    };
    if !changed {
        std::future::pending::<()>().await;
    }
}
