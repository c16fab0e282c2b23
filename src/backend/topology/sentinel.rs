//! A Sentinel-managed primary: every key on the node the sentinels say is
//! the primary of the monitored master, followed across failovers.
//!
//! The primary comes from the first sentinel that answers
//! `SENTINEL GET-MASTER-ADDR-BY-NAME`, and is used only once it says `ROLE`
//! `master`. The sentinels are asked again when a sentinel announces
//! `+switch-master` (one subscription per sentinel, kept open), when a
//! request to the primary fails, or when it answers `READONLY` (a demoted
//! node). On a switch, requests go to the new primary's lanes at once; with
//! tracking, the cache is flushed (the new primary tracks nothing we read);
//! dedicated connections (a transaction, subscriptions) end with an error,
//! as they would if Redis restarted.
//!
//! With `--read-from replica-preferred`, misses go to the primary's replicas
//! that `SENTINEL REPLICAS` lists up and in sync (`master-link-status` `ok`,
//! no `s_down`, `o_down` or `disconnected` flag), in turn; the list is asked
//! for with the primary and again every [`REPLICAS_INTERVAL`] (every second
//! while none is listed). A replica
//! that fails or has not heard of a key sends the read to the primary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, PoisonError, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{ReadFrom, Topology};
use crate::backend::connect::{Connector, Settings, Setup, Tracking};
use crate::backend::node::{Node, NodeOptions, NodeRef, Outgoing};
use crate::backend::{Error, Invalidation, RedisUrl};
use crate::protocol::{Frame, encoded};

/// How long a sentinel subscription waits before it is opened again.
const RESUBSCRIBE: Duration = Duration::from_secs(1);
/// How often the replicas are asked for again, with replica reads.
const REPLICAS_INTERVAL: Duration = Duration::from_secs(5);

/// The primary of one master that sentinels monitor.
#[derive(Debug, Clone)]
pub(crate) struct Sentinel {
    inner: Arc<Inner>,
}

struct Inner {
    /// The sentinels, as URLs carrying the sentinels' own credentials.
    sentinels: Vec<RedisUrl>,
    /// The data nodes' URL: their credentials, database and TLS.
    data: RedisUrl,
    master: String,
    read_from: ReadFrom,
    settings: Settings,
    options: NodeOptions,
    primary: RwLock<Option<NodeRef>>,
    /// With replica reads: the replicas to read from, and when they were
    /// asked for.
    replicas: RwLock<(Vec<NodeRef>, Option<tokio::time::Instant>)>,
    /// Which replica the next read goes to.
    turn: AtomicUsize,
    /// Counts the switches of primary.
    switches: tokio::sync::watch::Sender<u64>,
    nodes: Mutex<HashMap<String, NodeRef>>,
    /// Why no primary is known, when none is.
    unknown: Mutex<String>,
    asking: tokio::sync::Mutex<()>,
    /// A background ask is due.
    pending: AtomicBool,
    watching: Once,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinel")
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

impl Sentinel {
    /// The primary of `master`, as `sentinels` (each with the sentinels'
    /// `password`) say, reads going where `read_from` says; data nodes are
    /// reached as `data` says.
    pub(crate) fn new(
        sentinels: Vec<RedisUrl>,
        data: RedisUrl,
        (master, read_from): (String, ReadFrom),
        settings: Settings,
        options: NodeOptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                sentinels,
                data,
                unknown: Mutex::new(format!("no primary of master `{master}` known yet")),
                master,
                read_from,
                replicas: RwLock::default(),
                turn: AtomicUsize::new(0),
                switches: tokio::sync::watch::Sender::new(0),
                settings,
                options,
                primary: RwLock::default(),
                nodes: Mutex::default(),
                asking: tokio::sync::Mutex::new(()),
                pending: AtomicBool::new(false),
                watching: Once::new(),
            }),
        }
    }

    fn current(&self) -> Option<NodeRef> {
        self.inner
            .primary
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The data node at `addr`, made on first use.
    fn node(&self, addr: &str) -> NodeRef {
        let mut nodes = self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        nodes
            .entry(addr.to_owned())
            .or_insert_with(|| {
                let url = self.inner.data.with_address_and_db(addr);
                let connector = Connector::new(&url, &self.inner.settings);
                Arc::new(Node::new(connector, self.inner.options.clone()))
            })
            .clone()
    }

    /// Asks the sentinels for the primary and installs it once it says it is
    /// one; the first time, starts watching for switches.
    async fn discover(&self) -> Result<(), Error> {
        self.watch();
        let _one = self.inner.asking.lock().await;
        let mut last = Error::NoPrimary("no sentinel to ask".into());
        for sentinel in &self.inner.sentinels {
            match self.ask(sentinel).await {
                Ok(addr) => match self.confirm(&addr).await {
                    Ok(node) => {
                        self.install(node);
                        self.learn_replicas(sentinel).await;
                        return Ok(());
                    }
                    Err(error) => last = error,
                },
                Err(error) => {
                    tracing::debug!(sentinel = %sentinel.parts().address(), %error, "sentinel did not answer");
                    last = error;
                }
            }
        }
        *self
            .inner
            .unknown
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = last.to_string();
        Err(last)
    }

    /// What `sentinel` says the primary's address is.
    async fn ask(&self, sentinel: &RedisUrl) -> Result<String, Error> {
        let reply = self
            .sentinel_command(sentinel, "GET-MASTER-ADDR-BY-NAME")
            .await?;
        match reply.elements().as_deref().map(strings).as_deref() {
            Some([host, port]) => Ok(format!("{host}:{port}")),
            _ => Err(Error::NoPrimary(
                format!(
                    "sentinel {} does not know a master named `{}`",
                    sentinel.parts().address(),
                    self.inner.master
                )
                .into(),
            )),
        }
    }

    /// `SENTINEL <subcommand> <master>` asked of `sentinel`.
    async fn sentinel_command(
        &self,
        sentinel: &RedisUrl,
        subcommand: &'static str,
    ) -> Result<Frame, Error> {
        let connector = Connector::new(sentinel, &self.inner.settings);
        let mut link = connector.open(plain()).await?;
        let asked = async {
            let command = ["SENTINEL", subcommand, &self.inner.master];
            link.write(&encoded(&command)).await?;
            link.read().await
        };
        let reply = tokio::time::timeout(connector.timeout(), asked)
            .await
            .map_err(|_| Error::Timeout {
                what: "a SENTINEL command",
                timeout: connector.timeout(),
            })??;
        link.close().await;
        match reply.error_text() {
            Some(error) => Err(Error::Reply(error.into())),
            None => Ok(reply),
        }
    }

    /// With replica reads, the replicas `sentinel` lists up and in sync
    /// become those read from (none when it cannot say).
    async fn learn_replicas(&self, sentinel: &RedisUrl) {
        if self.inner.read_from != ReadFrom::ReplicaPreferred {
            return;
        }
        let listed = match self.sentinel_command(sentinel, "REPLICAS").await {
            Ok(reply) => in_sync_replicas(&reply),
            Err(error) => {
                tracing::debug!(sentinel = %sentinel.parts().address(), %error, "no replicas from the sentinel");
                Vec::new()
            }
        };
        let nodes: Vec<NodeRef> = listed.iter().map(|addr| self.node(addr)).collect();
        let mut replicas = self
            .inner
            .replicas
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let before: Vec<&str> = replicas.0.iter().map(|node| node.addr()).collect();
        if before != listed {
            tracing::info!(master = %self.inner.master, replicas = ?listed, "replicas to read from");
        }
        *replicas = (nodes, Some(tokio::time::Instant::now()));
    }

    /// Asks for the replicas again when they were asked for long enough ago.
    async fn refresh_replicas(&self) {
        let due = {
            let (replicas, asked) = &*self
                .inner
                .replicas
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            // None yet: soon again, as after a switch.
            let interval = if replicas.is_empty() {
                RESUBSCRIBE
            } else {
                REPLICAS_INTERVAL
            };
            asked.is_none_or(|at| at.elapsed() >= interval)
        };
        if due && let Some(sentinel) = self.inner.sentinels.first() {
            self.learn_replicas(sentinel).await;
        }
    }

    /// The node at `addr`, once it says `ROLE` `master`.
    async fn confirm(&self, addr: &str) -> Result<NodeRef, Error> {
        let node = self.node(addr);
        let role = Outgoing::read(encoded(&["ROLE"]), None, node.main_protocol());
        let reply = node.exchange(role).await?;
        let role = reply
            .elements()
            .and_then(|fields| {
                fields
                    .first()
                    .map(|first| strings(std::slice::from_ref(first)))
            })
            .and_then(|mut role| role.pop());
        match role.as_deref() {
            Some("master") => Ok(node),
            other => Err(Error::NoPrimary(
                format!(
                    "{addr}, named primary of `{}` by a sentinel, says it is {}",
                    self.inner.master,
                    other.unwrap_or("not a master")
                )
                .into(),
            )),
        }
    }

    /// Makes `node` the primary; a change flushes a tracked cache.
    fn install(&self, node: NodeRef) {
        let mut primary = self
            .inner
            .primary
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let changed = primary.as_ref().is_none_or(|old| !Arc::ptr_eq(old, &node));
        if !changed {
            return;
        }
        let first = primary.is_none();
        *primary = Some(node.clone());
        drop(primary);
        // The replicas were the old primary's: asked for again.
        *self
            .inner
            .replicas
            .write()
            .unwrap_or_else(PoisonError::into_inner) = (Vec::new(), None);
        if first {
            tracing::info!(master = %self.inner.master, primary = node.addr(), "primary found by the sentinels");
        } else {
            tracing::warn!(master = %self.inner.master, primary = node.addr(), "primary switched; requests go to the new one");
            self.inner.switches.send_modify(|switches| *switches += 1);
            if let Some((sink, _)) = &self.inner.options.tracking {
                sink(Invalidation::All);
            }
        }
    }

    /// Asks the sentinels again in the background, once however often it is
    /// called meanwhile.
    fn ask_soon(&self) {
        if self.inner.pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.inner.pending.store(false, Ordering::SeqCst);
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            this.inner.pending.store(false, Ordering::SeqCst);
            let _ = this.discover().await;
        });
    }

    /// Subscribes to `+switch-master` on every sentinel, for as long as the
    /// topology lives (started once, from inside the runtime).
    fn watch(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.inner.watching.call_once(|| {
            for sentinel in &self.inner.sentinels {
                let connector = Connector::new(sentinel, &self.inner.settings);
                let weak = Arc::downgrade(&self.inner);
                runtime.spawn(async move {
                    // Until the topology is gone.
                    while weak.strong_count() > 0 {
                        if let Ok(link) = connector.open(plain()).await {
                            listen(link, &weak).await;
                        }
                        tokio::time::sleep(RESUBSCRIBE).await;
                    }
                });
            }
        });
    }
}

/// Reads `+switch-master` announcements on `link` until it closes, asking
/// the sentinels again on each one for our master.
async fn listen(mut link: crate::backend::Link, weak: &std::sync::Weak<Inner>) {
    if link
        .write(&encoded(&["SUBSCRIBE", "+switch-master"]))
        .await
        .is_err()
    {
        return;
    }
    while let Ok(frame) = link.read().await {
        let Some(inner) = weak.upgrade() else { return };
        if switches(&frame, &inner.master) {
            Sentinel { inner }.ask_soon();
        }
    }
}

/// Whether `frame` is a `+switch-master` message about `master`
/// (`<name> <old ip> <old port> <new ip> <new port>`).
fn switches(frame: &Frame, master: &str) -> bool {
    let Some(fields) = frame.elements() else {
        return false;
    };
    let fields = strings(&fields);
    matches!(fields.as_slice(), [kind, _, payload]
        if kind == "message" && payload.split(' ').next() == Some(master))
}

/// The `ip:port` of each replica in a `SENTINEL REPLICAS` reply that is up
/// and in sync with its primary.
fn in_sync_replicas(reply: &Frame) -> Vec<String> {
    let mut addrs = Vec::new();
    for replica in reply.elements().unwrap_or_default() {
        let fields = strings(&Frame::new(replica).elements().unwrap_or_default());
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|pair| pair[0] == name)
                .and_then(|pair| pair.get(1))
                .map(String::as_str)
        };
        let flags = field("flags").unwrap_or_default();
        let down = flags
            .split(',')
            .any(|flag| matches!(flag, "s_down" | "o_down" | "disconnected"));
        if let (false, Some("ok"), Some(ip), Some(port)) = (
            down,
            field("master-link-status"),
            field("ip"),
            field("port"),
        ) {
            addrs.push(format!("{ip}:{port}"));
        }
    }
    addrs
}

/// Bulk strings as text.
fn strings(fields: &[bytes::Bytes]) -> Vec<String> {
    fields
        .iter()
        .map(|field| {
            Frame::new(field.clone())
                .bulk()
                .flatten()
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// A RESP2 link in database 0 (sentinels have no databases), untracked.
fn plain() -> Setup {
    Setup {
        resp3: false,
        db: Some(0),
        tracking: Tracking::Off,
        identify: true,
    }
}

impl Topology for Sentinel {
    fn is_prepared(&self) -> bool {
        self.current().is_some()
    }

    fn prepare(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.discover())
    }

    fn primary(&self, _slot: Option<u16>) -> Result<NodeRef, Error> {
        self.current().ok_or_else(|| {
            let unknown = self
                .inner
                .unknown
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Error::NoPrimary(unknown.clone().into())
        })
    }

    /// With replica reads, the replicas in turn (the primary behind them).
    fn reader(&self, slot: Option<u16>) -> Result<(NodeRef, NodeRef), Error> {
        let primary = self.primary(slot)?;
        let replicas = self
            .inner
            .replicas
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let reader = match replicas.0.len() {
            0 => primary.clone(),
            n => replicas.0[self.inner.turn.fetch_add(1, Ordering::Relaxed) % n].clone(),
        };
        Ok((reader, primary))
    }

    /// Redirections do not happen outside a cluster: the primary.
    fn node_at(&self, _addr: &str) -> Result<NodeRef, Error> {
        self.primary(None)
    }

    fn primaries(&self) -> Vec<NodeRef> {
        self.current().into_iter().collect()
    }

    fn switches(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.inner.switches.subscribe())
    }

    fn changed(&self) {
        self.ask_soon();
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async {
            self.watch();
            let primary = match self.current() {
                Some(primary) => primary,
                None => {
                    self.discover().await?;
                    self.primary(None)?
                }
            };
            self.refresh_replicas().await;
            primary.ping().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_is_ours_only_when_it_names_our_master() {
        let message = |payload: &str| {
            Frame::new(bytes::Bytes::from(format!(
                "*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n${}\r\n{payload}\r\n",
                payload.len()
            )))
        };
        let ours = message("mymaster 127.0.0.1 6379 127.0.0.1 6380");
        assert!(switches(&ours, "mymaster"));
        assert!(!switches(&ours, "other"));
        assert!(!switches(&message("mymaster2 a 1 b 2"), "mymaster"));
    }

    #[test]
    fn only_replicas_up_and_in_sync_are_read_from() {
        let replica = |ip: &str, flags: &str, link: &str| {
            let fields = [
                "name",
                "x",
                "ip",
                ip,
                "port",
                "6380",
                "flags",
                flags,
                "master-link-status",
                link,
            ];
            let mut out = format!("*{}\r\n", fields.len());
            for field in fields {
                out.push_str(&format!("${}\r\n{field}\r\n", field.len()));
            }
            out
        };
        let replies = [
            replica("10.0.0.1", "slave", "ok"),
            replica("10.0.0.2", "s_down,slave,disconnected", "err"),
            replica("10.0.0.3", "slave", "err"),
            replica("10.0.0.4", "slave,o_down", "ok"),
        ];
        let reply = Frame::new(bytes::Bytes::from(format!("*4\r\n{}", replies.concat())));
        assert_eq!(in_sync_replicas(&reply), ["10.0.0.1:6380"]);
    }
}
