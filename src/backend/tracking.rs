//! What Redis says about keys the proxy has read, with `--invalidation
//! tracking`: the messages, and where the connection layer hands them.

use std::sync::Arc;

use bytes::Bytes;

/// What Redis said about keys the proxy has read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// These keys changed or went away.
    Keys(Vec<Bytes>),
    /// Every key changed or went away: a `FLUSHALL`/`FLUSHDB`.
    All,
    /// A tracked connection was lost: Redis forgets what a closed connection
    /// read, so no further invalidations would come for those keys, and
    /// nothing read so far can be known fresh.
    Unverified,
}

/// Receives invalidations, synchronously, from the connection driver that read
/// them: before any reply that follows them on that connection is delivered.
pub type InvalidationSink = Arc<dyn Fn(Invalidation) + Send + Sync>;
