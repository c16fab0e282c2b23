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
mod values;

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::backend::{ReadFrom, RedisUrl};
pub use crate::cache::CachePolicy;
pub use cli::Cli;
pub use values::{ByteSize, ListenAddr, Secret, memory_available};

/// The prefix of every environment variable the proxy reads.
pub const ENV_PREFIX: &str = "REDIS_PROXY_";

/// The effective configuration of one proxy process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    pub max_connections: NonZeroUsize,
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
    /// Whether `redis_url` names one Redis or a Redis Cluster's seed nodes.
    pub redis_mode: RedisMode,
    /// In cluster mode, where cache misses are read from.
    pub read_from: ReadFrom,
}

/// One named user (`[[users]]` in the TOML file), as a Redis ACL user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The name clients authenticate with (`AUTH name password`).
    pub name: String,
    /// The password, in clear.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Or the SHA-256 of the password, in hex (as Redis ACL's `#<hash>`).
    #[serde(default)]
    pub password_sha256: Option<Secret>,
    /// Redis glob patterns of the keys the user may read.
    #[serde(default = "all_keys")]
    pub keys: Vec<String>,
    /// A disabled user cannot authenticate.
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Transparent mode: this user's key patterns do not bind its scripts. A
    /// script names keys inside its code, where the proxy cannot see them, so
    /// a user with key patterns other than `*` may run scripts and functions
    /// (Redis's `@scripting` commands) only with this set.
    #[serde(default)]
    pub scripts: bool,
    /// Transparent mode: Redis glob patterns of the pub/sub channels the user
    /// may subscribe and publish to (keyspace notifications included). Unset:
    /// every channel for a user whose keys are `["*"]`, none otherwise (as
    /// Redis 7's `acl-pubsub-default resetchannels`).
    #[serde(default)]
    pub channels: Option<Vec<String>>,
}

/// The SHA-256 of the empty string: a `password_sha256` of no password.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn all_keys() -> Vec<String> {
    vec!["*".to_owned()]
}

fn enabled() -> bool {
    true
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
            cache_max_bytes: None,
            cache_max_value_bytes: None,
            invalidation: InvalidationMode::None,
            max_clients: NonZeroUsize::new(1024).expect("non-zero"),
            max_parallel: None,
            request_timeout: Duration::from_secs(5),
            max_connections: NonZeroUsize::new(10_000).expect("non-zero"),
            client_output_limit: ByteSize::mib(512),
            client_write_timeout: Duration::from_secs(30),
            client_input_limit: ByteSize::mib(256),
            redis_pool_size: NonZeroU32::new(16).expect("non-zero"),
            redis_connect_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Pretty,
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
            redis_mode: RedisMode::Standalone,
            read_from: ReadFrom::Primary,
        }
    }
}

/// How cached entries learn that Redis changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
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
pub enum RedisMode {
    /// One Redis (a primary, or a replica the proxy only reads).
    #[default]
    Standalone,
    /// A Redis Cluster: the URL names one or more seed nodes, comma-separated.
    Cluster,
}

impl std::fmt::Display for RedisMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
        })
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
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
    /// Merges defaults, the optional TOML file, the environment and the flags.
    ///
    /// # Errors
    ///
    /// Returns an error naming the option when the file is missing, a key in it is
    /// unknown, or any value does not parse or is out of range.
    pub fn load(cli: &Cli) -> Result<Self, Error> {
        Self::load_from(cli, std::env::vars())
    }

    /// Like [`Config::load`], reading the environment from `vars` instead of the process.
    ///
    /// # Errors
    ///
    /// As for [`Config::load`].
    pub fn load_from(
        cli: &Cli,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, Error> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &cli.config {
            // `Toml::file` silently skips a missing file; a named file that is not
            // there is a mistake the user wants to hear about.
            std::fs::metadata(path).map_err(|source| Error::File {
                path: path.clone(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only the documented keys are read: orchestrators inject variables such as
        // `REDIS_PROXY_PORT` (Kubernetes service links) that are not ours.
        let env = EnvSnapshot(
            vars.into_iter()
                .filter_map(|(key, value)| {
                    let key = key.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
                    Self::KEYS.contains(&key.as_str()).then_some((key, value))
                })
                .collect(),
        );
        let mut config: Config = figment
            .merge(env)
            .merge(Flags(cli))
            .extract()
            .map_err(describe)?;
        // An empty password is no password, as Redis reads `requirepass ""`: a
        // variable passed through empty (Compose does so) turns nothing on.
        if config
            .client_password
            .as_ref()
            .is_some_and(|p| p.expose().is_empty())
        {
            config.client_password = None;
        }
        config.validate()?;
        Ok(config)
    }

    /// Every option's key, as used in TOML and (upper-cased) in the environment.
    pub const KEYS: &'static [&'static str] = &[
        "redis_url",
        "http_addr",
        "resp_addr",
        "admin_addr",
        "cache_ttl",
        "cache_capacity",
        "cache_policy",
        "cache_max_bytes",
        "cache_max_value_bytes",
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
        "redis_mode",
        "read_from",
    ];

    /// Options whose values are always text, read from the environment as is
    /// (a password of digits stays the same digits).
    const TEXT_KEYS: &'static [&'static str] = &["client_password"];

    /// The parallel limit in force: `max_parallel`, or `max_clients` when unset.
    pub fn effective_max_parallel(&self) -> NonZeroUsize {
        self.max_parallel.unwrap_or(self.max_clients)
    }

    /// The cache's byte capacity in force: `cache_max_bytes`, or a quarter of the
    /// memory available to the process (its container's limit, else the
    /// machine's), or 1 GiB when that cannot be read.
    pub fn effective_cache_max_bytes(&self) -> ByteSize {
        self.cache_max_bytes
            .unwrap_or_else(|| ByteSize(memory_available().map_or(1 << 30, |bytes| bytes / 4)))
    }

    /// The largest value cached: `cache_max_value_bytes`, or an eighth of the
    /// cache's bytes.
    pub fn effective_cache_max_value_bytes(&self) -> ByteSize {
        self.cache_max_value_bytes
            .unwrap_or_else(|| ByteSize(self.effective_cache_max_bytes().0 / 8))
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

    fn validate(&self) -> Result<(), Error> {
        let zero = [
            ("cache_ttl", self.cache_ttl.is_zero()),
            ("request_timeout", self.request_timeout.is_zero()),
            (
                "redis_connect_timeout",
                self.redis_connect_timeout.is_zero(),
            ),
            ("client_write_timeout", self.client_write_timeout.is_zero()),
            ("client_output_limit", self.client_output_limit.0 == 0),
            ("client_input_limit", self.client_input_limit.0 == 0),
            ("cache_max_bytes", self.cache_max_bytes == Some(ByteSize(0))),
        ];
        if let Some((key, _)) = zero.into_iter().find(|(_, zero)| *zero) {
            return Err(Error::Invalid(format!(
                "{}: must be greater than zero",
                option_names(key)
            )));
        }
        self.validate_listeners()?;
        self.validate_tls()?;
        self.validate_cluster()?;
        self.validate_users()
    }

    /// Two of the proxy's own listeners on one address would take each other's
    /// clients (or fail to bind): refused before anything is bound.
    fn validate_listeners(&self) -> Result<(), Error> {
        let listeners = [
            ("http_addr", &self.http_addr),
            ("resp_addr", &self.resp_addr),
            ("admin_addr", &self.admin_addr),
        ];
        for (i, (a, first)) in listeners.iter().enumerate() {
            for (b, second) in &listeners[i + 1..] {
                if first.overlaps(second) {
                    return Err(Error::Invalid(format!(
                        "{} and {} are both {first}: each listener needs an address of its own",
                        option_names(a),
                        option_names(b)
                    )));
                }
            }
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), Error> {
        let invalid = |message: &str| Err(Error::Invalid(message.to_owned()));
        match self.redis_mode {
            RedisMode::Standalone if self.redis_url.nodes().len() > 1 => invalid(
                "--redis-url (env REDIS_PROXY_REDIS_URL, TOML `redis_url`) names several nodes: only a cluster has several (--redis-mode cluster)",
            ),
            RedisMode::Standalone if self.read_from != ReadFrom::Primary => invalid(
                "--read-from (env REDIS_PROXY_READ_FROM, TOML `read_from`) applies to a cluster only (--redis-mode cluster)",
            ),
            RedisMode::Cluster if self.redis_url.nodes().iter().any(|url| url.db() != 0) => {
                invalid(
                    "--redis-url (env REDIS_PROXY_REDIS_URL, TOML `redis_url`): a cluster has database 0 only",
                )
            }
            _ => Ok(()),
        }
    }

    fn validate_tls(&self) -> Result<(), Error> {
        let invalid = |message: String| Err(Error::Invalid(message));
        let pairs = [
            (
                "tls_cert",
                self.tls_cert.is_some(),
                "tls_key",
                self.tls_key.is_some(),
            ),
            (
                "redis_tls_cert",
                self.redis_tls_cert.is_some(),
                "redis_tls_key",
                self.redis_tls_key.is_some(),
            ),
        ];
        for (a, has_a, b, has_b) in pairs {
            if has_a != has_b {
                let (given, missing) = if has_a { (a, b) } else { (b, a) };
                return invalid(format!(
                    "{} is set but {} is not: the certificate and its key go together",
                    option_names(given),
                    option_names(missing)
                ));
            }
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return invalid(format!(
                "{} needs {}: client certificates are asked for during a TLS handshake",
                option_names("tls_client_ca"),
                option_names("tls_cert")
            ));
        }
        if !self.redis_url.is_tls()
            && let Some(key) = [
                ("redis_tls_ca", self.redis_tls_ca.is_some()),
                ("redis_tls_cert", self.redis_tls_cert.is_some()),
            ]
            .into_iter()
            .find_map(|(key, set)| set.then_some(key))
        {
            return invalid(format!(
                "{} needs a rediss:// --redis-url (TLS to Redis)",
                option_names(key)
            ));
        }
        Ok(())
    }

    fn validate_users(&self) -> Result<(), Error> {
        let mut names = std::collections::HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            let entry = format!("[[users]] entry {} (`{}`)", i + 1, user.name);
            let invalid = |problem: &str| Err(Error::Invalid(format!("{entry}: {problem}")));
            if user.name.is_empty() || user.name.bytes().any(|b| !(b'!'..=b'~').contains(&b)) {
                return invalid("a name is printable ASCII without spaces, and not empty");
            }
            if !names.insert(user.name.as_str()) {
                return invalid("a second user of that name");
            }
            if user.name == "default" {
                return invalid(
                    "user `default` is the one --client-password (env REDIS_PROXY_CLIENT_PASSWORD, TOML `client_password`) sets; give the named user another name",
                );
            }
            match (&user.password, &user.password_sha256) {
                (Some(password), None) if password.expose().is_empty() => {
                    return invalid("an empty password would let anyone in as this user");
                }
                (None, Some(hash)) if hash.expose().eq_ignore_ascii_case(EMPTY_SHA256) => {
                    return invalid(
                        "password_sha256 is the digest of the empty password, which would let anyone in as this user",
                    );
                }
                (Some(_), None) => {}
                (None, Some(hash)) => {
                    let hash = hash.expose();
                    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return invalid("password_sha256 must be 64 hexadecimal digits");
                    }
                }
                _ => return invalid("give exactly one of password and password_sha256"),
            }
        }
        Ok(())
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

/// The proxy's variables from one snapshot of the environment, keys lower-cased
/// and stripped of [`ENV_PREFIX`]. (`figment::providers::Env` reads the live process
/// environment; a snapshot keeps loading a pure function of its inputs.)
struct EnvSnapshot(Vec<(String, String)>);

impl figment::Provider for EnvSnapshot {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let dict = self
            .0
            .iter()
            // Values are typed as `figment::providers::Env` types them: `10` is an
            // integer, `60s` a string; a password is text whatever it looks like.
            .map(|(key, value)| {
                let value = if Config::TEXT_KEYS.contains(&key.as_str()) {
                    figment::value::Value::from(value.clone())
                } else {
                    value.parse().expect("infallible")
                };
                (key.clone(), value)
            })
            .collect();
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// The command-line flags as a figment source, under a name a user recognises.
struct Flags<'a>(&'a Cli);

impl figment::Provider for Flags<'_> {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("command-line flag")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        Serialized::defaults(self.0).data()
    }
}

/// The names one option goes by: flag, environment variable and TOML key.
fn option_names(key: &str) -> String {
    format!(
        "--{} (env {ENV_PREFIX}{}, TOML `{key}`)",
        key.replace('_', "-"),
        key.to_ascii_uppercase()
    )
}

/// Turns figment's error into one line per problem that names the option and
/// the source the bad value came from.
fn describe(error: figment::Error) -> Error {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(src) => format!(" (from {} {src})", m.name),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            match (e.path.first(), e.path.last()) {
                (Some(first), _) if first == "users" => {
                    format!("TOML `[[users]]`: {}{source}", e.kind)
                }
                (_, Some(key)) if Config::KEYS.contains(&key.as_str()) => {
                    format!("{}: {}{source}", option_names(key), e.kind)
                }
                _ => format!("{}{source}", e.kind),
            }
        })
        .collect();
    Error::Invalid(lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn load(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, Error> {
        let cli = Cli::try_parse_from(std::iter::once("redis-proxy").chain(args.iter().copied()))
            .expect("flags parse");
        Config::load_from(
            &cli,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_match_the_documented_table() {
        let config = load(&[], &[]).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.redis_url.as_str(), "redis://127.0.0.1:6379");
        assert_eq!(config.cache_ttl, Duration::from_secs(60));
        assert_eq!(config.effective_max_parallel().get(), 1024);
    }

    #[test]
    fn transparent_mode_is_off_unless_a_flag_or_the_environment_turns_it_on() {
        assert!(!load(&[], &[]).unwrap().forward_commands);
        assert!(load(&["--forward-commands"], &[]).unwrap().forward_commands);
        let from_env = load(
            &[],
            &[
                ("REDIS_PROXY_FORWARD_COMMANDS", "true"),
                ("REDIS_PROXY_MAX_DEDICATED_CONNECTIONS", "8"),
            ],
        )
        .unwrap();
        assert!(from_env.forward_commands);
        assert!(!from_env.forward_admin_commands);
        assert_eq!(from_env.max_dedicated_connections.get(), 8);
        let flag_wins = load(
            &["--forward-commands=false"],
            &[("REDIS_PROXY_FORWARD_COMMANDS", "true")],
        )
        .unwrap();
        assert!(!flag_wins.forward_commands);
    }

    #[test]
    fn env_overrides_file_and_flag_overrides_env() {
        let dir = std::env::temp_dir().join(format!("redis-proxy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("proxy.toml");
        std::fs::write(
            &file,
            "cache_ttl = \"10s\"\ncache_capacity = 7\nmax_clients = 3\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();

        let from_file = load(&["--config", file], &[]).unwrap();
        assert_eq!(from_file.cache_ttl, Duration::from_secs(10));
        assert_eq!(from_file.cache_capacity.get(), 7);

        let env = [
            ("REDIS_PROXY_CACHE_TTL", "20s"),
            ("REDIS_PROXY_MAX_CLIENTS", "4"),
        ];
        let from_env = load(&["--config", file], &env).unwrap();
        assert_eq!(from_env.cache_ttl, Duration::from_secs(20));
        assert_eq!(from_env.max_clients.get(), 4);
        assert_eq!(from_env.cache_capacity.get(), 7);

        let from_flag = load(&["--config", file, "--cache-ttl", "30s"], &env).unwrap();
        assert_eq!(from_flag.cache_ttl, Duration::from_secs(30));
        assert_eq!(from_flag.max_clients.get(), 4);
    }

    #[test]
    fn unrelated_prefixed_variables_are_ignored() {
        let config = load(&[], &[("REDIS_PROXY_PORT", "tcp://10.0.0.1:8080")]).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn zero_capacity_is_rejected_naming_the_option() {
        let err = load(&["--cache-capacity", "0"], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--cache-capacity"), "{err}");
    }

    #[test]
    fn bad_duration_in_env_names_the_variable() {
        let err = load(&[], &[("REDIS_PROXY_CACHE_TTL", "soon")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("REDIS_PROXY_CACHE_TTL"), "{err}");
    }

    #[test]
    fn zero_timeout_is_rejected() {
        let err = load(&["--request-timeout", "0s"], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--request-timeout"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load(&["--config", "/nonexistent/proxy.toml"], &[]).unwrap_err();
        assert!(matches!(err, Error::File { .. }), "{err}");
    }

    fn with_toml(name: &str, toml: &str) -> Result<Config, Error> {
        let dir =
            std::env::temp_dir().join(format!("redis-proxy-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("proxy.toml");
        std::fs::write(&file, toml).unwrap();
        load(&["--config", file.to_str().unwrap()], &[])
    }

    #[test]
    fn users_are_read_from_toml_with_their_defaults() {
        let config = with_toml(
            "users",
            "[[users]]\nname = \"app\"\npassword = \"pw\"\nkeys = [\"app:*\"]\n\n\
             [[users]]\nname = \"ro\"\npassword_sha256 = \"30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4\"\n",
        )
        .unwrap();
        assert_eq!(config.users.len(), 2);
        assert_eq!(config.users[0].keys, ["app:*"]);
        assert_eq!(config.users[1].keys, ["*"]);
        assert!(config.users[1].enabled);
        assert!(config.requires_auth());
        assert!(
            !format!("{config:?}").contains("\"pw\""),
            "secrets are not in Debug"
        );
    }

    #[test]
    fn bad_users_are_rejected_saying_which() {
        for (toml, problem) in [
            ("[[users]]\nname = \"a\"\n", "exactly one of password"),
            (
                "[[users]]\nname = \"a\"\npassword = \"x\"\npassword_sha256 = \"ab\"\n",
                "exactly one of password",
            ),
            (
                "[[users]]\nname = \"a\"\npassword_sha256 = \"xyz\"\n",
                "64 hexadecimal",
            ),
            (
                "[[users]]\nname = \"a b\"\npassword = \"x\"\n",
                "printable ASCII",
            ),
            (
                "[[users]]\nname = \"a\"\npassword = \"x\"\n[[users]]\nname = \"a\"\npassword = \"y\"\n",
                "a second user",
            ),
            ("[[users]]\nname = \"a\"\npasword = \"x\"\n", "[[users]]"),
        ] {
            let err = with_toml("bad-users", toml).unwrap_err().to_string();
            assert!(err.contains(problem), "{toml}: {err}");
        }
        for (name, toml) in [
            (
                "default-twice",
                "client_password = \"y\"\n[[users]]\nname = \"default\"\npassword = \"x\"\n",
            ),
            (
                "default-alone",
                "[[users]]\nname = \"default\"\npassword = \"x\"\n",
            ),
        ] {
            let err = with_toml(name, toml).unwrap_err().to_string();
            assert!(
                err.contains("user `default` is the one --client-password"),
                "{err}"
            );
        }
        for (name, toml) in [
            (
                "empty-password",
                "[[users]]\nname = \"a\"\npassword = \"\"\n",
            ),
            (
                "empty-digest",
                &format!("[[users]]\nname = \"a\"\npassword_sha256 = \"{EMPTY_SHA256}\"\n"),
            ),
        ] {
            let err = with_toml(name, toml).unwrap_err().to_string();
            assert!(err.contains("let anyone in"), "{name}: {err}");
        }
    }

    #[test]
    fn a_password_of_digits_from_the_environment_stays_text() {
        let config = load(&[], &[("REDIS_PROXY_CLIENT_PASSWORD", "007")]).unwrap();
        assert_eq!(config.client_password.unwrap().expose(), "007");
        let empty = load(&[], &[("REDIS_PROXY_CLIENT_PASSWORD", "")]).unwrap();
        assert!(empty.client_password.is_none() && !empty.requires_auth());
    }

    #[test]
    fn tls_files_go_in_pairs_and_backend_tls_needs_rediss() {
        let err = load(&["--tls-cert", "c.pem"], &[]).unwrap_err().to_string();
        assert!(err.contains("--tls-key"), "{err}");
        let err = load(&["--tls-client-ca", "ca.pem"], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-cert"), "{err}");
        let err = load(
            &["--redis-tls-key", "k.pem", "--redis-url", "rediss://h:1"],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--redis-tls-cert"), "{err}");
        let err = load(&["--redis-tls-ca", "ca.pem"], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("rediss://"), "{err}");
        let ok = load(
            &["--redis-tls-ca", "ca.pem", "--redis-url", "rediss://h:1"],
            &[],
        )
        .unwrap();
        assert!(ok.redis_url.is_tls());
    }

    #[test]
    fn bad_redis_url_is_rejected() {
        let err = load(&["--redis-url", "http://example"], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--redis-url"), "{err}");
    }
}
