//! Transparent mode (`--forward-commands`): every command the proxy does not
//! answer itself goes to the backing Redis and its reply comes back as Redis
//! sent it, while reads of a documented set are cached and dropped when their
//! key changes.
//!
//! ```text
//! request ─▶ route (COMMAND's flags, key specifications and tips; the user's permissions)
//!   ├─ GET, MGET, cached reads ─▶ the stack and cache as a Query (a miss runs the request)
//!   ├─ stateless ─▶ the stack as a Command ─▶ the node of its slot, on the worker's lane;
//!   │               what it may write is dropped from the cache before its reply is relayed
//!   ├─ keyless, in a cluster: DBSIZE, KEYS, FLUSHALL, SCRIPT ─▶ every primary, replies combined
//!   │                         SCAN ─▶ the primaries one after another
//!   ├─ MULTI, WATCH, blocking, SUBSCRIBE ─▶ a connection of the client's own (the RESP session)
//!   └─ admin commands ─▶ refused (unless --forward-admin-commands)
//! ```
//!
//! This module decides; the connection layer (`backend`) sends, and the cache
//! invalidates. It holds the command table, read once from the backend.

mod commands;
mod permissions;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::auth::User;
use crate::backend::{Backend, Outgoing};
use crate::cache::Cache;
use crate::limit::Slots;
use crate::lookup::{Command, Error, Target, Writes};
use crate::protocol::{Name, Value, encoded};

pub(crate) use commands::Table;

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
#[derive(Debug)]
pub(crate) enum Route {
    /// Refused with this error, never sent.
    Refuse(String),
    /// Starts a state: served on a dedicated connection.
    Dedicate,
    /// A cached read of the key it names.
    Cached,
    /// Sent as it is, there, on the shared path; its reply invalidates
    /// what it may write.
    Forward {
        target: Target,
        writes: Writes,
        read_only: bool,
    },
}

/// Redis Cluster's reply to keys of several slots in one command.
const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";
/// The same for a sharded pool's servers, where a command that cannot be
/// split (one that is not `DEL`, `MSET`, …) names keys of several.
const CROSSSERVER: &str = "CROSSSLOT Keys in request are on different servers of the pool, and this command cannot be split";

/// Everything transparent mode shares: the backend, the command table, the
/// cache that dedicated connections' writes invalidate, and the bound on
/// dedicated connections.
pub(crate) struct Forwarding {
    backend: Backend,
    cache: Cache,
    /// Whether admin commands are forwarded.
    admin: bool,
    table: OnceLock<Arc<Table>>,
    /// The backend's `redis_version`, read with the table.
    version: OnceLock<String>,
    loading: tokio::sync::Mutex<()>,
    /// Connections dedicated to one client.
    pub(crate) dedicated: Slots,
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
    /// Transparent mode over `backend`, invalidating `cache`: admin commands
    /// forwarded when `admin`, at most `max_dedicated` dedicated connections.
    pub(crate) fn new(backend: Backend, cache: Cache, admin: bool, max_dedicated: usize) -> Self {
        Self {
            backend,
            cache,
            admin,
            table: OnceLock::new(),
            version: OnceLock::new(),
            loading: tokio::sync::Mutex::new(()),
            dedicated: Slots::new(max_dedicated),
        }
    }

    /// Whether admin commands are forwarded (and the proxy's own admin
    /// commands, `CLIENT LIST` and `KILL`, answered).
    pub(crate) fn admin(&self) -> bool {
        self.admin
    }

    /// The connection layer commands go through.
    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
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
        let asked = Outgoing::read(encoded(&["COMMAND"]), None, false);
        let reply = self.backend.send(None, asked).await?;
        let value = Value::of(&reply)
            .map_err(|error| Error::unavailable(format!("unreadable COMMAND reply: {error}")))?;
        let table = Table::from_reply(&value).map_err(Error::unavailable)?;
        tracing::info!(commands = table.len(), "read the backend's command table");
        // What `HELLO` reports, as Redis would: best effort.
        let asked = Outgoing::read(encoded(&["INFO", "server"]), None, false);
        if let Ok(reply) = self.backend.send(None, asked).await
            && let Some(Some(text)) = reply.bulk()
            && let Some(version) = (String::from_utf8_lossy(&text).lines())
                .find_map(|line| line.strip_prefix("redis_version:"))
        {
            let _ = self.version.set(version.trim().to_owned());
        }
        let _ = self.table.set(Arc::new(table));
        Ok(())
    }

    /// The backend's version, once read.
    pub(crate) fn version(&self) -> Option<&str> {
        self.version.get().map(String::as_str)
    }

    /// How `args` (a request, name first) is served to `user`. The table must
    /// have been read.
    pub(crate) fn route(&self, args: &[Bytes], user: &User) -> Route {
        let table = self.table.get().expect("routed after the table was read");
        let lower = Name::lower(&args[0]);
        let name = lower.as_str();
        let Some(info) = table.get_lowercase(name.as_bytes()) else {
            // Unknown to Redis too: it says so.
            return Route::Forward {
                target: Target::Slot(None),
                writes: Writes::Nothing,
                read_only: false,
            };
        };
        let info = info.resolve(args);
        let admin_sub = ADMIN_SUBCOMMANDS.iter().any(|(c, s)| {
            *c == name
                && args
                    .get(1)
                    .is_some_and(|sub| sub.eq_ignore_ascii_case(s.as_bytes()))
        });
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
            Err(crossslot) => {
                let split = (info.split.filter(|_| self.backend.splits_commands()))
                    .and_then(|how| Some((self.split(args, keys.as_deref()?)?, how)));
                return match split {
                    Some((parts, how)) => Route::Forward {
                        target: Target::Split(parts, how),
                        writes: writes(name, info, keys),
                        read_only: info.flags.readonly,
                    },
                    None => Route::Refuse(crossslot.into()),
                };
            }
        };
        if STATEFUL.contains(&name) || info.flags.blocking {
            return Route::Dedicate;
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
        let read_only = info.flags.readonly;
        let writes = writes(name, info, keys.clone());
        let target = match (&keys, info.spread) {
            (Some(keys), _) if !keys.is_empty() || !self.backend.spreads_keys() => {
                Target::Slot(slot)
            }
            (Some(_), _) if name == "scan" => Target::Scan(args.to_vec()),
            (Some(_), Some(combine)) => Target::Everywhere(combine),
            _ => Target::Slot(slot),
        };
        Route::Forward {
            target,
            writes,
            read_only,
        }
    }

    /// A command for the stack: `args` (the name first) as Redis is sent
    /// them, in `db` and `resp3` or RESP2, sent and invalidating as `route`
    /// says.
    pub(crate) fn command(
        args: &[Bytes],
        db: Option<u16>,
        resp3: bool,
        target: Target,
        writes: Writes,
        read_only: bool,
    ) -> Command {
        Command {
            name: args[0].clone(),
            request: encoded(args),
            db,
            resp3,
            target,
            writes,
            read_only,
        }
    }

    /// In a topology that spreads keys, the one slot of `keys` (`None`
    /// without keys); Redis Cluster's `CROSSSLOT` error when they span
    /// several. Always `None` with one Redis.
    pub(crate) fn slot_of(&self, keys: &[Bytes]) -> Result<Option<u16>, &'static str> {
        let mut slots = keys.iter().map(|key| self.backend.slot(key));
        let Some(first) = slots.next().flatten() else {
            return Ok(None);
        };
        if slots.all(|slot| slot == Some(first)) {
            Ok(Some(first))
        } else if self.backend.splits_commands() {
            Err(CROSSSERVER)
        } else {
            Err(CROSSSLOT)
        }
    }

    /// `args` as one request per slot of `keys`, for a command whose
    /// arguments are its keys each followed by the same number of others
    /// (`DEL k1 k2`, `MSET k1 v1 k2 v2`): each key goes with those after it,
    /// the parts in the order their first keys come. `None` for any other
    /// shape.
    fn split(&self, args: &[Bytes], keys: &[Bytes]) -> Option<Vec<(Option<u16>, Bytes)>> {
        let rest = &args[1..];
        if keys.is_empty() || !rest.len().is_multiple_of(keys.len()) {
            return None;
        }
        let step = rest.len() / keys.len();
        let mut parts: Vec<(Option<u16>, Vec<&Bytes>)> = Vec::new();
        for (group, key) in rest.chunks(step).zip(keys) {
            if group[0] != key {
                return None;
            }
            let slot = self.backend.slot(key);
            match parts.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, part)) => part.extend(group),
                None => parts.push((slot, std::iter::once(&args[0]).chain(group).collect())),
            }
        }
        Some(
            parts
                .into_iter()
                .map(|(slot, part)| (slot, encoded(&part)))
                .collect(),
        )
    }

    /// The keys `args` names, when the table says (`None`: they cannot be
    /// known).
    pub(crate) fn keys(&self, args: &[Bytes]) -> Option<Vec<Bytes>> {
        let info = self.table.get()?.get(&args[0])?;
        info.resolve(args).keys(args)
    }

    /// The slot of the keys `args` names (see [`Forwarding::slot_of`]).
    pub(crate) fn slot_of_args(&self, args: &[Bytes]) -> Result<Option<u16>, &'static str> {
        if !self.backend.spreads_keys() {
            return Ok(None);
        }
        let keys = self.keys(args);
        self.slot_of(keys.as_deref().unwrap_or_default())
    }

    /// What `args` does (see [`Class`]).
    pub(crate) fn class(&self, args: &[Bytes]) -> Class {
        let lower = Name::lower(&args[0]);
        let name = lower.as_str();
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

    /// What a write invalidates, for a command routed elsewhere than the shared
    /// path (on a dedicated connection).
    pub(crate) fn invalidates(&self, args: &[Bytes]) -> Writes {
        let Some(table) = self.table.get() else {
            return Writes::All;
        };
        let lower = Name::lower(&args[0]);
        let name = lower.as_str();
        match table.get_lowercase(name.as_bytes()) {
            Some(info) => {
                let info = info.resolve(args);
                writes(name, info, info.keys(args))
            }
            None => Writes::Nothing,
        }
    }

    /// Drops from the cache what `writes` says.
    pub(crate) fn apply(&self, writes: &Writes) {
        match writes {
            Writes::Nothing => {}
            Writes::Keys(keys) => self.cache.invalidate_everywhere(keys),
            Writes::All => self.cache.flush(),
        }
    }
}

/// What a forwarded command invalidates: nothing for a read, its keys for a
/// write, everything when they cannot be known or it flushes.
fn writes(name: &str, info: &commands::Info, keys: Option<Vec<Bytes>>) -> Writes {
    if FLUSHING.contains(&name) {
        return Writes::All;
    }
    if info.flags.readonly {
        return Writes::Nothing;
    }
    match keys {
        Some(keys) if keys.is_empty() => Writes::Nothing,
        Some(keys) => Writes::Keys(keys),
        None => Writes::All,
    }
}
