//! Redis Cluster as the backing store (`--redis-mode cluster`).
//!
//! The slot map comes from `CLUSTER SLOTS`, asked of any node that answers
//! (the seeds first time); each node is reached through a [`RedisService`] of
//! its own, so pooling, per-worker lanes, pipelined miss batches and tracking
//! work per node exactly as with one Redis. A key goes to the node that owns
//! its slot (CRC16 of the key, or of its `{hash tag}`, mod 16384); the keys of
//! an `MGET` each go to their own node and are answered in the client's order.
//!
//! Redirections: `MOVED` sends the request to the node it names and refreshes
//! the map in the background; `ASK` sends `ASKING` and the request to the
//! node it names, once, without touching the map; `TRYAGAIN` (a slot being
//! migrated) is retried after a moment. A request is redirected at most
//! [`MAX_REDIRECTS`] times, all within the request timeout. A node that cannot
//! be reached fails its requests at once (502) and refreshes the map, so once
//! the cluster has promoted a replica the next requests go to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tokio::time::Instant;

use super::{Error, Manager, Options, RedisService, RedisUrl};
use crate::lookup::Key;

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16384;
/// Redirections one request follows at most.
pub const MAX_REDIRECTS: usize = 5;
/// How old the slot map may grow before a readiness check refreshes it.
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Refreshes asked for by redirections and failures start at least this long
/// after the one before.
const REFRESH_SPACING: Duration = Duration::from_millis(100);

/// Where reads go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// The primary that owns the slot.
    #[default]
    Primary,
    /// One of its replicas (with `READONLY`), the primary when it has none or
    /// the replica cannot be reached.
    ReplicaPreferred,
}

/// The slot of `key`: CRC16 (XMODEM) of the key, or of the text between the
/// first `{` and the next `}` when that is not empty, mod 16384.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS as u16
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
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
        let Value::Array(ranges) = reply else {
            return Err("CLUSTER SLOTS did not answer an array".into());
        };
        let mut map = SlotMap {
            owners: vec![None; SLOTS],
            shards: Vec::new(),
        };
        for range in ranges {
            let Value::Array(fields) = range else {
                return Err("a CLUSTER SLOTS range is not an array".into());
            };
            let (Some(Value::Int(start)), Some(Value::Int(end))) = (fields.first(), fields.get(1))
            else {
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
            for slot in (*start as usize)..=(*end as usize).min(SLOTS - 1) {
                map.owners[slot] = Some(shard as u16);
            }
        }
        Ok(map)
    }

    fn covered(&self) -> bool {
        self.owners.len() == SLOTS && self.owners.iter().all(Option::is_some)
    }
}

/// `host:port` of a node entry `[host, port, id, ...]`.
fn address(node: &Value) -> Option<String> {
    let Value::Array(fields) = node else {
        return None;
    };
    let host = match fields.first()? {
        Value::BulkString(host) => String::from_utf8_lossy(host).into_owned(),
        Value::SimpleString(host) => host.clone(),
        _ => return None,
    };
    let Value::Int(port) = fields.get(1)? else {
        return None;
    };
    Some(format!("{host}:{port}"))
}

/// One node: its service and its counters, made once.
struct Node {
    addr: String,
    service: RedisService,
    requests: metrics::Counter,
    errors: metrics::Counter,
}

/// A slot map with each shard's nodes resolved, so that routing a key costs a
/// lookup and no lock beyond the map's.
struct Routes {
    map: SlotMap,
    /// Per shard: the primary, then its replicas.
    nodes: Vec<Vec<Arc<Node>>>,
}

impl Routes {
    /// The primary serving `slot`; any primary (the first shard's) for `None`.
    fn primary(&self, slot: Option<u16>) -> Result<&Arc<Node>, Error> {
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
            .map(|shard| &shard[0])
            .ok_or_else(|| Error::Unavailable("redis cluster: no node serves the slot".into()))
    }
}

/// A Redis Cluster: its slot map and a service per node.
pub(crate) struct Cluster {
    seeds: Vec<RedisUrl>,
    options: Options,
    read_from: ReadFrom,
    /// The bound on one request, redirections included.
    timeout: Duration,
    routes: RwLock<Arc<Routes>>,
    refreshed: Mutex<Option<Instant>>,
    refreshing: tokio::sync::Mutex<()>,
    /// A background refresh is due.
    pending: AtomicBool,
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    refreshes: metrics::Counter,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seeds", &self.seeds)
            .field("read_from", &self.read_from)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub(super) fn new(seeds: Vec<RedisUrl>, options: Options, read_from: ReadFrom) -> Self {
        Self {
            seeds,
            timeout: options.response_timeout,
            options,
            read_from,
            routes: RwLock::new(Arc::new(Routes {
                map: SlotMap::default(),
                nodes: Vec::new(),
            })),
            refreshed: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            pending: AtomicBool::new(false),
            nodes: Mutex::default(),
            refreshes: metrics::counter!("redis_proxy_cluster_refreshes_total"),
        }
    }

    fn routes(&self) -> Arc<Routes> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The node at `addr`, made on first use; a replica (in `map`) reads with
    /// `READONLY`.
    fn node(&self, addr: &str, map: &SlotMap) -> Result<Arc<Node>, Error> {
        let mut nodes = self.nodes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(node) = nodes.get(addr) {
            return Ok(node.clone());
        }
        let url = self.seeds[0].with_address(addr);
        let mut options = self.options.clone();
        options.readonly = map
            .shards
            .iter()
            .any(|shard| shard[1..].iter().any(|replica| replica == addr));
        let node = Arc::new(Node {
            addr: addr.to_owned(),
            service: RedisService::new(&url, options)?,
            requests: metrics::counter!("redis_proxy_cluster_node_requests_total", "node" => addr.to_owned()),
            errors: metrics::counter!("redis_proxy_cluster_node_errors_total", "node" => addr.to_owned()),
        });
        nodes.insert(addr.to_owned(), node.clone());
        Ok(node)
    }

    /// Reads the slot map from the first node that answers: the known
    /// primaries, then the seeds.
    pub(crate) async fn refresh(&self) -> Result<(), Error> {
        let _one = self.refreshing.lock().await;
        let known = self.routes();
        let mut candidates: Vec<String> = known.map.shards.iter().map(|s| s[0].clone()).collect();
        for seed in &self.seeds {
            if let Some(addr) = seed_address(seed)
                && !candidates.contains(&addr)
            {
                candidates.push(addr);
            }
        }
        let mut last = Error::Unavailable("no cluster node to ask".into());
        for addr in candidates {
            let reply = async {
                let node = self.node(&addr, &known.map)?;
                let mut handle = node.service.connection().await?.handle();
                handle
                    .query::<Value>(&redis::cmd("CLUSTER").arg("SLOTS").clone())
                    .await
            };
            match reply
                .await
                .and_then(|reply| SlotMap::from_reply(&reply).map_err(Error::Reply))
            {
                Ok(map) => {
                    self.refreshes.increment(1);
                    let nodes = map
                        .shards
                        .iter()
                        .map(|shard| shard.iter().map(|addr| self.node(addr, &map)).collect())
                        .collect::<Result<_, _>>()?;
                    *self.routes.write().unwrap_or_else(PoisonError::into_inner) =
                        Arc::new(Routes { map, nodes });
                    *self
                        .refreshed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
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

    /// Refreshes in the background: at once, or [`REFRESH_SPACING`] after the
    /// last refresh when that was a moment ago; requests meanwhile join the
    /// one pending.
    pub(crate) fn refresh_soon(self: &Arc<Self>) {
        if self.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let wait = self
            .refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_or(Duration::ZERO, |at| {
                (at + REFRESH_SPACING).saturating_duration_since(Instant::now())
            });
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            this.pending.store(false, Ordering::SeqCst);
            if let Err(error) = this.refresh().await {
                tracing::warn!(%error, "cannot read the cluster's slot map");
            }
        });
    }

    /// The node a read of `slot` goes to, and the primary behind it.
    fn route(&self, slot: u16) -> Option<(Arc<Node>, Arc<Node>)> {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        let shard = &routes.nodes[usize::from((*routes.map.owners.get(usize::from(slot))?)?)];
        let primary = shard[0].clone();
        let reader = match self.read_from {
            ReadFrom::ReplicaPreferred if shard.len() > 1 => {
                // Spread reads over the replicas by slot.
                shard[1 + usize::from(slot) % (shard.len() - 1)].clone()
            }
            _ => primary.clone(),
        };
        Some((reader, primary))
    }

    /// Reads `key` from the node that serves its slot, following redirections.
    pub(crate) async fn get(self: Arc<Self>, key: Key) -> Result<Option<Bytes>, crate::Error> {
        if self.routes().map.owners.is_empty() {
            self.refresh().await?;
        }
        let deadline = Instant::now() + self.timeout;
        let slot = slot(&key);
        let mut redirect: Option<(Arc<Node>, bool)> = None;
        for _ in 0..=MAX_REDIRECTS {
            let (node, asking, primary) = match redirect.take() {
                Some((node, asking)) => (node.clone(), asking, node),
                None => match self.route(slot) {
                    Some((reader, primary)) => (reader, false, primary),
                    None => {
                        self.refresh_soon();
                        return Err(crate::Error::unavailable(format!(
                            "redis cluster: no node serves slot {slot}"
                        )));
                    }
                },
            };
            node.requests.increment(1);
            let result = if asking {
                node.service.get_asking(&key).await
            } else {
                node.service.clone().get_from_node(key.clone()).await
            };
            let to = |reply: &str| -> Result<Arc<Node>, crate::Error> {
                Ok(self.node(&redirect_target(reply)?, &self.routes().map)?)
            };
            match result {
                Err(crate::Error::Reply(reply)) if reply.starts_with("MOVED ") => {
                    self.refresh_soon();
                    redirect = Some((to(&reply)?, false));
                }
                Err(crate::Error::Reply(reply)) if reply.starts_with("ASK ") => {
                    redirect = Some((to(&reply)?, true));
                }
                Err(crate::Error::Reply(reply)) if reply.starts_with("TRYAGAIN") => {
                    // A multi-key operation on a slot being migrated: soon over.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(crate::Error::Reply(reply)) if reply.starts_with("CLUSTERDOWN") => {
                    // The cluster refuses queries while a slot has no primary.
                    self.refresh_soon();
                    return Err(crate::Error::unavailable(format!("redis cluster: {reply}")));
                }
                // A replica may not have heard of a key that moved in or was just
                // written: absence is confirmed by the primary.
                Ok(None) if !Arc::ptr_eq(&node, &primary) => {
                    redirect = Some((primary, false));
                }
                Err(error @ crate::Error::Unavailable { .. }) => {
                    node.errors.increment(1);
                    self.refresh_soon();
                    if !Arc::ptr_eq(&node, &primary) {
                        // A replica that cannot answer: its primary can.
                        redirect = Some((primary, false));
                    } else {
                        return Err(error);
                    }
                }
                other => return other,
            }
            if Instant::now() >= deadline {
                return Err(crate::Error::Timeout);
            }
        }
        Err(crate::Error::unavailable(format!(
            "redis cluster: more than {MAX_REDIRECTS} redirections for one key"
        )))
    }

    /// The primary serving `slot` (any primary for `None`: a command without
    /// keys), as `host:port` and how to connect to it; the map is read first
    /// if it never was.
    pub(crate) async fn primary(&self, slot: Option<u16>) -> Result<(String, Manager), Error> {
        if self.routes().map.owners.is_empty() {
            self.refresh().await?;
        }
        self.primary_now(slot)
    }

    /// [`Cluster::primary`] from the map as it is, without reading it.
    pub(crate) fn primary_now(&self, slot: Option<u16>) -> Result<(String, Manager), Error> {
        let routes = self.routes();
        let node = routes.primary(slot)?;
        Ok((node.addr.clone(), node.service.manager().clone()))
    }

    /// Calls `f` with the address and connector of the primary serving `slot`
    /// (any primary for `None`), under the map's read lock: nothing is
    /// cloned unless `f` does. Without one, `job` comes back with the error.
    pub(crate) fn with_primary<J>(
        &self,
        slot: Option<u16>,
        f: impl FnOnce(&str, &Manager, J),
        job: J,
    ) -> Result<(), (Error, J)> {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        match routes.primary(slot) {
            Ok(node) => {
                f(&node.addr, node.service.manager(), job);
                Ok(())
            }
            Err(error) => Err((error, job)),
        }
    }

    /// Every primary that serves slots, as `host:port` and how to connect to
    /// it, in address order: the order stays while the primaries do (a `SCAN`
    /// cursor counts on it).
    pub(crate) fn primaries(&self) -> Vec<(String, Manager)> {
        let routes = self.routes();
        let mut primaries: Vec<_> = routes
            .nodes
            .iter()
            .filter_map(|shard| shard.first())
            .map(|node| (node.addr.clone(), node.service.manager().clone()))
            .collect();
        primaries.sort_by(|a, b| a.0.cmp(&b.0));
        primaries
    }

    /// How to connect to the node at `addr` (a redirection's target).
    pub(crate) fn manager_at(&self, addr: &str) -> Result<Manager, Error> {
        let routes = self.routes();
        Ok(self.node(addr, &routes.map)?.service.manager().clone())
    }

    /// Whether every slot is served by a primary that answers `PING`; the map
    /// is refreshed first when it is older than [`REFRESH_INTERVAL`].
    pub(crate) async fn check(&self) -> Result<(), Error> {
        let stale = self
            .refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|at| at.elapsed() > REFRESH_INTERVAL);
        if stale {
            self.refresh().await?;
        }
        let routes = self.routes();
        if !routes.map.covered() {
            return Err(Error::Unavailable(
                "redis cluster: not every slot is served".into(),
            ));
        }
        for shard in &routes.nodes {
            let primary = &shard[0];
            primary.service.check_node().await.map_err(|error| {
                Error::Unavailable(format!(
                    "redis cluster: primary {} does not answer: {error}",
                    primary.addr
                ))
            })?;
        }
        Ok(())
    }
}

/// `host:port` of a seed URL.
fn seed_address(url: &RedisUrl) -> Option<String> {
    use redis::IntoConnectionInfo;
    let info = url.plain().as_str().into_connection_info().ok()?;
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => Some(format!("{host}:{port}")),
        redis::ConnectionAddr::TcpTls { host, port, .. } => Some(format!("{host}:{port}")),
        _ => None,
    }
}

/// The node a `MOVED slot host:port` or `ASK slot host:port` names.
fn redirect_target(reply: &str) -> Result<String, crate::Error> {
    reply
        .split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .ok_or_else(|| {
            crate::Error::unavailable(format!("redis cluster: unreadable redirection: {reply}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_including_hash_tags() {
        // Values from Redis's CLUSTER KEYSLOT.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"{user1000}.followers"), slot(b"user1000"));
        // An empty tag hashes the whole key.
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot(b"foo{{bar}}zap"), crc16(b"{bar") % 16384);
    }

    #[test]
    fn a_cluster_slots_reply_becomes_a_map() {
        let node = |port| {
            Value::Array(vec![
                Value::BulkString(b"127.0.0.1".to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
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
        let partial = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(10),
            node(7000),
        ])]);
        assert!(!SlotMap::from_reply(&partial).unwrap().covered());
    }

    #[test]
    fn redirections_name_their_target() {
        assert_eq!(
            redirect_target("MOVED 3999 127.0.0.1:6381").unwrap(),
            "127.0.0.1:6381"
        );
        assert_eq!(
            redirect_target("ASK 3999 10.0.0.2:7002").unwrap(),
            "10.0.0.2:7002"
        );
        assert!(redirect_target("MOVED").is_err());
    }
}
