//! The protocol-neutral request and response that every front-end speaks.
//!
//! HTTP and RESP both turn their bytes into a [`Key`] and call the same service
//! stack, which answers with a [`Lookup`]; neither the stack nor the cache knows
//! which protocol asked.

use std::time::Duration;

use bytes::Bytes;

/// A Redis key: any bytes, shared without copying.
pub type Key = Bytes;

/// The answer to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The value, or `None` when the key does not exist in Redis.
    pub value: Option<Bytes>,
    /// Where the answer came from.
    pub source: Source,
    /// How much longer the cached entry stays fresh (the whole TTL for a value
    /// fetched just now).
    pub fresh_for: Duration,
    /// How long ago the value was fetched from Redis.
    pub age: Duration,
}

/// Whether a lookup was served from the local cache or fetched from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A live entry of the local cache (a hit).
    Cache,
    /// The backing Redis (a miss).
    Backend,
}

impl Source {
    /// `"HIT"` or `"MISS"`, as sent in the `X-Cache` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "HIT",
            Source::Backend => "MISS",
        }
    }
}
