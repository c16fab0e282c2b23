//! Redis Cluster as the backing store (`--redis-mode cluster`).
//!
//! The slot map comes from `CLUSTER SLOTS`, asked of any node that answers
//! (the known primaries, then the seeds); each node is a [`Node`] of its own,
//! so lanes, pipelining and tracking work per node exactly as with one Redis.
//! A key goes to the node that owns its slot. A redirection or a node that
//! fails refreshes the map in the background (coalesced, at most every
//! [`REFRESH_SPACING`]); readiness refreshes it when it is older than
//! [`REFRESH_INTERVAL`], and is ready when every slot is served by a primary
//! that answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::Topology;
use super::slot::{SLOTS, slot};
use crate::backend::Error;
use crate::backend::connect::{Connector, Settings};
use crate::backend::node::{Node, NodeOptions, NodeRef, Outgoing};
use crate::backend::url::RedisUrl;
use crate::protocol::{Value, encoded};
use crate::throttle::{Throttle, held_back};

/// How old the slot map may grow before a readiness check refreshes it.
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Refreshes asked for by redirections and failures start at least this long
/// after the one before.
const REFRESH_SPACING: Duration = Duration::from_millis(100);

/// Where a cluster's reads go (`--read-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ReadFrom {
    /// The primary that owns the slot (`primary`).
    #[default]
    Primary,
    /// One of its replicas (with `READONLY`), the primary when it has none or
    /// the replica cannot be reached (`replica-preferred`).
    ReplicaPreferred,
}

impl ReadFrom {
    /// Every choice, as named in configuration.
    pub const NAMES: &'static [&'static str] = &["primary", "replica-preferred"];

    /// The choice's name in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadFrom::Primary => "primary",
            ReadFrom::ReplicaPreferred => "replica-preferred",
        }
    }
}

impl std::fmt::Display for ReadFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ReadFrom {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "primary" => Ok(ReadFrom::Primary),
            "replica-preferred" => Ok(ReadFrom::ReplicaPreferred),
            other => Err(format!(
                "`{other}` is not one of: {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// Who serves each slot.
#[derive(Debug, Default)]
struct SlotMap {
    /// For each slot, the index of its shard in `shards`; `None`: uncovered.
    owners: Vec<Option<u16>>,
    /// Each shard's primary, then its replicas, as `host:port`.
    shards: Vec<Vec<String>>,
}

impl SlotMap {
    /// The map a `CLUSTER SLOTS` reply describes.
    fn from_reply(reply: &Value) -> Result<Self, String> {
        let ranges = reply
            .items()
            .ok_or("CLUSTER SLOTS did not answer an array")?;
        let mut map = SlotMap {
            owners: vec![None; SLOTS],
            shards: Vec::new(),
        };
        for range in ranges {
            let fields = range
                .items()
                .ok_or("a CLUSTER SLOTS range is not an array")?;
            let (Some(start), Some(end)) = (
                fields.first().and_then(Value::int),
                fields.get(1).and_then(Value::int),
            ) else {
                return Err("a CLUSTER SLOTS range has no bounds".into());
            };
            let nodes: Vec<String> = fields[2..].iter().filter_map(address).collect();
            if nodes.is_empty() {
                continue;
            }
            let shard = match map.shards.iter().position(|s| s[0] == nodes[0]) {
                Some(shard) => shard,
                None => {
                    map.shards.push(nodes);
                    map.shards.len() - 1
                }
            };
            let (start, end) = (start.max(0) as usize, (end.max(0) as usize).min(SLOTS - 1));
            for owner in &mut map.owners[start..=end] {
                *owner = Some(shard as u16);
            }
        }
        Ok(map)
    }

    fn covered(&self) -> bool {
        self.owners.len() == SLOTS && self.owners.iter().all(Option::is_some)
    }

    fn is_replica(&self, addr: &str) -> bool {
        self.shards
            .iter()
            .any(|shard| shard[1..].iter().any(|replica| replica == addr))
    }
}

/// `host:port` of a node entry `[host, port, id, ...]`.
fn address(node: &Value) -> Option<String> {
    let fields = node.items()?;
    let host = String::from_utf8_lossy(fields.first()?.text()?).into_owned();
    let port = fields.get(1)?.int()?;
    Some(format!("{host}:{port}"))
}

/// A slot map with each shard's nodes resolved.
#[derive(Default)]
struct Routes {
    map: SlotMap,
    /// Per shard: the primary, then its replicas.
    nodes: Vec<Vec<NodeRef>>,
}

impl Routes {
    /// The shard serving `slot`; the first for `None`.
    fn shard(&self, slot: Option<u16>) -> Result<&[NodeRef], Error> {
        let shard = match slot {
            Some(slot) => self
                .map
                .owners
                .get(usize::from(slot))
                .copied()
                .flatten()
                .map(usize::from),
            None => (!self.nodes.is_empty()).then_some(0),
        };
        shard
            .and_then(|shard| self.nodes.get(shard))
            .map(Vec::as_slice)
            .ok_or_else(|| match slot {
                Some(slot) => Error::Cluster(format!("no node serves slot {slot}").into()),
                None => Error::Cluster("no node serves any slot".into()),
            })
    }
}

/// A Redis Cluster: its slot map and a node per address.
#[derive(Debug, Clone)]
pub(crate) struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    seeds: Vec<RedisUrl>,
    settings: Settings,
    options: NodeOptions,
    read_from: ReadFrom,
    routes: RwLock<Arc<Routes>>,
    refreshed: Mutex<Option<Instant>>,
    refreshing: tokio::sync::Mutex<()>,
    /// A background refresh is due.
    pending: AtomicBool,
    nodes: Mutex<HashMap<String, NodeRef>>,
    refreshes: metrics::Counter,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seeds", &self.seeds)
            .field("read_from", &self.read_from)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A cluster known by its `seeds`, its map not read yet.
    pub(crate) fn new(
        seeds: Vec<RedisUrl>,
        settings: Settings,
        mut options: NodeOptions,
        read_from: ReadFrom,
    ) -> Self {
        options.per_node_metrics = true;
        Self {
            inner: Arc::new(Inner {
                seeds,
                settings,
                options,
                read_from,
                routes: RwLock::default(),
                refreshed: Mutex::new(None),
                refreshing: tokio::sync::Mutex::new(()),
                pending: AtomicBool::new(false),
                nodes: Mutex::default(),
                refreshes: metrics::counter!("redis_proxy_cluster_refreshes_total"),
            }),
        }
    }

    fn routes(&self) -> Arc<Routes> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The node at `addr`, made on first use; a replica reads with `READONLY`.
    fn node(&self, addr: &str, map: &SlotMap) -> NodeRef {
        let mut nodes = self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(node) = nodes.get(addr) {
            return node.clone();
        }
        let url = self.inner.seeds[0].with_address(addr);
        let connector = Connector::new(&url, &self.inner.settings).readonly(map.is_replica(addr));
        let node = Arc::new(Node::new(connector, self.inner.options.clone()));
        nodes.insert(addr.to_owned(), node.clone());
        node
    }

    /// Reads the slot map from the first node that answers: the known
    /// primaries, then the seeds.
    async fn refresh(&self) -> Result<(), Error> {
        let _one = self.inner.refreshing.lock().await;
        let known = self.routes();
        let mut candidates: Vec<String> = known.map.shards.iter().map(|s| s[0].clone()).collect();
        for seed in &self.inner.seeds {
            let addr = seed.parts().address();
            if !candidates.contains(&addr) {
                candidates.push(addr);
            }
        }
        let mut last = Error::Cluster("no node to ask for the slot map".into());
        for addr in candidates {
            let node = self.node(&addr, &known.map);
            let asked = Outgoing::read(encoded(&["CLUSTER", "SLOTS"]), None, false);
            let map =
                match node.exchange(asked).await {
                    Ok(frame) => Value::of(&frame)
                        .map_err(Error::Protocol)
                        .and_then(|value| match value {
                            Value::Error(error) => {
                                Err(Error::Reply(String::from_utf8_lossy(&error).into()))
                            }
                            value => {
                                SlotMap::from_reply(&value).map_err(|e| Error::Cluster(e.into()))
                            }
                        }),
                    Err(error) => Err(error),
                };
            match map {
                Ok(map) => {
                    self.install(map);
                    return Ok(());
                }
                Err(error) => {
                    tracing::debug!(node = %addr, %error, "CLUSTER SLOTS failed");
                    last = error;
                }
            }
        }
        Err(last)
    }

    fn install(&self, map: SlotMap) {
        self.inner.refreshes.increment(1);
        let nodes = map
            .shards
            .iter()
            .map(|shard| shard.iter().map(|addr| self.node(addr, &map)).collect())
            .collect();
        *self
            .inner
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Routes { map, nodes });
        *self
            .inner
            .refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Refreshes in the background: at once, or [`REFRESH_SPACING`] after the
    /// last refresh when that was a moment ago; asks meanwhile join the one
    /// pending.
    fn refresh_soon(&self) {
        if self.inner.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let wait = self
            .inner
            .refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(Duration::ZERO, |at| {
                (at + REFRESH_SPACING).saturating_duration_since(Instant::now())
            });
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            this.inner.pending.store(false, Ordering::SeqCst);
            static FAILED: Throttle = Throttle::new();
            if let Err(error) = this.refresh().await
                && let Some(held) = FAILED.admit()
            {
                tracing::warn!(%error, "cannot read the cluster's slot map{}", held_back(held));
            }
        });
    }
}

impl Topology for Cluster {
    fn slot(&self, key: &[u8]) -> Option<u16> {
        Some(slot(key))
    }

    fn spreads_keys(&self) -> bool {
        true
    }

    fn is_prepared(&self) -> bool {
        !self.routes().map.owners.is_empty()
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async {
            if self.is_prepared() {
                return Ok(());
            }
            self.refresh().await
        })
    }

    fn primary(&self, slot: Option<u16>) -> Result<NodeRef, Error> {
        Ok(self.routes().shard(slot)?[0].clone())
    }

    fn reader(&self, slot: Option<u16>) -> Result<(NodeRef, NodeRef), Error> {
        let routes = self.routes();
        let shard = routes.shard(slot)?;
        let primary = shard[0].clone();
        let reader = match (self.inner.read_from, slot) {
            // Spread reads over the replicas by slot.
            (ReadFrom::ReplicaPreferred, Some(slot)) if shard.len() > 1 => {
                shard[1 + usize::from(slot) % (shard.len() - 1)].clone()
            }
            _ => primary.clone(),
        };
        Ok((reader, primary))
    }

    fn node_at(&self, addr: &str) -> Result<NodeRef, Error> {
        Ok(self.node(addr, &self.routes().map))
    }

    fn primaries(&self) -> Vec<NodeRef> {
        let mut primaries: Vec<NodeRef> = self
            .routes()
            .nodes
            .iter()
            .filter_map(|shard| shard.first().cloned())
            .collect();
        primaries.sort_by(|a, b| a.addr().cmp(b.addr()));
        primaries
    }

    fn changed(&self) {
        self.refresh_soon();
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async {
            let stale = self
                .inner
                .refreshed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_none_or(|at| at.elapsed() > REFRESH_INTERVAL);
            if stale {
                self.refresh().await?;
            }
            let routes = self.routes();
            if !routes.map.covered() {
                return Err(Error::Cluster("not every slot is served".into()));
            }
            for shard in &routes.nodes {
                let primary = &shard[0];
                primary.ping().await.map_err(|error| {
                    Error::Cluster(
                        format!("primary {} does not answer: {error}", primary.addr()).into(),
                    )
                })?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_cluster_slots_reply_becomes_a_map() {
        let node = |port| {
            Value::Array(vec![
                Value::Text(Bytes::from("127.0.0.1")),
                Value::Int(port),
                Value::Text(Bytes::from("id")),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                node(7000),
                node(7003),
            ]),
            Value::Array(vec![Value::Int(8192), Value::Int(16383), node(7001)]),
        ]);
        let map = SlotMap::from_reply(&reply).unwrap();
        assert!(map.covered());
        assert_eq!(map.shards[0], ["127.0.0.1:7000", "127.0.0.1:7003"]);
        assert_eq!(map.owners[8191], Some(0));
        assert_eq!(map.owners[8192], Some(1));
        assert!(map.is_replica("127.0.0.1:7003") && !map.is_replica("127.0.0.1:7000"));
        let partial = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(10),
            node(7000),
        ])]);
        assert!(!SlotMap::from_reply(&partial).unwrap().covered());
    }
}
