//! Worker threads: one event loop per thread, each serving its own share of the
//! connections, as Redis and twemproxy run one event loop and nginx one per
//! worker.
//!
//! A work-stealing runtime moves tasks between threads and wakes sleeping
//! threads to run them: a cached `GET` then pays for futex and event-descriptor
//! system calls and for cache lines handed between cores. Here every worker's
//! event loop watches each listener's one socket, the first one free accepts a
//! new connection, and a connection lives and dies on the worker that
//! accepted it, with the backend connections its misses use (see
//! `RedisService`'s lanes). What the workers share (the cache, the limits, the
//! backend's batches per lane) is built for that: reads of the cache take a
//! lock of their own thread.
//!
//! The thread running [`crate::Proxy::serve`] keeps the admin listener and the
//! background tasks (signals, cache sweeps, metric upkeep).

use std::cell::Cell;
use std::future::Future;
use std::io;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker running the current thread, if it is one.
pub(crate) fn current() -> Option<usize> {
    INDEX.with(Cell::get)
}

/// Worker threads, each running a single-threaded runtime until stopped.
#[derive(Debug)]
pub(crate) struct Workers {
    workers: Vec<Worker>,
}

#[derive(Debug)]
struct Worker {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` worker threads.
    ///
    /// # Errors
    ///
    /// The operating system's reason when a thread or its runtime cannot start.
    pub(crate) fn start(count: usize) -> io::Result<Self> {
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                // Each runs a tokio runtime: the name tools know them by.
                .name("tokio-rt-worker".into())
                .spawn(move || {
                    INDEX.with(|cell| cell.set(Some(index)));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    // Dropping the runtime here ends whatever it still runs.
                })?;
            workers.push(Worker {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(Self { workers })
    }

    /// How many workers there are.
    pub(crate) fn len(&self) -> usize {
        self.workers.len()
    }

    /// Runs `future` on worker `index`.
    pub(crate) fn spawn<F>(&self, index: usize, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.workers[index].handle.spawn(future)
    }
}

impl Drop for Workers {
    /// Stops every worker and waits for its thread: tasks still running on it
    /// are dropped.
    fn drop(&mut self) {
        for worker in &mut self.workers {
            if let Some(stop) = worker.stop.take() {
                let _ = stop.send(());
            }
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_worker_knows_its_index_and_others_know_they_are_none() {
        let workers = Workers::start(3).unwrap();
        for index in 0..3 {
            assert_eq!(
                workers.spawn(index, async { current() }).await.unwrap(),
                Some(index)
            );
        }
        assert_eq!(current(), None);
        drop(workers);
    }
}
