//! [`ParallelLimitLayer`]: at most N requests run at once; the rest queue.
//!
//! tower's `ConcurrencyLimit` waits for a permit in `poll_ready`. Under
//! `LoadShed`, which refuses whenever the service beneath it is not ready, that
//! wait would turn into a refusal: a parallel limit of 1 would shed every request
//! but one instead of running them in turn. This layer is therefore always ready
//! (as ready as its inner service) and waits for its permit inside the response
//! future, in FIFO order (tokio's semaphore is fair).
//!
//! A limit at least as high as the client limit above it can never bind, so the
//! stack builds it [`unlimited`](ParallelLimitLayer::unlimited): no semaphore to
//! take and release on every request. A reload may set or change the limit
//! ([`ParallelLimitLayer::set`]) while requests run.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

/// Runs at most `limit` requests at the same time across every service it makes.
///
/// All services from one layer share one semaphore, so the limit is global however
/// many routes, connections or protocols use them.
#[derive(Debug, Clone)]
pub struct ParallelLimitLayer {
    limit: Arc<Limit>,
}

/// The limit every service of one layer shares.
#[derive(Debug)]
struct Limit {
    /// Whether requests take a permit.
    bound: AtomicBool,
    semaphore: Arc<Semaphore>,
    /// The permits the semaphore is sized to: free and held.
    permits: Mutex<usize>,
}

impl ParallelLimitLayer {
    /// A limit of `limit` requests at once; `1` processes requests one at a time.
    pub fn new(limit: usize) -> Self {
        Self::with(Some(limit))
    }

    /// No limit: every request runs at once (for when a limit above already
    /// bounds the requests in flight).
    pub fn unlimited() -> Self {
        Self::with(None)
    }

    fn with(limit: Option<usize>) -> Self {
        let permits = limit.unwrap_or(0);
        Self {
            limit: Arc::new(Limit {
                bound: AtomicBool::new(limit.is_some()),
                semaphore: Arc::new(Semaphore::new(permits)),
                permits: Mutex::new(permits),
            }),
        }
    }

    /// Makes it a limit of `limit` requests at once (`None`: none), for the
    /// requests that arrive from now on; those running keep their permits.
    /// Fewer permits take effect as running requests give theirs back.
    pub fn set(&self, limit: Option<usize>) {
        let limit_state = &self.limit;
        let mut permits = limit_state
            .permits
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Unbound, the semaphore keeps enough permits for any request still
        // queued on it to go.
        let wanted = limit.unwrap_or(Semaphore::MAX_PERMITS >> 4);
        if wanted > *permits {
            limit_state.semaphore.add_permits(wanted - *permits);
        } else if wanted < *permits {
            let excess = *permits - wanted;
            let forgotten = limit_state.semaphore.forget_permits(excess);
            if forgotten < excess
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                // Held now: forgotten as their holders give them back.
                let semaphore = limit_state.semaphore.clone();
                let rest = u32::try_from(excess - forgotten).unwrap_or(u32::MAX);
                runtime.spawn(async move {
                    if let Ok(permits) = semaphore.acquire_many_owned(rest).await {
                        permits.forget();
                    }
                });
            }
        }
        *permits = wanted;
        limit_state.bound.store(limit.is_some(), Ordering::Release);
    }
}

impl<S> Layer<S> for ParallelLimitLayer {
    type Service = ParallelLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ParallelLimit {
            inner,
            limit: self.limit.clone(),
        }
    }
}

/// The service made by [`ParallelLimitLayer`].
#[derive(Debug, Clone)]
pub struct ParallelLimit<S> {
    inner: S,
    limit: Arc<Limit>,
}

impl<S> ParallelLimit<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, R> Service<R> for ParallelLimit<S>
where
    S: Service<R> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let semaphore = &self.limit.semaphore;
        if !self.limit.bound.load(Ordering::Acquire) {
            return ResponseFuture {
                state: State::Running {
                    future: self.inner.call(request),
                    permit: None,
                },
            };
        }
        // Fast path: a free permit (none can be free while others queue, since the
        // semaphore hands released permits to waiters first).
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            let future = self.inner.call(request);
            return ResponseFuture {
                state: State::Running {
                    future,
                    permit: Some(permit),
                },
            };
        }
        // The ready service goes into the future; a fresh clone stays behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            state: State::Queued {
                acquire: Box::pin(semaphore.clone().acquire_owned()),
                call: Some((inner, request)),
            },
        }
    }
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

pin_project! {
    /// The future of [`ParallelLimit`]: waits for a permit, then runs the request
    /// holding it.
    pub struct ResponseFuture<S: Service<R>, R> {
        #[pin]
        state: State<S, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<R>, R> {
        // Waiting for a permit (boxed: only contended requests get here), with the
        // ready inner service and the request to call it with.
        Queued {
            acquire: Acquire,
            call: Option<(S, R)>,
        },
        // Running, holding the permit (if limited) until the inner future completes.
        Running {
            #[pin]
            future: S::Future,
            permit: Option<OwnedSemaphorePermit>,
        },
    }
}

impl<S: Service<R>, R> Future for ResponseFuture<S, R> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Queued { acquire, call } => {
                    let permit =
                        ready!(acquire.as_mut().poll(cx)).expect("the semaphore is never closed");
                    let (mut inner, request) = call.take().expect("polled after start");
                    let future = inner.call(request);
                    state.set(State::Running {
                        future,
                        permit: Some(permit),
                    });
                }
                StateProj::Running { future, .. } => return future.poll(cx),
            }
        }
    }
}

impl<S: Service<R>, R> fmt::Debug for ResponseFuture<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.state {
            State::Queued { .. } => "ResponseFuture::Queued",
            State::Running { .. } => "ResponseFuture::Running",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tower::ServiceExt;

    /// Records the most requests it ever saw running at once.
    #[derive(Clone, Default)]
    struct Probe {
        running: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
    }

    impl Service<u32> for Probe {
        type Response = u32;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<u32, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, n: u32) -> Self::Future {
            let probe = self.clone();
            Box::pin(async move {
                let now = probe.running.fetch_add(1, Ordering::SeqCst) + 1;
                probe.peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                probe.running.fetch_sub(1, Ordering::SeqCst);
                Ok(n)
            })
        }
    }

    async fn peak_with_limit(limit: usize, requests: u32) -> usize {
        peak_of(&ParallelLimitLayer::new(limit), requests).await
    }

    async fn peak_of(layer: &ParallelLimitLayer, requests: u32) -> usize {
        let probe = Probe::default();
        let svc = layer.layer(probe.clone());
        let handles: Vec<_> = (0..requests)
            .map(|n| tokio::spawn(svc.clone().oneshot(n)))
            .collect();
        for (n, handle) in handles.into_iter().enumerate() {
            assert_eq!(
                handle.await.unwrap().unwrap(),
                n as u32,
                "every request is answered"
            );
        }
        probe.peak.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn limit_of_one_runs_requests_one_at_a_time() {
        assert_eq!(peak_with_limit(1, 20).await, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn limit_of_four_runs_four_at_a_time() {
        assert_eq!(peak_with_limit(4, 20).await, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_set_while_it_runs_applies_to_what_comes_next() {
        let layer = ParallelLimitLayer::unlimited();
        assert_eq!(peak_of(&layer, 20).await, 20);
        layer.set(Some(3));
        assert_eq!(peak_of(&layer, 20).await, 3);
        layer.set(Some(5));
        assert_eq!(peak_of(&layer, 20).await, 5);
        layer.set(Some(2));
        assert_eq!(peak_of(&layer, 20).await, 2);
        layer.set(None);
        assert_eq!(peak_of(&layer, 20).await, 20);
    }

    #[tokio::test]
    async fn queued_requests_keep_the_service_ready() {
        let mut svc = ParallelLimitLayer::new(1).layer(Probe::default());
        let _first = svc.ready().await.unwrap().call(1);
        // The first request holds the only permit, yet the service is ready.
        let ready = futures_ready(&mut svc);
        assert!(
            ready,
            "ParallelLimit must not report back-pressure through poll_ready"
        );
    }

    fn futures_ready(svc: &mut ParallelLimit<Probe>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }
}
