//! The backing Redis's address, validated when parsed and redacted when shown.

use std::fmt;

use redis::IntoConnectionInfo;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `redis://` or `rediss://` URL that redis-rs accepts.
///
/// `Display` and `Debug` hide the password, so the URL can be logged as is.
/// TLS (`rediss://`) is the proxy's own (see `tls`): redis-rs is handed the
/// encrypted stream and the URL's `redis://` form.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Parses and validates a URL.
    ///
    /// # Errors
    ///
    /// Returns redis-rs's reason when it does not accept the URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        // A cluster's seed nodes are a comma-separated list: each must parse.
        for one in url.split(',') {
            let one = Self(one.trim().to_owned());
            one.plain()
                .into_connection_info()
                .map_err(|e| e.to_string())?;
        }
        Ok(Self(url.to_owned()))
    }

    /// Each URL of a comma-separated list (a cluster's seed nodes); the URL
    /// itself when it is one.
    pub fn nodes(&self) -> Vec<RedisUrl> {
        self.0
            .split(',')
            .map(|one| Self(one.trim().to_owned()))
            .collect()
    }

    /// The URL of the node at `addr` (`host:port`), with this URL's scheme and
    /// credentials and no database: how a cluster's other nodes are reached.
    pub(crate) fn with_address(&self, addr: &str) -> RedisUrl {
        let url = &self.nodes()[0].0;
        let scheme_end = url.find("://").map_or(0, |i| i + 3);
        let rest = &url[scheme_end..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let userinfo = rest[..authority_end]
            .rfind('@')
            .map_or("", |at| &rest[..=at]);
        Self(format!("{}{userinfo}{addr}", &url[..scheme_end]))
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }

    /// The URL with `rediss://` written `redis://`: what redis-rs, which is
    /// handed an encrypted stream, reads the address and settings from.
    pub(crate) fn plain(&self) -> String {
        match self.0.strip_prefix("rediss://") {
            Some(rest) => format!("redis://{rest}"),
            None => self.0.clone(),
        }
    }

    /// The database the URL names (`/2`), or 0.
    pub fn db(&self) -> i64 {
        self.plain()
            .as_str()
            .into_connection_info()
            .map_or(0, |info| info.redis_settings().db())
    }

    /// The URL as given, password included: for connecting, never for logging.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    ///
    /// ```text
    /// redis://user:secret@host:6379/0  ->  redis://user:***@host:6379/0
    /// redis://secret@host              ->  redis://***@host
    /// ```
    pub fn redacted(&self) -> String {
        if self.0.contains(',') {
            return self
                .nodes()
                .iter()
                .map(RedisUrl::redacted)
                .collect::<Vec<_>>()
                .join(",");
        }
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return url.clone();
        };
        let authority_end = url[scheme_end..]
            .find('/')
            .map_or(url.len(), |i| scheme_end + i);
        let Some(at) = url[scheme_end..authority_end].rfind('@') else {
            return url.clone();
        };
        let userinfo = &url[scheme_end..scheme_end + at];
        let user = match userinfo.find(':') {
            Some(colon) => format!("{}:***", &userinfo[..colon]),
            None => "***".to_owned(),
        };
        format!("{}{user}{}", &url[..scheme_end], &url[scheme_end + at..])
    }
}

impl Default for RedisUrl {
    fn default() -> Self {
        Self("redis://127.0.0.1:6379".to_owned())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({:?})", self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let url = String::deserialize(deserializer)?;
        Self::parse(&url).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_redacted() {
        let url = RedisUrl::parse("redis://user:s3cret@example.com:6379/2").unwrap();
        assert_eq!(url.redacted(), "redis://user:***@example.com:6379/2");
        assert!(!format!("{url} {url:?}").contains("s3cret"));
    }

    #[test]
    fn password_without_user_is_redacted() {
        let url = RedisUrl::parse("redis://:s3cret@example.com").unwrap();
        assert_eq!(url.redacted(), "redis://:***@example.com");
        let url = RedisUrl::parse("redis://s3cret@example.com/0").unwrap();
        assert_eq!(url.redacted(), "redis://***@example.com/0");
    }

    #[test]
    fn url_without_credentials_is_unchanged() {
        let url = RedisUrl::parse("redis://127.0.0.1:6379/0").unwrap();
        assert_eq!(url.redacted(), "redis://127.0.0.1:6379/0");
    }

    #[test]
    fn the_database_is_read_from_the_path() {
        assert_eq!(RedisUrl::parse("redis://h:1/3").unwrap().db(), 3);
        assert_eq!(RedisUrl::parse("redis://h:1").unwrap().db(), 0);
    }

    #[test]
    fn rediss_is_tls_and_read_as_redis() {
        let url = RedisUrl::parse("rediss://:pw@h:6390/2").unwrap();
        assert!(url.is_tls());
        assert_eq!(url.plain(), "redis://:pw@h:6390/2");
        assert_eq!(url.db(), 2);
        assert!(!RedisUrl::parse("redis://h:1").unwrap().is_tls());
    }

    #[test]
    fn a_list_of_seed_nodes_is_parsed_and_redacted_node_by_node() {
        let url = RedisUrl::parse("redis://:pw@10.0.0.1:7000,redis://:pw@10.0.0.2:7000").unwrap();
        assert_eq!(url.nodes().len(), 2);
        assert_eq!(
            url.redacted(),
            "redis://:***@10.0.0.1:7000,redis://:***@10.0.0.2:7000"
        );
        assert_eq!(
            url.with_address("10.0.0.9:7005").as_str(),
            "redis://:pw@10.0.0.9:7005"
        );
        assert_eq!(
            RedisUrl::parse("rediss://h:1/0")
                .unwrap()
                .with_address("h2:2")
                .as_str(),
            "rediss://h2:2"
        );
        assert!(RedisUrl::parse("redis://h:1,nonsense").is_err());
    }

    #[test]
    fn non_redis_scheme_is_rejected() {
        assert!(RedisUrl::parse("http://example.com").is_err());
        assert!(RedisUrl::parse("not a url").is_err());
    }
}
