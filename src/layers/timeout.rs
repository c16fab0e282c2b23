//! [`TimeoutLayer`]: a request not answered within the timeout fails with
//! [`Error::Timeout`].
//!
//! tower's `Timeout` starts a timer for every request when it is called: a clock
//! read, a handle to the runtime's timer, and a timer entry to drop. This one
//! arms its timer only when the inner future turns out not to be ready on its
//! first poll. A cache hit is ready at once and so costs no timer at all; any
//! other request is polled right after it is called, so its deadline starts, as
//! with tower's, when it enters the layer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::lookup::Error;

/// Fails requests not answered within `timeout`.
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    timeout: RequestTimeout,
}

impl TimeoutLayer {
    /// A bound of `timeout` on every request.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout: RequestTimeout::new(timeout),
        }
    }

    /// The bound, shared by every service this layer makes: setting it
    /// applies to the requests that start after.
    pub fn timeout(&self) -> &RequestTimeout {
        &self.timeout
    }
}

/// A request timeout that can be changed while requests run (a reload).
#[derive(Debug, Clone)]
pub struct RequestTimeout(Arc<AtomicU64>);

impl RequestTimeout {
    fn new(timeout: Duration) -> Self {
        Self(Arc::new(AtomicU64::new(nanos(timeout))))
    }

    /// The bound now.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    /// Requests that start from now on are bound by `timeout`.
    pub fn set(&self, timeout: Duration) {
        self.0.store(nanos(timeout), Ordering::Relaxed);
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout.clone(),
        }
    }
}

/// The service made by [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: RequestTimeout,
}

impl<S> Timeout<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, R> Service<R> for Timeout<S>
where
    S: Service<R>,
    S::Error: Into<Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(request),
            sleep: None,
            timeout: self.timeout.get(),
        }
    }
}

pin_project! {
    /// The future of [`Timeout`]: the inner future, and a timer armed the first
    /// time the inner future is pending.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        timeout: Duration,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<Error>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(*this.timeout)));
        }
        let sleep = this.sleep.as_pin_mut().expect("armed above");
        ready!(sleep.poll(cx));
        Poll::Ready(Err(Error::Timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;
    use tower::service_fn;

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn a_ready_answer_passes_and_arms_no_timer() {
        let mut svc = TimeoutLayer::new(TIMEOUT)
            .layer(service_fn(|n: u32| async move { Ok::<_, Error>(n + 1) }));
        let mut future = std::pin::pin!(svc.call(1));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let Poll::Ready(answer) = future.as_mut().poll(&mut cx) else {
            panic!("a ready answer is ready at once");
        };
        assert_eq!(answer.unwrap(), 2);
        assert!(
            future.sleep.is_none(),
            "a timer was armed for a ready answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_fails_with_a_timeout_at_the_timeout() {
        let svc = TimeoutLayer::new(TIMEOUT).layer(service_fn(|()| async {
            tokio::time::sleep(TIMEOUT * 2).await;
            Ok::<_, Error>(())
        }));
        let start = tokio::time::Instant::now();
        let error = svc.oneshot(()).await.unwrap_err();
        assert!(matches!(error, Error::Timeout), "{error}");
        assert_eq!(start.elapsed(), TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_within_the_timeout_passes() {
        let svc = TimeoutLayer::new(TIMEOUT).layer(service_fn(|()| async {
            tokio::time::sleep(TIMEOUT / 2).await;
            Ok::<_, Error>("late but in time")
        }));
        assert_eq!(svc.oneshot(()).await.unwrap(), "late but in time");
    }

    #[tokio::test(start_paused = true)]
    async fn inner_errors_pass_through() {
        let svc = TimeoutLayer::new(TIMEOUT).layer(service_fn(|()| async {
            Err::<(), Error>(Error::unavailable("backend down"))
        }));
        assert_eq!(
            svc.oneshot(()).await.unwrap_err().to_string(),
            "backend down"
        );
    }
}
