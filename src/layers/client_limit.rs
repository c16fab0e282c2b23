//! [`ClientLimitLayer`]: at most N requests in flight across every clone; the
//! next one is refused at once with [`Error::Overloaded`] (HTTP 503).
//!
//! This is tower's `LoadShed` over a `ConcurrencyLimit`, in one layer: the slot is
//! taken when the request is called, without waiting, and held until its response
//! future completes or is dropped. tower's pair would box every error into a
//! `BoxError` (the stack's error is a concrete type) and would give each service
//! made by a `ConcurrencyLimitLayer` a semaphore of its own; here every service made
//! by one layer shares one set of [`Slots`], so the limit is global whatever
//! route, connection or protocol calls it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::limit::{Slot, Slots};
use crate::lookup::Error;

/// Refuses requests beyond `limit` in flight.
#[derive(Debug, Clone)]
pub struct ClientLimitLayer {
    slots: Slots,
}

impl ClientLimitLayer {
    /// A limit of `limit` requests in flight, shared by every service this layer makes.
    pub fn new(limit: usize) -> Self {
        Self {
            slots: Slots::new(limit),
        }
    }

    /// The slots, for a gauge of requests in flight.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }
}

impl<S> Layer<S> for ClientLimitLayer {
    type Service = ClientLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientLimit {
            inner,
            slots: self.slots.clone(),
        }
    }
}

/// The service made by [`ClientLimitLayer`].
#[derive(Debug, Clone)]
pub struct ClientLimit<S> {
    inner: S,
    slots: Slots,
}

impl<S> ClientLimit<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The slots this service shares.
    pub fn slots(&self) -> &Slots {
        &self.slots
    }
}

impl<S, R> Service<R> for ClientLimit<S>
where
    S: Service<R>,
    S::Error: Into<Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.slots.try_take() {
            Some(slot) => ResponseFuture {
                state: State::Running {
                    future: self.inner.call(request),
                    _slot: slot,
                },
            },
            None => ResponseFuture { state: State::Shed },
        }
    }
}

pin_project! {
    /// The future of [`ClientLimit`]: the inner future holding its slot, or a
    /// refusal.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Running { #[pin] future: F, _slot: Slot },
        Shed,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<Error>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Running { future, .. } => future.poll(cx).map_err(Into::into),
            StateProj::Shed => Poll::Ready(Err(Error::Overloaded)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::sync::Semaphore;
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_request_beyond_the_limit_is_refused_and_a_slot_comes_back() {
        let gate = Arc::new(Semaphore::new(0));
        let layer = ClientLimitLayer::new(1);
        let svc = layer.layer(tower::service_fn(move |n: u32| {
            let gate = gate.clone();
            async move {
                let _pass = gate.acquire().await.unwrap();
                Ok::<_, Error>(n)
            }
        }));
        let first = tokio::spawn(svc.clone().oneshot(1));
        while layer.slots().taken() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            svc.clone().oneshot(2).await,
            Err(Error::Overloaded)
        ));
        first.abort();
        let _ = first.await;
        assert_eq!(
            layer.slots().taken(),
            0,
            "a dropped request gives its slot back"
        );
    }
}
