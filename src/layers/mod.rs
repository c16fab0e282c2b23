//! The request path as Tower layers, and the builder that stacks them.
//!
//! ```text
//!  HTTP / RESP front-end ──key──▶ Trace
//!                                  └▶ ClientLimit(client_limit)         refuse beyond the limit (503)
//!                                      └▶ Timeout(timeout)               bound the whole request, queue included (504)
//!                                          └▶ ParallelLimit(parallel)   run N at once, queue the rest
//!                                              └▶ CacheService           hit: answer; miss: ↓
//!                                                  └▶ backend            e.g. RedisService: GET on a pooled connection
//! ```
//!
//! Every limit is global: the stack is built once, and its clones share their
//! slots and semaphores, whatever route, connection or protocol calls them. Only
//! the client limit refuses; everything beneath it is always ready, so the
//! parallel limit queues instead of shedding (see [`ParallelLimit`]).
//!
//! Every layer speaks the protocol-neutral [`Error`]: the backend's errors are
//! mapped into it once, by the cache, through the backend's `Into<Error>`.
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use redis_proxy::{Cache, Key, StackBuilder};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Any backend: a service from a key to its value, if any.
//! let backend = tower::service_fn(|key: Key| async move {
//!     let name = String::from_utf8_lossy(&key).into_owned();
//!     Ok::<_, std::convert::Infallible>(Some(Bytes::from(format!("value of {name}"))))
//! });
//! let stack = StackBuilder::new(backend)
//!     .client_limit(256)
//!     .parallel_limit(16)
//!     .timeout(Duration::from_secs(2))
//!     .cache(Cache::new(1000, Duration::from_secs(30)))
//!     .build();
//! let lookup = stack.clone().oneshot(Key::from("user:1")).await.unwrap();
//! assert_eq!(lookup.value, Some(Bytes::from("value of user:1")));
//! # }
//! ```

mod client_limit;
mod parallel;
mod timeout;
mod trace;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::cache::Cache;
use crate::lookup::{Answer, Command, Error, Key, Lookup, Query, Request};

pub use crate::cache::{CacheLayer, CacheService, ResponseFuture as CacheResponseFuture};
pub use client_limit::{ClientLimit, ClientLimitLayer};
pub use parallel::{ParallelLimit, ParallelLimitLayer, ResponseFuture as ParallelLimitFuture};
pub use timeout::{RequestTimeout, Timeout, TimeoutLayer};
pub use trace::{Answered, Trace, TraceLayer, Traced};

/// Builds a [`Stack`] over a backend: the limits, the timeout and the cache.
///
/// Every setting has a default, so a new setting never breaks a caller.
#[derive(Debug, Clone)]
pub struct StackBuilder<B> {
    backend: B,
    cache: Option<Cache>,
    client_limit: usize,
    parallel_limit: Option<usize>,
    timeout: Duration,
}

impl<B> StackBuilder<B> {
    /// Requests in flight at most, unless set: 1024.
    pub const DEFAULT_CLIENT_LIMIT: usize = 1024;
    /// The request timeout, unless set: 5 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    /// A stack over `backend`, a service from a key to its value (`None` when the
    /// key does not exist) whose errors map into [`Error`].
    pub fn new(backend: B) -> Self {
        Self {
            backend,
            cache: None,
            client_limit: Self::DEFAULT_CLIENT_LIMIT,
            parallel_limit: None,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// Requests in flight at most, across every clone of the stack; the next one
    /// is refused at once with [`Error::Overloaded`].
    pub fn client_limit(mut self, limit: usize) -> Self {
        self.client_limit = limit;
        self
    }

    /// Requests processed at once at most; the rest wait their turn (FIFO), the
    /// time they wait counting toward the timeout. `1` processes requests one at
    /// a time. Unset, it is the client limit (so it never binds).
    pub fn parallel_limit(mut self, limit: usize) -> Self {
        self.parallel_limit = Some(limit);
        self
    }

    /// The bound on a whole request, time spent queued included; beyond it the
    /// request fails with [`Error::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The cache the stack reads through (unset: [`Cache::default`]).
    pub fn cache(mut self, cache: Cache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Builds the stack. Build once and clone the result: clones share every
    /// limit and the cache.
    pub fn build(self) -> Stack<B>
    where
        B: Service<Key, Response = Option<Bytes>> + Clone,
        B::Error: Into<Error>,
    {
        let parallel = match self.parallel_limit {
            // A limit at least as high as the client limit can never bind: no
            // semaphore to take and release on every request.
            Some(limit) if limit < self.client_limit => ParallelLimitLayer::new(limit),
            _ => ParallelLimitLayer::unlimited(),
        };
        let cache = CacheLayer::new(self.cache.unwrap_or_default()).layer(self.backend);
        let timeout = TimeoutLayer::new(self.timeout);
        let limits = Limits {
            timeout: timeout.timeout().clone(),
            parallel: parallel.clone(),
        };
        let inner = TraceLayer.layer(
            ClientLimitLayer::new(self.client_limit).layer(timeout.layer(parallel.layer(cache))),
        );
        Stack { inner, limits }
    }
}

/// The stack's limits, for a reload to change while requests run: the
/// client limit ([`Stack::client_slots`]), the parallel limit and the
/// timeout apply to the requests that arrive after the change.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    timeout: RequestTimeout,
    parallel: ParallelLimitLayer,
}

/// The request stack over a backend `B`: what both front-ends call, one key at a
/// time. Cheap to clone; clones share every limit and the cache.
///
/// The layers inside are an implementation detail; [`StackBuilder`] sets them up.
#[derive(Debug, Clone)]
pub struct Stack<B> {
    inner: Inner<B>,
    limits: Limits,
}

/// The layers, outermost first.
pub type Inner<B> = Trace<ClientLimit<Timeout<ParallelLimit<CacheService<B>>>>>;

impl<B> Stack<B> {
    /// The cache this stack reads through.
    pub fn cache(&self) -> &Cache {
        self.cache_service().cache()
    }

    /// Requests in flight now (holding a client slot).
    pub fn in_flight(&self) -> usize {
        self.client_slots().taken()
    }

    /// The client slots, for the in-flight gauge read at scrape time.
    pub(crate) fn client_slots(&self) -> &crate::limit::Slots {
        self.inner.get_ref().slots()
    }

    /// Sets the limits as `client`, `parallel` (`None`: none below the
    /// client limit) and `timeout` say, for the requests that come next.
    pub(crate) fn set_limits(&self, client: usize, parallel: Option<usize>, timeout: Duration) {
        self.client_slots().resize(client);
        self.limits
            .parallel
            .set(parallel.filter(|&parallel| parallel < client));
        self.limits.timeout.set(timeout);
    }

    /// The backend service.
    pub fn backend(&self) -> &B {
        self.cache_service().get_ref()
    }

    fn cache_service(&self) -> &CacheService<B> {
        self.inner.get_ref().get_ref().get_ref().get_ref()
    }
}

impl<B> Service<Key> for Stack<B>
where
    B: Service<Key, Response = Option<Bytes>> + Clone + Send + 'static,
    B::Error: Into<Error>,
    B::Future: Send + 'static,
{
    type Response = Lookup;
    type Error = Error;
    type Future = ResponseFuture<B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Service::<Key>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, key: Key) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(key),
        }
    }
}

/// What the front-ends ask of a stack over a backend that serves every kind
/// of request (as [`crate::RedisService`] does): keys, cached reads and
/// forwarded commands pass the same layers.
impl<B> Service<Request> for Stack<B>
where
    B: Service<Key, Response = Option<Bytes>, Error = Error>
        + Service<Query, Response = Option<Bytes>, Error = Error>
        + Service<Command, Response = Bytes, Error = Error>
        + Clone
        + Send
        + 'static,
    <B as Service<Key>>::Future: Send + 'static,
    <B as Service<Query>>::Future: Send + 'static,
    <B as Service<Command>>::Future: Send + 'static,
{
    type Response = Answer;
    type Error = Error;
    type Future = ResponseFuture<B, Request>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Service::<Request>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The future of [`Stack`] for a request of type `R`: ready at once for a
    /// cache hit.
    pub struct ResponseFuture<B, R = Key>
    where
        Inner<B>: Service<R>,
    {
        #[pin]
        inner: <Inner<B> as Service<R>>::Future,
    }
}

impl<B, R> Future for ResponseFuture<B, R>
where
    Inner<B>: Service<R, Error = Error>,
{
    type Output = Result<<Inner<B> as Service<R>>::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<B, R> std::fmt::Debug for ResponseFuture<B, R>
where
    Inner<B>: Service<R>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stack::ResponseFuture")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::Source;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;
    use tower::ServiceExt;

    /// An in-process stand-in for Redis: counts the requests that reached it and
    /// answers each (with its key as the value) only once `gate` lets it through.
    fn stalled_backend(
        gate: Arc<Semaphore>,
        arrived: Arc<AtomicUsize>,
    ) -> impl Service<Key, Response = Option<Bytes>, Error = Error, Future: Send> + Clone + Send + 'static
    {
        tower::service_fn(move |key: Key| {
            let gate = gate.clone();
            arrived.fetch_add(1, Ordering::SeqCst);
            async move {
                let _pass = gate.acquire().await.unwrap();
                Ok::<_, Error>(Some(key.name().clone()))
            }
        })
    }

    fn build<B>(backend: B, max_clients: usize, max_parallel: usize, timeout: Duration) -> Stack<B>
    where
        B: Service<Key, Response = Option<Bytes>> + Clone,
        B::Error: Into<Error>,
    {
        StackBuilder::new(backend)
            .client_limit(max_clients)
            .parallel_limit(max_parallel)
            .timeout(timeout)
            .cache(Cache::new(16, Duration::from_secs(60)))
            .build()
    }

    async fn call<B>(stack: &Stack<B>, key: &'static str) -> Result<Lookup, Error>
    where
        B: Service<Key, Response = Option<Bytes>> + Clone + Send + 'static,
        B::Error: Into<Error>,
        B::Future: Send + 'static,
    {
        stack.clone().oneshot(Key::from(key)).await
    }

    #[tokio::test]
    async fn request_beyond_the_client_limit_is_refused_at_once() {
        let (gate, arrived) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicUsize::new(0)));
        let backend = stalled_backend(gate.clone(), arrived.clone());
        let stack = build(backend, 2, 2, Duration::from_secs(60));
        let pending: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|key| {
                let stack = stack.clone();
                tokio::spawn(async move { call(&stack, key).await })
            })
            .collect();
        while arrived.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(stack.in_flight(), 2);
        assert!(matches!(call(&stack, "c").await, Err(Error::Overloaded)));
        gate.add_permits(2);
        for (handle, key) in pending.into_iter().zip(["a", "b"]) {
            assert_eq!(handle.await.unwrap().unwrap().value, Some(Bytes::from(key)));
        }
        // With the slots free again, the next request goes through.
        gate.add_permits(1);
        assert!(call(&stack, "d").await.is_ok());
    }

    #[tokio::test]
    async fn parallel_limit_queues_instead_of_shedding() {
        let (gate, arrived) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicUsize::new(0)));
        let backend = stalled_backend(gate.clone(), arrived.clone());
        let stack = build(backend, 8, 1, Duration::from_secs(60));
        let handles: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|key| {
                let stack = stack.clone();
                tokio::spawn(async move { call(&stack, key).await })
            })
            .collect();
        while arrived.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            arrived.load(Ordering::SeqCst),
            1,
            "only one request runs at a time"
        );
        assert!(
            handles.iter().all(|h| !h.is_finished()),
            "the other two wait, not fail"
        );
        gate.add_permits(3);
        for handle in handles {
            let lookup = handle.await.unwrap().expect("queued, not shed");
            assert_eq!(lookup.source, Source::Backend);
        }
        assert_eq!(arrived.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_queued_counts_toward_the_timeout() {
        let gate = Arc::new(Semaphore::new(0));
        let stack = build(
            stalled_backend(gate, Arc::default()),
            8,
            1,
            Duration::from_secs(1),
        );
        let first = tokio::spawn({
            let stack = stack.clone();
            async move { call(&stack, "a").await }
        });
        let queued = call(&stack, "b").await;
        assert!(matches!(queued, Err(Error::Timeout)), "{queued:?}");
        assert!(matches!(first.await.unwrap(), Err(Error::Timeout)));
    }

    #[tokio::test]
    async fn backend_errors_keep_their_kind() {
        let failing = tower::service_fn(|_key: Key| async {
            Err::<Option<Bytes>, _>(Error::Reply("WRONGTYPE nope".into()))
        });
        let stack = build(failing, 8, 8, Duration::from_secs(1));
        match call(&stack, "k").await {
            Err(e) => assert!(e.is_wrong_type(), "{e:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_backend_of_any_error_type_maps_into_the_stack_error() {
        #[derive(Debug, thiserror::Error)]
        #[error("my backend is down")]
        struct Mine;
        impl From<Mine> for Error {
            fn from(mine: Mine) -> Self {
                Error::Unavailable {
                    message: mine.to_string().into(),
                    cause: Some(Arc::new(mine)),
                }
            }
        }
        let failing = tower::service_fn(|_key: Key| async { Err::<Option<Bytes>, _>(Mine) });
        let stack = build(failing, 8, 8, Duration::from_secs(1));
        let error = call(&stack, "k").await.unwrap_err();
        assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
        assert_eq!(error.to_string(), "my backend is down");
    }
}
