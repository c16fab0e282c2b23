//! A twemproxy-style sharded pool: independent Redis servers, each key on the
//! one server nutcracker would put it on (the same hash, distribution,
//! weights, names and hash tag), so that a pool nutcracker filled is read
//! where its data is.

mod continuum;
mod ejection;
mod hash;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::Topology;
use crate::backend::Error;
use crate::backend::node::NodeRef;

pub use continuum::Distribution;
use continuum::{Continuum, Weighted};
use ejection::Ejecting;
pub use ejection::Ejection;
pub use hash::KeyHash;

/// One server of a pool, from twemproxy's `"host:port:weight [name]"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardServer {
    /// `host:port`.
    pub addr: String,
    /// Its share of the keys, relative to the others' (at least 1).
    pub weight: u32,
    /// What the distribution hashes for it: the name given, else
    /// `host:port` (`host` alone for port 11211, as nutcracker does).
    pub name: String,
}

impl std::str::FromStr for ShardServer {
    type Err = String;

    /// Parses `"host:port:weight [name]"` as nutcracker does: from the end.
    fn from_str(text: &str) -> Result<Self, String> {
        let form = || format!("`{text}` is not \"host:port:weight [name]\"");
        let (spec, name) = match text.rsplit_once(' ') {
            Some((spec, name)) if !name.is_empty() => (spec.trim_end(), Some(name)),
            _ => (text, None),
        };
        let (rest, weight) = spec.rsplit_once(':').ok_or_else(form)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(form)?;
        let weight: u32 = weight.parse().map_err(|_| form())?;
        let port: u16 = port.parse().map_err(|_| form())?;
        if weight == 0 {
            return Err(format!("`{text}` has a zero weight"));
        }
        if host.is_empty() {
            return Err(form());
        }
        let addr = format!("{host}:{port}");
        let name = match name {
            Some(name) => name.to_owned(),
            None if port == 11211 => host.to_owned(),
            None => addr.clone(),
        };
        Ok(Self { addr, weight, name })
    }
}

/// How a pool places keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The key hash.
    pub hash: KeyHash,
    /// How hashes map to servers.
    pub distribution: Distribution,
    /// Two bytes: only the part of a key between them is hashed, when there
    /// is a non-empty one (`{}`).
    pub hash_tag: Option<[u8; 2]>,
    /// Whether failing servers are ejected and their keys remapped (by
    /// default they are not: a failing server's keys fail).
    pub ejection: Option<Ejection>,
}

/// A pool of servers, each key on one.
#[derive(Debug)]
pub(crate) struct Sharded {
    /// In the pool's order (what the continuum's indexes name).
    servers: Vec<NodeRef>,
    /// Over every server; with ejection, the live continuum is `ejecting`'s.
    continuum: Continuum,
    ejecting: Option<Ejecting>,
    placement: Placement,
}

impl Sharded {
    /// A pool of `servers` (their nodes in the same order as `specs`).
    pub(crate) fn new(servers: Vec<NodeRef>, specs: &[ShardServer], placement: Placement) -> Self {
        let weighted: Vec<Weighted> = specs
            .iter()
            .map(|spec| Weighted {
                name: spec.name.clone(),
                weight: spec.weight,
            })
            .collect();
        let ejecting = placement.ejection.map(|policy| {
            let addrs = servers.iter().map(|node| node.addr().to_owned()).collect();
            Ejecting::new(policy, placement.distribution, weighted.clone(), addrs)
        });
        Self {
            continuum: Continuum::new(placement.distribution, &weighted, |_| true),
            ejecting,
            servers,
            placement,
        }
    }

    /// The index of the server `key` is on (nutcracker's `server_pool_idx`).
    fn index(&self, key: &[u8]) -> usize {
        if self.servers.len() == 1 {
            return 0;
        }
        let key = match self.placement.hash_tag {
            Some(tag) => tagged(key, tag),
            None => key,
        };
        let hash = if key.is_empty() {
            0
        } else {
            self.placement.hash.hash(key)
        };
        match &self.ejecting {
            None => self.continuum.dispatch(hash),
            Some(ejecting) => ejecting.live().continuum.dispatch(hash),
        }
    }

    /// The place of `node` in the pool.
    fn position(&self, node: &NodeRef) -> Option<usize> {
        self.servers
            .iter()
            .position(|server| Arc::ptr_eq(server, node))
    }
}

/// Whether a request's failure counts toward ejecting its server: the
/// server failed it (no connection, a lost one, no reply in time, or it is
/// short-circuited for those), not the request.
fn counts_against(error: &Error) -> bool {
    matches!(error, Error::ShortCircuited { .. })
        || (crate::backend::circuit::is_node_failure(error) && !matches!(error, Error::Reply(_)))
}

/// The part of `key` between the tag's two bytes, when it is not empty;
/// else the whole key.
fn tagged(key: &[u8], [open, close]: [u8; 2]) -> &[u8] {
    let Some(start) = key.iter().position(|&b| b == open) else {
        return key;
    };
    match key[start + 1..].iter().position(|&b| b == close) {
        Some(len) if len > 0 => &key[start + 1..start + 1 + len],
        _ => key,
    }
}

impl Topology for Sharded {
    /// The server's index stands for the slot: keys of one server go
    /// together, keys of different ones cannot be sent as one command.
    fn slot(&self, key: &[u8]) -> Option<u16> {
        u16::try_from(self.index(key)).ok()
    }

    fn spreads_keys(&self) -> bool {
        self.servers.len() > 1
    }

    fn splits_commands(&self) -> bool {
        true
    }

    fn primary(&self, slot: Option<u16>) -> Result<NodeRef, Error> {
        let index = slot.map_or(0, usize::from);
        if let Some(ejecting) = &self.ejecting
            && ejecting.live().continuum.is_empty()
        {
            return Err(Error::Ejected(
                "every server of the pool is ejected (shard_auto_eject_hosts) until its retry timeout".into(),
            ));
        }
        self.servers
            .get(index)
            .cloned()
            .ok_or_else(|| Error::Cluster(format!("no server {index} in the pool").into()))
    }

    fn node_at(&self, addr: &str) -> Result<NodeRef, Error> {
        self.servers
            .iter()
            .find(|node| node.addr() == addr)
            .cloned()
            .ok_or_else(|| Error::Cluster(format!("{addr} is not a server of the pool").into()))
    }

    fn primaries(&self) -> Vec<NodeRef> {
        let mut servers = self.servers.clone();
        servers.sort_by(|a, b| a.addr().cmp(b.addr()));
        servers
    }

    fn in_service(&self) -> Vec<NodeRef> {
        let Some(ejecting) = &self.ejecting else {
            return self.primaries();
        };
        let live = ejecting.live();
        let mut servers = self.primaries();
        servers.retain(|node| {
            self.position(node)
                .is_none_or(|index| !ejecting.is_out(&live, index))
        });
        servers
    }

    fn outcome(&self, node: &NodeRef, result: Result<(), &Error>) {
        let Some(ejecting) = &self.ejecting else {
            return;
        };
        let Some(index) = self.position(node) else {
            return;
        };
        match result {
            Ok(()) => ejecting.answered(index),
            Err(error) if counts_against(error) => ejecting.failed(index),
            Err(_) => {}
        }
    }

    /// Every server answers; with ejection, every server not ejected (and
    /// at least one is in).
    fn ready(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async {
            let servers = self.in_service();
            if servers.is_empty() {
                return Err(Error::Ejected("every server of the pool is ejected".into()));
            }
            for server in &servers {
                server.ping().await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_as_nutcracker_parses_them() {
        let plain: ShardServer = "127.0.0.1:6379:1".parse().unwrap();
        assert_eq!(
            plain,
            ShardServer {
                addr: "127.0.0.1:6379".into(),
                weight: 1,
                name: "127.0.0.1:6379".into()
            }
        );
        let named: ShardServer = "10.0.0.1:6380:3 server1".parse().unwrap();
        assert_eq!((named.weight, named.name.as_str()), (3, "server1"));
        let memcached: ShardServer = "cache:11211:1".parse().unwrap();
        assert_eq!(memcached.name, "cache");
        assert!("127.0.0.1:6379".parse::<ShardServer>().is_err());
        assert!("127.0.0.1:6379:0".parse::<ShardServer>().is_err());
    }

    #[test]
    fn a_hash_tag_narrows_the_key_only_when_it_holds_something() {
        let tag = *b"{}";
        assert_eq!(tagged(b"user:{42}:name", tag), b"42");
        assert_eq!(tagged(b"user:{}:name", tag), b"user:{}:name");
        assert_eq!(tagged(b"user:{42", tag), b"user:{42");
        assert_eq!(tagged(b"plain", tag), b"plain");
    }
}
