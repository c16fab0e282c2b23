//! The backing Redis's address, validated when parsed and redacted when shown.
//!
//! ```text
//! redis://[[user]:password@]host[:port][/db]      rediss:// for TLS
//! redis://h1:7000,h2:7000                          several nodes (a cluster's seeds)
//! ```
//!
//! The user and password are percent-decoded, as in any URL; a query
//! (`?protocol=resp3`, as other clients take) is accepted and ignored: the
//! proxy chooses each connection's protocol itself.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `redis://` or `rediss://` URL, or a comma-separated list of them.
///
/// `Display` and `Debug` hide the password, so the URL can be logged as is.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

/// What one node's URL says: where it is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parts {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) db: i64,
    pub(crate) tls: bool,
}

impl Parts {
    /// `host:port` (an IPv6 host in brackets).
    pub(crate) fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `:<password>@`, percent-encoded, for a URL; empty for no password.
pub(crate) fn userinfo(password: Option<&str>) -> String {
    password.map_or_else(String::new, |password| {
        let encoded: String = password
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        format!(":{encoded}@")
    })
}

/// The form a URL must have, for error messages.
const FORM: &str = "redis://[user:password@]host[:port][/db] (rediss:// for TLS)";

/// Parses one node's URL.
fn parse_one(url: &str) -> Result<Parts, String> {
    let (tls, rest) = match url.split_once("://") {
        Some(("redis", rest)) => (false, rest),
        Some(("rediss", rest)) => (true, rest),
        Some((scheme, _)) => {
            return Err(format!(
                "`{}` has the scheme {scheme}://; a Redis URL is {FORM}",
                RedisUrl(url.to_owned()).redacted()
            ));
        }
        None => return Err(format!("`{url}` is not a Redis URL; write {FORM}")),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(info) => match info.split_once(':') {
            Some((user, password)) => (non_empty(user), Some(decode(password)?)),
            // `redis://secret@host`: a lone userinfo is the password, as
            // redis-cli reads it.
            None => (None, Some(decode(info)?)),
        },
    };
    let user = user.map(decode).transpose()?;
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{hostport}`: an IPv6 host is written [address]"))?;
            (host, after.strip_prefix(':'))
        }
        None => match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        },
    };
    if host.is_empty() {
        return Err(format!(
            "`{}` names no host; write {FORM}",
            RedisUrl(url.to_owned()).redacted()
        ));
    }
    let port = match port {
        None | Some("") => 6379,
        Some(port) => port
            .parse()
            .map_err(|_| format!("`{port}` is not a port number (0-65535)"))?,
    };
    let db = match path.trim_end_matches('/') {
        "" => 0,
        db => db
            .parse::<i64>()
            .ok()
            .filter(|db| *db >= 0)
            .ok_or_else(|| format!("`/{db}` is not a database number"))?,
    };
    Ok(Parts {
        host: host.to_owned(),
        port,
        user,
        password,
        db,
        tls,
    })
}

/// One URL naming several hosts, `scheme://[userinfo@]h1:p1,h2:p2[/db]` (as
/// sentinels are often written), as the list of whole URLs it stands for, each
/// with the scheme, credentials and database; a list of whole URLs, or one
/// URL, as it is.
fn expand_hosts(url: &str) -> String {
    let items: Vec<&str> = url.split(',').map(str::trim).collect();
    let (Some(first), Some(last)) = (items.first(), items.last()) else {
        return url.to_owned();
    };
    let Some(scheme_end) = first.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    if items.len() < 2 || items[1..].iter().any(|item| item.contains("://")) {
        return url.to_owned();
    }
    let (scheme, rest) = first.split_at(scheme_end);
    let (userinfo, host) = rest
        .rfind('@')
        .map_or(("", rest), |at| rest.split_at(at + 1));
    let path = last.find('/').map_or("", |slash| &last[slash..]);
    std::iter::once(host)
        .chain(items[1..].iter().copied())
        .map(|item| item.split('/').next().unwrap_or_default())
        .map(|host| format!("{scheme}{userinfo}{host}{path}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// Percent-decodes a user or password.
fn decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "the user or password is not UTF-8 once percent-decoded".to_owned())
}

impl RedisUrl {
    /// Parses and validates a URL.
    ///
    /// # Errors
    ///
    /// What is wrong with it, and the form expected.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = expand_hosts(url);
        for one in url.split(',') {
            parse_one(one.trim())?;
        }
        Ok(Self(url))
    }

    /// Each URL of a comma-separated list (a cluster's seed nodes); the URL
    /// itself when it is one.
    pub fn nodes(&self) -> Vec<RedisUrl> {
        self.0
            .split(',')
            .map(|one| Self(one.trim().to_owned()))
            .collect()
    }

    /// What the first node's URL says.
    pub(crate) fn parts(&self) -> Parts {
        parse_one(self.0.split(',').next().unwrap_or_default().trim())
            .expect("validated when parsed")
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

    /// [`RedisUrl::with_address`], keeping the database: how the primary a
    /// sentinel names is reached.
    pub(crate) fn with_address_and_db(&self, addr: &str) -> RedisUrl {
        match self.db() {
            0 => self.with_address(addr),
            db => Self(format!("{}/{db}", self.with_address(addr).0)),
        }
    }

    /// The URL of a sentinel at `addr`: this URL's scheme, the sentinels'
    /// own `password` (none: no credentials), no database.
    pub(crate) fn sentinel_at(&self, addr: &str, password: Option<&str>) -> RedisUrl {
        let scheme = if self.is_tls() {
            "rediss://"
        } else {
            "redis://"
        };
        Self(format!("{scheme}{}{addr}", userinfo(password)))
    }

    /// Whether the URL asks for TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }

    /// The database the URL names (`/2`), or 0.
    pub fn db(&self) -> i64 {
        self.parts().db
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
    fn one_url_naming_several_hosts_is_the_list_it_stands_for() {
        let url = RedisUrl::parse("redis://u:p@s1:26379, s2:26380,s3/2").unwrap();
        assert_eq!(
            url.as_str(),
            "redis://u:p@s1:26379/2,redis://u:p@s2:26380/2,redis://u:p@s3/2"
        );
        assert_eq!(url.nodes().len(), 3);
        assert_eq!(url.db(), 2);
        let tls = RedisUrl::parse("rediss://a:1,b:2").unwrap();
        assert_eq!(tls.as_str(), "rediss://a:1,rediss://b:2");
        let whole = "redis://a:1,redis://b:2";
        assert_eq!(RedisUrl::parse(whole).unwrap().as_str(), whole);
        assert!(RedisUrl::parse("redis://a:1,b:2,redis://c:3").is_err());
    }

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
        assert_eq!(url.db(), 2);
        assert_eq!(url.parts().address(), "h:6390");
        assert!(!RedisUrl::parse("redis://h:1").unwrap().is_tls());
    }

    #[test]
    fn every_part_is_read_and_credentials_are_percent_decoded() {
        let parts = RedisUrl::parse("redis://app%40x:p%3Aw@[::1]:7000/3?protocol=resp3")
            .unwrap()
            .parts();
        assert_eq!(parts.host, "::1");
        assert_eq!(parts.port, 7000);
        assert_eq!(parts.address(), "[::1]:7000");
        assert_eq!(parts.user.as_deref(), Some("app@x"));
        assert_eq!(parts.password.as_deref(), Some("p:w"));
        assert_eq!(parts.db, 3);
        let bare = RedisUrl::parse("redis://localhost").unwrap().parts();
        assert_eq!((bare.port, bare.user, bare.password), (6379, None, None));
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
        assert!(RedisUrl::parse("redis://h:1,h2:port").is_err());
    }

    #[test]
    fn a_wrong_url_is_told_the_form_it_should_have() {
        let http = RedisUrl::parse("http://example.com").unwrap_err();
        assert!(
            http.contains("http://") && http.contains("redis://[user:password@]host"),
            "{http}"
        );
        let bare = RedisUrl::parse("127.0.0.1:6379").unwrap_err();
        assert!(
            bare.contains("is not a Redis URL; write redis://"),
            "{bare}"
        );
        assert!(
            RedisUrl::parse("redis://h:port")
                .unwrap_err()
                .contains("not a port")
        );
        assert!(
            RedisUrl::parse("redis://h/x")
                .unwrap_err()
                .contains("database")
        );
        assert!(RedisUrl::parse("not a url").is_err());
    }
}
