//! Cache rules (`[[cache_rules]]` in the TOML file).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ByteSize;

/// How the entries of keys matching `pattern` live, overriding the global
/// `cache_*` settings for them; the first rule that matches a key wins. A
/// setting left out is the global one.
///
/// ```toml
/// [[cache_rules]]
/// pattern = "session:*"
/// ttl = "5s"
/// stale_if_error = "10m"
///
/// [[cache_rules]]
/// pattern = "rate:*"
/// cache = false
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheRule {
    /// A Redis glob pattern of key names (`*`, `?`, `[a-z]`, `\x`).
    pub pattern: String,
    /// As `cache_ttl`, for these keys.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// As `cache_negative_ttl`, for these keys.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub negative_ttl: Option<Duration>,
    /// As `cache_stale_if_error`, for these keys.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stale_if_error: Option<Duration>,
    /// As `cache_stale_while_revalidate`, for these keys.
    #[serde(
        default,
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stale_while_revalidate: Option<Duration>,
    /// `false`: these keys are never cached, always fetched.
    #[serde(default = "cached")]
    pub cache: bool,
    /// As `cache_max_value_bytes`, for these keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value_bytes: Option<ByteSize>,
}

fn cached() -> bool {
    true
}

impl CacheRule {
    /// A rule for `pattern` that overrides nothing.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self {
            pattern: pattern.into(),
            ttl: None,
            negative_ttl: None,
            stale_if_error: None,
            stale_while_revalidate: None,
            cache: true,
            max_value_bytes: None,
        }
    }
}
