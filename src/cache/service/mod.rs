//! [`CacheLayer`]/[`CacheService`]: hits from the [`Cache`], misses from the
//! inner service (normally [`crate::RedisService`]), found values stored.
//! Keys (`GET`) and, in transparent mode, whole read requests ([`Query`]) are
//! served alike; only what the inner service is asked differs.
//!
//! A hit is answered without touching the inner service; its future is ready at
//! once and allocates nothing. An absence is remembered only under a negative
//! TTL (`--cache-negative-ttl`); otherwise a key missing in the backend is
//! asked for again next time.
//!
//! An entry past its TTL may still answer (see [`Cached`]): within its
//! stale-while-revalidate window at once, starting one background fetch
//! (coalesced with every other miss of the key); within its stale-if-error
//! window, when the fetch fails or does not end within the cache's
//! `stale_after` (the fetch then goes on, and fills the cache when it ends).
//!
//! Concurrent misses for one key are coalesced: the first starts the fetch,
//! registers it in the cache's in-flight table and drives it; later misses wait
//! for that fetch instead of starting another. N concurrent misses cost one
//! backend request, and every waiter gets the same value or the same error. A
//! waiter that gives up (its client left, or its timeout passed) only stops
//! waiting: the fetch goes on for the others and still fills the cache. The
//! in-flight entry is removed when the fetch ends, however it ends: with a
//! value, an error, a panic of the inner service (every waiter gets
//! [`Error::Internal`], and the next miss fetches afresh) or the runtime
//! shutting down.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use pin_project_lite::pin_project;
use tokio::sync::watch;
use tower::{Layer, Service};

use super::flights::{Join, Outcome};
use super::{Cache, Cached, Read};
use crate::lookup::{Answer, Command, Error, Key, Lookup, Query, Request, Source};
use crate::metrics::quantiles;
use forwarded::Forwarded;

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
        CacheService::new(inner, self.cache.clone())
    }
}

/// Serves a key from the cache, or from the inner service on a miss.
///
/// The inner service answers `Option<Bytes>`: the value, or `None` when the key
/// does not exist; its errors map into [`Error`].
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

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> CacheService<S> {
    /// A miss of `read`: joins the fetch of it in flight, or leads one that
    /// asks the inner service for `request`.
    fn miss<R>(&mut self, read: Read, request: R) -> ResponseFuture
    where
        S: Service<R, Response = Option<Bytes>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Error>,
        R: Send + 'static,
    {
        let ttl = self.cache.ttl(read.key_name());
        let joined = self.cache.flights().join(&read, self.cache.store());
        match joined {
            Join::Wait(done) => {
                let (inner, cache) = (self.inner.clone(), self.cache.clone());
                ResponseFuture::miss(Box::pin(wait_or_fetch(done, inner, request, read, cache)))
            }
            Join::Lead(id) => {
                // The ready service goes to the fetch; a fresh clone stays behind.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let fetch = Box::pin(fetch(inner, request, read, id, self.cache.clone()));
                ResponseFuture::lead(Lead {
                    fetch: Some(fetch),
                    ttl,
                })
            }
        }
    }
}

impl<S> CacheService<S> {
    /// A read of `read` whose entry is not fresh: answered stale while it
    /// is refreshed, or a miss that falls back on a stale answer, or a
    /// plain miss.
    fn not_fresh<R>(&mut self, read: Read, request: R, cached: Option<Cached>) -> ResponseFuture
    where
        S: Service<R, Response = Option<Bytes>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Error>,
        R: Send + 'static,
    {
        match cached {
            Some(Cached::Fresh(hit)) => ResponseFuture::hit(hit),
            Some(Cached::Revalidate(stale)) => {
                self.refresh(read, request);
                let counters = self.cache.counters();
                counters.served_stale(&counters.stale_revalidating);
                ResponseFuture::hit(stale)
            }
            Some(Cached::IfError(stale)) => {
                let miss = self.miss(read, request);
                ResponseFuture::miss(Box::pin(or_stale(miss, stale, self.cache.clone())))
            }
            None => self.miss(read, request),
        }
    }

    /// Starts a fetch of `read` in the background, unless one is in flight.
    fn refresh<R>(&mut self, read: Read, request: R)
    where
        S: Service<R, Response = Option<Bytes>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Error>,
        R: Send + 'static,
    {
        let joined = self.cache.flights().join(&read, self.cache.store());
        let Join::Lead(id) = joined else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.cache.flights().land(&read, id);
            return;
        };
        let (inner, cache) = (self.inner.clone(), self.cache.clone());
        runtime.spawn(async move {
            let ready = tower::ServiceExt::ready_oneshot(inner).await.ok();
            match ready {
                Some(inner) => drop(fetch(inner, request, read, id, cache).await),
                None => drop(cache.flights().land(&read, id)),
            }
        });
    }
}

/// A miss with a stale answer to fall back on: the miss's answer, unless
/// the backend failed or took longer than the cache's `stale_after`.
async fn or_stale(miss: ResponseFuture, stale: Lookup, cache: Cache) -> Result<Lookup, Error> {
    let outcome = match cache.stale_after() {
        Some(wait) => tokio::time::timeout(wait, miss)
            .await
            .unwrap_or(Err(Error::Timeout)),
        None => miss.await,
    };
    match outcome {
        Err(error) if error.is_backend_failure() => {
            tracing::debug!(%error, "answered from a stale entry");
            let counters = cache.counters();
            counters.served_stale(&counters.stale_on_error);
            Ok(stale)
        }
        outcome => outcome,
    }
}

impl<S> Service<Key> for CacheService<S>
where
    S: Service<Key, Response = Option<Bytes>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Error>,
{
    type Response = Lookup;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Service::<Key>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, key: Key) -> Self::Future {
        let timed = quantiles::sample_hit().then(std::time::Instant::now);
        match self.cache.lookup_key(&key) {
            Some(Cached::Fresh(hit)) => {
                if let Some(start) = timed {
                    quantiles::HITS.record(start.elapsed());
                }
                let bytes = hit.value.as_ref().map_or(0, Bytes::len);
                self.cache.count_request(&key, Some(bytes));
                ResponseFuture::hit(hit)
            }
            cached => {
                self.cache.count_request(&key, None);
                self.not_fresh(Read::Key(key.clone()), key, cached)
            }
        }
    }
}

/// Every kind of request: a key as above, transparent mode's cached reads
/// (whose request the inner service runs and whose reply, as Redis sent it,
/// is what is cached), and forwarded commands (see `forwarded`).
impl<S> Service<Request> for CacheService<S>
where
    S: Service<Key, Response = Option<Bytes>, Error = Error>
        + Service<Query, Response = Option<Bytes>, Error = Error>
        + Service<Command, Response = Bytes, Error = Error>
        + Clone
        + Send
        + 'static,
    <S as Service<Key>>::Future: Send + 'static,
    <S as Service<Query>>::Future: Send + 'static,
    <S as Service<Command>>::Future: Send + 'static,
{
    type Response = Answer;
    type Error = Error;
    type Future = RequestFuture<<S as Service<Command>>::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // All are always ready (the stack's backends wait inside the call).
        Service::<Key>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let read = match request {
            Request::Get(key) => Service::<Key>::call(self, key),
            Request::Query(query) => {
                let read = Read::Query(query.clone());
                let cached = self.cache.lookup(&read);
                self.not_fresh(read, query, cached)
            }
            Request::Command(command) => {
                let writes = command.writes.clone();
                let reply = Service::<Command>::call(&mut self.inner, command);
                return RequestFuture::Forwarded {
                    forwarded: Forwarded::new(reply, writes, self.cache.clone()),
                };
            }
        };
        RequestFuture::Read { read }
    }
}

pin_project! {
    /// The future of [`CacheService`] for a [`Request`]; `F`, the inner
    /// service's for a forwarded command.
    #[project = RequestProj]
    pub(crate) enum RequestFuture<F> {
        /// A key's value or a cached read.
        Read { #[pin] read: ResponseFuture },
        /// A forwarded command.
        Forwarded { #[pin] forwarded: Forwarded<F> },
    }
}

impl<F: Future<Output = Result<Bytes, Error>>> Future for RequestFuture<F> {
    type Output = Result<Answer, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RequestProj::Read { read } => read.poll(cx).map_ok(Answer::Lookup),
            RequestProj::Forwarded { forwarded } => forwarded.poll(cx).map_ok(Answer::Reply),
        }
    }
}

impl<F> std::fmt::Debug for RequestFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cache::RequestFuture")
    }
}

/// A fetch in progress, as the leader drives it.
type Fetch = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// The miss that started a fetch. It drives the fetch itself (no task to spawn,
/// no wake-up from another task); dropped before the fetch ends (its client left,
/// or its timeout passed), it hands the fetch to a task of its own, so the other
/// waiters still get their answer and the cache is still filled.
struct Lead {
    fetch: Option<Fetch>,
    ttl: Duration,
}

impl Future for Lead {
    type Output = Result<Lookup, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fetch = self.fetch.as_mut().expect("polled after completion");
        let outcome = std::task::ready!(fetch.as_mut().poll(cx));
        self.fetch = None;
        Poll::Ready(lookup(outcome, self.ttl))
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        if let Some(fetch) = self.fetch.take() {
            // Outside a runtime (it is shutting down) the fetch is dropped; its
            // landing guard then removes the in-flight entry and the waiters see
            // the fetch abandoned.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(fetch);
            }
        }
    }
}

/// Fetches `key` with the ready `inner` service, stores a found value, tells
/// every waiter, and returns the outcome to the leader driving it (see [`Lead`]).
///
/// A panic of the inner service is caught here, once: it becomes the outcome
/// every waiter receives, and the fetch itself never panics, so neither its
/// leader nor a task it was handed to polls a panicked future again.
async fn fetch<S, R>(mut inner: S, request: R, read: Read, id: u64, cache: Cache) -> Outcome
where
    S: Service<R, Response = Option<Bytes>>,
    S::Error: Into<Error>,
{
    /// Removes the in-flight entry if the fetch ends without landing (the
    /// runtime shutting down): waiters then see their channel close.
    struct Landing<'a> {
        read: &'a Read,
        id: u64,
        cache: &'a Cache,
        landed: bool,
    }
    impl Drop for Landing<'_> {
        fn drop(&mut self) {
            if !self.landed {
                self.cache.flights().land(self.read, self.id);
            }
        }
    }
    let mut landing = Landing {
        read: &read,
        id,
        cache: &cache,
        landed: false,
    };
    let call = AssertUnwindSafe(async { inner.call(request).await.map_err(Into::into) });
    let outcome = match call.catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => {
            let reason = panic_message(&panic);
            let key = String::from_utf8_lossy(read.key_name());
            tracing::error!(%key, %reason, "the backend panicked");
            Err(Error::internal(format!("the backend panicked: {reason}")))
        }
    };
    landing.landed = true;
    // Checked, stored and landed under the flights lock: an invalidation cannot
    // slip in between, and a miss arriving after it finds the value in the cache.
    let flight = {
        let mut flights = cache.flights();
        let flight = flights.land(&read, id);
        if let Ok(value) = &outcome
            && flight.as_ref().is_some_and(|flight| flight.may_cache())
        {
            cache.store_read(&read, value.as_ref());
        }
        flight
    };
    if let Some(flight) = flight {
        flight.publish(&outcome);
    }
    outcome
}

/// The text of a panic's payload, when it is one.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Waits for a fetch to end and takes its outcome.
async fn wait(mut done: watch::Receiver<Option<Outcome>>) -> Outcome {
    match done.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().expect("waited for Some"),
        Err(_) => Err(Error::unavailable("the fetch was abandoned")),
    }
}

/// A miss that joined the fetch in flight: that fetch's outcome, unless it
/// ran out of time. Its time was its leader's, which began before this miss
/// did: then this miss fetches once more (leading, or joining a later fetch),
/// bounded by its own timeout outside, so that a slow backend costs each
/// request its own timeout and never a share of another's.
async fn wait_or_fetch<S, R>(
    done: watch::Receiver<Option<Outcome>>,
    inner: S,
    request: R,
    read: Read,
    cache: Cache,
) -> Result<Lookup, Error>
where
    S: Service<R, Response = Option<Bytes>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Error>,
    R: Send + 'static,
{
    let ttl = cache.ttl(read.key_name());
    match wait(done).await {
        Err(Error::Timeout) => {}
        outcome => return lookup(outcome, ttl),
    }
    let joined = cache.flights().join(&read, cache.store());
    match joined {
        Join::Wait(done) => lookup(wait(done).await, ttl),
        Join::Lead(id) => {
            let inner = match tower::ServiceExt::ready_oneshot(inner).await {
                Ok(inner) => inner,
                Err(error) => {
                    cache.flights().land(&read, id);
                    return Err(error.into());
                }
            };
            let fetch = Box::pin(fetch(inner, request, read, id, cache));
            Lead {
                fetch: Some(fetch),
                ttl,
            }
            .await
        }
    }
}

/// What a waiter answers for a fetch's outcome: a value fetched just now, fresh
/// for the whole `ttl`, or the fetch's error.
fn lookup(outcome: Outcome, ttl: Duration) -> Result<Lookup, Error> {
    outcome.map(|value| Lookup {
        value,
        source: Source::Backend,
        fresh_for: ttl,
        age: Duration::ZERO,
        digest: None,
    })
}

/// The boxed future of a miss that waits for another miss's fetch.
type Miss = Pin<Box<dyn Future<Output = Result<Lookup, Error>> + Send>>;

pin_project! {
    /// The future of [`CacheService`]: ready at once on a hit; the first miss for a
    /// key drives the fetch ([`Lead`]); later misses wait for it (boxed: a miss
    /// costs a network round trip anyway).
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

impl ResponseFuture {
    fn hit(lookup: Lookup) -> Self {
        Self {
            state: State::Hit {
                lookup: Some(lookup),
            },
        }
    }

    fn lead(lead: Lead) -> Self {
        Self {
            state: State::Lead { lead },
        }
    }

    fn miss(wait: Miss) -> Self {
        Self {
            state: State::Miss { wait },
        }
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.state {
            State::Hit { .. } => "ResponseFuture::Hit",
            State::Lead { .. } => "ResponseFuture::Lead",
            State::Miss { .. } => "ResponseFuture::Miss",
        })
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Hit { lookup: Option<Lookup> },
        Lead { lead: Lead },
        Miss { wait: Miss },
    }
}

impl Future for ResponseFuture {
    type Output = Result<Lookup, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Hit { lookup } => {
                Poll::Ready(Ok(lookup.take().expect("polled after completion")))
            }
            StateProj::Lead { lead } => Pin::new(lead).poll(cx),
            StateProj::Miss { wait } => wait.as_mut().poll(cx),
        }
    }
}

mod forwarded;
#[cfg(test)]
mod tests;
