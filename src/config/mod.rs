//! Configuration: one flat set of options merged from four sources.
//!
//! Lowest to highest precedence: built-in defaults, the TOML file named by
//! `--config` (or `REDIS_PROXY_CONFIG`), `REDIS_PROXY_<KEY>` environment
//! variables, then command-line flags. Every option has the same name in each
//! source: flag `--cache-ttl` = env `REDIS_PROXY_CACHE_TTL` = TOML `cache_ttl`.
//!
//! Validation happens here, once, so that a bad value stops the process before
//! anything is bound, with a message that names the option and where it came from.

mod cli;
mod load;
mod print;
mod rules;
mod twemproxy;
mod users;
mod validate;
mod values;

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::backend::{
    Distribution, Ejection, KeyHash, Placement, ReadFrom, RedisUrl, ShardServer,
};
pub use crate::cache::CachePolicy;
use cli::Cli;
pub use load::Invocation;
pub use rules::CacheRule;
pub use users::UserConfig;
pub use values::{ByteSize, ListenAddr, Secret, memory_available};

/// The prefix of every environment variable the proxy reads.
pub const ENV_PREFIX: &str = "REDIS_PROXY_";

/// The effective configuration of one proxy process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The backing Redis: `redis://[user:pass@]host:port[/db]`.
    pub redis_url: RedisUrl,
    /// Where the HTTP front-end listens.
    pub http_addr: ListenAddr,
    /// Where the Redis-protocol front-end listens.
    pub resp_addr: ListenAddr,
    /// Where the health and metrics endpoints listen.
    pub admin_addr: ListenAddr,
    /// How long a cached entry lives after it was fetched.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How many keys the cache holds at most.
    pub cache_capacity: NonZeroUsize,
    /// What the cache evicts when full: exact LRU, or scan-resistant S3-FIFO.
    #[serde(with = "text")]
    pub cache_policy: CachePolicy,
    /// Bytes of keys and values the cache holds at most; `None`: a quarter of the
    /// memory available (see [`Config::effective_cache_max_bytes`]).
    pub cache_max_bytes: Option<ByteSize>,
    /// Values larger than this are served but not cached; `None`: an eighth of
    /// the cache's bytes.
    pub cache_max_value_bytes: Option<ByteSize>,
    /// How long past its TTL an entry is kept to answer reads whose fetch
    /// fails (zero: never).
    #[serde(with = "humantime_serde")]
    pub cache_stale_if_error: Duration,
    /// How long past its TTL an entry answers reads at once while one
    /// background fetch refreshes it (zero: never).
    #[serde(with = "humantime_serde")]
    pub cache_stale_while_revalidate: Duration,
    /// How long an absence Redis reported is remembered (zero: never).
    #[serde(with = "humantime_serde")]
    pub cache_negative_ttl: Duration,
    /// Per key pattern, how entries live, overriding the settings above; the
    /// first rule that matches wins (TOML `[[cache_rules]]` only).
    pub cache_rules: Vec<CacheRule>,
    /// Whether the most requested keys are counted (`/hotkeys`).
    pub hot_keys: bool,
    /// The window hot keys are counted over.
    #[serde(with = "humantime_serde")]
    pub hot_keys_window: Duration,
    /// Whether Redis tells the proxy when cached keys change.
    pub invalidation: InvalidationMode,
    /// Requests in flight across the whole proxy; beyond it requests are refused.
    pub max_clients: NonZeroUsize,
    /// Requests processed at the same time; `None` means the same as `max_clients`.
    pub max_parallel: Option<NonZeroUsize>,
    /// A request not answered within this time fails with a timeout.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Open client connections per listener.
    pub max_connections: Option<NonZeroUsize>,
    /// Bytes of replies one RESP connection may have waiting to be written.
    pub client_output_limit: ByteSize,
    /// How long waiting replies may go unread before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub client_write_timeout: Duration,
    /// Unparsed input all RESP connections together may hold (beyond 64 KiB each).
    pub client_input_limit: ByteSize,
    /// Connections kept to the backing Redis.
    pub redis_pool_size: NonZeroU32,
    /// How long one attempt to connect to the backing Redis may take.
    #[serde(with = "humantime_serde")]
    pub redis_connect_timeout: Duration,
    /// How long in-flight requests may take to finish after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The shape of log lines.
    pub log_format: LogFormat,
    /// The lowest level logged: `error`, `warn`, `info`, `debug` or `trace`
    /// (`RUST_LOG`, when set and not empty, overrides it).
    pub log_level: String,
    /// Threads that run the proxy's tasks; `None` means one per CPU core.
    pub worker_threads: Option<NonZeroUsize>,
    /// The password of user `default`. When it is set, or `users` are, every
    /// client must authenticate.
    pub client_password: Option<Secret>,
    /// Named users with their key permissions (TOML `[[users]]` only).
    pub users: Vec<UserConfig>,
    /// PEM certificate chain of the proxy; with `tls_key`, the HTTP and RESP
    /// listeners speak TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: clients must present a certificate one of them
    /// signed (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// PEM CA certificates that sign the backing Redis's certificate, for a
    /// `rediss://` URL; `None`: the system's roots.
    pub redis_tls_ca: Option<PathBuf>,
    /// PEM client certificate chain the proxy presents to the backing Redis.
    pub redis_tls_cert: Option<PathBuf>,
    /// PEM private key of `redis_tls_cert`.
    pub redis_tls_key: Option<PathBuf>,
    /// Transparent mode: every command the proxy does not answer itself is
    /// forwarded to Redis, and a set of reads is cached coherently.
    pub forward_commands: bool,
    /// In transparent mode, admin commands are forwarded too.
    pub forward_admin_commands: bool,
    /// In transparent mode, backend connections held for one client's state
    /// (`MULTI`, a blocking read, subscriptions) at most.
    pub max_dedicated_connections: NonZeroUsize,
    /// With `invalidation = "tracking"`: the key names client-side caching
    /// (`CLIENT TRACKING` through the proxy) remembers at most.
    pub client_tracking_max_keys: NonZeroUsize,
    /// Whether `redis_url` names one Redis or a Redis Cluster's seed nodes.
    pub redis_mode: RedisMode,
    /// In cluster mode, where cache misses are read from.
    pub read_from: ReadFrom,
    /// In sentinel mode, the name of the master the sentinels monitor.
    pub sentinel_master: Option<String>,
    /// In sentinel mode, the sentinels' own password, if they require one.
    pub sentinel_password: Option<Secret>,
    /// In sharded mode, the pool's servers, `"host:port:weight [name]"` as
    /// twemproxy writes them (a list, or text separated by commas).
    #[serde(deserialize_with = "list_or_text")]
    pub shard_servers: Vec<String>,
    /// In sharded mode, twemproxy's key hash.
    #[serde(with = "text")]
    pub shard_hash: KeyHash,
    /// In sharded mode, twemproxy's distribution.
    #[serde(with = "text")]
    pub shard_distribution: Distribution,
    /// In sharded mode, twemproxy's hash tag: two characters, such as `{}`.
    pub shard_hash_tag: Option<String>,
    /// In sharded mode, the servers' password (twemproxy's `redis_auth`).
    pub shard_redis_auth: Option<Secret>,
    /// In sharded mode, the servers' database (twemproxy's `redis_db`).
    pub shard_redis_db: u16,
    /// In sharded mode, eject a failing server, its keys remapping to the
    /// others as twemproxy remaps them (twemproxy's `auto_eject_hosts`).
    pub shard_auto_eject_hosts: bool,
    /// Failures in a row that eject a server (`server_failure_limit`).
    pub shard_server_failure_limit: u32,
    /// How long an ejected server stays out (`server_retry_timeout`).
    #[serde(with = "humantime_serde")]
    pub shard_server_retry_timeout: Duration,
    /// A nutcracker YAML file to read the pool from; implies sharded mode.
    pub twemproxy_config: Option<PathBuf>,
    /// Which pool of `twemproxy_config` (unset: its only one).
    pub twemproxy_pool: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            redis_url: RedisUrl::default(),
            http_addr: ListenAddr::loopback(8080),
            resp_addr: ListenAddr::loopback(6380),
            admin_addr: ListenAddr::loopback(9090),
            cache_ttl: Duration::from_secs(60),
            cache_capacity: NonZeroUsize::new(10_000).expect("non-zero"),
            cache_policy: CachePolicy::Lru,
            hot_keys: false,
            hot_keys_window: Duration::from_secs(60),
            cache_max_bytes: None,
            cache_max_value_bytes: None,
            cache_stale_if_error: Duration::ZERO,
            cache_stale_while_revalidate: Duration::ZERO,
            cache_negative_ttl: Duration::ZERO,
            cache_rules: Vec::new(),
            invalidation: InvalidationMode::None,
            max_clients: NonZeroUsize::new(1024).expect("non-zero"),
            max_parallel: None,
            request_timeout: Duration::from_secs(5),
            max_connections: None,
            client_output_limit: ByteSize::mib(512),
            client_write_timeout: Duration::from_secs(30),
            client_input_limit: ByteSize::mib(256),
            redis_pool_size: NonZeroU32::new(16).expect("non-zero"),
            redis_connect_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Pretty,
            log_level: "info".to_owned(),
            worker_threads: None,
            client_password: None,
            users: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            redis_tls_ca: None,
            redis_tls_cert: None,
            redis_tls_key: None,
            forward_commands: false,
            forward_admin_commands: false,
            max_dedicated_connections: NonZeroUsize::new(256).expect("non-zero"),
            client_tracking_max_keys: NonZeroUsize::new(1_000_000).expect("non-zero"),
            redis_mode: RedisMode::Standalone,
            sentinel_master: None,
            sentinel_password: None,
            shard_servers: Vec::new(),
            shard_hash: KeyHash::default(),
            shard_distribution: Distribution::default(),
            shard_hash_tag: None,
            shard_redis_auth: None,
            shard_redis_db: 0,
            shard_auto_eject_hosts: false,
            shard_server_failure_limit: 2,
            shard_server_retry_timeout: Duration::from_secs(30),
            twemproxy_config: None,
            twemproxy_pool: None,
            read_from: ReadFrom::Primary,
        }
    }
}

/// How cached entries learn that Redis changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum InvalidationMode {
    /// Entries live for the TTL whatever happens in Redis.
    #[default]
    None,
    /// Redis's `CLIENT TRACKING` evicts a changed key within milliseconds; the
    /// TTL still applies.
    Tracking,
}

/// What the Redis URL names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RedisMode {
    /// One Redis (a primary, or a replica the proxy only reads).
    #[default]
    Standalone,
    /// A Redis Cluster: the URL names one or more seed nodes, comma-separated.
    Cluster,
    /// A Sentinel-managed primary: the URL names the sentinels,
    /// comma-separated, and `sentinel_master` the master they monitor.
    Sentinel,
    /// A twemproxy-style sharded pool: `shard_servers` (or
    /// `twemproxy_config`) names the servers; the URL is not used.
    Sharded,
}

impl std::fmt::Display for RedisMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
            RedisMode::Sharded => "sharded",
        })
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

impl InvalidationMode {
    /// The mode's name in configuration: `none` or `tracking`.
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidationMode::None => "none",
            InvalidationMode::Tracking => "tracking",
        }
    }
}

impl std::fmt::Display for InvalidationMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LogFormat {
    /// The format's name in configuration: `pretty` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file named by `--config` does not exist or cannot be read.
    #[error("config file {}: {source}", path.display())]
    File {
        /// The file that was named.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// A value could not be parsed, or a key is unknown.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Every option's key, as used in TOML and (upper-cased) in the environment.
    pub const KEYS: &'static [&'static str] = &[
        "redis_url",
        "http_addr",
        "resp_addr",
        "admin_addr",
        "cache_ttl",
        "cache_capacity",
        "cache_policy",
        "hot_keys",
        "hot_keys_window",
        "cache_max_bytes",
        "cache_max_value_bytes",
        "cache_stale_if_error",
        "cache_stale_while_revalidate",
        "cache_negative_ttl",
        "invalidation",
        "max_clients",
        "max_parallel",
        "request_timeout",
        "max_connections",
        "client_output_limit",
        "client_write_timeout",
        "client_input_limit",
        "redis_pool_size",
        "redis_connect_timeout",
        "shutdown_grace",
        "log_format",
        "log_level",
        "worker_threads",
        "client_password",
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "redis_tls_ca",
        "redis_tls_cert",
        "redis_tls_key",
        "forward_commands",
        "forward_admin_commands",
        "max_dedicated_connections",
        "client_tracking_max_keys",
        "redis_mode",
        "read_from",
        "sentinel_master",
        "sentinel_password",
        "shard_servers",
        "shard_hash",
        "shard_distribution",
        "shard_hash_tag",
        "shard_redis_auth",
        "shard_redis_db",
        "shard_auto_eject_hosts",
        "shard_server_failure_limit",
        "shard_server_retry_timeout",
        "twemproxy_config",
        "twemproxy_pool",
    ];

    /// Options whose values are always text, read from the environment as is
    /// (a password of digits stays the same digits).
    const TEXT_KEYS: &'static [&'static str] = &[
        "client_password",
        "sentinel_master",
        "sentinel_password",
        "shard_redis_auth",
    ];

    /// The pool of sharded mode: its servers and how keys are placed.
    ///
    /// # Errors
    ///
    /// A server or hash tag that cannot be read, naming the key.
    pub fn shard_pool(&self) -> Result<(Vec<ShardServer>, Placement), Error> {
        let servers = self
            .shard_servers
            .iter()
            .map(|server| server.parse())
            .collect::<Result<Vec<ShardServer>, String>>()
            .map_err(|e| Error::Invalid(format!("TOML `shard_servers`: {e}")))?;
        let hash_tag = match self.shard_hash_tag.as_deref() {
            None | Some("") => None,
            Some(tag) => match tag.as_bytes() {
                &[open, close] => Some([open, close]),
                _ => {
                    return Err(Error::Invalid(format!(
                        "TOML `shard_hash_tag`: `{tag}` is not two characters, such as \"{{}}\""
                    )));
                }
            },
        };
        let ejection = self.shard_auto_eject_hosts.then_some(Ejection {
            failure_limit: self.shard_server_failure_limit.max(1),
            retry_timeout: self.shard_server_retry_timeout,
        });
        let placement = Placement {
            hash: self.shard_hash,
            distribution: self.shard_distribution,
            hash_tag,
            ejection,
        };
        Ok((servers, placement))
    }

    /// The parallel limit in force: `max_parallel`, or `max_clients` when unset.
    pub fn effective_max_parallel(&self) -> NonZeroUsize {
        self.max_parallel.unwrap_or(self.max_clients)
    }

    /// Open connections per listener unless set: 10,000 (lowered at startup,
    /// silently, to fit the open-files limit).
    pub const DEFAULT_MAX_CONNECTIONS: NonZeroUsize = NonZeroUsize::new(10_000).expect("non-zero");

    /// The connection limit per listener asked for: `max_connections`, or
    /// [`Config::DEFAULT_MAX_CONNECTIONS`].
    pub fn effective_max_connections(&self) -> NonZeroUsize {
        self.max_connections
            .unwrap_or(Self::DEFAULT_MAX_CONNECTIONS)
    }

    /// The cache's byte capacity in force: `cache_max_bytes`, or a quarter of the
    /// memory available to the process (its container's limit, else the
    /// machine's) in whole MiB, or 1 GiB when that cannot be read.
    pub fn effective_cache_max_bytes(&self) -> ByteSize {
        self.cache_max_bytes.unwrap_or_else(|| {
            ByteSize(memory_available().map_or(1 << 30, |bytes| whole_mib(bytes / 4)))
        })
    }

    /// The largest value cached: `cache_max_value_bytes`, or an eighth of the
    /// cache's bytes, in whole MiB from 8 MiB on.
    pub fn effective_cache_max_value_bytes(&self) -> ByteSize {
        self.cache_max_value_bytes.unwrap_or_else(|| {
            let eighth = self.effective_cache_max_bytes().0 / 8;
            ByteSize(if eighth >= 1 << 20 {
                whole_mib(eighth)
            } else {
                eighth
            })
        })
    }

    /// Settings that are valid but probably not what was meant, each with why.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(parallel) = self.max_parallel
            && parallel > self.max_clients
        {
            warnings.push(format!(
                "--max-parallel {parallel} is above --max-clients {}: at most {} requests are ever in flight, so the parallel limit never binds",
                self.max_clients, self.max_clients
            ));
        }
        warnings
    }

    /// Whether clients must authenticate: a password or users are configured.
    pub fn requires_auth(&self) -> bool {
        self.client_password.is_some() || !self.users.is_empty()
    }
}

/// (De)serializes a value through its `Display` and `FromStr`: for library types
/// that should not depend on serde's derive for their configuration names.
mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<T: Display, S: Serializer>(
        value: &T,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub(super) fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A list of texts, given as a list (TOML) or as one text separated by
/// commas (a flag or a variable).
fn list_or_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Given::deserialize(deserializer)? {
        Given::List(list) => list,
        Given::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// `bytes` rounded down to whole MiB (at least one): a derived size that
/// reads as sizes are written.
fn whole_mib(bytes: u64) -> u64 {
    (bytes >> 20).max(1) << 20
}

#[cfg(test)]
mod tests;
