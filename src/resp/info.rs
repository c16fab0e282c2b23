//! The text of `INFO`: the sections Redis clients read, filled from the proxy's
//! own state.
//!
//! ```text
//! # Server        redis_version, redis_mode, proxy, process_id, tcp_port, uptime_*
//! # Clients       connected_clients, maxclients
//! # Persistence   loading:0 (clients wait while a server loads; the proxy never does)
//! # Stats         total_connections_received, rejected_connections, keyspace_*, evicted_keys, expired_keys
//! # Replication   role:master
//! ```

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use super::session::REDIS_VERSION;
use crate::cache::Cache;
use crate::conn::Stats;
use crate::limit::Slots;

/// Where the figures come from.
pub(super) struct Sources {
    pub(super) cache: Cache,
    /// The listener's connection slots: connected clients and the limit.
    pub(super) slots: Slots,
    pub(super) stats: Arc<Stats>,
    pub(super) port: u16,
    pub(super) started: Instant,
    /// The proxy section's counts when `CONFIG RESETSTAT` last ran.
    pub(super) baseline: std::sync::Mutex<Counts>,
}

/// What `CONFIG RESETSTAT` resets: hits, misses, stale answers.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counts {
    hits: u64,
    misses: u64,
    stale: u64,
}

impl Sources {
    /// The `INFO` text for `sections` (none: the default sections).
    pub(super) fn text(&self, sections: &[Bytes]) -> String {
        let wanted = |name: &str| {
            sections.is_empty()
                || sections.iter().any(|s| {
                    let s = s.to_ascii_lowercase();
                    s == name.as_bytes() || s == b"all" || s == b"everything" || s == b"default"
                })
        };
        let stats = self.cache.stats();
        let uptime = self.started.elapsed().as_secs();
        let mut out = String::new();
        let mut section = |name: &str, lines: &[(&str, &dyn std::fmt::Display)]| {
            if wanted(&name.to_ascii_lowercase()) {
                if !out.is_empty() {
                    out.push_str("\r\n");
                }
                let _ = write!(out, "# {name}\r\n");
                for (key, value) in lines {
                    let _ = write!(out, "{key}:{value}\r\n");
                }
            }
        };
        section(
            "Server",
            &[
                ("redis_version", &REDIS_VERSION),
                ("redis_mode", &"standalone"),
                (
                    "proxy",
                    &format_args!("redis-proxy {}", env!("CARGO_PKG_VERSION")),
                ),
                ("process_id", &std::process::id()),
                ("tcp_port", &self.port),
                ("uptime_in_seconds", &uptime),
                ("uptime_in_days", &(uptime / 86_400)),
            ],
        );
        section(
            "Clients",
            &[
                ("connected_clients", &self.slots.taken()),
                ("maxclients", &self.slots.size()),
            ],
        );
        section("Persistence", &[("loading", &0)]);
        section(
            "Stats",
            &[
                (
                    "total_connections_received",
                    &self.stats.received.load(Ordering::Relaxed),
                ),
                (
                    "rejected_connections",
                    &self.stats.rejected.load(Ordering::Relaxed),
                ),
                ("keyspace_hits", &stats.hits),
                ("keyspace_misses", &stats.misses),
                ("evicted_keys", &stats.evictions),
                ("expired_keys", &stats.expirations),
            ],
        );
        section("Replication", &[("role", &"master")]);
        out
    }

    fn counts(&self) -> Counts {
        let stats = self.cache.stats();
        Counts {
            hits: stats.hits,
            misses: stats.misses,
            stale: self.cache.stale_served(),
        }
    }

    /// `CONFIG RESETSTAT`: the proxy section counts from zero again.
    pub(super) fn reset(&self) {
        *self
            .baseline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = self.counts();
    }

    /// Transparent mode's `# Proxy` section, appended to Redis's own `INFO`
    /// (which `from`, a node's address, answered): the proxy's version,
    /// uptime, clients and cache, its field names prefixed `proxy_` so that
    /// none shadows one of Redis's.
    pub(super) fn proxy_section(&self, from: Option<&str>) -> String {
        let now = self.counts();
        let base = *self
            .baseline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::from("# Proxy\r\n");
        let mut line = |key: &str, value: &dyn std::fmt::Display| {
            let _ = write!(out, "{key}:{value}\r\n");
        };
        line("proxy_version", &env!("CARGO_PKG_VERSION"));
        line("proxy_uptime_in_seconds", &self.started.elapsed().as_secs());
        line("proxy_connected_clients", &self.slots.taken());
        line("proxy_cache_entries", &self.cache.len());
        line("proxy_cache_bytes", &self.cache.bytes());
        line("proxy_cache_hits", &now.hits.saturating_sub(base.hits));
        line(
            "proxy_cache_misses",
            &now.misses.saturating_sub(base.misses),
        );
        line("proxy_stale_served", &now.stale.saturating_sub(base.stale));
        if let Some(from) = from {
            line("proxy_info_from", &from);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sources() -> Sources {
        Sources {
            cache: Cache::new(4, Duration::from_secs(60)),
            slots: Slots::new(10),
            stats: Arc::default(),
            port: 6380,
            started: Instant::now(),
            baseline: std::sync::Mutex::default(),
        }
    }

    #[test]
    fn default_sections_are_all_there() {
        let text = sources().text(&[]);
        for line in [
            "# Server\r\n",
            "redis_version:7.0.0\r\n",
            "tcp_port:6380\r\n",
            "maxclients:10\r\n",
            "loading:0\r\n",
            "keyspace_hits:0\r\n",
            "role:master\r\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
    }

    #[test]
    fn the_proxy_section_counts_from_the_last_resetstat() {
        let sources = sources();
        let key = crate::lookup::Key::from("k");
        sources.cache.insert(&key, &Bytes::from("v"));
        sources.cache.get(&key);
        let text = sources.proxy_section(Some("127.0.0.1:7000"));
        assert!(text.starts_with("# Proxy\r\nproxy_version:"), "{text}");
        for line in [
            "proxy_cache_entries:1\r\n",
            "proxy_cache_hits:1\r\n",
            "proxy_info_from:127.0.0.1:7000\r\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        sources.reset();
        assert!(
            sources
                .proxy_section(None)
                .contains("proxy_cache_hits:0\r\n")
        );
    }

    #[test]
    fn one_section_is_that_section_only() {
        let text = sources().text(&[Bytes::from("STATS")]);
        assert!(text.starts_with("# Stats\r\n"), "{text}");
        assert!(!text.contains("# Server"), "{text}");
    }
}
