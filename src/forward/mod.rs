//! Transparent mode (`--forward-commands`): every command the proxy does not
//! answer itself goes to the backing Redis and its reply comes back as Redis
//! sent it, while reads of a documented set are cached and dropped when their
//! key changes.
//!
//! ```text
//! request ─▶ classify (COMMAND's flags and key specifications)
//!   ├─ GET, MGET, cached reads ─▶ the stack and cache (a miss runs the request on the shared path)
//!   ├─ stateless ─▶ shared path: one pipelined connection per worker and protocol (`shared`)
//!   │               its reply invalidates the keys it wrote, then reaches the client
//!   ├─ MULTI, WATCH, blocking, SUBSCRIBE ─▶ a connection of the client's own while the state lasts
//!   ├─ keyless, in a cluster: DBSIZE, KEYS, FLUSHALL, SCRIPT ─▶ every primary, replies combined (`spread`)
//!   │                         SCAN ─▶ the primaries one after another
//!   └─ admin commands ─▶ refused (unless --forward-admin-commands)
//! ```
//!
//! A cached read is a [`Query`] that carries its whole request; the cache
//! keeps it with the entries of the key it reads, so that a write to the key
//! drops every reply cached for it.

pub(crate) mod commands;
pub(crate) mod frame;
pub(crate) mod link;
mod permissions;
pub(crate) mod shared;
pub(crate) mod spread;

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::auth::User;
use crate::backend::{Cluster, Invalidation, InvalidationSink, Manager};
use crate::cache::Cache;
use crate::limit::Slots;
use crate::lookup::{Error, Query};

pub(crate) use commands::Table;
pub(crate) use frame::Frame;
pub(crate) use link::Link;
pub(crate) use shared::Job;
use spread::Combine;

/// What a forwarded command's reply invalidates when it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum After {
    /// Nothing: a read.
    Nothing,
    /// Every cached entry of these keys, in every database.
    Keys(Vec<Bytes>),
    /// The whole cache: the command's keys cannot be known, or it changes
    /// every key (`FLUSHALL`, `FLUSHDB`, `SWAPDB`).
    All,
}

/// The read commands whose replies are cached: read-only, deterministic, and on
/// one key, the first argument.
pub const CACHED: &[&str] = &[
    "hget",
    "hmget",
    "hgetall",
    "hexists",
    "hlen",
    "hstrlen",
    "hkeys",
    "hvals",
    "lrange",
    "llen",
    "lindex",
    "smembers",
    "sismember",
    "smismember",
    "scard",
    "zrange",
    "zrangebyscore",
    "zrevrange",
    "zscore",
    "zmscore",
    "zcard",
    "zcount",
    "zrank",
    "zrevrank",
    "exists",
    "strlen",
    "getrange",
    "type",
    "xlen",
    "xrange",
    "xrevrange",
];

/// Commands refused unless `--forward-admin-commands`, besides those Redis
/// flags `admin`: they change every key or the server itself.
const ADMIN: &[&str] = &[
    "config",
    "debug",
    "shutdown",
    "flushall",
    "flushdb",
    "swapdb",
    "monitor",
    "replicaof",
    "slaveof",
    "cluster",
    "acl",
    "module",
    "save",
    "bgsave",
    "bgrewriteaof",
    "migrate",
    "failover",
    "sync",
    "psync",
];

/// Subcommands refused unless `--forward-admin-commands`.
const ADMIN_SUBCOMMANDS: &[(&str, &str)] = &[
    ("script", "kill"),
    ("script", "flush"),
    ("function", "kill"),
    ("function", "flush"),
    ("client", "kill"),
    ("client", "pause"),
];

/// Commands that change every key of a database.
const FLUSHING: &[&str] = &["flushall", "flushdb", "swapdb"];

/// Commands that start a state on the connection: they and what follows run on
/// a connection of the client's own until the state ends.
const STATEFUL: &[&str] = &[
    "multi",
    "watch",
    "subscribe",
    "psubscribe",
    "ssubscribe",
    "monitor",
    "wait",
    "waitaof",
];

/// What a request does, for keeping a pipeline's reads and writes in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A read through the cache.
    Lookup,
    /// May change data.
    Write,
    /// Neither: a read forwarded as it is, or a command answered by the proxy.
    Neutral,
}

/// How one request is served.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Refused with this error, never sent.
    Refuse(String),
    /// Starts a state: served on a dedicated connection.
    Dedicate,
    /// A cached read of the key it names.
    Cached,
    /// Sent on the shared path, to the node of `slot` (in a cluster); its reply
    /// invalidates `after`.
    Shared { after: After, slot: Option<u16> },
    /// In a cluster: sent on the shared paths to every primary, the replies
    /// combined; each invalidates `after`.
    Everywhere { after: After, combine: Combine },
    /// In a cluster: `SCAN`, on the primary its cursor names.
    Scan,
}

/// Redis Cluster's reply to keys of several slots in one command.
const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// One thread's forwarders, by node (`host:port`; empty with one Redis) and
/// protocol (RESP3 or not).
type Forwarders = std::collections::HashMap<String, [Option<mpsc::UnboundedSender<Job>>; 2]>;

/// Everything transparent mode shares: the backend, the command table, the
/// cache to invalidate, and each worker's shared connections.
pub(crate) struct Forwarding {
    pub(crate) backend: Manager,
    pub(crate) cache: Cache,
    /// With `--invalidation tracking`: where what Redis says of changed keys goes.
    pub(crate) tracking: Option<InvalidationSink>,
    /// The database the URL names.
    pub(crate) default_db: i64,
    /// Whether admin commands are forwarded.
    admin: bool,
    table: OnceLock<Arc<Table>>,
    loading: tokio::sync::Mutex<()>,
    /// Per worker thread (and one for the others): the forwarders by node and
    /// protocol (RESP3 or not).
    lanes: Box<[std::sync::Mutex<Forwarders>]>,
    /// In cluster mode: the cluster whose nodes commands are routed to by slot.
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// Connections dedicated to one client.
    pub(crate) dedicated: Slots,
}

/// How transparent mode is set up.
pub(crate) struct Settings {
    pub(crate) admin: bool,
    pub(crate) max_dedicated: usize,
    pub(crate) workers: usize,
    pub(crate) tracking: Option<InvalidationSink>,
    pub(crate) cluster: Option<Arc<Cluster>>,
}

impl std::fmt::Debug for Forwarding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarding")
            .field("admin", &self.admin)
            .field("table", &self.table.get().map(|t| t.len()))
            .finish_non_exhaustive()
    }
}

impl Forwarding {
    pub(crate) fn new(backend: Manager, default_db: i64, cache: Cache, settings: Settings) -> Self {
        Self {
            backend,
            cache,
            tracking: settings.tracking,
            default_db,
            admin: settings.admin,
            table: OnceLock::new(),
            loading: tokio::sync::Mutex::new(()),
            lanes: (0..=settings.workers).map(|_| Default::default()).collect(),
            dedicated: Slots::new(settings.max_dedicated),
            cluster: settings.cluster,
        }
    }

    /// The backend's command table, once read.
    pub(crate) fn table(&self) -> Option<&Arc<Table>> {
        self.table.get()
    }

    /// Reads the command table from the backend, unless it was read already.
    ///
    /// # Errors
    ///
    /// Why the backend could not be asked.
    pub(crate) async fn load(&self) -> Result<(), Error> {
        let _one = self.loading.lock().await;
        if self.table.get().is_some() {
            return Ok(());
        }
        let (_, backend) = match &self.cluster {
            Some(cluster) => cluster.primary(None).await.map_err(Error::from)?,
            None => (String::new(), self.backend.clone()),
        };
        let mut link = Link::open(&backend, false, None, link::Tracking::Off).await?;
        let mut request = BytesMut::new();
        link::encode(&["COMMAND"], &mut request);
        link.write(&request).await?;
        let reply = tokio::time::timeout(self.backend.response_timeout(), link.read())
            .await
            .map_err(|_| Error::unavailable("no answer to COMMAND within --request-timeout"))??;
        link.close().await;
        let value = redis::parse_redis_value(&reply.bytes)
            .map_err(|error| Error::unavailable(format!("unreadable COMMAND reply: {error}")))?;
        let table = Table::from_reply(&value).map_err(Error::unavailable)?;
        tracing::info!(commands = table.len(), "read the backend's command table");
        let _ = self.table.set(Arc::new(table));
        Ok(())
    }

    /// How `args` (a request, name first) is served to `user`. The table must
    /// have been read.
    pub(crate) fn route(&self, args: &[Bytes], user: &User) -> Route {
        let table = self.table.get().expect("routed after the table was read");
        let name = args[0].to_ascii_lowercase();
        let name = std::str::from_utf8(&name).unwrap_or("");
        let Some(info) = table.get_lowercase(name.as_bytes()) else {
            // Unknown to Redis too: it says so.
            return Route::Shared {
                after: After::Nothing,
                slot: None,
            };
        };
        let info = info.resolve(args);
        let sub = args.get(1).map(|s| s.to_ascii_lowercase());
        let admin_sub = ADMIN_SUBCOMMANDS
            .iter()
            .any(|(c, s)| *c == name && sub.as_deref() == Some(s.as_bytes()));
        if !self.admin && (info.flags.admin || ADMIN.contains(&name) || admin_sub) {
            return Route::Refuse(format!(
                "ERR '{name}' is an admin command, which redis-proxy does not forward (see --forward-admin-commands)"
            ));
        }
        if let Some(refusal) = permissions::check(name, info, args, user) {
            return Route::Refuse(refusal);
        }
        let keys = info.keys(args);
        let slot = match self.slot_of(keys.as_deref().unwrap_or_default()) {
            Ok(slot) => slot,
            Err(crossslot) => return Route::Refuse(crossslot.into()),
        };
        if STATEFUL.contains(&name) || info.flags.blocking {
            return Route::Dedicate;
        }
        if self.cluster.is_some() && keys.as_ref().is_some_and(Vec::is_empty) {
            if name == "scan" {
                return Route::Scan;
            }
            if let Some(combine) = info.spread {
                return Route::Everywhere {
                    after: self.after(name, info, keys),
                    combine,
                };
            }
        }
        if CACHED.contains(&name)
            && args.len() >= 2
            && keys
                .as_ref()
                .is_some_and(|keys| keys.len() == 1 && keys[0] == args[1])
            && !(name == "exists" && args.len() != 2)
        {
            return Route::Cached;
        }
        Route::Shared {
            after: self.after(name, info, keys),
            slot,
        }
    }

    /// In cluster mode, the one slot of `keys` (`None` without keys); Redis
    /// Cluster's `CROSSSLOT` error when they span several. Always `None` with
    /// one Redis.
    pub(crate) fn slot_of(&self, keys: &[Bytes]) -> Result<Option<u16>, &'static str> {
        if self.cluster.is_none() {
            return Ok(None);
        }
        let mut slots = keys.iter().map(|key| crate::backend::slot(key));
        let Some(first) = slots.next() else {
            return Ok(None);
        };
        if slots.all(|slot| slot == first) {
            Ok(Some(first))
        } else {
            Err(CROSSSLOT)
        }
    }

    /// The slot of the keys `args` names (see [`Forwarding::slot_of`]).
    pub(crate) fn slot_of_args(&self, args: &[Bytes]) -> Result<Option<u16>, &'static str> {
        if self.cluster.is_none() {
            return Ok(None);
        }
        let keys = self.table.get().and_then(|table| {
            let info = table.get(&args[0])?;
            info.resolve(args).keys(args)
        });
        self.slot_of(keys.as_deref().unwrap_or_default())
    }

    /// The node commands for `slot` go to: the one Redis, or in a cluster the
    /// primary that serves the slot (any primary for `None`).
    pub(crate) fn node(&self, slot: Option<u16>) -> Result<(String, Manager), Error> {
        match &self.cluster {
            Some(cluster) => cluster.primary_now(slot).map_err(Error::from),
            None => Ok((String::new(), self.backend.clone())),
        }
    }

    /// What `args` does (see [`Class`]).
    pub(crate) fn class(&self, args: &[Bytes]) -> Class {
        let name = args[0].to_ascii_lowercase();
        let name = std::str::from_utf8(&name).unwrap_or("");
        if CACHED.contains(&name) {
            return Class::Lookup;
        }
        match self
            .table
            .get()
            .and_then(|table| table.get_lowercase(name.as_bytes()))
        {
            Some(info) if info.resolve(args).flags.readonly => Class::Neutral,
            Some(_) => Class::Write,
            None => Class::Neutral,
        }
    }

    /// What a forwarded command invalidates: nothing for a read, its keys for a
    /// write, everything when they cannot be known or it flushes.
    fn after(&self, name: &str, info: &commands::Info, keys: Option<Vec<Bytes>>) -> After {
        if FLUSHING.contains(&name) {
            return After::All;
        }
        if info.flags.readonly {
            return After::Nothing;
        }
        match keys {
            Some(keys) if keys.is_empty() => After::Nothing,
            Some(keys) => After::Keys(keys),
            None => After::All,
        }
    }

    /// What a write invalidates, for a command routed elsewhere than the shared
    /// path (inside a transaction).
    pub(crate) fn invalidates(&self, args: &[Bytes]) -> After {
        let Some(table) = self.table.get() else {
            return After::All;
        };
        let name = args[0].to_ascii_lowercase();
        let name = std::str::from_utf8(&name).unwrap_or("");
        match table.get_lowercase(name.as_bytes()) {
            Some(info) => {
                let info = info.resolve(args);
                self.after(name, info, info.keys(args))
            }
            None => After::Nothing,
        }
    }

    /// Invalidates what `after` says.
    pub(crate) fn apply(&self, after: &After) {
        match after {
            After::Nothing => {}
            After::Keys(keys) => self.cache.invalidate_everywhere(keys),
            After::All => self.cache.flush(),
        }
    }

    /// A push on a tracked connection: Redis's word on changed keys.
    pub(crate) fn invalidated(&self, frame: &Frame) {
        if let Some(sink) = &self.tracking {
            match frame.invalidation() {
                Some(Some(keys)) => sink(Invalidation::Keys(keys)),
                Some(None) => sink(Invalidation::All),
                None => {}
            }
        }
    }

    /// Sends `request` on the calling thread's shared connection for `resp3`
    /// to the node of `slot`; the receiver gets the reply.
    pub(crate) fn send(
        self: &Arc<Self>,
        resp3: bool,
        request: Bytes,
        db: Option<u16>,
        after: After,
        slot: Option<u16>,
    ) -> oneshot::Receiver<Result<Frame, Error>> {
        let (job, receiver) = Job::new(request, db, after);
        let sent = match &self.cluster {
            None => {
                self.send_job(resp3, "", || self.backend.clone(), job);
                Ok(())
            }
            Some(cluster) => cluster
                .with_primary(
                    slot,
                    |addr, manager, job| self.send_job(resp3, addr, || manager.clone(), job),
                    job,
                )
                .map_err(|(error, job)| (Error::from(error), job)),
        };
        if let Err((error, job)) = sent {
            let _ = job.reply.send(Err(error));
        }
        receiver
    }

    /// Sends `request` to every primary of the cluster (see [`Route::Everywhere`]);
    /// the receiver gets their replies combined.
    pub(crate) fn send_everywhere(
        self: &Arc<Self>,
        resp3: bool,
        request: Bytes,
        db: Option<u16>,
        after: After,
        combine: Combine,
    ) -> oneshot::Receiver<Result<Frame, Error>> {
        let (reply, receiver) = oneshot::channel();
        let replies: Vec<_> = self
            .primaries()
            .into_iter()
            .map(|(addr, manager)| {
                let (job, reply) = Job::new(request.clone(), db, after.clone());
                self.send_job(resp3, &addr, || manager, job);
                reply
            })
            .collect();
        tokio::spawn(async move {
            let mut frames = Vec::with_capacity(replies.len());
            for next in replies {
                match next.await {
                    Ok(Ok(frame)) => frames.push(frame),
                    Ok(Err(error)) => return drop(reply.send(Err(error))),
                    Err(_) => return drop(reply.send(Err(gone()))),
                }
            }
            let _ = reply.send(Ok(combine.apply(frames)));
        });
        receiver
    }

    /// `SCAN` in a cluster: `args` sent to the primary its cursor names, with
    /// that primary's own cursor, and the reply's cursor made to go on from
    /// there (see [`spread::scan_reply`]).
    pub(crate) fn scan(
        self: &Arc<Self>,
        resp3: bool,
        mut args: Vec<Bytes>,
        db: Option<u16>,
    ) -> oneshot::Receiver<Result<Frame, Error>> {
        if args.len() < 2 {
            // Redis's own word on a wrong number of arguments.
            let mut request = BytesMut::new();
            link::encode(&args, &mut request);
            return self.send(resp3, request.freeze(), db, After::Nothing, None);
        }
        let (reply, receiver) = oneshot::channel();
        let mut primaries = self.primaries();
        let nodes = primaries.len();
        let place = spread::split_cursor(&args[1])
            .filter(|&(node, _)| node < nodes && nodes <= spread::MAX_SCAN_NODES);
        let Some((node, cursor)) = place else {
            let _ = reply.send(Ok(spread::error("ERR invalid cursor")));
            return receiver;
        };
        args[1] = Bytes::from(cursor.to_string());
        let mut request = BytesMut::new();
        link::encode(&args, &mut request);
        let (addr, manager) = primaries.swap_remove(node);
        let (job, page) = Job::new(request.freeze(), db, After::Nothing);
        self.send_job(resp3, &addr, || manager, job);
        tokio::spawn(async move {
            let page = match page.await {
                Ok(page) => page.map(|page| spread::scan_reply(page, node, nodes)),
                Err(_) => Err(gone()),
            };
            let _ = reply.send(page);
        });
        receiver
    }

    /// Every primary, in address order (empty with one Redis).
    fn primaries(&self) -> Vec<(String, Manager)> {
        self.cluster
            .as_ref()
            .map(|cluster| cluster.primaries())
            .unwrap_or_default()
    }

    /// Hands `job` to the calling thread's forwarder for the node at `addr`
    /// (empty with one Redis), starting it, with a connection from `manager`,
    /// on first use.
    pub(crate) fn send_job(
        self: &Arc<Self>,
        resp3: bool,
        addr: &str,
        manager: impl FnOnce() -> Manager,
        job: Job,
    ) {
        let others = self.lanes.len() - 1;
        let lane = crate::worker::current().map_or(others, |worker| worker.min(others));
        let sender = {
            let mut forwarders = self.lanes[lane]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let senders = match forwarders.get_mut(addr) {
                Some(senders) => senders,
                None => forwarders.entry(addr.to_owned()).or_default(),
            };
            senders[usize::from(resp3)]
                .get_or_insert_with(|| {
                    let (sender, jobs) = mpsc::unbounded_channel();
                    let forwarder =
                        shared::run(self.clone(), addr.to_owned(), manager(), resp3, jobs);
                    tokio::spawn(forwarder);
                    sender
                })
                .clone()
        };
        if let Err(mpsc::error::SendError(job)) = sender.send(job) {
            let _ = job.reply.send(Err(gone()));
        }
    }

    /// A cached read's miss: its request, run on the shared path. An error
    /// reply is the client's answer but is not cached.
    pub(crate) async fn fetch(self: Arc<Self>, query: Query) -> Result<Option<Bytes>, Error> {
        let slot = self
            .slot_of(std::slice::from_ref(query.key()))
            .ok()
            .flatten();
        let reply = self.send(
            query.resp3(),
            query.request().clone(),
            query.db(),
            After::Nothing,
            slot,
        );
        let frame = reply.await.map_err(|_| gone())??;
        match frame.error_text() {
            Some(error) => Err(Error::Reply(error.into())),
            None => Ok(Some(frame.bytes)),
        }
    }
}

/// A forwarded request whose forwarder went away before answering.
fn gone() -> Error {
    Error::unavailable("the forwarding connection is gone")
}
