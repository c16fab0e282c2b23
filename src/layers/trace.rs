//! [`TraceLayer`]: a span per request and one event when it completes.
//!
//! tower-http's trace layer is for HTTP requests; this one works on the
//! protocol-neutral key, so both front-ends are traced alike. Everything is at
//! `debug` level: with the default `info` filter the span is disabled and the hot
//! path pays for one level check, not for formatting the key or reading the clock.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;

use crate::lookup::{Answer, Key, Lookup, Request};

/// What a trace names its request by.
pub trait Traced {
    /// The name of the key the request reads.
    fn key_name(&self) -> &[u8];
}

impl Traced for Key {
    fn key_name(&self) -> &[u8] {
        self.name()
    }
}

impl Traced for Request {
    fn key_name(&self) -> &[u8] {
        Request::key_name(self)
    }
}

/// What a trace says of an answer.
pub trait Answered {
    /// `HIT`, `MISS`, or `FORWARDED`.
    fn source(&self) -> &'static str;
    /// Whether a value was found (a forwarded reply always is).
    fn found(&self) -> bool;
}

impl Answered for Lookup {
    fn source(&self) -> &'static str {
        self.source.as_str()
    }

    fn found(&self) -> bool {
        self.value.is_some()
    }
}

impl Answered for Answer {
    fn source(&self) -> &'static str {
        match self {
            Answer::Lookup(lookup) => lookup.source(),
            Answer::Reply(_) => "FORWARDED",
        }
    }

    fn found(&self) -> bool {
        match self {
            Answer::Lookup(lookup) => lookup.found(),
            Answer::Reply(_) => true,
        }
    }
}

/// Traces every request to the inner service.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace { inner }
    }
}

/// The service made by [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S> Trace<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, R> Service<R> for Trace<S>
where
    S: Service<R>,
    S::Response: Answered,
    S::Error: std::fmt::Display,
    R: Traced,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let span = tracing::debug_span!(
            "request",
            key = %String::from_utf8_lossy(request.key_name())
        );
        let start = (!span.is_disabled()).then(Instant::now);
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            future,
            span,
            start,
        }
    }
}

pin_project! {
    /// The future of [`Trace`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        span: Span,
        start: Option<Instant>,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    T: Answered,
    E: std::fmt::Display,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let output = ready!(this.future.poll(cx));
        if let Some(start) = this.start {
            let micros = start.elapsed().as_micros() as u64;
            match &output {
                Ok(answer) => tracing::debug!(
                    micros,
                    cache = answer.source(),
                    found = answer.found(),
                    "answered"
                ),
                Err(error) => tracing::debug!(micros, %error, "failed"),
            }
        }
        Poll::Ready(output)
    }
}
