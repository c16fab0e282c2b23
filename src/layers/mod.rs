//! The request path as Tower layers, and the builder that stacks them.
//!
//! ```text
//!  HTTP / RESP front-end ──key──▶ Trace
//!                                  └▶ LoadShed + ConcurrencyLimit(max_clients)   refuse beyond the client limit
//!                                      └▶ Timeout(request_timeout)                 bound the whole request, queue included
//!                                          └▶ ParallelLimit(max_parallel)         run N at once, queue the rest
//!                                              └▶ CacheService                     hit: answer; miss: ↓
//!                                                  └▶ RedisService              GET on a pooled connection
//! ```
//!
//! Every limit is global: the stack is built once, and its clones share their
//! semaphores, whatever route, connection or protocol calls them. Only the client
//! limit refuses; everything beneath `LoadShed` is always ready, so the parallel
//! limit queues instead of shedding (see [`parallel`]).
//!
//! Errors leave the stack as `tower::BoxError` (the [`Timeout`] layer and tower's
//! `LoadShed` box them); [`Failure`] sorts them back into the few cases a
//! front-end answers.

pub mod parallel;
pub mod timeout;
pub mod trace;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;
use tower::{BoxError, Layer, Service, ServiceBuilder};

use crate::backend;
use crate::cache::{Cache, CacheLayer, CacheService};
use crate::lookup::Key;
use crate::metrics::Slots;

pub use parallel::{ParallelLimit, ParallelLimitLayer};
pub use timeout::{Timeout, TimeoutLayer};
pub use trace::{Trace, TraceLayer};

/// The full request stack over a backend service `B`.
pub type Stack<B> = Trace<LoadShed<ConcurrencyLimit<Timeout<ParallelLimit<CacheService<B>>>>>>;

/// The limits and the cache that make up a [`Stack`].
#[derive(Debug, Clone)]
pub struct StackBuilder {
    /// Client slots: requests in flight at most; more are refused at once. Stacks
    /// built from clones of one `Slots` share the limit.
    pub clients: Slots,
    /// Requests processed at once at most; more wait their turn.
    pub max_parallel: usize,
    /// Bound on a whole request, time spent queued included.
    pub request_timeout: Duration,
    /// The cache shared by every clone of the stack.
    pub cache: Cache,
}

impl StackBuilder {
    /// Builds the stack over `backend`. Build once and clone the result: clones
    /// share every limit and the cache.
    pub fn build<B>(&self, backend: B) -> Stack<B>
    where
        B: Service<Key, Response = Option<Bytes>> + Clone,
    {
        ServiceBuilder::new()
            .layer(TraceLayer)
            .load_shed()
            .layer(ClientLimitLayer(self.clients.semaphore().clone()))
            .layer(TimeoutLayer::new(self.request_timeout))
            .layer(if self.max_parallel >= self.clients.size() {
                ParallelLimitLayer::unlimited()
            } else {
                ParallelLimitLayer::new(self.max_parallel)
            })
            .layer(CacheLayer::new(self.cache.clone()))
            .service(backend)
    }
}

/// tower's `ConcurrencyLimitLayer` makes a new semaphore per `layer` call; this one
/// hands every service the same semaphore, which is what makes the limit global.
struct ClientLimitLayer(Arc<Semaphore>);

impl<S> Layer<S> for ClientLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit::with_semaphore(inner, self.0.clone())
    }
}

/// Why the stack did not answer with a value: what each front-end turns into a
/// status code or an error reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Failure {
    /// The client limit was reached; the request was refused without running.
    #[error("overloaded: too many requests in flight")]
    Overloaded,
    /// The request timeout passed.
    #[error("timed out")]
    Timeout,
    /// The backing Redis failed or refused.
    #[error(transparent)]
    Backend(#[from] backend::Error),
    /// Anything else (a bug, not an expected outcome).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<BoxError> for Failure {
    fn from(error: BoxError) -> Self {
        if error.is::<tower::load_shed::error::Overloaded>() {
            return Failure::Overloaded;
        }
        if error.is::<tower::timeout::error::Elapsed>() {
            return Failure::Timeout;
        }
        match error.downcast::<backend::Error>() {
            // Redis's own response timeout and ours mean the same to a client.
            Ok(backend) if matches!(*backend, backend::Error::Timeout) => Failure::Timeout,
            Ok(backend) => Failure::Backend(*backend),
            Err(other) => Failure::Internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::{Lookup, Source};
    use std::num::NonZeroUsize;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    /// An in-process stand-in for Redis: counts the requests that reached it and
    /// answers each (with its key as the value) only once `gate` lets it through.
    fn stalled_backend(
        gate: Arc<Semaphore>,
        arrived: Arc<AtomicUsize>,
    ) -> impl Service<Key, Response = Option<Bytes>, Error = backend::Error, Future: Send>
    + Clone
    + Send
    + 'static {
        tower::service_fn(move |key: Key| {
            let gate = gate.clone();
            arrived.fetch_add(1, Ordering::SeqCst);
            async move {
                let _pass = gate.acquire().await.unwrap();
                Ok::<_, backend::Error>(Some(key))
            }
        })
    }

    fn builder(max_clients: usize, max_parallel: usize, timeout: Duration) -> StackBuilder {
        StackBuilder {
            clients: Slots::new(max_clients),
            max_parallel,
            request_timeout: timeout,
            cache: Cache::new(NonZeroUsize::new(16).unwrap(), Duration::from_secs(60)),
        }
    }

    async fn call<B>(stack: &Stack<B>, key: &'static str) -> Result<Lookup, Failure>
    where
        B: Service<Key, Response = Option<Bytes>, Error = backend::Error> + Clone + Send + 'static,
        B::Future: Send + 'static,
    {
        stack
            .clone()
            .oneshot(Bytes::from(key))
            .await
            .map_err(Failure::from)
    }

    #[tokio::test]
    async fn request_beyond_the_client_limit_is_refused_at_once() {
        let (gate, arrived) = (Arc::new(Semaphore::new(0)), Arc::new(AtomicUsize::new(0)));
        let backend = stalled_backend(gate.clone(), arrived.clone());
        let stack = builder(2, 2, Duration::from_secs(60)).build(backend);
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
        assert!(matches!(call(&stack, "c").await, Err(Failure::Overloaded)));
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
        let stack = builder(8, 1, Duration::from_secs(60)).build(backend);
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
        let stack =
            builder(8, 1, Duration::from_secs(1)).build(stalled_backend(gate, Arc::default()));
        let first = tokio::spawn({
            let stack = stack.clone();
            async move { call(&stack, "a").await }
        });
        let queued = call(&stack, "b").await;
        assert!(matches!(queued, Err(Failure::Timeout)), "{queued:?}");
        assert!(matches!(first.await.unwrap(), Err(Failure::Timeout)));
    }

    #[tokio::test]
    async fn backend_errors_keep_their_kind() {
        let failing = tower::service_fn(|_key: Key| async {
            Err::<Option<Bytes>, _>(backend::Error::Reply("WRONGTYPE nope".into()))
        });
        let stack = builder(8, 8, Duration::from_secs(1)).build(failing);
        match call(&stack, "k").await {
            Err(Failure::Backend(e)) => assert!(e.is_wrong_type()),
            other => panic!("unexpected {other:?}"),
        }
    }
}
