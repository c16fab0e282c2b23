//! One Redis: every key on one node.

use futures_util::future::BoxFuture;

use super::Topology;
use crate::backend::Error;
use crate::backend::node::NodeRef;

/// One Redis serving every key.
#[derive(Debug)]
pub(crate) struct Standalone {
    node: NodeRef,
}

impl Standalone {
    /// Every key on `node`.
    pub(crate) fn new(node: NodeRef) -> Self {
        Self { node }
    }
}

impl Topology for Standalone {
    fn primary(&self, _slot: Option<u16>) -> Result<NodeRef, Error> {
        Ok(self.node.clone())
    }

    /// One Redis redirects nowhere: a redirection names the node itself.
    fn node_at(&self, _addr: &str) -> Result<NodeRef, Error> {
        Ok(self.node.clone())
    }

    fn primaries(&self) -> Vec<NodeRef> {
        vec![self.node.clone()]
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.node.ping())
    }
}
