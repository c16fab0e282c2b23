//! Named users (`[[users]]` in the TOML file).

use serde::{Deserialize, Serialize};

use super::Secret;

/// One named user (`[[users]]` in the TOML file), as a Redis ACL user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
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
pub(super) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn all_keys() -> Vec<String> {
    vec!["*".to_owned()]
}

fn enabled() -> bool {
    true
}
