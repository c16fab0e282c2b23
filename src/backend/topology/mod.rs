//! The topology: which node serves a key, and what happens when that changes.
//!
//! Every backend is one implementation of [`Topology`]: one Redis
//! ([`Standalone`]), a Redis Cluster ([`Cluster`], slots from
//! `CLUSTER SLOTS`), a Sentinel-managed primary ([`Sentinel`]), or a
//! twemproxy-style sharded pool ([`Sharded`]). What sits above it (the `Backend` handle: reads with
//! their fallbacks, redirections followed, dedicated connections) asks it for
//! nodes and tells it when a node failed or a slot moved; it never asks which
//! kind of topology it is.

mod cluster;
mod sentinel;
mod sharded;
mod slot;
mod standalone;

use futures_util::future::BoxFuture;

use super::Error;
use super::node::NodeRef;

pub(crate) use cluster::Cluster;
pub use cluster::ReadFrom;
pub(crate) use sentinel::Sentinel;
pub(crate) use sharded::Sharded;
pub use sharded::{Distribution, Ejection, KeyHash, Placement, ShardServer};
pub(crate) use standalone::Standalone;

/// Where requests for a key go.
pub(crate) trait Topology: Send + Sync + std::fmt::Debug {
    /// The unit keys are placed by, for a topology that spreads them over
    /// nodes (a cluster's slot); `None` where every key is on one node.
    fn slot(&self, _key: &[u8]) -> Option<u16> {
        None
    }

    /// Whether keys are spread over several nodes: commands whose keys have
    /// different slots cannot be sent as one.
    fn spreads_keys(&self) -> bool {
        false
    }

    /// Whether a command whose keys are on several nodes is split into one
    /// per node (a sharded pool, as twemproxy splits them) rather than
    /// refused (a cluster, as Redis Cluster refuses them).
    fn splits_commands(&self) -> bool {
        false
    }

    /// Whether the topology knows where its nodes are; until it does,
    /// requests wait for [`Topology::prepare`].
    fn is_prepared(&self) -> bool {
        true
    }

    /// Learns where the nodes are, before the first request needs it.
    fn prepare(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    /// The primary serving `slot` (any primary for `None`): where writes go.
    ///
    /// # Errors
    ///
    /// When no node serves the slot (yet).
    fn primary(&self, slot: Option<u16>) -> Result<NodeRef, Error>;

    /// Where a read of `slot` goes, and the primary behind it (the same node
    /// unless reads go to replicas).
    ///
    /// # Errors
    ///
    /// As [`Topology::primary`].
    fn reader(&self, slot: Option<u16>) -> Result<(NodeRef, NodeRef), Error> {
        let primary = self.primary(slot)?;
        Ok((primary.clone(), primary))
    }

    /// The node at `addr` (`host:port`), named by a redirection.
    ///
    /// # Errors
    ///
    /// When the topology has no such node and cannot make one.
    fn node_at(&self, addr: &str) -> Result<NodeRef, Error>;

    /// Every primary, in address order (stable while they are: a cluster
    /// `SCAN` cursor names one by its place).
    fn primaries(&self) -> Vec<NodeRef>;

    /// The primaries requests may go to now (every one, but for a sharded
    /// pool's ejected servers): those whose health readiness reports.
    fn in_service(&self) -> Vec<NodeRef> {
        self.primaries()
    }

    /// Told each time the primary is replaced by another (a Sentinel
    /// failover), for connections whose state lives on the old one; `None`
    /// where the topology does not replace its primaries so.
    fn switches(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    /// A node failed, or a slot moved: the map is due a refresh.
    fn changed(&self) {}

    /// How a request to `node` went: answered (an error reply included), or
    /// failed as `Err` says.
    fn outcome(&self, _node: &NodeRef, _result: Result<(), &Error>) {}

    /// Whether every key could be served now, and if not, why.
    fn ready(&self) -> BoxFuture<'_, Result<(), Error>>;
}
