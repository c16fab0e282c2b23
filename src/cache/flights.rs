//! The fetches in flight, and the cached reads of each key (transparent
//! mode), under one lock: what coalescing and invalidation agree on.
//!
//! A fetch is registered when its first miss starts it and lands when it
//! ends; later misses for the same entry wait for it. An invalidation of an
//! entry being fetched *detaches* the fetch: it still answers the misses
//! waiting for it, but caches nothing and no later miss joins it, since what
//! it brings may predate the change.
//!
//! The index of cached reads maps a key's name to the [`Query`] entries that
//! read it, so that a change of the key drops them all. It may keep entries
//! the store has evicted since; [`Flights::prune`] drops those once the index
//! holds more than twice what the store does.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Read;
use super::eviction::Store;
use crate::lookup::{Error, Query};

/// What one fetch ends with, as every waiter receives it.
pub(super) type Outcome = Result<Option<Bytes>, Error>;

/// Cached reads of one key kept in the index at most: past it, they are
/// dropped from the cache together.
const QUERIES_PER_KEY: usize = 64;

/// The fetches in progress, and the cached reads of each key.
#[derive(Debug, Default)]
pub(super) struct Flights {
    /// The fetch a miss for an entry waits for.
    live: HashMap<Read, Flight>,
    /// Fetches of entries invalidated while they ran, by id.
    detached: HashMap<u64, Flight>,
    /// For each key name, the cached reads of it that are cached or being
    /// fetched: what a change of the key must drop.
    queries: HashMap<Bytes, Vec<Query>>,
    /// How many queries `queries` holds.
    indexed: usize,
    next: u64,
}

/// The fetch of one entry in progress.
#[derive(Debug)]
pub(super) struct Flight {
    id: u64,
    /// Where the fetch publishes its outcome to later misses. Made by the first
    /// of them: a miss nobody else waits for costs no channel.
    done: Option<watch::Sender<Option<Outcome>>>,
    /// Set when the entry is invalidated (or the cache flushed) while the
    /// fetch runs: its value is handed to the waiters but not cached.
    invalidated: bool,
}

impl Flight {
    /// Whether what the fetch brings may be cached.
    pub(super) fn may_cache(&self) -> bool {
        !self.invalidated
    }

    /// Tells every miss that waits for this fetch how it ended.
    pub(super) fn publish(self, outcome: &Outcome) {
        if let Some(done) = self.done {
            done.send_replace(Some(outcome.clone()));
        }
    }
}

/// What a miss does about an entry: lead its fetch, or wait for the fetch
/// another miss leads.
pub(super) enum Join {
    Lead(u64),
    Wait(watch::Receiver<Option<Outcome>>),
}

impl Flights {
    /// Joins the fetch of `read` in flight, or starts one (registering a cached
    /// read in the index of its key).
    pub(super) fn join(&mut self, read: &Read, store: &dyn Store) -> Join {
        if let Some(flight) = self.live.get_mut(read) {
            let done = flight.done.get_or_insert_with(|| watch::channel(None).0);
            return Join::Wait(done.subscribe());
        }
        self.next += 1;
        let id = self.next;
        self.live.insert(
            read.clone(),
            Flight {
                id,
                done: None,
                invalidated: false,
            },
        );
        if let Read::Query(query) = read {
            self.index(query, store);
        }
        Join::Lead(id)
    }

    fn index(&mut self, query: &Query, store: &dyn Store) {
        let queries = self.queries.entry(query.key().clone()).or_default();
        if queries.contains(query) {
            return;
        }
        if queries.len() >= QUERIES_PER_KEY {
            self.indexed -= queries.len();
            for query in queries.drain(..) {
                let (space, name) = Read::space_of(&query);
                store.remove(space, name);
            }
        }
        queries.push(query.clone());
        self.indexed += 1;
    }

    /// Takes the fetch `id` of `read` out, live or detached.
    pub(super) fn land(&mut self, read: &Read, id: u64) -> Option<Flight> {
        if self.live.get(read).is_some_and(|flight| flight.id == id) {
            return self.live.remove(read);
        }
        self.detached.remove(&id)
    }

    /// The fetch of `read` in flight, if any, may bring a value older than a
    /// change: it is kept from caching and later misses no longer join it.
    pub(super) fn detach(&mut self, read: &Read) {
        if let Some(mut flight) = self.live.remove(read) {
            flight.invalidated = true;
            self.detached.insert(flight.id, flight);
        }
    }

    /// Detaches every fetch in flight whose entry `matches`.
    pub(super) fn detach_all(&mut self, matches: impl Fn(&Read) -> bool) {
        let fetching: Vec<Read> = self.live.keys().filter(|r| matches(r)).cloned().collect();
        for read in &fetching {
            self.detach(read);
        }
    }

    /// Takes the cached reads of the key called `name` out of the index.
    pub(super) fn take_queries(&mut self, name: &[u8]) -> Vec<Query> {
        let queries = self.queries.remove(name).unwrap_or_default();
        self.indexed -= queries.len();
        queries
    }

    /// Empties the index of cached reads.
    pub(super) fn clear_queries(&mut self) {
        self.queries.clear();
        self.indexed = 0;
    }

    /// Drops from the index the cached reads the store no longer holds (and
    /// no fetch brings), once it holds more than twice as many as the store
    /// holds entries: O(index) at most every time the store has doubled its
    /// share, so O(1) per insert on average.
    pub(super) fn prune(&mut self, store: &dyn Store, now: Instant) {
        if self.indexed <= 2 * store.len() + self.live.len() {
            return;
        }
        let live = &self.live;
        self.queries.retain(|_, queries| {
            queries.retain(|query| {
                let (space, name) = Read::space_of(query);
                store.contains(space, name, now) || live.contains_key(&Read::Query(query.clone()))
            });
            !queries.is_empty()
        });
        self.indexed = self.queries.values().map(Vec::len).sum();
    }

    /// How many fetches are in flight (detached ones not included).
    pub(super) fn len(&self) -> usize {
        self.live.len()
    }

    /// How many cached reads the index holds.
    #[cfg(test)]
    pub(super) fn indexed(&self) -> usize {
        self.indexed
    }
}
