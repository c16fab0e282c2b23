//! Reloading the configuration while the proxy runs (the binary's SIGHUP):
//! the file is read again and merged with the same environment and flags,
//! and what can change live changes for the requests that come next; no
//! connection is dropped and the cache is kept.
//!
//! - **Live:** the cache's lifetimes and rules ([`LIVE`]), its capacity and
//!   byte bound (shrinking evicts in policy order; LRU only), the client
//!   and parallel limits, the request timeout, the users and
//!   `client_password`, `log_level`.
//! - **Restart-only:** every other key. A change to one is logged at warn as
//!   needing a restart, by name, and its old value stays.
//! - **A bad file** (syntax, unknown key, bad value) changes nothing; the
//!   error, which names the key, is logged and counted.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use crate::admin::views::Shown;
use crate::auth::Access;
use crate::backend::RedisService;
use crate::cache::Cache;
use crate::config::Config;
use crate::layers::Stack;

/// The keys a reload applies while the proxy runs.
pub(crate) const LIVE: &[&str] = &[
    "cache_ttl",
    "cache_negative_ttl",
    "cache_stale_if_error",
    "cache_stale_while_revalidate",
    "cache_max_value_bytes",
    "cache_rules",
    "cache_capacity",
    "cache_max_bytes",
    "max_clients",
    "max_parallel",
    "request_timeout",
    "client_password",
    "users",
    "log_level",
];

/// Sets the lowest level logged (`error` … `trace`); the binary's, which
/// owns the logger.
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What a reload changes. Cheap to clone.
#[derive(Clone)]
pub struct Reloader {
    current: Arc<Mutex<Config>>,
    cache: Cache,
    stack: Stack<RedisService>,
    access: Access,
    shown: Arc<RwLock<Shown>>,
    log_level: Option<SetLogLevel>,
    ok: metrics::Counter,
    failed: metrics::Counter,
    last_success: metrics::Gauge,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// The live keys whose values changed.
    pub applied: Vec<String>,
    /// The keys that changed but need a restart (their old values stay).
    pub need_restart: Vec<String>,
}

impl Reloader {
    pub(super) fn new(
        config: Config,
        cache: Cache,
        stack: Stack<RedisService>,
        access: Access,
        shown: Arc<RwLock<Shown>>,
    ) -> Self {
        let reloads = |result: &'static str| metrics::counter!("redis_proxy_config_reloads_total", "result" => result);
        Self {
            current: Arc::new(Mutex::new(config)),
            cache,
            stack,
            access,
            shown,
            log_level: None,
            ok: reloads("ok"),
            failed: reloads("error"),
            last_success: metrics::gauge!(
                "redis_proxy_config_last_reload_success_timestamp_seconds"
            ),
        }
    }

    /// Reloads set the log level with `set` as well.
    #[must_use]
    pub fn with_log_level(mut self, set: SetLogLevel) -> Self {
        self.log_level = Some(set);
        self
    }

    /// Applies `loaded` (the configuration read again, or why it could not
    /// be): its live keys from now on, its restart-only changes logged and
    /// left, nothing at all when it is an error.
    ///
    /// # Errors
    ///
    /// The error it was given, logged and counted; nothing changed.
    pub fn reload(
        &self,
        loaded: Result<Config, crate::config::Error>,
    ) -> Result<Reloaded, crate::config::Error> {
        let new = match loaded {
            Ok(new) => new,
            Err(error) => {
                self.failed.increment(1);
                tracing::error!(%error, "reload: the configuration was not applied; nothing changed");
                return Err(error);
            }
        };
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut next, changed) = merge(&current, &new);
        let mut reloaded = Reloaded {
            applied: Vec::new(),
            need_restart: Vec::new(),
        };
        for key in changed {
            if LIVE.contains(&key.as_str()) {
                reloaded.applied.push(key);
            } else {
                tracing::warn!(key = %key, "reload: `{key}` changed but needs a restart; the old value stays");
                reloaded.need_restart.push(key);
            }
        }
        let resized = reloaded
            .applied
            .iter()
            .any(|key| key == "cache_capacity" || key == "cache_max_bytes");
        if resized
            && !self.cache.resize(
                next.cache_capacity.get(),
                next.effective_cache_max_bytes().bytes(),
            )
        {
            tracing::warn!(
                "reload: `cache_capacity` and `cache_max_bytes` need a restart with cache_policy = \"s3fifo\"; the old values stay"
            );
            next.cache_capacity = current.cache_capacity;
            next.cache_max_bytes = current.cache_max_bytes;
            reloaded
                .applied
                .retain(|key| key != "cache_capacity" && key != "cache_max_bytes");
            reloaded
                .need_restart
                .extend(["cache_capacity".to_owned(), "cache_max_bytes".to_owned()]);
        }
        self.apply(&current, &next, &reloaded.applied);
        *current = next;
        let now = SystemTime::now();
        *self.shown.write().unwrap_or_else(PoisonError::into_inner) =
            super::parts::shown(&current, Some(now));
        self.ok.increment(1);
        let seconds = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.last_success.set(seconds);
        tracing::info!(applied = ?reloaded.applied, need_restart = ?reloaded.need_restart, "reload: configuration applied");
        Ok(reloaded)
    }

    /// Applies the live keys of `next` that changed from `old`.
    fn apply(&self, old: &Config, next: &Config, applied: &[String]) {
        let (global, rules) = super::parts::policies(next);
        self.cache.set_policies(global, &rules);
        self.stack.set_limits(
            next.max_clients.get(),
            next.max_parallel.map(|parallel| parallel.get()),
            next.request_timeout,
        );
        if applied
            .iter()
            .any(|key| key == "users" || key == "client_password")
        {
            self.access.reload(old, next);
        }
        if applied.iter().any(|key| key == "log_level")
            && let Some(set) = &self.log_level
            && let Err(error) = set(&next.log_level)
        {
            tracing::warn!(%error, "reload: the log level was not changed");
        }
    }
}

/// `current` with the live keys of `new`, and every key whose value differs
/// between them.
fn merge(current: &Config, new: &Config) -> (Config, Vec<String>) {
    let before = serde_json::to_value(current).expect("a configuration is JSON");
    let after = serde_json::to_value(new).expect("a configuration is JSON");
    let mut changed: Vec<String> = Config::KEYS
        .iter()
        .chain(&["cache_rules", "users"])
        .filter(|key| before.get(**key) != after.get(**key))
        .map(|key| (*key).to_owned())
        .collect();
    changed.dedup();
    let mut next = current.clone();
    next.cache_ttl = new.cache_ttl;
    next.cache_negative_ttl = new.cache_negative_ttl;
    next.cache_stale_if_error = new.cache_stale_if_error;
    next.cache_stale_while_revalidate = new.cache_stale_while_revalidate;
    next.cache_max_value_bytes = new.cache_max_value_bytes;
    next.cache_rules = new.cache_rules.clone();
    next.cache_capacity = new.cache_capacity;
    next.cache_max_bytes = new.cache_max_bytes;
    next.max_clients = new.max_clients;
    next.max_parallel = new.max_parallel;
    next.request_timeout = new.request_timeout;
    next.client_password = new.client_password.clone();
    next.users = new.users.clone();
    next.log_level = new.log_level.clone();
    (next, changed)
}
