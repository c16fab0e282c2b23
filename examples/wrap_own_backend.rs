//! The cache and the concurrency limits in front of a backend of the
//! application's own: any `tower::Service<Key, Response = Option<Bytes>>` works,
//! not only Redis. Here the "backend" is a slow computation that counts its calls.
//!
//! ```text
//! cargo run --example wrap_own_backend -- [LISTEN_ADDR]
//! curl localhost:3001/cache/42   # computed once (X-Cache: MISS) ...
//! curl localhost:3001/cache/42   # ... then served from the cache (X-Cache: HIT)
//! curl localhost:3001/calls      # how often the backend really ran
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use redis_proxy::{Cache, Key, StackBuilder, http};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3001".into());
    let calls = Arc::new(AtomicU64::new(0));

    // The application's own backend: slow, and absent for keys that are not numbers.
    let counter = calls.clone();
    let backend = tower::service_fn(move |key: Key| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let value = std::str::from_utf8(&key)
                .ok()
                .and_then(|k| k.parse::<u64>().ok())
                .map(|n| Bytes::from(format!("{n} squared is {}", n * n)));
            Ok::<_, Infallible>(value)
        }
    });

    let stack = StackBuilder::new(backend)
        .client_limit(128)
        .parallel_limit(4)
        .timeout(Duration::from_secs(1))
        .cache(Cache::new(100, Duration::from_secs(60)))
        .build();

    let app = Router::new()
        .nest_service("/cache", http::router(stack))
        .route(
            "/calls",
            get(move || async move { format!("{}\n", calls.load(Ordering::SeqCst)) }),
        );

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
