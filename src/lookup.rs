//! The protocol-neutral request, response and error that every front-end and
//! every backend speaks.
//!
//! HTTP and RESP both turn their bytes into a [`Key`] and call the same service
//! stack, which answers with a [`Lookup`] or an [`Error`]; neither the stack nor
//! the cache knows which protocol asked, nor which backend answers. A backend
//! maps its own errors into [`Error`] at its boundary (`From<its error> for
//! Error`), and each front-end maps [`Error`] to a status code or an error reply in
//! one place, so a new backend needs no change in the layers or the front-ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// A Redis key: its name (any bytes, shared without copying) and the database it
/// lives in.
///
/// The database is `None` for the backend's own (the one its URL names), which is
/// what HTTP reads and what a RESP connection reads until it `SELECT`s another;
/// the cache keeps the same name in two databases apart. A key dereferences to its
/// name's bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key {
    name: Bytes,
    db: Option<u16>,
}

impl Key {
    /// The key `name` in the backend's own database.
    pub fn new(name: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            db: None,
        }
    }

    /// The key `name` in database `db` (`None`: the backend's own).
    pub fn in_db(db: Option<u16>, name: impl Into<Bytes>) -> Self {
        Self {
            name: name.into(),
            db,
        }
    }

    /// The key's name.
    pub fn name(&self) -> &Bytes {
        &self.name
    }

    /// The database, when not the backend's own.
    pub fn db(&self) -> Option<u16> {
        self.db
    }
}

/// A cached read other than `GET` (transparent mode): a whole read request,
/// its reply cached as Redis sent it.
///
/// The cache keeps it apart from every `GET` key and from the same request in
/// another database or protocol, and with the entries of the key it reads, so
/// that a change of that key drops it. Neither the stack nor the cache looks
/// inside the request: it is what the backend is sent.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Query {
    db: Option<u16>,
    resp3: bool,
    key: Bytes,
    request: Bytes,
}

impl Query {
    /// `request` (encoded as the backend is sent it) reads `key` in database
    /// `db` (`None`: the backend's own); its reply is wanted in RESP3 when
    /// `resp3`, else RESP2.
    pub fn new(db: Option<u16>, resp3: bool, key: Bytes, request: Bytes) -> Self {
        Self {
            db,
            resp3,
            key,
            request,
        }
    }

    /// The database it reads (`None`: the backend's own).
    pub fn db(&self) -> Option<u16> {
        self.db
    }

    /// Whether its reply is wanted in RESP3.
    pub fn resp3(&self) -> bool {
        self.resp3
    }

    /// The key it reads.
    pub fn key(&self) -> &Bytes {
        &self.key
    }

    /// The request, as the backend is sent it.
    pub fn request(&self) -> &Bytes {
        &self.request
    }
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("db", &self.db)
            .field("key", &self.key)
            .field("resp3", &self.resp3)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.name
    }
}

impl From<Bytes> for Key {
    fn from(name: Bytes) -> Self {
        Self::new(name)
    }
}

impl From<&'static str> for Key {
    fn from(name: &'static str) -> Self {
        Self::new(Bytes::from_static(name.as_bytes()))
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.db {
            Some(db) => write!(f, "Key({db}, {:?})", self.name),
            None => write!(f, "Key({:?})", self.name),
        }
    }
}

/// Transparent mode: a command sent to Redis as the client sent it, its reply
/// relayed as Redis sent it.
///
/// It says where it goes and what it may change; the cache drops what it may
/// change once its outcome is known, or could be anything (it failed, timed
/// out, or was abandoned).
#[derive(Debug, Clone)]
pub(crate) struct Command {
    /// The command's name, as the client wrote it, for traces.
    pub(crate) name: Bytes,
    /// The request, as Redis is sent it.
    pub(crate) request: Bytes,
    /// The database it runs in (`None`: the backend's own).
    pub(crate) db: Option<u16>,
    /// Whether its reply is wanted in RESP3.
    pub(crate) resp3: bool,
    pub(crate) target: Target,
    pub(crate) writes: Writes,
    /// Redis flags it `readonly`: safe to send again should its connection
    /// break before the reply.
    pub(crate) read_only: bool,
}

/// Where a [`Command`] goes.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// To the node of its keys' slot (`None`: any node; with one Redis, it).
    Slot(Option<u16>),
    /// To every primary of a cluster, the replies combined.
    Everywhere(crate::protocol::Combine),
    /// `SCAN` over a cluster's primaries, its arguments to be given the
    /// cursor of the primary it names.
    Scan(Vec<Bytes>),
    /// Split by the servers of its keys (a sharded pool's `DEL`, `MSET`):
    /// each part (encoded) to the node of its slot, the replies combined.
    Split(Vec<(Option<u16>, Bytes)>, crate::protocol::Combine),
}

/// What a command may change, to drop from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Writes {
    /// Nothing: a read.
    Nothing,
    /// These keys, in every database.
    Keys(Vec<Bytes>),
    /// Anything: its keys cannot be known, or it changes every key
    /// (`FLUSHALL`, `FLUSHDB`, `SWAPDB`).
    All,
}

/// What a front-end asks the stack for, one at a time.
#[derive(Debug, Clone)]
pub(crate) enum Request {
    /// The value of a key (`GET`; each key of an `MGET`).
    Get(Key),
    /// Transparent mode: a cached read other than `GET`.
    Query(Query),
    /// Transparent mode: a command forwarded to Redis.
    Command(Command),
}

impl Request {
    /// What the request is about, for traces: the key it reads, or the
    /// command's name.
    pub(crate) fn key_name(&self) -> &[u8] {
        match self {
            Request::Get(key) => key.name(),
            Request::Query(query) => query.key(),
            Request::Command(command) => &command.name,
        }
    }
}

/// The stack's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A key's value, or a cached read's reply (as Redis sent it).
    Lookup(Lookup),
    /// A forwarded command's reply, as Redis sent it.
    Reply(Bytes),
}

/// The answer to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The value, or `None` when the key does not exist in the backend.
    pub value: Option<Bytes>,
    /// Where the answer came from.
    pub source: Source,
    /// How much longer the cached entry stays fresh (the whole TTL for a value
    /// fetched just now).
    pub fresh_for: Duration,
    /// How long ago the value was fetched from the backend.
    pub age: Duration,
    /// The value's digest when the cache keeps one with it (see [`Lookup::digest`]).
    pub(crate) digest: Option<u64>,
}

impl Lookup {
    /// A 64-bit hash of the value, `None` without a value: a fixed-seed hash, so
    /// equal bytes give the same digest in every process of a given build, and
    /// different bytes a different one but for a 2^-64 chance. The cache
    /// hashes a large value once, when it stores it, and keeps the digest beside
    /// it, so that a front-end that sends one with every read (HTTP's `ETag`)
    /// does not hash the value again on every read; a small one is hashed here.
    pub fn digest(&self) -> Option<u64> {
        let value = self.value.as_ref()?;
        Some(self.digest.unwrap_or_else(|| digest(value)))
    }
}

/// The digest of `value` (see [`Lookup::digest`]).
pub(crate) fn digest(value: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::quality::FixedState::with_seed(0).hash_one(value)
}

/// Whether a lookup was served from the local cache or fetched from the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// A fresh entry of the local cache (a hit).
    Cache,
    /// The backend (a miss).
    Backend,
    /// An entry of the local cache past its TTL, within a stale window: the
    /// backend failed (`--cache-stale-if-error`), or is being asked again in
    /// the background (`--cache-stale-while-revalidate`).
    Stale,
}

impl Source {
    /// `"HIT"`, `"MISS"` or `"STALE"`, as sent in the `X-Cache` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "HIT",
            Source::Backend => "MISS",
            Source::Stale => "STALE",
        }
    }
}

/// The cause of an error, shared by every copy of it (concurrent misses for one
/// key all receive the error of its one fetch).
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Why the stack did not answer a key with a value.
///
/// Clients see the `Display` text (short and stable); logs get the cause chain
/// through [`std::error::Error::source`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// More requests are in flight than the client limit allows; this one was
    /// refused without running.
    #[error("overloaded: too many requests in flight")]
    Overloaded,
    /// The request was not answered within the request timeout.
    #[error("timed out")]
    Timeout,
    /// The backend answered this key with an error of its own, such as Redis's
    /// `WRONGTYPE Operation against a key holding the wrong kind of value`: the
    /// request, not the backend, is at fault. The text is the backend's, code
    /// first, and is passed to RESP clients as it is.
    #[error("{0}")]
    Reply(Arc<str>),
    /// The backend could not answer: unreachable, refusing connections, or
    /// failing mid-request.
    #[error("{message}")]
    Unavailable {
        /// What a client is told, e.g. `redis unavailable: connection refused`.
        message: Arc<str>,
        /// What went wrong underneath, for the logs.
        #[source]
        cause: Option<Cause>,
    },
    /// Something that should not happen: a bug, or a backend that panicked.
    #[error("internal error: {0}")]
    Internal(#[source] Cause),
}

impl Error {
    /// An [`Error::Unavailable`] with `message` and no further cause.
    pub fn unavailable(message: impl Into<Arc<str>>) -> Self {
        Error::Unavailable {
            message: message.into(),
            cause: None,
        }
    }

    /// An [`Error::Internal`] caused by `error`.
    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Internal(Arc::from(error.into()))
    }

    /// Whether the backend refused because the key holds a value that is not a
    /// string (Redis's `WRONGTYPE`).
    pub fn is_wrong_type(&self) -> bool {
        matches!(self, Error::Reply(reply) if reply.starts_with("WRONGTYPE"))
    }

    /// Whether the backend, not the request, failed: it could not be reached,
    /// did not answer in time, or said it cannot serve now (`LOADING`,
    /// `CLUSTERDOWN`, `MASTERDOWN`, `TRYAGAIN`, `BUSY`). What a stale answer
    /// may stand in for (`--cache-stale-if-error`).
    pub fn is_backend_failure(&self) -> bool {
        const NOT_NOW: [&str; 5] = ["LOADING", "CLUSTERDOWN", "MASTERDOWN", "TRYAGAIN", "BUSY"];
        match self {
            Error::Timeout | Error::Unavailable { .. } | Error::Internal(_) => true,
            Error::Reply(reply) => NOT_NOW.iter().any(|code| {
                reply.starts_with(code)
                    && reply.as_bytes().get(code.len()).is_none_or(|&b| b == b' ')
            }),
            Error::Overloaded => false,
        }
    }
}

/// A backend that cannot fail.
impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_see_the_message_and_logs_the_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = Error::Unavailable {
            message: "redis unavailable: connection refused".into(),
            cause: Some(Arc::new(io)),
        };
        assert_eq!(error.to_string(), "redis unavailable: connection refused");
        let cause = std::error::Error::source(&error).expect("a cause");
        assert_eq!(cause.to_string(), "refused");
    }

    #[test]
    fn wrong_type_is_recognised_by_its_code() {
        assert!(Error::Reply("WRONGTYPE Operation against a key".into()).is_wrong_type());
        assert!(!Error::Reply("ERR something".into()).is_wrong_type());
        assert!(!Error::Timeout.is_wrong_type());
    }
}
