//! `--print-config`: the effective configuration as TOML, in the form a
//! configuration file takes it, so that what the proxy would run with can be
//! read (by people, and by scripts such as `make run`) without starting it.

use super::Config;

impl Config {
    /// The configuration as TOML: every key in [`Config::KEYS`] order, a key
    /// left to a default derived at startup commented out with the value it
    /// derives to here, passwords as `***`, then the `[[cache_rules]]` and
    /// the `[[users]]`.
    pub fn to_toml(&self) -> String {
        let mut table = toml::Table::try_from(self).expect("a configuration is a TOML table");
        table.insert("redis_url".into(), self.redis_url.redacted().into());
        let mut out = String::new();
        for &key in Self::KEYS {
            match table.get(key) {
                Some(value) => out.push_str(&format!("{key} = {value}\n")),
                None => match self.derived(key) {
                    Some(value) => out.push_str(&format!("# {key} = {value}\n")),
                    None => out.push_str(&format!("# {key}: unset\n")),
                },
            }
        }
        for tables in ["cache_rules", "users"] {
            if let Some(entries) = table
                .remove(tables)
                .filter(|entries| entries.as_array().is_some_and(|e| !e.is_empty()))
            {
                let mut only = toml::Table::new();
                only.insert(tables.into(), entries);
                out.push('\n');
                out.push_str(&toml::to_string(&only).expect("tables are TOML"));
            }
        }
        out
    }

    /// The configuration as JSON: every key, passwords (the one in
    /// `redis_url` too) as `***`, a key left to a default derived at
    /// startup as what it derives to here.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).expect("a configuration is JSON");
        value["redis_url"] = self.redis_url.redacted().into();
        value["cache_max_bytes"] = self.effective_cache_max_bytes().to_string().into();
        value["cache_max_value_bytes"] = self.effective_cache_max_value_bytes().to_string().into();
        value["max_parallel"] = self.effective_max_parallel().get().into();
        value
    }

    /// What an unset key stands for here, as a comment's text; `None` for a
    /// key that is simply off when unset.
    fn derived(&self, key: &str) -> Option<String> {
        let quoted = |text: String| toml::Value::String(text).to_string();
        let derived = match key {
            "cache_max_bytes" => format!(
                "{}  # unset: a quarter of the memory available",
                quoted(self.effective_cache_max_bytes().to_string())
            ),
            "cache_max_value_bytes" => format!(
                "{}  # unset: an eighth of cache_max_bytes",
                quoted(self.effective_cache_max_value_bytes().to_string())
            ),
            "max_parallel" => format!("{}  # unset: max_clients", self.effective_max_parallel()),
            "max_connections" => format!(
                "{}  # unset: lowered at startup to fit the open-files limit",
                self.effective_max_connections()
            ),
            "worker_threads" => format!(
                "{}  # unset: one per CPU core",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
            _ => return None,
        };
        Some(derived)
    }
}
