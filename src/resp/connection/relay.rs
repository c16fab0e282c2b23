//! Transparent mode's dedicated connections: while a client is inside a state
//! that lives on its connection to Redis (`MULTI`, `WATCH`, a blocking read,
//! subscriptions, `MONITOR`), its requests go to a connection of its own and
//! what Redis sends comes back as it arrives, pushes and pub/sub messages
//! included. When the state ends and every reply is in, the connection is
//! closed and the client returns to the shared path. A client that leaves
//! mid-state closes it too: Redis then discards the transaction, ends the
//! subscriptions and stops blocking.
//!
//! Writes still invalidate the cache when their reply arrives; inside a
//! transaction, what each queued command would write is invalidated when
//! `EXEC` answers. A command refused by the proxy inside a transaction makes
//! its `EXEC` fail, as Redis does for a command it rejects while queueing.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tower::Service;

use super::{Bound, Close, Connection};
use crate::backend::{Link, is_push};
use crate::forward::Route;
use crate::lookup::Writes;
use crate::lookup::{Answer, Error, Request};
use crate::protocol::Sink;
use crate::protocol::{Frame, encode};
use crate::protocol::{Protocol, Reply};
use crate::resp::command::Command;

/// What the next reply from Redis answers, or a reply of the proxy's own
/// waiting for its turn.
enum Expect {
    /// Relayed to the client, after invalidating what it says.
    Reply(Writes),
    /// `EXEC` or `DISCARD`: the transaction (and any `WATCH`) ends.
    End(Writes),
    /// A `SELECT` of this database: the connection reads it from now on.
    Select(Option<u16>),
    /// Redis's reply is not the client's: dropped.
    Swallow,
    /// The proxy's own reply, sent once the replies before it are.
    Local(Bytes),
}

/// The state that keeps the client on its dedicated connection.
#[derive(Default)]
struct State {
    multi: bool,
    watching: bool,
    /// A command was refused inside the transaction: `EXEC` must fail.
    poisoned: bool,
    /// What the transaction's queued commands write.
    queued: Vec<Writes>,
    /// Channels and patterns subscribed, as Redis last counted them.
    subscriptions: i64,
    /// (Un)subscribe confirmations still to come.
    confirmations: usize,
    monitor: bool,
    /// The client sent `QUIT`: the connection ends once the replies are out.
    quit: bool,
    expect: VecDeque<Expect>,
}

impl State {
    fn over(&self) -> bool {
        !self.multi
            && !self.watching
            && self.subscriptions == 0
            && self.confirmations == 0
            && !self.monitor
            && self.expect.is_empty()
    }
}

const SUBSCRIBING: &[&[u8]] = &[
    b"subscribe",
    b"unsubscribe",
    b"psubscribe",
    b"punsubscribe",
    b"ssubscribe",
    b"sunsubscribe",
];

impl<S, T> Connection<'_, S, T>
where
    S: Service<Request, Response = Answer, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send,
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// Serves the client on a dedicated connection from `first` until its
    /// state ends (`Ok`) or the client connection does.
    pub(super) async fn relay(
        &mut self,
        first: Vec<Bytes>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<(), Close> {
        let forwarding = self.resp.forwarding.clone().expect("transparent mode");
        let protocol = self.session.protocol;
        let Some(_slot) = forwarding.dedicated.try_take() else {
            Reply::error("ERR max number of clients reached (--max-dedicated-connections)")
                .encode(protocol, &mut self.output);
            return self.flush().await;
        };
        let resp3 = protocol == Protocol::Resp3;
        // In a cluster the connection goes to the node of the state's keys. A
        // MULTI has none: it is answered here, and the connection opened for
        // the first command queued after it.
        let mut first = vec![first];
        let deferred =
            forwarding.backend().spreads_keys() && first[0][0].eq_ignore_ascii_case(b"multi");
        if deferred {
            Reply::OK.encode(protocol, &mut self.output);
            self.flush().await?;
            loop {
                let args = match self.decoder.decode(&mut self.input) {
                    Ok(Some(args)) => args,
                    Ok(None) => {
                        self.read(stop).await?;
                        continue;
                    }
                    Err(error) => return Err(Close::Protocol(error)),
                };
                let name = args[0].to_ascii_lowercase();
                match &name[..] {
                    // Nothing was queued: nothing to run.
                    b"exec" => Reply::Array(Vec::new()).encode(protocol, &mut self.output),
                    b"discard" => Reply::OK.encode(protocol, &mut self.output),
                    _ => {
                        first.push(args);
                        break;
                    }
                }
                return self.flush().await;
            }
        }
        let keyed = first.last().expect("a request");
        let slot = match forwarding.slot_of_args(keyed) {
            Ok(slot) => slot,
            Err(crossslot) if !deferred => {
                Reply::error(crossslot).encode(protocol, &mut self.output);
                return self.flush().await;
            }
            Err(_) => None,
        };
        let opened = forwarding
            .backend()
            .dedicated(slot, resp3, self.session.db());
        let mut link = match opened.await {
            Ok(link) => link,
            Err(error) => {
                let error = crate::Error::from(error);
                Reply::error(format!("ERR {error}")).encode(protocol, &mut self.output);
                return self.flush().await;
            }
        };
        crate::metrics::dedicated_connections(1);
        let served = self.relay_on(&mut link, first, deferred, stop).await;
        crate::metrics::dedicated_connections(-1);
        link.close().await;
        served
    }

    /// Relays `first` (a `MULTI` already answered when `answered_multi`) and
    /// what follows on `link` until the state ends.
    async fn relay_on(
        &mut self,
        link: &mut Link,
        first: Vec<Vec<Bytes>>,
        answered_multi: bool,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<(), Close> {
        let mut state = State::default();
        let mut out = BytesMut::new();
        for (i, request) in first.into_iter().enumerate() {
            self.relay_request(request, &mut state, &mut out);
            if i == 0 && answered_multi {
                // The client has had its +OK.
                state.expect.pop_back();
                state.expect.push_back(Expect::Swallow);
            }
        }
        loop {
            // Requests already received go first, whole pipelines at a time.
            while !state.quit {
                match self.decoder.decode(&mut self.input) {
                    Ok(Some(args)) => self.relay_request(args, &mut state, &mut out),
                    Ok(None) => break,
                    Err(error) => return Err(Close::Protocol(error)),
                }
            }
            self.account_input()?;
            self.emit_local(&mut state);
            if !out.is_empty() {
                let sent = link.write(&out).await;
                out.clear();
                if sent.is_err() {
                    return self.relay_lost().await;
                }
            }
            if state.quit && state.expect.is_empty() {
                self.flush().await?;
                return Err(Close::Done);
            }
            if state.over() {
                return self.flush().await;
            }
            if self.output.pending() > self.resp.limits.output {
                return Err(Close::Bound(Bound::Output));
            }
            // What Redis sent is written before more is read from either side:
            // a client that does not read is let go after the write timeout.
            self.flush().await?;
            tokio::select! {
                filled = link.fill() => {
                    if filled.is_err() {
                        return self.relay_lost().await;
                    }
                    loop {
                        match link.take() {
                            Ok(Some(frame)) => self.relay_frame(frame, &mut state),
                            Ok(None) => break,
                            Err(_) => return self.relay_lost().await,
                        }
                    }
                }
                read = self.stream.read_buf(&mut self.input), if !state.quit => {
                    match read {
                        Ok(0) | Err(_) => return Err(Close::Done),
                        Ok(_) => self.account_input()?,
                    }
                }
                () = stop.cancelled() => return Err(Close::Gone),
            }
        }
    }

    /// Redis closed the dedicated connection: the client is told, and its
    /// connection ends (its state on Redis is gone with it).
    async fn relay_lost(&mut self) -> Result<(), Close> {
        Reply::error("ERR redis connection lost").encode(self.session.protocol, &mut self.output);
        let _ = self.flush().await;
        Err(Close::Gone)
    }

    /// Sends the proxy's own replies that have reached their turn.
    fn emit_local(&mut self, state: &mut State) {
        while let Some(Expect::Local(_)) = state.expect.front() {
            if let Some(Expect::Local(reply)) = state.expect.pop_front() {
                self.output.put_value(&reply);
            }
        }
    }

    /// One request of the client's, on the dedicated connection.
    fn relay_request(&mut self, args: Vec<Bytes>, state: &mut State, out: &mut BytesMut) {
        let forwarding = self.resp.forwarding.clone().expect("transparent mode");
        let protocol = self.session.protocol;
        let local = |reply: Reply| {
            let mut bytes = BytesMut::new();
            reply.encode(protocol, &mut bytes);
            Expect::Local(bytes.freeze())
        };
        let name = args[0].to_ascii_lowercase();
        // What only the proxy answers: who the client is, and leaving.
        match &name[..] {
            b"quit" => {
                state.expect.push_back(local(Reply::OK));
                state.quit = true;
                return;
            }
            b"hello"
                if args.get(1).is_some_and(|version| {
                    let current: &[u8] = if protocol == Protocol::Resp3 {
                        b"3"
                    } else {
                        b"2"
                    };
                    &version[..] != current
                }) =>
            {
                // The dedicated connection speaks the protocol it was opened in.
                state.expect.push_back(local(Reply::error(
                    "ERR HELLO cannot change the protocol inside MULTI, WATCH, a subscription or a blocking command",
                )));
                return;
            }
            b"auth" | b"hello" | b"reset" | b"client" | b"info" => {
                let reply = match Command::parse(args, true) {
                    Command::Reset => {
                        // Closing the connection discards everything on it.
                        state.multi = false;
                        state.watching = false;
                        state.subscriptions = 0;
                        state.monitor = false;
                        state.expect.push_back(Expect::Swallow);
                        encode(&["RESET"], out);
                        self.session.reset(self.resp)
                    }
                    command => {
                        let mut keys = VecDeque::new();
                        match self.session.plan(command, &mut keys, self.resp) {
                            super::Planned::Reply(reply, _) => reply,
                            _ => Reply::error("ERR not allowed here"),
                        }
                    }
                };
                state.expect.push_back(local(reply));
                return;
            }
            _ => {}
        }
        let refusal = match self.session.user() {
            Some(user) => match forwarding.route(&args, user) {
                Route::Refuse(error) => Some(error),
                _ => None,
            },
            None => Some(super::super::session::NOAUTH.to_owned()),
        };
        if let Some(error) = refusal {
            if state.multi {
                state.poisoned = true;
            }
            state.expect.push_back(local(Reply::error(error)));
            return;
        }
        let after = forwarding.invalidates(&args);
        match &name[..] {
            b"multi" => {
                state.multi = true;
                state.expect.push_back(Expect::Reply(Writes::Nothing));
            }
            b"exec" if state.poisoned => {
                encode(&["DISCARD"], out);
                state.expect.push_back(Expect::Swallow);
                state.expect.push_back(local(Reply::error(
                    "EXECABORT Transaction discarded because of previous errors.",
                )));
                state.multi = false;
                state.watching = false;
                state.poisoned = false;
                state.queued.clear();
                return;
            }
            b"exec" | b"discard" => {
                let queued = std::mem::take(&mut state.queued);
                let after = if name == b"exec" {
                    merge(queued)
                } else {
                    Writes::Nothing
                };
                state.multi = false;
                state.watching = false;
                state.poisoned = false;
                state.expect.push_back(Expect::End(after));
            }
            b"watch" => {
                state.watching = true;
                state.expect.push_back(Expect::Reply(Writes::Nothing));
            }
            b"unwatch" => {
                state.watching = false;
                state.expect.push_back(Expect::Reply(Writes::Nothing));
            }
            b"monitor" => {
                state.monitor = true;
                state.expect.push_back(Expect::Reply(Writes::Nothing));
            }
            b"select" => match self
                .resp
                .databases
                .parse(args.get(1).map_or(&b""[..], |a| &a[..]))
            {
                Ok(db) if !state.multi => state.expect.push_back(Expect::Select(db)),
                Ok(_) => state.expect.push_back(Expect::Reply(Writes::Nothing)),
                Err(reply) => {
                    state.expect.push_back(local(reply));
                    return;
                }
            },
            _ if SUBSCRIBING.contains(&&name[..]) => {
                // Answered by confirmations, one per channel named; without a
                // channel, one per channel subscribed (counted down by Redis's
                // own count), or a single one when there is none.
                let named = args.len() - 1;
                state.confirmations += if named > 0 {
                    named
                } else {
                    usize::from(state.subscriptions == 0 && state.confirmations == 0)
                };
            }
            _ if state.multi => {
                state.queued.push(after);
                state.expect.push_back(Expect::Reply(Writes::Nothing));
            }
            _ => state.expect.push_back(Expect::Reply(after)),
        }
        encode(&args, out);
    }

    /// One frame from Redis: a pub/sub message or push goes straight to the
    /// client; a reply answers the oldest request waiting.
    fn relay_frame(&mut self, frame: Frame, state: &mut State) {
        let in_exec = matches!(state.expect.front(), Some(Expect::End(_)));
        let pubsub = frame.pubsub().filter(|_| !in_exec);
        if let Some((kind, count)) = &pubsub
            && SUBSCRIBING.contains(&&kind[..])
            && let Some(count) = count
        {
            state.subscriptions = *count;
            state.confirmations = state.confirmations.saturating_sub(1);
            self.output.put_value(&frame.bytes);
            return;
        }
        let message = matches!(&pubsub, Some((kind, _)) if matches!(&kind[..], b"message" | b"pmessage" | b"smessage"));
        if is_push(&frame) || (message && state.subscriptions > 0) {
            self.output.put_value(&frame.bytes);
            return;
        }
        match state.expect.pop_front() {
            Some(Expect::Reply(after)) => {
                self.forwarding_apply(&after);
                self.output.put_value(&frame.bytes);
            }
            Some(Expect::End(after)) => {
                self.forwarding_apply(&after);
                self.output.put_value(&frame.bytes);
            }
            Some(Expect::Select(db)) => {
                if frame.error_text().is_none() {
                    self.session.select(db);
                }
                self.output.put_value(&frame.bytes);
            }
            Some(Expect::Swallow) => {}
            Some(Expect::Local(reply)) => {
                // A local reply is never waited for: emitted before reading.
                self.output.put_value(&reply);
                self.output.put_value(&frame.bytes);
            }
            // MONITOR's feed, or a reply nobody waits for: the client's anyway.
            None => self.output.put_value(&frame.bytes),
        }
        self.emit_local(state);
    }

    fn forwarding_apply(&self, writes: &Writes) {
        if let Some(forwarding) = &self.resp.forwarding {
            forwarding.apply(writes);
        }
    }
}

/// What a transaction's commands together invalidate.
fn merge(queued: Vec<Writes>) -> Writes {
    let mut keys = Vec::new();
    for after in queued {
        match after {
            Writes::Nothing => {}
            Writes::Keys(more) => keys.extend(more),
            Writes::All => return Writes::All,
        }
    }
    if keys.is_empty() {
        Writes::Nothing
    } else {
        Writes::Keys(keys)
    }
}
