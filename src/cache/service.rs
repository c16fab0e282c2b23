//! [`CacheLayer`]/[`CacheService`]: hits from the [`Cache`], misses from the
//! inner service (normally [`crate::RedisService`]), found values stored.
//!
//! A hit is answered without touching the inner service; its future is ready at
//! once and allocates nothing. Absence is not cached: a key missing in the
//! backend is asked for again next time.
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

use std::collections::HashMap;
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

use super::Cache;
use crate::lookup::{Error, Key, Lookup, Source};

/// What one fetch ends with, as every waiter receives it.
type Outcome = Result<Option<Bytes>, Error>;

/// The fetches in progress, and the cached reads of each key (transparent
/// mode), under one lock.
#[derive(Debug, Default)]
pub(super) struct Flights {
    /// The fetch a miss for a key waits for.
    pub(super) live: HashMap<Key, Flight>,
    /// Fetches of keys invalidated while they ran: they still answer their
    /// waiters, but no new miss joins them and they cache nothing.
    detached: HashMap<u64, Flight>,
    /// For each key name, the cached reads of it (see [`Key::query`]) that are
    /// cached or being fetched: what a change of the key must drop.
    pub(super) queries: HashMap<Bytes, Vec<Key>>,
    next: u64,
}

/// Cached reads of one key kept in the index at most: past it, they are
/// dropped from the cache together.
const QUERIES_PER_KEY: usize = 64;

impl Flights {
    /// Registers a fetch of `key`; returns its id.
    fn start(&mut self, key: &Key, store: &super::Store) -> u64 {
        self.next += 1;
        let id = self.next;
        self.live.insert(
            key.clone(),
            Flight {
                id,
                done: None,
                invalidated: false,
            },
        );
        if let Some(subject) = key.subject() {
            let queries = self.queries.entry(subject).or_default();
            if !queries.contains(key) {
                if queries.len() >= QUERIES_PER_KEY {
                    for query in queries.drain(..) {
                        store.remove(&query);
                    }
                }
                queries.push(key.clone());
            }
        }
        id
    }

    /// Takes the fetch `id` of `key` out, live or detached.
    fn land(&mut self, key: &Key, id: u64) -> Option<Flight> {
        if self.live.get(key).is_some_and(|flight| flight.id == id) {
            return self.live.remove(key);
        }
        self.detached.remove(&id)
    }

    /// The fetch of `key` in flight, if any, may bring a value older than a
    /// change: it is kept from caching and later misses no longer join it.
    pub(super) fn detach(&mut self, key: &Key) {
        if let Some(mut flight) = self.live.remove(key) {
            flight.invalidated = true;
            self.detached.insert(flight.id, flight);
        }
    }
}

/// The fetch of one key in progress, in the cache's in-flight table.
#[derive(Debug)]
pub(super) struct Flight {
    id: u64,
    /// Where the fetch publishes its outcome to later misses for the key. Made by
    /// the first of them: a miss nobody else waits for costs no channel.
    done: Option<watch::Sender<Option<Outcome>>>,
    /// Set when the key is invalidated (or the cache flushed) while the fetch
    /// runs: the value it brings may predate the change, so it is handed to the
    /// waiters but not cached.
    invalidated: bool,
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
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, key: Key) -> Self::Future {
        if let Some(hit) = self.cache.lookup(&key) {
            return ResponseFuture::hit(hit);
        }
        let ttl = self.cache.ttl();
        let done = {
            let mut flights = self.cache.flights();
            match flights.live.get_mut(&key) {
                Some(flight) => flight
                    .done
                    .get_or_insert_with(|| watch::channel(None).0)
                    .subscribe(),
                None => {
                    let id = flights.start(&key, &self.cache.shared.store);
                    drop(flights);
                    // The ready service goes to the fetch; a fresh clone stays behind.
                    let clone = self.inner.clone();
                    let inner = std::mem::replace(&mut self.inner, clone);
                    let fetch = Box::pin(fetch(inner, key, id, self.cache.clone()));
                    return ResponseFuture::lead(Lead {
                        fetch: Some(fetch),
                        ttl,
                    });
                }
            }
        };
        ResponseFuture::miss(Box::pin(wait(done, ttl)))
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
async fn fetch<S>(mut inner: S, key: Key, id: u64, cache: Cache) -> Outcome
where
    S: Service<Key, Response = Option<Bytes>>,
    S::Error: Into<Error>,
{
    /// Removes the in-flight entry if the fetch ends without landing (the
    /// runtime shutting down): waiters then see their channel close.
    struct Landing {
        key: Key,
        id: u64,
        cache: Cache,
        landed: bool,
    }
    impl Drop for Landing {
        fn drop(&mut self) {
            if !self.landed {
                self.cache.flights().land(&self.key, self.id);
            }
        }
    }
    let mut landing = Landing {
        key: key.clone(),
        id,
        cache: cache.clone(),
        landed: false,
    };
    let call = AssertUnwindSafe(async { inner.call(key.clone()).await.map_err(Into::into) });
    let outcome = match call.catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => {
            let reason = panic_message(&panic);
            tracing::error!(key = %String::from_utf8_lossy(&key), %reason, "the backend panicked");
            Err(Error::internal(format!("the backend panicked: {reason}")))
        }
    };
    landing.landed = true;
    // Checked, stored and landed under the flights lock: an invalidation cannot
    // slip in between, and a miss arriving after it finds the value in the cache.
    let flight = {
        let mut flights = cache.flights();
        let flight = flights.land(&key, id);
        let invalidated = flight.as_ref().is_some_and(|flight| flight.invalidated);
        if let Ok(Some(value)) = &outcome
            && !invalidated
        {
            cache.insert(&key, value);
        }
        flight
    };
    if let Some(done) = flight.and_then(|flight| flight.done) {
        done.send_replace(Some(outcome.clone()));
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
async fn wait(mut done: watch::Receiver<Option<Outcome>>, ttl: Duration) -> Result<Lookup, Error> {
    let outcome = match done.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().expect("waited for Some"),
        Err(_) => return Err(Error::unavailable("the fetch was abandoned")),
    };
    lookup(outcome, ttl)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;
    use tower::ServiceExt;

    /// An in-process stand-in for Redis: counts calls, waits for `gate` (when
    /// given) before answering, answers `v<n>` for the n-th call, `None` for
    /// "missing", fails for "bad" and panics for "panic".
    #[derive(Clone)]
    struct Fake {
        calls: Arc<AtomicUsize>,
        gate: Option<Arc<Semaphore>>,
    }

    impl Service<Key> for Fake {
        type Response = Option<Bytes>;
        type Error = Error;
        type Future = Pin<Box<dyn Future<Output = Result<Option<Bytes>, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, key: Key) -> Self::Future {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let gate = self.gate.clone();
            Box::pin(async move {
                if let Some(gate) = gate {
                    let _pass = gate.acquire().await.unwrap();
                }
                match &key[..] {
                    b"missing" => Ok(None),
                    b"bad" => Err(Error::unavailable("down")),
                    b"panic" => panic!("the backend fell over"),
                    _ => Ok(Some(Bytes::from(format!("v{n}")))),
                }
            })
        }
    }

    fn service(
        ttl: Duration,
        gate: Option<Arc<Semaphore>>,
    ) -> (CacheService<Fake>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = Cache::new(4, ttl);
        let fake = Fake {
            calls: calls.clone(),
            gate,
        };
        (CacheService::new(fake, cache), calls)
    }

    async fn get(svc: &mut CacheService<Fake>, key: &'static str) -> Result<Lookup, Error> {
        svc.ready().await.unwrap().call(Key::from(key)).await
    }

    #[tokio::test]
    async fn second_read_is_a_hit_that_skips_the_backend() {
        let (mut svc, calls) = service(Duration::from_secs(60), None);
        let first = get(&mut svc, "k").await.unwrap();
        let second = get(&mut svc, "k").await.unwrap();
        assert_eq!(first.source, Source::Backend);
        assert_eq!(second.source, Source::Cache);
        assert_eq!(second.value, Some(Bytes::from("v0")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_say_how_fresh_and_how_old_they_are() {
        let (mut svc, _) = service(Duration::from_secs(60), None);
        let miss = get(&mut svc, "k").await.unwrap();
        assert_eq!(
            (miss.fresh_for, miss.age),
            (Duration::from_secs(60), Duration::ZERO)
        );
        tokio::time::advance(Duration::from_secs(25)).await;
        let hit = get(&mut svc, "k").await.unwrap();
        assert_eq!(
            (hit.fresh_for, hit.age),
            (Duration::from_secs(35), Duration::from_secs(25))
        );
    }

    #[tokio::test]
    async fn absence_is_not_cached() {
        let (mut svc, calls) = service(Duration::from_secs(60), None);
        assert_eq!(get(&mut svc, "missing").await.unwrap().value, None);
        assert_eq!(
            get(&mut svc, "missing").await.unwrap().source,
            Source::Backend
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entry_is_refetched() {
        let (mut svc, calls) = service(Duration::from_millis(500), None);
        get(&mut svc, "k").await.unwrap();
        tokio::time::advance(Duration::from_millis(499)).await;
        assert_eq!(get(&mut svc, "k").await.unwrap().source, Source::Cache);
        tokio::time::advance(Duration::from_millis(1)).await;
        let after = get(&mut svc, "k").await.unwrap();
        assert_eq!(after.source, Source::Backend);
        assert_eq!(after.value, Some(Bytes::from("v1")));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_key_cost_one_fetch() {
        let gate = Arc::new(Semaphore::new(0));
        let (svc, calls) = service(Duration::from_secs(60), Some(gate.clone()));
        let waiters: Vec<_> = (0..40)
            .map(|_| tokio::spawn(svc.clone().oneshot(Key::from("k"))))
            .collect();
        while svc.cache().fetches_in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1);
        for waiter in waiters {
            let lookup = waiter.await.unwrap().unwrap();
            assert_eq!(
                lookup.value,
                Some(Bytes::from("v0")),
                "every waiter gets the same value"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            svc.cache().fetches_in_flight(),
            0,
            "no in-flight entry is left behind"
        );
    }

    #[tokio::test]
    async fn every_waiter_gets_the_same_error_with_its_type() {
        let gate = Arc::new(Semaphore::new(0));
        let (svc, calls) = service(Duration::from_secs(60), Some(gate.clone()));
        let waiters: Vec<_> = (0..5)
            .map(|_| tokio::spawn(svc.clone().oneshot(Key::from("bad"))))
            .collect();
        while svc.cache().fetches_in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(1);
        for waiter in waiters {
            let error = waiter.await.unwrap().unwrap_err();
            assert!(matches!(error, Error::Unavailable { .. }), "{error}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(svc.cache().fetches_in_flight(), 0);
    }

    #[tokio::test]
    async fn a_panicking_backend_fails_every_waiter_once_and_poisons_nothing() {
        let gate = Arc::new(Semaphore::new(0));
        let (svc, calls) = service(Duration::from_secs(60), Some(gate.clone()));
        let waiters: Vec<_> = (0..5)
            .map(|_| tokio::spawn(svc.clone().oneshot(Key::from("panic"))))
            .collect();
        while svc.cache().fetches_in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        gate.add_permits(10);
        for waiter in waiters {
            let error = waiter.await.expect("no task panicked").unwrap_err();
            assert!(matches!(error, Error::Internal(_)), "{error}");
            assert!(
                error.to_string().contains("the backend fell over"),
                "{error}"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one fetch for all waiters");
        assert_eq!(
            svc.cache().fetches_in_flight(),
            0,
            "the key is not left in flight"
        );
        // The next read fetches afresh rather than finding the key stuck.
        let again = svc.clone().oneshot(Key::from("panic")).await.unwrap_err();
        assert!(matches!(again, Error::Internal(_)));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_cancel_the_fetch() {
        let gate = Arc::new(Semaphore::new(0));
        let (svc, calls) = service(Duration::from_secs(60), Some(gate.clone()));
        let leader = tokio::spawn(svc.clone().oneshot(Key::from("k")));
        while svc.cache().fetches_in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let follower = tokio::spawn(svc.clone().oneshot(Key::from("k")));
        tokio::task::yield_now().await;
        leader.abort();
        let _ = leader.await;
        gate.add_permits(1);
        assert_eq!(
            follower.await.unwrap().unwrap().value,
            Some(Bytes::from("v0"))
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The fetch finished and filled the cache though its first caller left.
        assert_eq!(
            svc.cache().get(&Key::from("k")).map(|(value, _)| value),
            Some(Bytes::from("v0"))
        );
        assert_eq!(svc.cache().fetches_in_flight(), 0);
    }

    #[tokio::test]
    async fn a_key_invalidated_while_it_is_fetched_is_not_cached() {
        for flush in [false, true] {
            let gate = Arc::new(Semaphore::new(0));
            let (svc, calls) = service(Duration::from_secs(60), Some(gate.clone()));
            let waiter = tokio::spawn(svc.clone().oneshot(Key::from("k")));
            while svc.cache().fetches_in_flight() == 0 {
                tokio::task::yield_now().await;
            }
            if flush {
                svc.cache().flush();
            } else {
                svc.cache().invalidate(&[Key::from("k")]);
            }
            gate.add_permits(1);
            let lookup = waiter.await.unwrap().unwrap();
            assert_eq!(
                lookup.value,
                Some(Bytes::from("v0")),
                "the waiter still gets its answer"
            );
            assert!(
                svc.cache().get(&Key::from("k")).is_none(),
                "but it is not cached (flush: {flush})"
            );
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn a_miss_after_an_invalidation_does_not_join_the_older_fetch() {
        let gate = Arc::new(Semaphore::new(0));
        let (svc, calls) = service(Duration::from_secs(60), Some(gate.clone()));
        let before = tokio::spawn(svc.clone().oneshot(Key::from("k")));
        while svc.cache().fetches_in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        // The key changes (a write acknowledged to its client); a read after
        // it must not get what the fetch started before the change brings.
        svc.cache().invalidate_everywhere(&[Bytes::from("k")]);
        let after = tokio::spawn(svc.clone().oneshot(Key::from("k")));
        let second_fetch = async {
            while calls.load(Ordering::SeqCst) < 2 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), second_fetch)
            .await
            .expect("the miss after the change starts a fetch of its own");
        gate.add_permits(2);
        assert_eq!(
            before.await.unwrap().unwrap().value,
            Some(Bytes::from("v0"))
        );
        assert_eq!(after.await.unwrap().unwrap().value, Some(Bytes::from("v1")));
        assert_eq!(svc.cache().fetches_in_flight(), 0);
        assert_eq!(
            svc.cache().get(&Key::from("k")).map(|(value, _)| value),
            Some(Bytes::from("v1")),
            "only the fetch started after the change is cached"
        );
    }

    #[tokio::test]
    async fn a_change_of_a_key_drops_every_cached_read_of_it() {
        let (mut svc, calls) = service(Duration::from_secs(60), None);
        let read = |field: &str| {
            let request = format!(
                "*3\r\n$4\r\nHGET\r\n$2\r\nu1\r\n${}\r\n{field}\r\n",
                field.len()
            );
            Key::query(None, false, Bytes::from(request)).unwrap()
        };
        for field in ["a", "b"] {
            svc.ready().await.unwrap().call(read(field)).await.unwrap();
        }
        let other = Key::query(
            None,
            false,
            Bytes::from_static(b"*2\r\n$4\r\nHLEN\r\n$2\r\nu2\r\n"),
        )
        .unwrap();
        svc.ready()
            .await
            .unwrap()
            .call(other.clone())
            .await
            .unwrap();
        assert!(svc.cache().get(&read("a")).is_some());
        svc.cache().invalidate_everywhere(&[Bytes::from("u1")]);
        assert!(svc.cache().get(&read("a")).is_none());
        assert!(svc.cache().get(&read("b")).is_none());
        assert!(
            svc.cache().get(&other).is_some(),
            "another key's read stays"
        );
        svc.cache().invalidate(&[Key::from("u2")]);
        assert!(svc.cache().get(&other).is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn invalidated_and_flushed_entries_are_gone() {
        let (mut svc, calls) = service(Duration::from_secs(60), None);
        for key in ["a", "b"] {
            get(&mut svc, key).await.unwrap();
        }
        svc.cache().invalidate(&[Key::from("a")]);
        assert_eq!(get(&mut svc, "a").await.unwrap().source, Source::Backend);
        assert_eq!(get(&mut svc, "b").await.unwrap().source, Source::Cache);
        svc.cache().flush();
        assert!(svc.cache().is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
