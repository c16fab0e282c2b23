//! Client-side caching served by the proxy: `CLIENT TRACKING` for the
//! proxy's own clients, with Redis 7's semantics.
//!
//! The proxy hears of every change to a key it has read: through its own
//! tracking of Redis (`--invalidation tracking`, which this requires) and
//! through the writes it forwards, both of which reach the cache's watcher
//! (see [`crate::cache::Cache::watch`]). A client with tracking on has the
//! keys it reads remembered here, and is told when one of them changes: an
//! `invalidate` push in RESP3, or a `message` on `__redis__:invalidate` to
//! the connection it redirects to (RESP2). In broadcast mode (`BCAST`) it is
//! told of every change under its prefixes instead. When anything may have
//! changed (a flush, a lost tracking link, a failover) every tracking client
//! is sent the null invalidation, which tells it to drop its whole cache.
//!
//! Messages wait in the receiving connection's [`Mailbox`], which it empties
//! between batches and while it waits for input: never ahead of the reply to
//! a read asked before the change was heard of, so that a client never
//! caches a value older than an invalidation it has already seen.
//!
//! The table remembers at most `max_keys` names; a name beyond that pushes
//! out another, whose readers are told it changed, as Redis does past
//! `tracking-table-max-keys`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};

use super::clients::Entry;
use crate::cache::Changed;
use crate::protocol::Protocol;

/// Messages a mailbox holds at most; past it they are replaced by one null
/// invalidation, which says everything they would have.
const MAILBOX_MAX: usize = 4096;

/// What one connection asked of `CLIENT TRACKING ON`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Options {
    /// `BCAST`: told of changes under these prefixes (an empty one: every
    /// key), whatever it read. `None`: told of changes to keys it read.
    pub(super) broadcast: Option<Vec<Bytes>>,
    /// `OPTIN`: only reads after `CLIENT CACHING YES` are remembered.
    pub(super) optin: bool,
    /// `OPTOUT`: reads after `CLIENT CACHING NO` are not remembered.
    pub(super) optout: bool,
    /// `NOLOOP`: not told of its own writes.
    pub(super) noloop: bool,
    /// `REDIRECT id`: the connection its messages go to.
    pub(super) redirect: Option<u64>,
}

/// Client-side caching for every connection of the RESP listener.
#[derive(Debug)]
pub(super) struct Tracking {
    /// Names remembered at most; `None` when the proxy does not track Redis
    /// and so cannot serve tracking.
    max_keys: Option<usize>,
    /// Connections with tracking on: with none, a change costs one load.
    active: AtomicUsize,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    /// Each remembered name, and the connections that read it since it last
    /// changed.
    keys: HashMap<Bytes, Vec<u64>>,
    /// Every connection with tracking on.
    trackers: HashMap<u64, Tracker>,
    /// Those in broadcast mode.
    broadcasting: Vec<u64>,
}

#[derive(Debug)]
struct Tracker {
    entry: Arc<Entry>,
    /// Where its messages go, when not to itself.
    redirect: Option<Arc<Entry>>,
    /// Its prefixes, in broadcast mode.
    broadcast: Option<Vec<Bytes>>,
}

impl Tracker {
    /// Posts `push` where the connection's messages go: to the one it
    /// redirects to, or when that one is gone, a broken-redirect message to
    /// itself.
    fn post(&self, push: Push) {
        match &self.redirect {
            None => self.entry.mailbox.post(push),
            Some(target) if !target.closing.is_cancelled() => target.mailbox.post(push),
            Some(target) => self.entry.mailbox.post(Push::RedirectBroken(target.id)),
        }
    }
}

/// One message for a connection's client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Push {
    /// These keys changed.
    Keys(Vec<Bytes>),
    /// Anything may have changed: drop every cached key.
    Flush,
    /// The connection messages were redirected to is gone (told in RESP3
    /// only, as Redis does).
    RedirectBroken(u64),
}

/// The messages waiting for one connection, and the signal that one came.
#[derive(Debug, Default)]
pub(super) struct Mailbox {
    /// Whether `queue` may hold messages: what a connection reads after
    /// every batch, without the lock.
    posted: std::sync::atomic::AtomicBool,
    queue: Mutex<VecDeque<Push>>,
    /// Notified on each message: a connection waiting for input wakes.
    pub(super) ready: tokio::sync::Notify,
}

impl Mailbox {
    fn post(&self, push: Push) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= MAILBOX_MAX {
            queue.clear();
            queue.push_back(Push::Flush);
        } else if queue.back() != Some(&Push::Flush) || push != Push::Flush {
            queue.push_back(push);
        }
        self.posted.store(true, Ordering::Release);
        drop(queue);
        self.ready.notify_one();
    }

    /// Encodes the waiting messages for a client speaking `protocol`, which
    /// in RESP2 hears them only while `subscribed` (as Redis's redirect
    /// target does); otherwise they are dropped.
    pub(super) fn drain(&self, protocol: Protocol, subscribed: bool, out: &mut BytesMut) {
        if !self.posted.swap(false, Ordering::Acquire) {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        for push in queue.drain(..) {
            encode(&push, protocol, subscribed, out);
        }
    }
}

/// A message as Redis writes it: a RESP3 push, or in RESP2 a pub/sub
/// message on `__redis__:invalidate`.
fn encode(push: &Push, protocol: Protocol, subscribed: bool, out: &mut BytesMut) {
    let bulk = |out: &mut BytesMut, bytes: &[u8]| {
        out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    };
    match (protocol, push) {
        (Protocol::Resp3, Push::RedirectBroken(id)) => {
            out.extend_from_slice(b">2\r\n");
            bulk(out, b"tracking-redir-broken");
            out.extend_from_slice(format!(":{id}\r\n").as_bytes());
            return;
        }
        (Protocol::Resp2, Push::RedirectBroken(_)) => return,
        (Protocol::Resp3, _) => {
            out.extend_from_slice(b">2\r\n");
            bulk(out, b"invalidate");
        }
        (Protocol::Resp2, _) if subscribed => {
            out.extend_from_slice(b"*3\r\n");
            bulk(out, b"message");
            bulk(out, b"__redis__:invalidate");
        }
        (Protocol::Resp2, _) => return,
    }
    match push {
        Push::Keys(keys) => {
            out.extend_from_slice(format!("*{}\r\n", keys.len()).as_bytes());
            for key in keys {
                bulk(out, key);
            }
        }
        _ => match protocol {
            Protocol::Resp3 => out.extend_from_slice(b"_\r\n"),
            Protocol::Resp2 => out.extend_from_slice(b"$-1\r\n"),
        },
    }
}

impl Tracking {
    /// Tracking served with at most `max_keys` names remembered; `None`: not
    /// served (the proxy does not track Redis).
    pub(super) fn new(max_keys: Option<usize>) -> Self {
        Self {
            max_keys: max_keys.map(|max| max.max(1)),
            active: AtomicUsize::new(0),
            table: Mutex::default(),
        }
    }

    /// Whether `CLIENT TRACKING` can be served.
    pub(super) fn served(&self) -> bool {
        self.max_keys.is_some()
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Turns tracking on for `entry`'s connection with `options` (on again:
    /// they replace the old), its messages going to `redirect` if set.
    pub(super) fn enable(
        &self,
        entry: &Arc<Entry>,
        options: &Options,
        redirect: Option<Arc<Entry>>,
    ) {
        let tracker = Tracker {
            entry: entry.clone(),
            redirect,
            broadcast: options.broadcast.clone(),
        };
        let mut table = self.table();
        table.broadcasting.retain(|&id| id != entry.id);
        if tracker.broadcast.is_some() {
            table.broadcasting.push(entry.id);
        }
        if table.trackers.insert(entry.id, tracker).is_none() {
            self.active.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Turns tracking off for connection `id` (it may be off already). The
    /// names it read are forgotten as they change.
    pub(super) fn disable(&self, id: u64) {
        let mut table = self.table();
        table.broadcasting.retain(|&other| other != id);
        if table.trackers.remove(&id).is_some() {
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
        if table.trackers.is_empty() {
            // Nobody is left to tell: what was remembered goes with them.
            table.keys.clear();
        }
    }

    /// Remembers that connection `id` read `names`.
    pub(super) fn read<'a>(&self, id: u64, names: impl IntoIterator<Item = &'a Bytes>) {
        let Some(max_keys) = self.max_keys else {
            return;
        };
        let mut table = self.table();
        let table = &mut *table;
        let mut pushed_out = Vec::new();
        for name in names {
            if let Some(readers) = table.keys.get_mut(name) {
                if !readers.contains(&id) {
                    // Ids of connections gone go as a name gains a reader.
                    readers.retain(|reader| table.trackers.contains_key(reader));
                    readers.push(id);
                }
                continue;
            }
            if table.keys.len() >= max_keys
                && let Some(old) = table.keys.keys().next().cloned()
                && let Some(readers) = table.keys.remove(&old)
            {
                pushed_out.push((old, readers));
            }
            table.keys.insert(name.clone(), vec![id]);
        }
        // The readers still tracking are told the names pushed out changed.
        let told = (pushed_out.iter()).flat_map(|(name, readers)| {
            (readers.iter())
                .filter(|reader| table.trackers.contains_key(reader))
                .map(move |&reader| (reader, name))
        });
        Self::deliver(&table.trackers, told);
    }

    /// `NOLOOP`: connection `id` writes `names`, and is not to be told.
    pub(super) fn wrote(&self, id: u64, names: &[Bytes]) {
        let mut table = self.table();
        for name in names {
            if let Some(readers) = table.keys.get_mut(name) {
                readers.retain(|&reader| reader != id);
            }
        }
    }

    /// What the cache heard changed: each tracking connection that read a
    /// name in it, or broadcasts a prefix of one, is told.
    pub(super) fn changed(&self, changed: Changed<'_>) {
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut table = self.table();
        let table = &mut *table;
        match changed {
            Changed::All => {
                table.keys.clear();
                for tracker in table.trackers.values() {
                    tracker.post(Push::Flush);
                }
            }
            Changed::Keys(names) => {
                let mut told: Vec<(u64, &Bytes)> = Vec::new();
                for name in names {
                    if let Some(readers) = table.keys.remove(name) {
                        told.extend(readers.into_iter().map(|id| (id, name)));
                    }
                    for &id in &table.broadcasting {
                        let under = |prefix: &Bytes| name.starts_with(prefix);
                        let prefixes = (table.trackers.get(&id))
                            .and_then(|tracker| tracker.broadcast.as_ref());
                        if prefixes.is_some_and(|p| p.is_empty() || p.iter().any(under)) {
                            told.push((id, name));
                        }
                    }
                }
                Self::deliver(&table.trackers, told);
            }
        }
    }

    /// Posts to each connection the names it is to be told of, as one
    /// message.
    fn deliver<'a>(
        trackers: &HashMap<u64, Tracker>,
        told: impl IntoIterator<Item = (u64, &'a Bytes)>,
    ) {
        let mut by_tracker: HashMap<u64, Vec<Bytes>> = HashMap::new();
        for (id, name) in told {
            let names = by_tracker.entry(id).or_default();
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        for (id, names) in by_tracker {
            if let Some(tracker) = trackers.get(&id) {
                tracker.post(Push::Keys(names));
            }
        }
    }

    /// How many names are remembered.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.table().keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio_util::sync::CancellationToken;

    fn entry(clients: &super::super::clients::Clients, id: u64) -> Arc<Entry> {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let registered = clients.register(id, (addr, addr), CancellationToken::new());
        let entry = registered.entry.clone();
        std::mem::forget(registered);
        entry
    }

    fn drained(entry: &Entry, protocol: Protocol) -> String {
        let mut out = BytesMut::new();
        entry.mailbox.drain(protocol, true, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn a_reader_is_told_once_of_a_change_and_then_forgets_the_name() {
        let clients = super::super::clients::Clients::default();
        let (reader, other) = (entry(&clients, 1), entry(&clients, 2));
        let tracking = Tracking::new(Some(100));
        tracking.enable(&reader, &Options::default(), None);
        tracking.enable(&other, &Options::default(), None);
        tracking.read(1, [&Bytes::from("k")]);
        tracking.changed(Changed::Keys(&[Bytes::from("k"), Bytes::from("j")]));
        assert_eq!(
            drained(&reader, Protocol::Resp3),
            ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n"
        );
        assert_eq!(drained(&other, Protocol::Resp3), "", "it read nothing");
        tracking.changed(Changed::Keys(&[Bytes::from("k")]));
        assert_eq!(drained(&reader, Protocol::Resp3), "", "told once per read");
    }

    #[test]
    fn broadcast_tells_of_every_change_under_a_prefix_and_a_flush_is_null() {
        let clients = super::super::clients::Clients::default();
        let reader = entry(&clients, 1);
        let tracking = Tracking::new(Some(100));
        let options = Options {
            broadcast: Some(vec![Bytes::from("user:")]),
            ..Options::default()
        };
        tracking.enable(&reader, &options, None);
        tracking.changed(Changed::Keys(&[Bytes::from("user:1"), Bytes::from("x")]));
        tracking.changed(Changed::All);
        assert_eq!(
            drained(&reader, Protocol::Resp2),
            "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$6\r\nuser:1\r\n\
             *3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n$-1\r\n"
        );
    }

    #[test]
    fn the_table_is_bounded_and_a_name_pushed_out_is_told_as_changed() {
        let clients = super::super::clients::Clients::default();
        let reader = entry(&clients, 1);
        let tracking = Tracking::new(Some(10));
        tracking.enable(&reader, &Options::default(), None);
        let names: Vec<Bytes> = (0..100).map(|i| Bytes::from(format!("k{i}"))).collect();
        tracking.read(1, &names);
        assert_eq!(tracking.remembered(), 10);
        let told = drained(&reader, Protocol::Resp3);
        assert_eq!(told.matches("invalidate").count(), 1, "one message: {told}");
        assert_eq!(told.matches("\r\nk").count(), 90, "{told}");
    }

    #[test]
    fn noloop_spares_the_writer_and_a_gone_redirect_is_reported() {
        let clients = super::super::clients::Clients::default();
        let (writer, target) = (entry(&clients, 1), entry(&clients, 2));
        let tracking = Tracking::new(Some(10));
        tracking.enable(&writer, &Options::default(), Some(target.clone()));
        tracking.read(1, [&Bytes::from("a"), &Bytes::from("b")]);
        tracking.wrote(1, &[Bytes::from("a")]);
        tracking.changed(Changed::Keys(&[Bytes::from("a"), Bytes::from("b")]));
        assert_eq!(
            drained(&target, Protocol::Resp3),
            ">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nb\r\n"
        );
        target.closing.cancel();
        tracking.read(1, [&Bytes::from("c")]);
        tracking.changed(Changed::Keys(&[Bytes::from("c")]));
        assert_eq!(
            drained(&writer, Protocol::Resp3),
            ">2\r\n$21\r\ntracking-redir-broken\r\n:2\r\n"
        );
    }
}
