//! redis-proxy: a read-through caching proxy in front of one Redis.
//!
//! Clients read keys over HTTP (`GET /{key}`) and the Redis protocol (`GET key`);
//! both front-ends turn their request into a protocol-neutral [`Key`] and call one
//! shared Tower stack:
//!
//! ```text
//! bytes ─▶ front-end (http | resp) ─▶ Key ─▶ layers (trace, limits, timeout)
//!       ─▶ cache (exact LRU + TTL) ─▶ backend (bb8 pool, Redis GET)
//! ```
//!
//! The pieces are public so that another axum application can reuse them: build a
//! [`layers::Stack`] with [`layers::StackBuilder`] over a [`backend::RedisService`]
//! (or any `Service<Key, Response = Option<Bytes>>`), and mount [`http::router`].

#![warn(missing_docs)]

pub mod admin;
pub mod backend;
pub mod cache;
pub mod config;
pub mod http;
pub mod layers;
pub mod lookup;
pub mod metrics;
pub mod resp;
pub mod server;
mod task;

pub use config::Config;
pub use lookup::{Key, Lookup, Source};
pub use server::{Proxy, run};
