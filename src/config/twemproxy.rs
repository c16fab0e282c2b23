//! `--twemproxy-config`: a pool read from a nutcracker YAML file, so that a
//! twemproxy deployment moves over with its key placement as it is.
//!
//! The file's shape is nutcracker's (pools at the top level, their keys
//! indented, `servers` a list), read by a small parser of that shape rather
//! than a YAML library: nutcracker's own files use nothing more.

use std::path::Path;

use super::{Config, Error, ListenAddr, RedisMode};

/// The keys of a pool that the proxy applies.
const APPLIED: &[&str] = &[
    "listen",
    "hash",
    "hash_tag",
    "distribution",
    "servers",
    "redis",
    "redis_auth",
    "redis_db",
    "auto_eject_hosts",
    "server_failure_limit",
    "server_retry_timeout",
];

/// One pool of the file: its name, its keys in order, its servers.
#[derive(Debug, Default)]
struct NutPool {
    name: String,
    keys: Vec<(String, String)>,
    servers: Vec<String>,
}

impl NutPool {
    fn get(&self, key: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The pools of a nutcracker file.
fn parse(text: &str) -> Result<Vec<NutPool>, String> {
    let mut pools: Vec<NutPool> = Vec::new();
    let mut in_servers = false;
    for (number, raw) in text.lines().enumerate() {
        let line = raw.split(" #").next().unwrap_or_default().trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let indented = line.starts_with([' ', '\t']);
        let line = line.trim();
        let at = || format!("line {}: `{line}`", number + 1);
        if !indented {
            let name = line
                .strip_suffix(':')
                .ok_or_else(|| format!("{} is not a pool name", at()))?;
            pools.push(NutPool {
                name: unquote(name).to_owned(),
                ..NutPool::default()
            });
            in_servers = false;
            continue;
        }
        let pool = pools
            .last_mut()
            .ok_or_else(|| format!("{} comes before any pool", at()))?;
        if let Some(server) = line.strip_prefix("- ") {
            if !in_servers {
                return Err(format!("{} is a list item outside `servers`", at()));
            }
            pool.servers.push(unquote(server.trim()).to_owned());
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| format!("{} is not `key: value`", at()))?;
        let (key, value) = (key.trim(), unquote(value.trim()));
        in_servers = key == "servers";
        if !in_servers {
            pool.keys.push((key.to_owned(), value.to_owned()));
        }
    }
    Ok(pools)
}

fn unquote(text: &str) -> &str {
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .or_else(|| text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')))
        .unwrap_or(text)
}

impl Config {
    /// With `twemproxy_config`: the pool it names (`twemproxy_pool`, or its
    /// only one) becomes the sharded pool, and its `listen` the RESP
    /// listener unless that was set. Keys the proxy does not apply are
    /// returned, to be warned about.
    pub(super) fn apply_twemproxy(&mut self) -> Result<Vec<String>, Error> {
        let Some(path) = self.twemproxy_config.clone() else {
            return Ok(Vec::new());
        };
        let invalid = |problem: String| {
            Error::Invalid(format!(
                "--twemproxy-config (env REDIS_PROXY_TWEMPROXY_CONFIG, TOML `twemproxy_config`) {}: {problem}",
                path.display()
            ))
        };
        let pool = self.pick_pool(&path).map_err(invalid)?;
        if pool.get("redis").is_some_and(|redis| redis != "true") {
            return Err(invalid(format!(
                "pool `{}` is a memcached pool (`redis: {}`); only Redis pools are served",
                pool.name,
                pool.get("redis").unwrap_or_default()
            )));
        }
        self.redis_mode = RedisMode::Sharded;
        self.shard_servers = pool.servers.clone();
        for (key, value) in &pool.keys {
            match key.as_str() {
                "hash" => self.shard_hash = value.parse().map_err(invalid)?,
                "distribution" => self.shard_distribution = value.parse().map_err(invalid)?,
                "hash_tag" => self.shard_hash_tag = Some(value.clone()),
                "redis_auth" => {
                    self.shard_redis_auth = Some(
                        value
                            .parse()
                            .map_err(|_| invalid("bad redis_auth".into()))?,
                    )
                }
                "redis_db" => {
                    self.shard_redis_db = value
                        .parse()
                        .map_err(|_| invalid(format!("redis_db `{value}` is not a database")))?;
                }
                "auto_eject_hosts" => {
                    self.shard_auto_eject_hosts = match value.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return Err(invalid(format!(
                                "auto_eject_hosts `{value}` is not true or false"
                            )));
                        }
                    }
                }
                "server_failure_limit" => {
                    self.shard_server_failure_limit = value.parse().map_err(|_| {
                        invalid(format!("server_failure_limit `{value}` is not a count"))
                    })?;
                }
                "server_retry_timeout" => {
                    let millis: u64 = value.parse().map_err(|_| {
                        invalid(format!(
                            "server_retry_timeout `{value}` is not a number of milliseconds"
                        ))
                    })?;
                    self.shard_server_retry_timeout = std::time::Duration::from_millis(millis);
                }
                "listen" if self.resp_addr == Config::default().resp_addr => {
                    self.resp_addr = value
                        .parse::<ListenAddr>()
                        .map_err(|e| invalid(format!("listen `{value}`: {e}")))?;
                }
                _ => {}
            }
        }
        Ok(pool
            .keys
            .iter()
            .filter(|(key, _)| !APPLIED.contains(&key.as_str()))
            .map(|(key, value)| {
                format!(
                    "twemproxy's `{key}: {value}` (pool `{}`) is not supported and is ignored",
                    pool.name
                )
            })
            .collect())
    }

    fn pick_pool(&self, path: &Path) -> Result<NutPool, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let mut pools = parse(&text)?;
        let names: Vec<String> = pools.iter().map(|p| format!("`{}`", p.name)).collect();
        match &self.twemproxy_pool {
            Some(name) => pools
                .into_iter()
                .find(|pool| &pool.name == name)
                .ok_or_else(|| format!("no pool `{name}`; the file has {}", names.join(", "))),
            None if pools.len() == 1 => Ok(pools.remove(0)),
            None if pools.is_empty() => Err("no pool in the file".into()),
            None => Err(format!(
                "{} pools ({}): say which with --twemproxy-pool",
                pools.len(),
                names.join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nutcracker_file_reads_as_its_pools() {
        let pools = parse(
            "# a comment\nalpha:\n  listen: 127.0.0.1:22121\n  hash: fnv1a_64\n  hash_tag: \"{}\"\n  \
             distribution: ketama\n  auto_eject_hosts: true\n  redis: true\n  servers:\n   - 127.0.0.1:6379:1\n   \
             - 127.0.0.1:6380:2 two\n\nbeta:\n  servers:\n  - 10.0.0.1:6379:1\n",
        )
        .unwrap();
        assert_eq!(pools.len(), 2);
        assert_eq!(pools[0].name, "alpha");
        assert_eq!(pools[0].get("hash_tag"), Some("{}"));
        assert_eq!(
            pools[0].servers,
            ["127.0.0.1:6379:1", "127.0.0.1:6380:2 two"]
        );
        assert_eq!(pools[1].servers, ["10.0.0.1:6379:1"]);
        assert!(parse("  hash: md5\n").is_err());
    }
}
