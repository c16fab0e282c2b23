//! An existing axum application that mounts the proxy's HTTP front-end under
//! `/cache`, next to its own routes, reading through to a Redis.
//!
//! ```text
//! cargo run --example embed_in_axum -- [REDIS_URL] [LISTEN_ADDR]
//! curl localhost:3000/             # the application's own route
//! curl localhost:3000/cache/user:1 # GET user:1 through the cache (X-Cache: MISS, then HIT)
//! ```

use std::num::NonZeroUsize;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use redis_proxy::backend::{self, RedisService};
use redis_proxy::cache::Cache;
use redis_proxy::config::RedisUrl;
use redis_proxy::layers::StackBuilder;
use redis_proxy::metrics::Slots;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let redis_url = RedisUrl::parse(
        &args
            .next()
            .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
    )?;
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());

    // The proxy's pieces: a pooled Redis backend, a cache, and the layered stack.
    let backend = RedisService::new(
        &redis_url,
        &backend::Options {
            pool_size: 8,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            tracking: None,
        },
    )?;
    let stack = StackBuilder {
        clients: Slots::new(256),
        max_parallel: 64,
        request_timeout: Duration::from_secs(2),
        cache: Cache::new(
            NonZeroUsize::new(1000).expect("non-zero"),
            Duration::from_secs(30),
        ),
    }
    .build(backend);

    // The application: its own routes, and the cache under /cache.
    let app = Router::new()
        .route("/", get(|| async { "the application's own page\n" }))
        .nest_service("/cache", redis_proxy::http::router(stack));

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
