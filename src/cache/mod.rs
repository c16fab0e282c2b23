//! The read-through cache: a shared [`Cache`] handle and the Tower
//! [`CacheLayer`]/[`CacheService`] that serves hits from it and sends misses on.
//!
//! A hit is answered without touching the inner service; its future is ready at
//! once and allocates nothing. A miss calls the inner service (normally
//! [`crate::backend::RedisService`]) and stores a found value before answering.
//! Absence is not cached: a key missing in Redis is asked for again next time.

mod store;

use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::lookup::{Key, Lookup, Source};

pub use store::{Stats, Store};

/// A cheap, cloneable handle to one shared LRU+TTL store.
///
/// The lock guards only the O(1) store operations and is never held across an
/// `.await`.
#[derive(Debug, Clone)]
pub struct Cache {
    store: Arc<Mutex<Store>>,
}

impl Cache {
    /// An empty cache of `capacity` keys whose entries live for `ttl`.
    pub fn new(capacity: NonZeroUsize, ttl: Duration) -> Self {
        Self {
            store: Arc::new(Mutex::new(Store::new(capacity, ttl))),
        }
    }

    /// The live value of `key`, now the most recently used.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        let now = Instant::now();
        self.lock().get(key, now)
    }

    /// Stores `value` under `key` for one TTL from now.
    pub fn insert(&self, key: Key, value: Bytes) {
        let now = Instant::now();
        self.lock().insert(key, value, now);
    }

    /// Entries stored, counting expired ones not yet reclaimed.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Hits, misses, evictions and expirations so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats()
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // The store's invariants hold between operations, and none of them can
        // panic halfway, so a poisoned lock is still a consistent store.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Wraps a backend service with a read-through [`Cache`].
#[derive(Debug, Clone)]
pub struct CacheLayer {
    cache: Cache,
}

impl CacheLayer {
    /// A layer whose services all share `cache`.
    pub fn new(cache: Cache) -> Self {
        Self { cache }
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            cache: self.cache.clone(),
        }
    }
}

/// Serves a key from the cache, or from the inner service on a miss.
///
/// The inner service answers `Option<Bytes>`: the value, or `None` when the key
/// does not exist.
#[derive(Debug, Clone)]
pub struct CacheService<S> {
    inner: S,
    cache: Cache,
}

impl<S> CacheService<S> {
    /// Wraps `inner` with `cache`.
    pub fn new(inner: S, cache: Cache) -> Self {
        Self { inner, cache }
    }

    /// The cache this service reads and fills.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

impl<S> Service<Key> for CacheService<S>
where
    S: Service<Key, Response = Option<Bytes>>,
{
    type Response = Lookup;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, key: Key) -> Self::Future {
        if let Some(value) = self.cache.get(&key) {
            return ResponseFuture::hit(value);
        }
        ResponseFuture::miss(self.inner.call(key.clone()), self.cache.clone(), key)
    }
}

pin_project! {
    /// The future of [`CacheService`]: ready at once on a hit, the backend fetch
    /// followed by an insert on a miss.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

impl<F> ResponseFuture<F> {
    fn hit(value: Bytes) -> Self {
        Self {
            state: State::Hit { value: Some(value) },
        }
    }

    fn miss(fetch: F, cache: Cache, key: Key) -> Self {
        Self {
            state: State::Miss {
                fetch,
                cache,
                key: Some(key),
            },
        }
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Hit { value: Option<Bytes> },
        Miss {
            #[pin]
            fetch: F,
            cache: Cache,
            key: Option<Key>,
        },
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Option<Bytes>, E>>,
{
    type Output = Result<Lookup, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Hit { value } => Poll::Ready(Ok(Lookup {
                value: value.take(),
                source: Source::Cache,
            })),
            StateProj::Miss { fetch, cache, key } => {
                let value = ready!(fetch.poll(cx))?;
                if let (Some(value), Some(key)) = (&value, key.take()) {
                    cache.insert(key, value.clone());
                }
                Poll::Ready(Ok(Lookup {
                    value,
                    source: Source::Backend,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    /// An in-process stand-in for Redis that counts how often it is asked.
    fn backend(
        calls: Arc<AtomicUsize>,
    ) -> impl Service<Key, Response = Option<Bytes>, Error = Infallible, Future: Send> + Clone {
        tower::service_fn(move |key: Key| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, Infallible>(match &key[..] {
                    b"missing" => None,
                    _ => Some(Bytes::from(format!("v{n}"))),
                })
            }
        })
    }

    fn service(
        ttl: Duration,
    ) -> (
        CacheService<impl Service<Key, Response = Option<Bytes>, Error = Infallible> + Clone>,
        Arc<AtomicUsize>,
    ) {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = Cache::new(NonZeroUsize::new(4).unwrap(), ttl);
        (CacheService::new(backend(calls.clone()), cache), calls)
    }

    async fn get<S>(svc: &mut S, key: &'static str) -> Lookup
    where
        S: Service<Key, Response = Lookup, Error = Infallible>,
    {
        svc.ready()
            .await
            .unwrap()
            .call(Bytes::from(key))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn second_read_is_a_hit_that_skips_the_backend() {
        let (mut svc, calls) = service(Duration::from_secs(60));
        let first = get(&mut svc, "k").await;
        let second = get(&mut svc, "k").await;
        assert_eq!(first.source, Source::Backend);
        assert_eq!(second.source, Source::Cache);
        assert_eq!(second.value, Some(Bytes::from("v0")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn absence_is_not_cached() {
        let (mut svc, calls) = service(Duration::from_secs(60));
        assert_eq!(get(&mut svc, "missing").await.value, None);
        assert_eq!(get(&mut svc, "missing").await.source, Source::Backend);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entry_is_refetched() {
        let (mut svc, calls) = service(Duration::from_millis(500));
        get(&mut svc, "k").await;
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(get(&mut svc, "k").await.source, Source::Cache);
        tokio::time::advance(Duration::from_millis(1)).await;
        let after = get(&mut svc, "k").await;
        assert_eq!(after.source, Source::Backend);
        assert_eq!(after.value, Some(Bytes::from("v1")));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
