//! An existing axum application that mounts the proxy's HTTP front-end under
//! `/cache`, next to its own routes, reading through to a Redis.
//!
//! ```text
//! cargo run --example embed_in_axum -- [REDIS_URL] [LISTEN_ADDR]
//! curl localhost:3000/             # the application's own route
//! curl localhost:3000/cache/user:1 # GET user:1 through the cache (X-Cache: MISS, then HIT)
//! ```

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use redis_proxy::{Cache, RedisService, StackBuilder, http};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let redis_url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());

    // The proxy's pieces: a pooled Redis backend, a cache, and the layered stack.
    let backend = RedisService::builder(redis_url)
        .pool_size(8)
        .response_timeout(Duration::from_secs(2))
        .build()?;
    let stack = StackBuilder::new(backend)
        .client_limit(256)
        .parallel_limit(64)
        .timeout(Duration::from_secs(2))
        .cache(Cache::new(1000, Duration::from_secs(30)))
        .build();

    // The application: its own routes, and the cache under /cache.
    let app = Router::new()
        .route("/", get(|| async { "the application's own page\n" }))
        .nest_service("/cache", http::router(stack));

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
