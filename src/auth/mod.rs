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
use std::sync::{Arc, PoisonError, RwLock};

use crate::config::{Config, UserConfig};

pub(crate) use glob::Pattern;

/// The length of a SHA-256 digest.
const DIGEST: usize = 32;

/// An authenticated user: what it may read, and in transparent mode which
/// channels it may use and whether it may run scripts.
#[derive(Debug)]
pub(crate) struct User {
    name: String,
    password: [u8; DIGEST],
    keys: Vec<Pattern>,
    /// One of the key patterns is `*`: every key is the user's.
    all_keys: bool,
    enabled: bool,
    /// The user's key patterns do not bind its scripts (`scripts = true`).
    scripts: bool,
    channels: Channels,
    /// Cancelled when a reload removes or disables the user or changes what
    /// it may do: its connections end, as Redis's `ACL DELUSER` ends them.
    revoked: tokio_util::sync::CancellationToken,
}

/// The pub/sub channels a user may subscribe and publish to.
#[derive(Debug)]
struct Channels {
    /// One of the patterns is `*`: every channel, and any `PSUBSCRIBE` pattern.
    all: bool,
    /// Each pattern, parsed (for channels) and as written (for `PSUBSCRIBE`
    /// patterns, which Redis compares literally).
    patterns: Vec<(Pattern, Box<[u8]>)>,
}

impl Channels {
    fn new(patterns: &[String]) -> Self {
        Self {
            all: patterns.iter().any(|p| p == "*"),
            patterns: patterns
                .iter()
                .map(|p| (Pattern::new(p), p.as_bytes().into()))
                .collect(),
        }
    }
}

impl User {
    /// The user's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether the user may read `key`: one of its patterns matches it.
    pub(crate) fn may_read(&self, key: &[u8]) -> bool {
        self.all_keys || self.keys.iter().any(|pattern| pattern.matches(key))
    }

    /// Whether the user may read every one of `keys` (a multi-key read is
    /// refused whole when one key is denied, as Redis does).
    pub(crate) fn may_read_all<'a>(&self, mut keys: impl Iterator<Item = &'a [u8]>) -> bool {
        keys.all(|key| self.may_read(key))
    }

    /// Whether every key is the user's (its patterns include `*`).
    pub(crate) fn has_all_keys(&self) -> bool {
        self.all_keys
    }

    /// Whether the user may run server-side code (scripts, functions): code
    /// names keys where the proxy cannot check them, so only a user whose
    /// patterns cover every key, or one given `scripts = true`, may.
    pub(crate) fn may_run_scripts(&self) -> bool {
        self.all_keys || self.scripts
    }

    /// Whether the user may subscribe or publish to `channel`; with `pattern`,
    /// whether it may `PSUBSCRIBE` the pattern `channel`, which Redis allows
    /// only when it is one of the user's patterns as written (a pattern of
    /// the client's could match channels the user's patterns do not).
    pub(crate) fn may_use_channel(&self, channel: &[u8], pattern: bool) -> bool {
        let channels = &self.channels;
        channels.all
            || channels.patterns.iter().any(|(parsed, text)| {
                if pattern {
                    **text == *channel
                } else {
                    parsed.matches(channel)
                }
            })
    }

    /// Every key and channel, for everyone: the user of a proxy without
    /// authentication.
    fn anyone() -> Self {
        Self::unrestricted("default".to_owned(), [0; DIGEST])
    }

    /// A user who may read every key and use every channel.
    fn unrestricted(name: String, password: [u8; DIGEST]) -> Self {
        Self {
            name,
            password,
            keys: vec![Pattern::new("*")],
            all_keys: true,
            enabled: true,
            scripts: true,
            channels: Channels::new(&["*".to_owned()]),
            revoked: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Cancelled when a reload removes or disables the user or changes its
    /// permissions.
    pub(crate) fn revoked(&self) -> &tokio_util::sync::CancellationToken {
        &self.revoked
    }
}

/// The users, and whether clients must authenticate. Cheap to clone; clones
/// share the users, which a reload replaces ([`Access::reload`]).
#[derive(Debug, Clone)]
pub(crate) struct Access {
    inner: Arc<RwLock<Arc<Inner>>>,
}

#[derive(Debug)]
struct Inner {
    users: HashMap<String, Arc<User>>,
    /// The user of every connection when authentication is off.
    anyone: Option<Arc<User>>,
}

impl Inner {
    fn open() -> Self {
        Self {
            users: HashMap::new(),
            anyone: Some(Arc::new(User::anyone())),
        }
    }

    fn from_config(config: &Config) -> Self {
        if !config.requires_auth() {
            return Self::open();
        }
        let mut users: HashMap<String, Arc<User>> = config
            .users
            .iter()
            .map(|user| (user.name.clone(), Arc::new(user_from(user))))
            .collect();
        if let Some(password) = &config.client_password {
            let default =
                User::unrestricted("default".to_owned(), sha256(password.expose().as_bytes()));
            users.insert(default.name.clone(), Arc::new(default));
        }
        Self {
            users,
            anyone: None,
        }
    }
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
    #[cfg(test)]
    pub(crate) fn open() -> Self {
        Self::with(Inner::open())
    }

    fn with(inner: Inner) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Arc::new(inner))),
        }
    }

    fn now(&self) -> Arc<Inner> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The users `config` names (validated already by `Config::load`).
    pub(crate) fn from_config(config: &Config) -> Self {
        Self::with(Inner::from_config(config))
    }

    /// The users of `new` from now on, where `old` named those before: a
    /// user removed, disabled, or whose permissions changed is revoked (its
    /// connections end); one whose password alone changed keeps its
    /// connections, and the old password no longer authenticates.
    pub(crate) fn reload(&self, old: &Config, new: &Config) {
        let next = Inner::from_config(new);
        let kept = |name: &str| -> bool {
            let before = old.users.iter().find(|u| u.name == name);
            let after = new.users.iter().find(|u| u.name == name);
            match (before, after) {
                (Some(before), Some(after)) => {
                    let permissions =
                        |u: &UserConfig| (u.keys.clone(), u.enabled, u.scripts, u.channels.clone());
                    permissions(before) == permissions(after)
                }
                // The `client_password` user: kept while there is one.
                _ => new.client_password.is_some() && new.requires_auth(),
            }
        };
        let mut next = next;
        let mut current = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        for (name, user) in &current.users {
            match next.users.get_mut(name) {
                // The same user: its connections live on, revoked if a later
                // reload removes it.
                Some(same) if kept(name) => {
                    if let Some(same) = Arc::get_mut(same) {
                        same.revoked = user.revoked.clone();
                    }
                }
                _ => {
                    tracing::warn!(user = %name, "reload: user removed, disabled or changed; its connections are closed");
                    user.revoked.cancel();
                }
            }
        }
        *current = Arc::new(next);
    }

    /// Whether clients must authenticate before they read.
    pub(crate) fn required(&self) -> bool {
        self.now().anyone.is_none()
    }

    /// The user a new connection starts as: everyone's user when authentication
    /// is off, none (not authenticated) when it is on.
    pub(crate) fn initial(&self) -> Option<Arc<User>> {
        self.now().anyone.clone()
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
        let inner = self.now();
        let user = std::str::from_utf8(name)
            .ok()
            .and_then(|name| inner.users.get(name));
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
    let all_keys = config.keys.iter().any(|k| k == "*");
    let channels = match &config.channels {
        Some(channels) => Channels::new(channels),
        // As Redis 7 (`acl-pubsub-default resetchannels`), but every channel
        // for a user who may read every key anyway.
        None if all_keys => Channels::new(&["*".to_owned()]),
        None => Channels::new(&[]),
    };
    User {
        name: config.name.clone(),
        password,
        keys: config.keys.iter().map(|k| Pattern::new(k)).collect(),
        all_keys,
        enabled: config.enabled,
        scripts: config.scripts,
        channels,
        revoked: tokio_util::sync::CancellationToken::new(),
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
            scripts: false,
            channels: None,
        }
    }

    #[test]
    fn restricted_users_run_no_scripts_and_use_only_their_channels() {
        let mut scripted = user("scripted", "pw", &["s:*"]);
        scripted.scripts = true;
        let mut news = user("news", "pw", &["n:*"]);
        news.channels = Some(vec!["news.*".to_owned(), "alerts".to_owned()]);
        let access = Access::from_config(&config(
            Some("root"),
            vec![
                user("app", "pw", &["app:*"]),
                user("all", "pw", &["*"]),
                scripted,
                news,
            ],
        ));
        let login = |name: &str, password: &[u8]| {
            access
                .authenticate(Front::Resp, peer(), name.as_bytes(), password)
                .unwrap()
        };
        let (app, all, scripted, news) = (
            login("app", b"pw"),
            login("all", b"pw"),
            login("scripted", b"pw"),
            login("news", b"pw"),
        );
        let default = login("default", b"root");
        assert!(!app.may_run_scripts());
        assert!(all.may_run_scripts() && default.may_run_scripts());
        assert!(scripted.may_run_scripts());
        // No channels by default for a user with key patterns...
        assert!(!app.may_use_channel(b"any", false));
        assert!(!app.may_use_channel(b"*", true));
        // ...every channel for one who reads every key.
        assert!(all.may_use_channel(b"any", false) && all.may_use_channel(b"x*", true));
        assert!(news.may_use_channel(b"news.sport", false));
        assert!(news.may_use_channel(b"alerts", false));
        assert!(!news.may_use_channel(b"__keyspace@0__:n:1", false));
        assert!(
            news.may_use_channel(b"news.*", true),
            "one of its own patterns"
        );
        assert!(
            !news.may_use_channel(b"news.s*", true),
            "not literally one of them"
        );
        assert!(!news.may_use_channel(b"*", true));
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
