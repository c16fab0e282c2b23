//! A forwarded command through the cache (transparent mode): sent on to the
//! inner service, and what it may have changed dropped from the cache before
//! its reply is handed back, so that no client reads a value older than a
//! write it was told of.
//!
//! What it may have changed is dropped whatever happens: when the reply comes,
//! when the command fails (a timed-out or cut-off write may have run), and
//! when its future is dropped before either (the request timeout passed, or
//! the client left): a write whose outcome is unknown is treated as done.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;

use crate::cache::Cache;
use crate::lookup::{Error, Writes};

pin_project_lite::pin_project! {
    /// The future of a forwarded command, over the inner service's `F`.
    pub(crate) struct Forwarded<F> {
        #[pin]
        reply: F,
        // What to drop once the outcome is known or lost; `None` once dropped.
        writes: Option<(Writes, Cache)>,
    }

    impl<F> PinnedDrop for Forwarded<F> {
        fn drop(this: Pin<&mut Self>) {
            invalidate(this.project().writes);
        }
    }
}

impl<F> Forwarded<F> {
    pub(crate) fn new(reply: F, writes: Writes, cache: Cache) -> Self {
        let writes = (writes != Writes::Nothing).then_some((writes, cache));
        Self { reply, writes }
    }
}

/// Drops from the cache what `writes` says, once.
fn invalidate(writes: &mut Option<(Writes, Cache)>) {
    if let Some((writes, cache)) = writes.take() {
        match writes {
            Writes::Nothing => {}
            Writes::Keys(keys) => cache.invalidate_everywhere(&keys),
            Writes::All => cache.flush(),
        }
    }
}

impl<F: Future<Output = Result<Bytes, Error>>> Future for Forwarded<F> {
    type Output = Result<Bytes, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let reply = ready!(this.reply.poll(cx));
        invalidate(this.writes);
        Poll::Ready(reply)
    }
}
