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

/// The future of a forwarded command.
pub(crate) struct Forwarded {
    reply: Pin<Box<dyn Future<Output = Result<Bytes, Error>> + Send>>,
    /// What to drop once the outcome is known or lost; `None` once dropped.
    writes: Option<(Writes, Cache)>,
}

impl Forwarded {
    pub(crate) fn new(
        reply: Pin<Box<dyn Future<Output = Result<Bytes, Error>> + Send>>,
        writes: Writes,
        cache: Cache,
    ) -> Self {
        let writes = (writes != Writes::Nothing).then_some((writes, cache));
        Self { reply, writes }
    }

    fn invalidate(&mut self) {
        if let Some((writes, cache)) = self.writes.take() {
            match writes {
                Writes::Nothing => {}
                Writes::Keys(keys) => cache.invalidate_everywhere(&keys),
                Writes::All => cache.flush(),
            }
        }
    }
}

impl Future for Forwarded {
    type Output = Result<Bytes, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let reply = ready!(self.reply.as_mut().poll(cx));
        self.invalidate();
        Poll::Ready(reply)
    }
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        self.invalidate();
    }
}
