//! Who may read through the proxy: client authentication and per-user key
//! permissions, shared by both front-ends.
//!
//! Users are Redis ACL users reduced to what a read-only proxy needs: a name, a
//! password, the key patterns the user may read, and whether the user is
//! enabled. `--client-password` is the password of user `default`, so that
//! `AUTH password` works as with Redis's `requirepass`; `[[users]]` in the TOML
//! file adds named users. With neither, there is nothing to authenticate and
//! every client may read every key, as before.
//!
//! Each front-end turns what its clients send (RESP's `AUTH` and `HELLO … AUTH`,
//! HTTP's `Authorization` header) into a name and a password and asks
//! [`Access::authenticate`] here, which logs and counts a failure in one place.
//! Passwords are kept only as SHA-256 digests and compared in constant time; a
//! name that does not exist costs the same comparison, against nothing.

mod glob;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Config, UserConfig};

pub(crate) use glob::Pattern;

/// The length of a SHA-256 digest.
const DIGEST: usize = 32;

/// An authenticated user: what it may read.
#[derive(Debug)]
pub(crate) struct User {
    name: String,
    password: [u8; DIGEST],
    keys: Vec<Pattern>,
    enabled: bool,
}

impl User {
    /// The user's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the user may read `key`: one of its patterns matches it.
    pub(crate) fn may_read(&self, key: &[u8]) -> bool {
        self.keys.iter().any(|pattern| pattern.matches(key))
    }

    /// Whether the user may read every one of `keys` (a multi-key read is
    /// refused whole when one key is denied, as Redis does).
    pub(crate) fn may_read_all<'a>(&self, mut keys: impl Iterator<Item = &'a [u8]>) -> bool {
        keys.all(|key| self.may_read(key))
    }

    /// Every key, for everyone: the user of a proxy without authentication.
    fn anyone() -> Self {
        Self {
            name: "default".to_owned(),
            password: [0; DIGEST],
            keys: vec![Pattern::new("*")],
            enabled: true,
        }
    }
}

/// The users, and whether clients must authenticate. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    users: HashMap<String, Arc<User>>,
    /// The user of every connection when authentication is off.
    anyone: Option<Arc<User>>,
}

/// Which front-end a client authenticated through, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Front {
    Http,
    Resp,
}

impl Front {
    fn as_str(self) -> &'static str {
        match self {
            Front::Http => "http",
            Front::Resp => "resp",
        }
    }
}

impl Access {
    /// No authentication: every client reads every key.
    pub(crate) fn open() -> Self {
        Self {
            inner: Arc::new(Inner {
                users: HashMap::new(),
                anyone: Some(Arc::new(User::anyone())),
            }),
        }
    }

    /// The users `config` names (validated already by `Config::load`).
    pub(crate) fn from_config(config: &Config) -> Self {
        if !config.requires_auth() {
            return Self::open();
        }
        let mut users: HashMap<String, Arc<User>> = config
            .users
            .iter()
            .map(|user| (user.name.clone(), Arc::new(user_from(user))))
            .collect();
        if let Some(password) = &config.client_password {
            let default = User {
                name: "default".to_owned(),
                password: sha256(password.expose().as_bytes()),
                keys: vec![Pattern::new("*")],
                enabled: true,
            };
            users.insert(default.name.clone(), Arc::new(default));
        }
        Self {
            inner: Arc::new(Inner {
                users,
                anyone: None,
            }),
        }
    }

    /// Whether clients must authenticate before they read.
    pub(crate) fn required(&self) -> bool {
        self.inner.anyone.is_none()
    }

    /// The user a new connection starts as: everyone's user when authentication
    /// is off, none (not authenticated) when it is on.
    pub(crate) fn initial(&self) -> Option<Arc<User>> {
        self.inner.anyone.clone()
    }

    /// The user `name` when `password` is its password and it is enabled. A
    /// failure is logged at warn with the client's address and the name, never
    /// the password, and counted in `redis_proxy_auth_failures_total`.
    pub(crate) fn authenticate(
        &self,
        front: Front,
        peer: SocketAddr,
        name: &[u8],
        password: &[u8],
    ) -> Option<Arc<User>> {
        let given = sha256(password);
        let user = std::str::from_utf8(name)
            .ok()
            .and_then(|name| self.inner.users.get(name));
        // The digest is compared whether or not the user exists, so that an
        // unknown name takes as long as a wrong password.
        let stored = user.map_or([0xff; DIGEST], |user| user.password);
        let matches = constant_time_eq(&given, &stored);
        match user {
            Some(user) if matches && user.enabled => Some(user.clone()),
            _ => {
                let name = String::from_utf8_lossy(name);
                tracing::warn!(client = %peer, user = %name, protocol = front.as_str(), "authentication failed");
                metrics::counter!(crate::metrics::AUTH_FAILURES, "protocol" => front.as_str())
                    .increment(1);
                None
            }
        }
    }
}

fn user_from(config: &UserConfig) -> User {
    let password = match (&config.password, &config.password_sha256) {
        (Some(password), _) => sha256(password.expose().as_bytes()),
        (None, Some(hash)) => hex_digest(hash.expose()).expect("validated by Config::load"),
        (None, None) => unreachable!("validated by Config::load"),
    };
    User {
        name: config.name.clone(),
        password,
        keys: config.keys.iter().map(|k| Pattern::new(k)).collect(),
        enabled: config.enabled,
    }
}

fn sha256(bytes: &[u8]) -> [u8; DIGEST] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// 64 hexadecimal digits as the 32 bytes they spell.
fn hex_digest(hex: &str) -> Option<[u8; DIGEST]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 2 * DIGEST {
        return None;
    }
    let mut digest = [0; DIGEST];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        digest[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(digest)
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they
/// differ.
fn constant_time_eq(a: &[u8; DIGEST], b: &[u8; DIGEST]) -> bool {
    let difference = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn config(password: Option<&str>, users: Vec<UserConfig>) -> Config {
        Config {
            client_password: password.map(|p| Secret::from(p.to_owned())),
            users,
            ..Config::default()
        }
    }

    fn user(name: &str, password: &str, keys: &[&str]) -> UserConfig {
        UserConfig {
            name: name.to_owned(),
            password: Some(Secret::from(password.to_owned())),
            password_sha256: None,
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            enabled: true,
        }
    }

    #[test]
    fn without_users_everyone_reads_everything() {
        let access = Access::from_config(&config(None, Vec::new()));
        assert!(!access.required());
        let anyone = access.initial().expect("no authentication");
        assert!(anyone.may_read(b"any:key"));
    }

    #[test]
    fn the_client_password_is_the_default_users() {
        let access = Access::from_config(&config(Some("s3cret"), Vec::new()));
        assert!(access.required());
        assert!(access.initial().is_none());
        let default = access
            .authenticate(Front::Resp, peer(), b"default", b"s3cret")
            .expect("right password");
        assert_eq!(default.name(), "default");
        assert!(default.may_read(b"anything"));
        assert!(
            access
                .authenticate(Front::Resp, peer(), b"default", b"wrong")
                .is_none()
        );
        assert!(
            access
                .authenticate(Front::Resp, peer(), b"other", b"s3cret")
                .is_none()
        );
    }

    #[test]
    fn users_read_only_their_patterns_and_disabled_ones_cannot_log_in() {
        let mut off = user("off", "pw", &["*"]);
        off.enabled = false;
        let mut hashed = user("hashed", "", &["h:*"]);
        hashed.password = None;
        // SHA-256 of "pw".
        hashed.password_sha256 = Some(Secret::from(
            "30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4".to_owned(),
        ));
        let access = Access::from_config(&config(
            None,
            vec![user("app", "pw", &["app:*", "shared"]), off, hashed],
        ));
        let app = access
            .authenticate(Front::Http, peer(), b"app", b"pw")
            .unwrap();
        assert!(app.may_read(b"app:1"));
        assert!(app.may_read(b"shared"));
        assert!(!app.may_read(b"other:1"));
        assert!(!app.may_read_all([&b"app:1"[..], b"other:1"].into_iter()));
        assert!(
            access
                .authenticate(Front::Http, peer(), b"off", b"pw")
                .is_none()
        );
        assert!(
            access
                .authenticate(Front::Http, peer(), b"default", b"pw")
                .is_none()
        );
        let hashed = access
            .authenticate(Front::Http, peer(), b"hashed", b"pw")
            .expect("the hash is the password's");
        assert!(hashed.may_read(b"h:1"));
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        let a = sha256(b"a");
        assert!(constant_time_eq(&a, &sha256(b"a")));
        assert!(!constant_time_eq(&a, &sha256(b"b")));
        assert_eq!(hex_digest(&"ab".repeat(32)), Some([0xab; DIGEST]));
        assert_eq!(hex_digest("zz"), None);
    }
}
