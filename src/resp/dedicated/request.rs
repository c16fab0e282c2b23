//! One request of the client's in a dedicated session: answered by the proxy,
//! refused, or written to Redis with what its reply will answer.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::state::{Expect, block_time, merge};
use super::{Relay, SUBSCRIBING};
use crate::forward::Route;
use crate::lookup::Writes;
use crate::protocol::{Protocol, Reply, encode};
use crate::resp::command::Command;
use crate::resp::session::{NOAUTH, Planned};

/// The refusal of a request beyond the client limit, as a `GET` gets it.
const OVERLOADED: &str = "ERR overloaded: too many requests in flight";

impl<S, T> Relay<'_, '_, S, T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// One request of the client's.
    pub(super) fn request(&mut self, args: Vec<Bytes>) {
        let name = args[0].to_ascii_lowercase();
        let Some(args) = self.answered_here(&name, args) else {
            return;
        };
        if let Some(error) = self.refusal(&args) {
            self.refuse(error);
            return;
        }
        // Every request to Redis holds a client slot until its reply comes.
        let Some(slot) = self.resp.client_slots.try_take() else {
            self.refuse(OVERLOADED.to_owned());
            return;
        };
        let slot = Some(slot);
        let writes = self.forwarding.invalidates(&args);
        let due = self.due(&name, &args);
        if name == b"select" {
            if let Some(expect) = self.select(&args, due) {
                self.state.expect.push_back(expect);
                encode(&args, &mut self.out);
            }
            return;
        }
        let Some(expect) = self.expect(&name, &args, writes, due, slot) else {
            return;
        };
        self.state.expect.push_back(expect);
        encode(&args, &mut self.out);
    }

    /// What the reply to `args` (command `name`) will answer, the state moved
    /// as the command moves it; `None` when nothing is sent after all (a
    /// spoilt transaction's `EXEC`) or the confirmations are counted instead.
    fn expect(
        &mut self,
        name: &[u8],
        args: &[Bytes],
        writes: Writes,
        due: super::state::Due,
        slot: Option<crate::limit::Slot>,
    ) -> Option<Expect> {
        let state = &mut self.state;
        let expect = match name {
            b"multi" => {
                state.multi = true;
                Expect::Reply {
                    writes: Writes::Nothing,
                    due,
                    _slot: slot,
                }
            }
            b"exec" if state.poisoned => {
                self.abort_transaction();
                return None;
            }
            b"exec" | b"discard" => self.end_transaction(name == b"exec", due, slot),
            _ if SUBSCRIBING.contains(&name) => {
                self.subscribing(args, due);
                encode(args, &mut self.out);
                return None;
            }
            _ => {
                match name {
                    b"watch" => state.watching = true,
                    b"unwatch" => state.watching = false,
                    b"monitor" => state.monitor = true,
                    _ => {}
                }
                let writes = if state.multi && !matches!(name, b"watch" | b"unwatch") {
                    state.queued.push(writes);
                    state.queued_count += 1;
                    Writes::Nothing
                } else {
                    writes
                };
                Expect::Reply {
                    writes,
                    due,
                    _slot: slot,
                }
            }
        };
        Some(expect)
    }

    /// `EXEC` (`run`) or `DISCARD`: the transaction and any `WATCH` end.
    fn end_transaction(
        &mut self,
        run: bool,
        due: super::state::Due,
        slot: Option<crate::limit::Slot>,
    ) -> Expect {
        let state = &mut self.state;
        let queued = std::mem::take(&mut state.queued);
        let local = std::mem::take(&mut state.queued_local);
        state.multi = false;
        state.watching = false;
        state.poisoned = false;
        state.queued_count = 0;
        Expect::End {
            writes: if run { merge(queued) } else { Writes::Nothing },
            local: if run { local } else { Vec::new() },
            due,
            _slot: slot,
        }
    }

    /// What only the proxy answers: who the client is, and leaving. Inside a
    /// transaction these are queued, and run when `EXEC` runs (but `QUIT`
    /// and `RESET`, which run at once, as Redis runs them). `INFO` goes to
    /// Redis, without the proxy's section. `None` when the
    /// request was answered here; else it is given back.
    fn answered_here(&mut self, name: &[u8], args: Vec<Bytes>) -> Option<Vec<Bytes>> {
        match name {
            b"quit" => {
                self.local(Reply::OK);
                self.state.quit = true;
            }
            b"reset" => {
                // Closing the connection discards everything on it.
                let state = &mut self.state;
                state.multi = false;
                state.watching = false;
                state.subscriptions = 0;
                state.subscribed = [0; 3];
                state.monitor = false;
                state.queued.clear();
                state.queued_local.clear();
                state.expect.push_back(Expect::Swallow { due: None });
                encode(&["RESET"], &mut self.out);
                let reply = self.session.reset(self.resp);
                self.local(reply);
            }
            b"hello" if self.changes_protocol(&args) => {
                // The dedicated connection speaks the protocol it was opened in.
                self.local(Reply::error(
                    "ERR HELLO cannot change the protocol inside MULTI, WATCH, a subscription or a blocking command",
                ));
            }
            // Redis's own, on the client's own connection: `INFO`, and `AUTH`
            // when the proxy has no users (see `Planned::Auth`).
            b"info" => return Some(args),
            b"client"
                if args
                    .get(1)
                    .is_some_and(|sub| sub.eq_ignore_ascii_case(b"reply")) =>
            {
                self.local(Reply::error(
                    "ERR CLIENT REPLY is served by redis-proxy outside MULTI, WATCH, subscriptions and blocking commands only",
                ));
            }
            b"auth" if !self.resp.access.required() => return Some(args),
            // Credentials in `HELLO` are Redis's to check there too.
            b"hello"
                if !self.resp.access.required()
                    && args.iter().any(|arg| arg.eq_ignore_ascii_case(b"auth")) =>
            {
                return Some(args);
            }
            b"auth" | b"hello" | b"client" if self.state.multi => {
                let place = self.state.queued_count;
                self.state.queued_local.push((place, args));
                self.state.queued_count += 1;
                self.local(Reply::Simple("QUEUED"));
            }
            b"auth" | b"hello" | b"client" => {
                let reply = self.answer_locally(args);
                self.local(reply);
            }
            _ => return Some(args),
        }
        None
    }

    /// The proxy's own answer to one of the commands it answers itself.
    pub(super) fn answer_locally(&mut self, args: Vec<Bytes>) -> Reply {
        let mut requests = VecDeque::new();
        match self
            .session
            .plan(Command::parse(args, true), &mut requests, self.resp)
        {
            Planned::Reply(reply, _) => reply,
            _ => Reply::error("ERR not allowed here"),
        }
    }

    /// Whether `HELLO` asks for another protocol than the connection's.
    fn changes_protocol(&self, args: &[Bytes]) -> bool {
        let current: &[u8] = if self.session.protocol == Protocol::Resp3 {
            b"3"
        } else {
            b"2"
        };
        args.get(1).is_some_and(|version| &version[..] != current)
    }

    /// Why the proxy refuses `args`, if it does.
    fn refusal(&self, args: &[Bytes]) -> Option<String> {
        match self.session.user() {
            Some(user) => match self.forwarding.route(args, user) {
                Route::Refuse(error) => Some(error),
                _ => None,
            },
            None => Some(NOAUTH.to_owned()),
        }
    }

    /// Refuses a request with `error`; inside a transaction, `EXEC` will fail.
    fn refuse(&mut self, error: String) {
        if self.state.multi {
            self.state.poisoned = true;
        }
        self.local(Reply::error(error));
    }

    /// `EXEC` of a transaction a refused command spoilt: discarded, and
    /// answered as Redis answers it.
    fn abort_transaction(&mut self) {
        encode(&["DISCARD"], &mut self.out);
        let state = &mut self.state;
        state.expect.push_back(Expect::Swallow { due: None });
        state.multi = false;
        state.watching = false;
        state.poisoned = false;
        state.queued.clear();
        state.queued_local.clear();
        state.queued_count = 0;
        self.local(Reply::error(
            "EXECABORT Transaction discarded because of previous errors.",
        ));
    }

    /// `SELECT`: the session reads the database once Redis has said it exists
    /// (inside a transaction, once `EXEC` has run it: queued as any command).
    fn select(&mut self, args: &[Bytes], due: super::state::Due) -> Option<Expect> {
        let index = args.get(1).map_or(&b""[..], |a| &a[..]);
        match self.resp.databases.parse(index) {
            Ok(db) if !self.state.multi => Some(Expect::Select { db, due }),
            Ok(_) => {
                self.state.queued_count += 1;
                Some(Expect::Reply {
                    writes: Writes::Nothing,
                    due,
                    _slot: None,
                })
            }
            Err(reply) => {
                self.local(reply);
                None
            }
        }
    }

    /// A (un)subscription: answered by confirmations, one per channel named;
    /// without a channel, one per channel subscribed (counted down by Redis's
    /// own count), or a single one when there is none.
    fn subscribing(&mut self, args: &[Bytes], due: super::state::Due) {
        let state = &mut self.state;
        let named = args.len() - 1;
        if state.confirmations == 0 {
            state.confirming = due;
        }
        state.confirmations += if named > 0 {
            named
        } else {
            usize::from(state.subscriptions == 0 && state.confirmations == 0)
        };
    }

    /// By when Redis must answer `args` (command `name`): the request timeout
    /// from now, plus a blocking command's own timeout; never for one that
    /// may block for ever.
    fn due(&self, name: &[u8], args: &[Bytes]) -> super::state::Due {
        let timeout = self.client.limits().request_timeout;
        match block_time(name, args) {
            None => Some(Instant::now() + timeout),
            Some(Some(blocks)) => Some(Instant::now() + timeout + blocks),
            Some(None) => None,
        }
    }

    /// Queues the proxy's own reply, sent once the replies before it are.
    fn local(&mut self, reply: Reply) {
        let mut bytes = BytesMut::new();
        reply.encode(self.session.protocol, &mut bytes);
        self.state.expect.push_back(Expect::Local(bytes.freeze()));
    }
}
