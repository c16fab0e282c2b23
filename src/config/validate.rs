//! Checks of a merged configuration that its parts' own parsing cannot make:
//! zero where zero means nothing, options that go in pairs, listeners on one
//! address, users.

use super::load::option_names;
use super::users::EMPTY_SHA256;
use super::{ByteSize, Config, Error, ReadFrom, RedisMode};

impl Config {
    pub(super) fn validate(&self) -> Result<(), Error> {
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
            ("hot_keys_window", self.hot_keys_window.is_zero()),
        ];
        if let Some((key, _)) = zero.into_iter().find(|(_, zero)| *zero) {
            return Err(Error::Invalid(format!(
                "{}: must be greater than zero",
                option_names(key)
            )));
        }
        if !["error", "warn", "info", "debug", "trace"].contains(&self.log_level.as_str()) {
            return Err(Error::Invalid(format!(
                "{}: `{}` is not one of: error, warn, info, debug, trace",
                option_names("log_level"),
                self.log_level
            )));
        }
        self.validate_listeners()?;
        self.validate_tls()?;
        self.validate_cluster()?;
        self.validate_cache_rules()?;
        self.validate_users()
    }

    /// Rules the cache can apply: a pattern each, a TTL above zero, and few
    /// enough that their lifetimes can be told apart in an entry.
    fn validate_cache_rules(&self) -> Result<(), Error> {
        const MAX_RULES: usize = 63;
        if self.cache_rules.len() > MAX_RULES {
            return Err(Error::Invalid(format!(
                "TOML `[[cache_rules]]`: {} rules, at most {MAX_RULES} are allowed",
                self.cache_rules.len()
            )));
        }
        for (index, rule) in self.cache_rules.iter().enumerate() {
            let problem = if rule.pattern.is_empty() {
                "`pattern` is empty"
            } else if rule.ttl.is_some_and(|ttl| ttl.is_zero()) {
                "`ttl` must be greater than zero (`cache = false` keeps keys out of the cache)"
            } else if rule.max_value_bytes == Some(ByteSize(0)) {
                "`max_value_bytes` must be greater than zero"
            } else {
                continue;
            };
            return Err(Error::Invalid(format!(
                "TOML `[[cache_rules]]` rule {index} (pattern `{}`): {problem}",
                rule.pattern
            )));
        }
        Ok(())
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
            RedisMode::Standalone | RedisMode::Sharded if self.read_from != ReadFrom::Primary => {
                invalid(
                    "--read-from (env REDIS_PROXY_READ_FROM, TOML `read_from`) applies to a cluster or a Sentinel-managed primary only (--redis-mode cluster or sentinel)",
                )
            }
            RedisMode::Sentinel if self.sentinel_master.as_deref().is_none_or(str::is_empty) => {
                invalid(
                    "--sentinel-master (env REDIS_PROXY_SENTINEL_MASTER, TOML `sentinel_master`) is required with --redis-mode sentinel: the name of the master the sentinels monitor",
                )
            }
            RedisMode::Sharded if self.shard_servers.is_empty() => invalid(
                "--redis-mode sharded needs the pool's servers: TOML `shard_servers` (env REDIS_PROXY_SHARD_SERVERS), or --twemproxy-config",
            ),
            RedisMode::Sharded => self.shard_pool().map(drop),
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
}
