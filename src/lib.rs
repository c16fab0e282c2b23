//! redis-proxy: a read-through caching proxy in front of Redis.
//!
//! Clients read keys over HTTP (`GET /{key}`) and the Redis protocol (`GET key`);
//! both front-ends turn their request into a protocol-neutral [`Key`] and call one
//! shared Tower stack:
//!
//! ```text
//! listener ─▶ connection ─▶ front-end (http | resp) ─▶ Key ─▶ Stack (trace, limits, timeout)
//!          ─▶ cache (exact LRU or S3-FIFO, TTLs per key pattern) ─▶ backend (RedisService: lanes, GET)
//! ```
//!
//! The pieces are public so that another axum application can reuse them: build
//! a [`Stack`] with [`StackBuilder`] over a [`RedisService`] (or any
//! `Service<Key, Response = Option<Bytes>>` whose errors map into [`Error`]), and
//! mount [`http::router`]:
//!
//! ```no_run
//! use std::time::Duration;
//! use redis_proxy::{Cache, RedisService, StackBuilder, http};
//!
//! # fn main() -> Result<(), redis_proxy::Error> {
//! let backend = RedisService::builder("redis://127.0.0.1:6379").build()?;
//! let stack = StackBuilder::new(backend)
//!     .client_limit(256)
//!     .timeout(Duration::from_secs(2))
//!     .cache(Cache::new(1000, Duration::from_secs(30)))
//!     .build();
//! let app: axum::Router = axum::Router::new().nest_service("/cache", http::router(stack));
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! The layers themselves are in [`layers`]; [`Proxy`] and [`run`] are the whole
//! proxy, as the `redis-proxy` binary runs it.

#![warn(missing_docs)]

mod admin;
mod auth;
mod backend;
mod cache;
pub mod config;
mod conn;
mod forward;
pub mod http;
pub mod layers;
mod limit;
mod lookup;
mod metrics;
mod net;
pub mod protocol;
mod resp;
mod server;
#[cfg(test)]
mod testing;
mod throttle;
mod tls;
mod worker;

pub use backend::{Invalidation, InvalidationSink, RedisService, RedisServiceBuilder};
pub use cache::{
    Cache, CacheBuilder, CachePolicy, Changed as CacheChanged, Stats as CacheStats,
    Watcher as CacheWatcher,
};
pub use config::Config;
pub use layers::{Stack, StackBuilder};
pub use lookup::{Cause, Error, Key, Lookup, Source};
pub use metrics::{BACKEND_DURATION, BACKEND_DURATION_BUCKETS};
pub use server::{Error as ServeError, Proxy, Reloaded, Reloader, SetLogLevel, TlsReloader, run};
