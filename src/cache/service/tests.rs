//! The cache service against an in-process backend: hits, misses, coalescing,
//! errors, panics, cancellation and invalidation while fetching.
use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// An in-process stand-in for Redis: counts calls, waits for `gate` (when
/// given) before answering, answers `v<n>` for the n-th call, `None` for
/// "missing", fails for "bad", times out the first call for "late" and
/// panics for "panic".
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
                b"late" if n == 0 => Err(Error::Timeout),
                b"panic" => panic!("the backend fell over"),
                _ => Ok(Some(Bytes::from(format!("v{n}")))),
            }
        })
    }
}

impl Service<Query> for Fake {
    type Response = Option<Bytes>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Bytes>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, query: Query) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let reply = format!("reply {n} to {:?}", query.request());
        Box::pin(async move { Ok(Some(Bytes::from(reply))) })
    }
}

impl Service<Command> for Fake {
    type Response = Bytes;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Bytes, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, command: Command) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Ok(command.request) })
    }
}

fn service(ttl: Duration, gate: Option<Arc<Semaphore>>) -> (CacheService<Fake>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = Cache::new(4, ttl);
    let fake = Fake {
        calls: calls.clone(),
        gate,
    };
    (CacheService::new(fake, cache), calls)
}

async fn get(svc: &mut CacheService<Fake>, key: &'static str) -> Result<Lookup, Error> {
    ServiceExt::<Key>::ready(svc)
        .await
        .unwrap()
        .call(Key::from(key))
        .await
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
async fn a_waiter_whose_fetch_ran_out_of_its_leaders_time_fetches_on_its_own() {
    let gate = Arc::new(Semaphore::new(0));
    let (svc, calls) = service(Duration::from_secs(60), Some(gate.clone()));
    let leader = tokio::spawn(svc.clone().oneshot(Key::from("late")));
    while svc.cache().fetches_in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let waiter = tokio::spawn(svc.clone().oneshot(Key::from("late")));
    tokio::task::yield_now().await;
    gate.add_permits(2);
    assert!(matches!(leader.await.unwrap(), Err(Error::Timeout)));
    let lookup = waiter.await.unwrap().unwrap();
    assert_eq!(lookup.value, Some(Bytes::from("v1")), "its own fetch");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
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
        Query::new(
            None,
            false,
            Bytes::from("u1"),
            Bytes::from(format!("HGET u1 {field}")),
        )
    };
    let cached = |svc: &CacheService<Fake>, query: &Query| {
        svc.cache().lookup(&Read::Query(query.clone())).is_some()
    };
    for field in ["a", "b"] {
        Service::<Request>::call(&mut svc, Request::Query(read(field)))
            .await
            .unwrap();
    }
    let other = Query::new(None, false, Bytes::from("u2"), Bytes::from("HLEN u2"));
    Service::<Request>::call(&mut svc, Request::Query(other.clone()))
        .await
        .unwrap();
    assert!(cached(&svc, &read("a")));
    let again = Service::<Request>::call(&mut svc, Request::Query(read("a")))
        .await
        .unwrap();
    assert!(
        matches!(&again, Answer::Lookup(lookup) if lookup.source == Source::Cache),
        "{again:?}"
    );
    svc.cache().invalidate_everywhere(&[Bytes::from("u1")]);
    assert!(!cached(&svc, &read("a")));
    assert!(!cached(&svc, &read("b")));
    assert!(cached(&svc, &other), "another key's read stays");
    svc.cache().invalidate(&[Key::from("u2")]);
    assert!(!cached(&svc, &other));
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
