//! Value types of the configuration that need more than a number: listen
//! addresses (`host:port`, resolved when bound) and byte sizes (`512mb`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Where a listener binds: `HOST:PORT`, with a host name or an IP address
/// (`[::1]:8080` for IPv6). Names are resolved when the listener is bound; the
/// first address found is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    host: String,
    port: u16,
}

impl ListenAddr {
    /// `127.0.0.1:port`.
    pub fn loopback(port: u16) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port,
        }
    }

    /// The host part, as given (brackets of an IPv6 address removed).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether binding both would bind one address twice: the same port (not
    /// 0, which picks a free one) on the same host, or on a host and the
    /// wildcard address that covers it.
    pub fn overlaps(&self, other: &ListenAddr) -> bool {
        let wildcard = |host: &str| matches!(host, "0.0.0.0" | "::" | "");
        self.port != 0
            && self.port == other.port
            && (self.host.eq_ignore_ascii_case(&other.host)
                || wildcard(&self.host)
                || wildcard(&other.host))
    }

    /// Resolves the host to the address to bind.
    ///
    /// # Errors
    ///
    /// The resolver's error, or `NotFound` when the name has no address.
    pub async fn resolve(&self) -> std::io::Result<std::net::SocketAddr> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} has no address", self.host),
                )
            })
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}` is not HOST:PORT"))?;
        // An IPv6 address is written in brackets, as in a URL: `[::1]:8080`.
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(ipv6) if ipv6.parse::<std::net::Ipv6Addr>().is_ok() => ipv6,
            Some(_) => return Err(format!("`{text}` is not HOST:PORT")),
            None if host.is_empty() || host.contains(':') => {
                return Err(format!(
                    "`{text}` is not HOST:PORT (write IPv6 addresses as [::1]:PORT)"
                ));
            }
            None => host,
        };
        let port = port
            .parse()
            .map_err(|_| format!("`{port}` in `{text}` is not a port number"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A number of bytes, written as Redis writes them in its configuration: a plain
/// number, or with a unit: `k`/`m`/`g` (powers of 1000) or `kb`/`mb`/`gb`
/// (powers of 1024), in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    /// The size as a `usize`, saturating.
    pub fn bytes(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let unit = &lower[digits.len()..];
        let factor: u64 = match unit {
            "" | "b" => 1,
            "k" => 1000,
            "kb" | "kib" => 1024,
            "m" => 1000 * 1000,
            "mb" | "mib" => 1024 * 1024,
            "g" => 1000 * 1000 * 1000,
            "gb" | "gib" => 1024 * 1024 * 1024,
            _ => {
                return Err(format!(
                    "`{text}`: unknown unit `{unit}` (use k, kb, m, mb, g or gb)"
                ));
            }
        };
        let number: u64 = digits
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a size such as 512mb"))?;
        number
            .checked_mul(factor)
            .map(Self)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "gb"), (1 << 20, "mb"), (1 << 10, "kb")];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes, such as 1048576 or 512mb")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The memory this process may use: its cgroup's limit when it has one (a
/// container's), else the machine's. `None` when neither can be read.
pub fn memory_available() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let cgroup_v2 = read("/sys/fs/cgroup/memory.max").and_then(|s| s.trim().parse::<u64>().ok());
    let cgroup_v1 = read("/sys/fs/cgroup/memory/memory.limit_in_bytes")
        .and_then(|s| s.trim().parse::<u64>().ok())
        // cgroup v1 reports "no limit" as a number near u64::MAX.
        .filter(|&limit| limit < 1 << 60);
    let machine = read("/proc/meminfo").and_then(|meminfo| {
        meminfo.lines().find_map(|line| {
            let kib = line.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
            kib.trim().parse::<u64>().ok().map(|kib| kib * 1024)
        })
    });
    [cgroup_v2, cgroup_v1, machine].into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_names_and_ip_addresses() {
        let addr: ListenAddr = "localhost:8080".parse().unwrap();
        assert_eq!((addr.host(), addr.port()), ("localhost", 8080));
        let addr: ListenAddr = "[::1]:6380".parse().unwrap();
        assert_eq!(
            (addr.host(), addr.to_string().as_str()),
            ("::1", "[::1]:6380")
        );
        assert_eq!("0.0.0.0:0".parse::<ListenAddr>().unwrap().port(), 0);
        for bad in ["nowhere", ":80", "host:", "host:99999", "::1:80"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn localhost_resolves() {
        let addr: ListenAddr = "localhost:0".parse().unwrap();
        assert!(addr.resolve().await.unwrap().ip().is_loopback());
    }

    #[test]
    fn sizes_read_as_redis_reads_them() {
        for (text, bytes) in [
            ("100", 100),
            ("1k", 1000),
            ("1kb", 1024),
            ("2MB", 2 << 20),
            ("3m", 3_000_000),
            ("1gb", 1 << 30),
            ("1g", 1_000_000_000),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        assert!("lots".parse::<ByteSize>().is_err());
        assert!("5tb".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize::mib(512).to_string(), "512mb");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn this_machine_has_memory() {
        assert!(memory_available().is_some_and(|bytes| bytes > 1 << 20));
    }
}

/// A password: kept as given, shown as `***` by `Debug`, `Display` and
/// `Serialize`, so that no log line or configuration dump carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself: for checking credentials, never for showing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Self {
        Self(secret)
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(secret: &str) -> Result<Self, Self::Err> {
        Ok(Self(secret.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a password")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Secret, E> {
                Ok(Secret(text.to_owned()))
            }
            // A password of digits written without quotes in TOML.
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Secret, E> {
                Ok(Secret(n.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Secret, E> {
                Ok(Secret(n.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
