//! Command-line flags: the highest-precedence configuration source.
//!
//! Every field is optional so that an absent flag leaves the value from a lower
//! source in place. clap reads only `--config` from the environment; the other
//! `REDIS_PROXY_*` variables are merged by figment in `Config::load`, so each
//! source is read exactly once. The `[env: …] [default: …]` notes in the help
//! are written out because clap would otherwise read the variables itself.

// The field docs are the `--help` text, where `[env: …]`, `[default: …]` and
// `redis://[user:pass@]host` are literal brackets, not links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;

use super::{InvalidationMode, LogFormat};

/// redis-proxy: a read-through caching proxy in front of one Redis, served over
/// HTTP (`GET /{key}`) and the Redis protocol.
///
/// Precedence, lowest to highest: defaults, the TOML file, REDIS_PROXY_* environment
/// variables, these flags. Durations use humantime syntax: 500ms, 30s, 2m.
#[derive(Debug, Default, Clone, Parser, Serialize)]
// A flag given twice takes its last value, as wrapper scripts that append to a
// command line expect. A negative number is taken as a value, so that its
// error names the option it was given to.
#[command(
    name = "redis-proxy",
    version,
    args_override_self = true,
    allow_negative_numbers = true
)]
pub(crate) struct Cli {
    /// TOML configuration file with any of the keys below (underscored: cache_ttl)
    #[arg(long, env = "REDIS_PROXY_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Print the effective configuration as TOML (secrets as ***) and exit
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,

    /// Backing Redis, redis://[user:pass@]host:port[/db] [env: REDIS_PROXY_REDIS_URL] [default: redis://127.0.0.1:6379]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,

    /// HTTP listener [env: REDIS_PROXY_HTTP_ADDR] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,

    /// Redis-protocol listener [env: REDIS_PROXY_RESP_ADDR] [default: 127.0.0.1:6380]
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resp_addr: Option<String>,

    /// Health and metrics listener [env: REDIS_PROXY_ADMIN_ADDR] [default: 127.0.0.1:9090]
    #[arg(long, value_name = "HOST:PORT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_addr: Option<String>,

    /// Global expiry of every cached entry [env: REDIS_PROXY_CACHE_TTL] [default: 60s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<String>,

    /// Cache capacity in keys, at least 1 [env: REDIS_PROXY_CACHE_CAPACITY] [default: 10000]
    #[arg(long, value_parser = whole_number, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_capacity: Option<u64>,

    /// Eviction policy: exact lru, or scan-resistant s3fifo [env: REDIS_PROXY_CACHE_POLICY] [default: lru]
    #[arg(long, value_name = "POLICY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_policy: Option<String>,

    /// Bytes of keys and values the cache holds at most, as 512mb or 2gb [env: REDIS_PROXY_CACHE_MAX_BYTES] [default: a quarter of the memory available]
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_max_bytes: Option<String>,

    /// Values larger than this are served but not cached [env: REDIS_PROXY_CACHE_MAX_VALUE_BYTES] [default: an eighth of --cache-max-bytes]
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_max_value_bytes: Option<String>,

    /// Count the most requested keys, for /hotkeys (about 20 ns a request) [env: REDIS_PROXY_HOT_KEYS] [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_keys: Option<bool>,

    /// The window hot keys are counted over [env: REDIS_PROXY_HOT_KEYS_WINDOW] [default: 60s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hot_keys_window: Option<String>,

    /// Keep entries this long past their TTL to answer reads whose fetch fails; 0s: never [env: REDIS_PROXY_CACHE_STALE_IF_ERROR] [default: 0s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_stale_if_error: Option<String>,

    /// Past the TTL, answer at once from the entry this long while one background fetch refreshes it; 0s: never [env: REDIS_PROXY_CACHE_STALE_WHILE_REVALIDATE] [default: 0s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_stale_while_revalidate: Option<String>,

    /// Remember a key Redis says is absent this long; 0s: never [env: REDIS_PROXY_CACHE_NEGATIVE_TTL] [default: 0s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_negative_ttl: Option<String>,

    /// none: entries live for the TTL; tracking: Redis evicts changed keys within milliseconds [env: REDIS_PROXY_INVALIDATION] [default: none]
    #[arg(long, value_name = "MODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalidation: Option<InvalidationMode>,

    /// Requests in flight across the whole proxy; beyond it a request is refused at once [env: REDIS_PROXY_MAX_CLIENTS] [default: 1024]
    #[arg(long, value_parser = whole_number, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_clients: Option<u64>,

    /// Requests processed at the same time (1 = sequential); the rest wait their turn [env: REDIS_PROXY_MAX_PARALLEL] [default: same as --max-clients]
    #[arg(long, value_parser = whole_number, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u64>,

    /// A request not answered by then fails with a timeout (HTTP 504) [env: REDIS_PROXY_REQUEST_TIMEOUT] [default: 5s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,

    /// Open client connections per listener, lowered at startup to fit the open-files limit [env: REDIS_PROXY_MAX_CONNECTIONS] [default: 10000]
    #[arg(long, value_parser = whole_number, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,

    /// Bytes of replies one RESP connection may have waiting; past it the connection is closed [env: REDIS_PROXY_CLIENT_OUTPUT_LIMIT] [default: 512mb]
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_output_limit: Option<String>,

    /// How long waiting replies may go unread before the connection is closed [env: REDIS_PROXY_CLIENT_WRITE_TIMEOUT] [default: 30s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_write_timeout: Option<String>,

    /// Unparsed input all RESP connections together may hold [env: REDIS_PROXY_CLIENT_INPUT_LIMIT] [default: 256mb]
    #[arg(long, value_name = "SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_input_limit: Option<String>,

    /// Kept for compatibility, no effect: one pipelined connection per worker thread and protocol to each node [env: REDIS_PROXY_REDIS_POOL_SIZE] [default: 16]
    #[arg(long, value_parser = whole_number, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_pool_size: Option<u64>,

    /// Bound on one attempt to connect to the backing Redis [env: REDIS_PROXY_REDIS_CONNECT_TIMEOUT] [default: 1s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_connect_timeout: Option<String>,

    /// Time in-flight requests get to finish after SIGTERM/SIGINT [env: REDIS_PROXY_SHUTDOWN_GRACE] [default: 10s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<String>,

    /// Log line format; RUST_LOG sets the level [env: REDIS_PROXY_LOG_FORMAT] [default: pretty]
    #[arg(long, value_name = "FORMAT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,

    /// The lowest level logged: error, warn, info, debug or trace; RUST_LOG, when set, overrides it [env: REDIS_PROXY_LOG_LEVEL] [default: info]
    #[arg(long, value_name = "LEVEL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,

    /// Threads that run the proxy (event loops); 1 makes it a single event loop like Redis [env: REDIS_PROXY_WORKER_THREADS] [default: one per CPU core]
    #[arg(long, value_parser = whole_number, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<u64>,

    /// Password of user `default`; when set, every client must authenticate (prefer the environment variable: flags are visible to other local users) [env: REDIS_PROXY_CLIENT_PASSWORD]
    #[arg(long, value_name = "SECRET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_password: Option<CliSecret>,

    /// PEM certificate chain; with --tls-key, HTTP and RESP speak TLS only [env: REDIS_PROXY_TLS_CERT]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert [env: REDIS_PROXY_TLS_KEY]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates; clients must present a certificate they signed (mutual TLS) [env: REDIS_PROXY_TLS_CLIENT_CA]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,

    /// PEM CA certificates of the backing Redis (rediss://) [env: REDIS_PROXY_REDIS_TLS_CA] [default: the system's roots]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_tls_ca: Option<PathBuf>,

    /// PEM client certificate chain for the backing Redis (tls-auth-clients) [env: REDIS_PROXY_REDIS_TLS_CERT]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_tls_cert: Option<PathBuf>,

    /// PEM private key of --redis-tls-cert [env: REDIS_PROXY_REDIS_TLS_KEY]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_tls_key: Option<PathBuf>,

    /// Transparent mode: forward every command to Redis, caching a set of reads coherently [env: REDIS_PROXY_FORWARD_COMMANDS] [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_commands: Option<bool>,

    /// In transparent mode, forward admin commands too (CONFIG, FLUSHALL, ...) [env: REDIS_PROXY_FORWARD_ADMIN_COMMANDS] [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_admin_commands: Option<bool>,

    /// In transparent mode, backend connections held for clients in MULTI, blocking reads or subscriptions [env: REDIS_PROXY_MAX_DEDICATED_CONNECTIONS] [default: 256]
    #[arg(long, value_parser = whole_number, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_dedicated_connections: Option<u64>,

    /// With --invalidation tracking, key names remembered for clients' CLIENT TRACKING at most, as Redis's tracking-table-max-keys [env: REDIS_PROXY_CLIENT_TRACKING_MAX_KEYS] [default: 1000000]
    #[arg(long, value_parser = whole_number, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tracking_max_keys: Option<u64>,

    /// standalone: --redis-url names one Redis; cluster: the seed nodes of a Redis Cluster; sentinel: the sentinels; comma-separated [env: REDIS_PROXY_REDIS_MODE] [default: standalone]
    #[arg(long, value_name = "MODE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_mode: Option<super::RedisMode>,

    /// In cluster and sentinel mode, where cache misses are read from: primary, or replica-preferred [env: REDIS_PROXY_READ_FROM] [default: primary]
    #[arg(long, value_name = "WHERE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_from: Option<super::ReadFrom>,

    /// Read a sharded pool from a nutcracker YAML file; implies --redis-mode sharded [env: REDIS_PROXY_TWEMPROXY_CONFIG]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub twemproxy_config: Option<PathBuf>,

    /// Which pool of --twemproxy-config [env: REDIS_PROXY_TWEMPROXY_POOL] [default: the file's only pool]
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub twemproxy_pool: Option<String>,

    /// In sentinel mode, the name of the master the sentinels monitor (required there) [env: REDIS_PROXY_SENTINEL_MASTER]
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_master: Option<String>,

    /// In sentinel mode, the sentinels' own password; prefer the variable [env: REDIS_PROXY_SENTINEL_PASSWORD]
    #[arg(long, value_name = "SECRET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel_password: Option<CliSecret>,

    /// In sharded mode, the pool's servers, "host:port:weight [name]" comma-separated [env: REDIS_PROXY_SHARD_SERVERS]
    #[arg(long, value_name = "LIST")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_servers: Option<String>,

    /// In sharded mode, twemproxy's key hash (fnv1a_64, md5, murmur, ...) [env: REDIS_PROXY_SHARD_HASH] [default: fnv1a_64]
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_hash: Option<String>,

    /// In sharded mode, twemproxy's distribution: ketama, modula or random [env: REDIS_PROXY_SHARD_DISTRIBUTION] [default: ketama]
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_distribution: Option<String>,

    /// In sharded mode, twemproxy's hash tag: two characters, such as {} [env: REDIS_PROXY_SHARD_HASH_TAG]
    #[arg(long, value_name = "TAG")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_hash_tag: Option<String>,

    /// In sharded mode, the servers' password (twemproxy's redis_auth); prefer the variable [env: REDIS_PROXY_SHARD_REDIS_AUTH]
    #[arg(long, value_name = "SECRET")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_redis_auth: Option<CliSecret>,

    /// In sharded mode, the servers' database (twemproxy's redis_db) [env: REDIS_PROXY_SHARD_REDIS_DB] [default: 0]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_redis_db: Option<u16>,

    /// In sharded mode, eject a failing server and remap its keys as twemproxy does (auto_eject_hosts) [env: REDIS_PROXY_SHARD_AUTO_EJECT_HOSTS] [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_auto_eject_hosts: Option<bool>,

    /// Failures in a row that eject a server (server_failure_limit) [env: REDIS_PROXY_SHARD_SERVER_FAILURE_LIMIT] [default: 2]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_server_failure_limit: Option<u32>,

    /// How long an ejected server stays out (server_retry_timeout) [env: REDIS_PROXY_SHARD_SERVER_RETRY_TIMEOUT] [default: 30s]
    #[arg(long, value_name = "DURATION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_server_retry_timeout: Option<String>,
}

/// A secret given as a flag: passed on as given to the configuration, shown as
/// `***` when the flags are printed for debugging.
#[derive(Clone, Serialize)]
#[serde(transparent)]
pub struct CliSecret(String);

impl std::str::FromStr for CliSecret {
    type Err = std::convert::Infallible;

    fn from_str(secret: &str) -> Result<Self, Self::Err> {
        Ok(Self(secret.to_owned()))
    }
}

impl std::fmt::Debug for CliSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Cli {
    /// The flags in `args` (the program's name first). A value that starts
    /// with `-` and a digit (`--cache-ttl -5s`) is the value of the option
    /// before it, so that its error names that option rather than calling
    /// it an unknown flag.
    pub(crate) fn parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let command = <Self as clap::CommandFactory>::command();
        let takes_value = |flag: &str| {
            command
                .get_arguments()
                .any(|arg| arg.get_long() == Some(flag) && arg.get_action().takes_values())
        };
        let mut joined: Vec<OsString> = Vec::new();
        for arg in args.into_iter().map(Into::into) {
            let negative = arg
                .to_str()
                .and_then(|value| value.strip_prefix('-'))
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()));
            let option = joined
                .last()
                .and_then(|last| last.to_str())
                .and_then(|last| last.strip_prefix("--"))
                .filter(|flag| !flag.contains('=') && takes_value(flag));
            match option {
                Some(_) if negative => {
                    let mut pair = joined.pop().expect("an option before the value");
                    pair.push("=");
                    pair.push(&arg);
                    joined.push(pair);
                }
                _ => joined.push(arg),
            }
        }
        Self::try_parse_from(joined)
    }
}

/// A flag's whole number, with an error in words.
fn whole_number(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a whole number"))
}
