//! Concurrent GETs go to Redis together, as one pipeline.
//!
//! A miss joins the queue of GETs waiting to be sent. The miss that finds the
//! queue empty schedules one flush; the flush first yields, so that every miss
//! the runtime handles in the same turn (typically one per client connection
//! that had a request ready) joins before it takes the queue and sends it as a
//! single pipeline on one connection. Under load, a hundred clients' GETs cost
//! one write to Redis and one read of the replies instead of a hundred of each,
//! which is what lets Redis, and the proxy, spend less per miss. A lone miss
//! waits for one yield, a few microseconds.
//!
//! Replies are matched to keys by position; each waiter gets its own reply (a
//! `WRONGTYPE` for one key fails only that key), or the pipeline's failure.

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Error;
use crate::lookup::Key;

/// What one GET answers: the value, `None` for a missing key, or why it failed.
pub type Reply = Result<Option<Bytes>, Error>;

/// One GET waiting to be sent.
#[derive(Debug)]
pub struct Waiter {
    /// The key to read.
    pub key: Key,
    reply: oneshot::Sender<Reply>,
}

impl Waiter {
    /// Answers this GET (a waiter that gave up is skipped).
    pub fn answer(self, reply: Reply) {
        let _ = self.reply.send(reply);
    }
}

/// The GETs waiting to be sent.
#[derive(Debug, Default)]
pub struct Queue {
    waiting: Mutex<Vec<Waiter>>,
}

impl Queue {
    /// Queues a GET of `key`. Returns where its reply will come, and whether the
    /// caller is the first of a new batch and must schedule a flush.
    pub fn join(&self, key: Key) -> (oneshot::Receiver<Reply>, bool) {
        let (reply, receiver) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.push(Waiter { key, reply });
        (receiver, waiting.len() == 1)
    }

    /// Takes every waiting GET: one batch.
    pub fn take(&self) -> Vec<Waiter> {
        std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Waits for the rest of this turn of the runtime, takes the queued GETs, sends
/// them with `send` (which answers with one reply per key, in order), and answers
/// each waiter. A failure of the whole batch reaches every waiter.
pub async fn flush<F, Fut>(queue: &Queue, send: F)
where
    F: FnOnce(Vec<Key>) -> Fut,
    Fut: Future<Output = Result<Vec<Reply>, Error>>,
{
    // Every miss handled in this turn joins the batch first.
    tokio::task::yield_now().await;
    let batch = queue.take();
    if batch.is_empty() {
        return;
    }
    let keys = batch.iter().map(|waiter| waiter.key.clone()).collect();
    match send(keys).await {
        Ok(replies) => {
            for (waiter, reply) in batch.into_iter().zip(replies) {
                waiter.answer(reply);
            }
        }
        Err(error) => {
            for waiter in batch {
                waiter.answer(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn misses_of_one_turn_go_out_in_one_batch() {
        // One worker: a task spawned from a task runs next unless something
        // defers it, so a flush that did not wait for the turn would send the
        // first key alone.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let batches = Arc::new(Mutex::new(Vec::new()));
        let recorded = batches.clone();
        runtime.block_on(async move {
            tokio::spawn(async move {
                let queue = Arc::new(Queue::default());
                let misses: Vec<_> = (0..20)
                    .map(|i| {
                        let (queue, batches) = (queue.clone(), batches.clone());
                        tokio::spawn(async move {
                            let key = Bytes::from(format!("k{i}"));
                            let (reply, first) = queue.join(Key::new(key.clone()));
                            if first {
                                tokio::spawn(async move {
                                    flush(&queue, |keys: Vec<Key>| async move {
                                        batches.lock().unwrap().push(keys.len());
                                        Ok(keys
                                            .into_iter()
                                            .map(|key| Ok(Some(key.name().clone())))
                                            .collect())
                                    })
                                    .await;
                                });
                            }
                            assert_eq!(reply.await.unwrap(), Ok(Some(key)));
                        })
                    })
                    .collect();
                for miss in misses {
                    miss.await.unwrap();
                }
            })
            .await
            .unwrap();
        });
        assert_eq!(*recorded.lock().unwrap(), [20]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_waiter() {
        let queue = Queue::default();
        let (a, _) = queue.join(Key::from("a"));
        let (b, _) = queue.join(Key::from("b"));
        flush(&queue, |_| async { Err(Error::Timeout) }).await;
        assert_eq!(a.await.unwrap(), Err(Error::Timeout));
        assert_eq!(b.await.unwrap(), Err(Error::Timeout));
    }

    #[test]
    fn the_first_to_join_an_empty_queue_schedules_the_flush() {
        let queue = Queue::default();
        let (_a, first) = queue.join(Key::from("a"));
        let (_b, second) = queue.join(Key::from("b"));
        assert!(first);
        assert!(!second);
        let batch = queue.take();
        let keys: Vec<_> = batch.iter().map(|waiter| waiter.key.clone()).collect();
        assert_eq!(keys, [Key::from("a"), Key::from("b")]);
        let (_c, after_take) = queue.join(Key::from("c"));
        assert!(after_take, "a new batch starts once the queue is taken");
    }

    #[tokio::test]
    async fn each_waiter_gets_its_own_reply() {
        let queue = Queue::default();
        let (a, _) = queue.join(Key::from("a"));
        let (b, _) = queue.join(Key::from("b"));
        let mut batch = queue.take().into_iter();
        batch.next().unwrap().answer(Ok(Some(Bytes::from("1"))));
        batch
            .next()
            .unwrap()
            .answer(Err(Error::Reply("WRONGTYPE".into())));
        assert_eq!(a.await.unwrap(), Ok(Some(Bytes::from("1"))));
        assert!(b.await.unwrap().unwrap_err().is_wrong_type());
    }
}
