//! The proxy's RESP clients, for `CLIENT LIST`, `CLIENT INFO` and
//! `CLIENT KILL`: each connection registers itself while it lives and
//! publishes what it is (name, database, user, protocol, library) when that
//! changes and its last command after every batch; killing one cancels its
//! token, which ends it as a shutdown would.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

/// Every live connection, by id.
#[derive(Debug, Default)]
pub(super) struct Clients {
    entries: Mutex<BTreeMap<u64, Arc<Entry>>>,
}

/// One connection as the others see it.
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) id: u64,
    pub(super) peer: SocketAddr,
    pub(super) local: SocketAddr,
    started: Instant,
    /// Cancelled to end the connection.
    pub(super) closing: CancellationToken,
    /// Client-side caching's messages for it (`CLIENT TRACKING`).
    pub(super) mailbox: super::tracking::Mailbox,
    state: Mutex<State>,
}

/// What a connection last published of itself.
#[derive(Debug, Clone)]
pub(super) struct State {
    pub(super) name: Option<Bytes>,
    pub(super) db: i64,
    pub(super) user: String,
    pub(super) resp: i64,
    pub(super) library: (Option<Bytes>, Option<Bytes>),
    /// The last command's name, and when it came.
    pub(super) command: Option<Name>,
    pub(super) active: Instant,
    /// With tracking on: whether in broadcast mode, and the connection its
    /// messages go to (0: its own).
    pub(super) tracking: Option<(bool, u64)>,
    /// In a dedicated session: its connection's address as Redis lists it,
    /// and the slot of the node it is to.
    pub(super) dedicated: Option<(SocketAddr, Option<u16>)>,
    /// On a dedicated connection: channels, patterns and shard channels
    /// subscribed, and the commands queued in a transaction (-1: none).
    pub(super) subscribed: [i64; 3],
    pub(super) multi: i64,
}

/// A command's name, copied (at most [`Name::MAX`] bytes): what a
/// connection records of every request, without holding its buffer.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Name {
    bytes: [u8; Name::MAX],
    len: u8,
}

impl Name {
    const MAX: usize = 24;

    pub(super) fn new(name: &[u8]) -> Self {
        let len = name.len().min(Self::MAX);
        let mut bytes = [0; Self::MAX];
        bytes[..len].copy_from_slice(&name[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Takes the entry out of the registry when the connection ends.
#[derive(Debug)]
pub(super) struct Registered<'a> {
    clients: &'a Clients,
    pub(super) entry: Arc<Entry>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.clients
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.entry.id);
    }
}

impl Clients {
    /// Registers connection `id`, ended by `closing`.
    pub(super) fn register(
        &self,
        id: u64,
        (peer, local): (SocketAddr, SocketAddr),
        closing: CancellationToken,
    ) -> Registered<'_> {
        let now = Instant::now();
        let entry = Arc::new(Entry {
            id,
            peer,
            local,
            started: now,
            closing,
            mailbox: super::tracking::Mailbox::default(),
            state: Mutex::new(State {
                name: None,
                db: 0,
                user: "default".to_owned(),
                resp: 2,
                library: (None, None),
                command: None,
                active: now,
                tracking: None,
                dedicated: None,
                subscribed: [0; 3],
                multi: -1,
            }),
        });
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, entry.clone());
        Registered {
            clients: self,
            entry,
        }
    }

    /// Connection `id`, unless it is gone or ending.
    pub(super) fn get(&self, id: u64) -> Option<Arc<Entry>> {
        (self.entries.lock().unwrap_or_else(PoisonError::into_inner))
            .get(&id)
            .filter(|entry| !entry.closing.is_cancelled())
            .cloned()
    }

    /// Every connection, by id, but those ending.
    pub(super) fn all(&self) -> Vec<Arc<Entry>> {
        (self.entries.lock().unwrap_or_else(PoisonError::into_inner))
            .values()
            .filter(|entry| !entry.closing.is_cancelled())
            .cloned()
            .collect()
    }
}

impl Entry {
    /// Publishes `state` as what the connection is now.
    pub(super) fn publish(&self, update: impl FnOnce(&mut State)) {
        update(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Where Redis lists the connection's dedicated one, and its slot,
    /// while it has one.
    pub(super) fn dedicated(&self) -> Option<(SocketAddr, Option<u16>)> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dedicated
    }

    /// The connection's user, as it last published it.
    pub(super) fn user(&self) -> String {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .user
            .clone()
    }

    /// The line `CLIENT LIST` and `CLIENT INFO` give, with every field Redis 7
    /// writes, so that clients that parse it find them; `command` stands for
    /// the command being answered when it is this connection's own. Buffer
    /// and memory figures the proxy does not keep per connection are 0.
    pub(super) fn line(&self, command: Option<&str>) -> String {
        let state = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let text = |bytes: &Option<Bytes>| {
            bytes
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned()
        };
        let cmd = match command {
            Some(command) => command.to_owned(),
            None => state.command.as_ref().map_or("NULL".to_owned(), |name| {
                String::from_utf8_lossy(name.as_bytes()).to_ascii_lowercase()
            }),
        };
        let now = Instant::now();
        let [sub, psub, ssub] = state.subscribed;
        let mut flags = String::new();
        if sub + psub + ssub > 0 {
            flags.push('P');
        }
        if state.multi >= 0 {
            flags.push('x');
        }
        let redir = match state.tracking {
            None => -1,
            Some((broadcast, redirect)) => {
                flags.push_str(if broadcast { "tB" } else { "t" });
                redirect as i64
            }
        };
        if flags.is_empty() {
            flags.push('N');
        }
        format!(
            "id={id} addr={peer} laddr={local} fd=-1 name={name} age={age} idle={idle} flags={flags} \
             db={db} sub={sub} psub={psub} ssub={ssub} multi={multi} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 \
             rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={cmd} user={user} \
             redir={redir} resp={resp} lib-name={lib} lib-ver={ver}\n",
            id = self.id,
            peer = self.peer,
            local = self.local,
            name = text(&state.name),
            age = now.saturating_duration_since(self.started).as_secs(),
            idle = match command {
                Some(_) => 0,
                None => now.saturating_duration_since(state.active).as_secs(),
            },
            db = state.db,
            multi = state.multi,
            user = state.user,
            resp = state.resp,
            lib = text(&state.library.0),
            ver = text(&state.library.1),
        )
    }
}

/// Which clients a `CLIENT KILL` names.
#[derive(Debug, Default)]
pub(super) struct Filter {
    id: Option<u64>,
    addr: Option<String>,
    laddr: Option<String>,
    user: Option<String>,
    /// Whether the connection asking is spared (the filter form's default).
    skip_me: bool,
}

impl Filter {
    /// `CLIENT KILL`'s arguments after `KILL`: the old `ip:port` form, or
    /// `ID`, `ADDR`, `LADDR`, `USER`, `SKIPME` pairs. `Err` is Redis's error
    /// text.
    pub(super) fn parse(args: &[Bytes]) -> Result<(Self, bool), String> {
        let text = |bytes: &Bytes| String::from_utf8_lossy(bytes).into_owned();
        if let [addr] = args {
            let filter = Filter {
                addr: Some(text(addr)),
                ..Self::default()
            };
            return Ok((filter, true));
        }
        if args.is_empty() || !args.len().is_multiple_of(2) {
            return Err("ERR syntax error".to_owned());
        }
        let mut filter = Filter {
            skip_me: true,
            ..Self::default()
        };
        for pair in args.chunks(2) {
            let value = text(&pair[1]);
            match &pair[0].to_ascii_lowercase()[..] {
                b"id" => match value.parse::<u64>() {
                    Ok(id) if id > 0 => filter.id = Some(id),
                    _ => return Err("ERR client-id should be greater than 0".to_owned()),
                },
                b"addr" => filter.addr = Some(value),
                b"laddr" => filter.laddr = Some(value),
                b"user" => filter.user = Some(value),
                b"skipme" => match value.to_ascii_lowercase().as_str() {
                    "yes" => filter.skip_me = true,
                    "no" => filter.skip_me = false,
                    _ => return Err("ERR syntax error".to_owned()),
                },
                _ => return Err("ERR syntax error".to_owned()),
            }
        }
        Ok((filter, false))
    }

    /// Whether `entry` is one to kill, `me` being the asking connection's id.
    pub(super) fn matches(&self, entry: &Entry, me: u64) -> bool {
        !(self.skip_me && entry.id == me)
            && self.id.is_none_or(|id| id == entry.id)
            && (self.addr.as_ref()).is_none_or(|addr| *addr == entry.peer.to_string())
            && (self.laddr.as_ref()).is_none_or(|addr| *addr == entry.local.to_string())
            && (self.user.as_ref()).is_none_or(|user| *user == entry.user())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_read_as_redis_reads_them() {
        let args = |words: &[&str]| -> Vec<Bytes> {
            words.iter().map(|w| Bytes::from(w.to_string())).collect()
        };
        let (old, old_form) = Filter::parse(&args(&["127.0.0.1:5000"])).unwrap();
        assert!(old_form && old.addr.as_deref() == Some("127.0.0.1:5000") && !old.skip_me);
        let (new, old_form) = Filter::parse(&args(&["ID", "7", "SKIPME", "no"])).unwrap();
        assert!(!old_form && new.id == Some(7) && !new.skip_me);
        assert!(Filter::parse(&args(&["ID", "0"])).is_err());
        assert!(Filter::parse(&args(&["NOPE", "x"])).is_err());
    }
}
