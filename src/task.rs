//! Ownership of background tasks: every task the proxy spawns for the life of
//! something else (a server, a connection) is held by an [`AbortOnDrop`] guard,
//! so it stops when its owner does.

use tokio::task::JoinHandle;

/// Owns a background task and stops it when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T = ()>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
