//! A throwaway Redis Cluster: three primaries and three replicas on free
//! loopback ports, created with `redis-cli --cluster create`, torn down on drop.

use std::process::Command;
use std::time::Duration;

use super::{RedisServer, free_port, wait_until};

/// A running cluster of six `redis-server`s.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// One cluster-enabled node, its bus on a free port of its own (another
    /// is tried when that one is taken by the time the node starts).
    fn node() -> RedisServer {
        for _ in 0..5 {
            let bus = free_port().to_string();
            let started = RedisServer::try_start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                "1000",
                // A replica takes over however long since it last heard from
                // its primary (a loaded test machine is slow).
                "--cluster-replica-validity-factor",
                "0",
                // Replicas sync at once instead of waiting for others.
                "--repl-diskless-sync-delay",
                "0",
                // Slots of a failed primary stop; the others go on serving.
                "--cluster-require-full-coverage",
                "no",
                "--appendonly",
                "no",
            ]);
            if let Some(node) = started {
                return node;
            }
        }
        panic!("a cluster node did not start");
    }

    /// Starts six nodes and joins them: three primaries, one replica each.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..6).map(|_| Self::node()).collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            output.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_ok();
        // Every node knows every replica before anyone reads the slot map.
        let known = wait_until(Duration::from_secs(20), || {
            cluster.nodes.iter().all(|node| {
                let nodes: String = node.cmd(&["CLUSTER", "NODES"]);
                nodes.lines().filter(|l| l.contains("slave")).count() == 3
                    && nodes.lines().filter(|l| l.contains("master")).count() == 3
            })
        });
        assert!(known, "the replicas did not join");
        // And hold their primary's data: a replica that never synced would not
        // take over from a failed primary.
        let synced = wait_until(Duration::from_secs(20), || {
            cluster.nodes.iter().all(|node| {
                let info: String = node.cmd(&["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        assert!(synced, "the replicas did not sync");
        cluster
    }

    /// Waits until every live node says the cluster is ok and knows every node.
    pub fn wait_ok(&self) {
        let ok = wait_until(Duration::from_secs(20), || {
            self.nodes.iter().filter(|n| n.is_running()).all(|node| {
                let info: String = node.cmd(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384")
            })
        });
        assert!(ok, "the cluster did not become ok");
    }

    /// Waits until `CLUSTER SLOTS` lists a replica for every range on every
    /// node: Redis lists a replica once its primary has seen it replicate.
    pub fn wait_replicas_listed(&self) {
        let listed = wait_until(Duration::from_secs(30), || {
            self.nodes.iter().all(|node| {
                let value: redis::Value = node.cmd(&["CLUSTER", "SLOTS"]);
                let redis::Value::Array(ranges) = value else {
                    return false;
                };
                ranges
                    .iter()
                    .all(|range| matches!(range, redis::Value::Array(fields) if fields.len() >= 4))
            })
        });
        assert!(listed, "CLUSTER SLOTS does not list the replicas");
    }

    /// The seed URLs, comma-separated: the first two nodes.
    pub fn seeds(&self) -> String {
        format!("{},{}", self.nodes[0].url(), self.nodes[1].url())
    }

    /// The slot of `key`, as Redis computes it.
    pub fn slot(&self, key: &str) -> u16 {
        self.nodes[0].cmd(&["CLUSTER", "KEYSLOT", key])
    }

    /// The index in `nodes` of the primary that serves `slot` now.
    pub fn owner(&self, slot: u16) -> usize {
        let live = self
            .nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a live node");
        let slots: Vec<(i64, i64, (String, i64))> = {
            let value: redis::Value = live.cmd(&["CLUSTER", "SLOTS"]);
            let redis::Value::Array(ranges) = value else {
                panic!("CLUSTER SLOTS");
            };
            ranges
                .into_iter()
                .map(|range| {
                    let redis::Value::Array(fields) = range else {
                        panic!("a range")
                    };
                    let int = |v: &redis::Value| match v {
                        redis::Value::Int(n) => *n,
                        _ => panic!("an int"),
                    };
                    let redis::Value::Array(node) = &fields[2] else {
                        panic!("a node")
                    };
                    let host = match &node[0] {
                        redis::Value::BulkString(h) => String::from_utf8_lossy(h).into_owned(),
                        _ => panic!("a host"),
                    };
                    (int(&fields[0]), int(&fields[1]), (host, int(&node[1])))
                })
                .collect()
        };
        let (_, _, (_, port)) = slots
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&i64::from(slot)))
            .expect("slot served");
        self.nodes
            .iter()
            .position(|n| i64::from(n.port()) == *port)
            .expect("a node of the cluster")
    }

    /// The primary that holds `key` now.
    pub fn node_of(&self, key: &str) -> &RedisServer {
        &self.nodes[self.owner(self.slot(key))]
    }

    /// Sets `key` on the node that owns it.
    pub fn set(&self, key: &str, value: &str) {
        self.node_of(key).set(key, value);
    }

    /// Keys named `prefix:N`, the first found for each of the three primaries.
    pub fn key_per_primary(&self, prefix: &str) -> Vec<String> {
        let mut found: Vec<(usize, String)> = Vec::new();
        for i in 0.. {
            let key = format!("{prefix}:{i}");
            let owner = self.owner(self.slot(&key));
            if !found.iter().any(|(o, _)| *o == owner) {
                found.push((owner, key));
            }
            if found.len() == 3 {
                break;
            }
        }
        found.into_iter().map(|(_, key)| key).collect()
    }

    /// Waits until the replica of `key`'s primary holds `value` for it.
    pub fn wait_replicated(&self, key: &str, value: &str) {
        let replica = self.replica_of(self.owner(self.slot(key)));
        let copied = wait_until(Duration::from_secs(10), || {
            let (_, got): ((), Option<String>) = redis::pipe()
                .cmd("READONLY")
                .cmd("GET")
                .arg(key)
                .query(&mut self.nodes[replica].client())
                .expect("read the replica");
            got.as_deref() == Some(value)
        });
        assert!(copied, "{key} did not reach its replica");
    }

    /// The node's cluster id.
    pub fn id(&self, node: usize) -> String {
        self.nodes[node].cmd(&["CLUSTER", "MYID"])
    }

    /// The index of a replica of primary `primary`.
    pub fn replica_of(&self, primary: usize) -> usize {
        let id = self.id(primary);
        (0..self.nodes.len())
            .find(|&i| {
                i != primary && self.nodes[i].is_running() && {
                    let info: String = self.nodes[i].cmd(&["INFO", "replication"]);
                    let port = self.nodes[primary].port();
                    info.contains("role:slave") && info.contains(&format!("master_port:{port}"))
                }
            })
            .unwrap_or_else(|| panic!("no replica of {id}"))
    }
}
