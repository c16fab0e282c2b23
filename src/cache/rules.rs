//! How the entries of a key live and are served ([`KeyPolicy`]): the global
//! settings, and the rules that override them per key pattern, the first that
//! matches winning ([`Rules`]).
//!
//! A key's policy is looked up when its value is fetched, never on a hit: what
//! a hit needs (how long the entry is fresh, how long it may be served stale)
//! is stored with the entry ([`Lifetime`]), so the rules cost a cached read
//! nothing however many there are.

use std::time::Duration;

use crate::auth::Pattern;

/// How the entries of some keys live and are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// How long a value stays fresh after it was fetched.
    pub ttl: Duration,
    /// How long an absence Redis reported is remembered (zero: not at all).
    pub negative_ttl: Duration,
    /// How long past its TTL a value is kept to answer reads whose fetch
    /// fails (zero: not at all).
    pub stale_if_error: Duration,
    /// How long past its TTL a value answers reads at once while one
    /// background fetch refreshes it (zero: not at all).
    pub stale_while_revalidate: Duration,
    /// Whether the keys are cached at all (`false`: always fetched).
    pub cache: bool,
    /// Values larger than this are served but not cached.
    pub max_value_bytes: usize,
}

impl Default for KeyPolicy {
    /// Values cached for [`crate::Cache::DEFAULT_TTL`], absences not
    /// remembered, never served stale.
    fn default() -> Self {
        Self {
            ttl: super::Cache::DEFAULT_TTL,
            negative_ttl: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            cache: true,
            max_value_bytes: usize::MAX,
        }
    }
}

impl KeyPolicy {
    /// How an entry of a value fetched under this policy lives.
    pub(crate) fn value_lifetime(&self) -> Lifetime {
        Lifetime {
            ttl: self.ttl,
            revalidate: self.stale_while_revalidate,
            if_error: self.stale_if_error,
        }
    }

    /// How a remembered absence lives: its TTL, never stale (an absence
    /// answered after Redis failed would be a guess).
    pub(crate) fn absence_lifetime(&self) -> Lifetime {
        Lifetime {
            ttl: self.negative_ttl,
            revalidate: Duration::ZERO,
            if_error: Duration::ZERO,
        }
    }

    /// Whether an entry may outlive its TTL.
    fn may_be_stale(&self) -> bool {
        !self.stale_if_error.is_zero() || !self.stale_while_revalidate.is_zero()
    }
}

/// How one entry lives, from when it was stored: fresh for `ttl`, then
/// served at once while refreshed for `revalidate` more, and kept for
/// failed fetches for `if_error` more (both windows start at the TTL's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Lifetime {
    pub(crate) ttl: Duration,
    pub(crate) revalidate: Duration,
    pub(crate) if_error: Duration,
}

impl Lifetime {
    /// How long the entry is kept in all.
    pub(crate) fn keep(&self) -> Duration {
        self.ttl.saturating_add(self.revalidate.max(self.if_error))
    }
}

/// The global policy and the rules over it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    global: KeyPolicy,
    rules: Vec<(Pattern, KeyPolicy)>,
}

impl Rules {
    /// Every key under `global`.
    pub(crate) fn new(global: KeyPolicy) -> Self {
        Self {
            global,
            rules: Vec::new(),
        }
    }

    /// Keys matching `pattern` (a Redis glob), and no earlier rule, get
    /// `policy`.
    pub(crate) fn push(&mut self, pattern: &str, policy: KeyPolicy) {
        self.rules.push((Pattern::new(pattern), policy));
    }

    pub(crate) fn global_mut(&mut self) -> &mut KeyPolicy {
        &mut self.global
    }

    /// The policy of the key called `name`: the first rule that matches,
    /// else the global one. O(rules × pattern × name) at worst.
    pub(crate) fn policy(&self, name: &[u8]) -> &KeyPolicy {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.matches(name))
            .map_or(&self.global, |(_, policy)| policy)
    }

    /// Whether any key's entries may outlive their TTL (then a lost
    /// tracking link keeps them for failed fetches instead of dropping them).
    pub(crate) fn any_stale(&self) -> bool {
        self.global.may_be_stale() || self.rules.iter().any(|(_, policy)| policy.may_be_stale())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_wins_and_other_keys_get_the_global_policy() {
        let mut rules = Rules::new(KeyPolicy::default());
        let short = KeyPolicy {
            ttl: Duration::from_secs(1),
            ..KeyPolicy::default()
        };
        let never = KeyPolicy {
            cache: false,
            ..KeyPolicy::default()
        };
        rules.push("session:*", short);
        rules.push("session:admin:*", never);
        rules.push("tmp:*", never);
        assert_eq!(rules.policy(b"session:admin:1"), &short);
        assert_eq!(rules.policy(b"tmp:x"), &never);
        assert_eq!(rules.policy(b"user:1"), &KeyPolicy::default());
        assert!(!rules.any_stale());
        rules.push(
            "x",
            KeyPolicy {
                stale_if_error: Duration::from_secs(1),
                ..KeyPolicy::default()
            },
        );
        assert!(rules.any_stale());
    }

    #[test]
    fn an_entry_is_kept_for_the_longer_of_its_stale_windows() {
        let lifetime = Lifetime {
            ttl: Duration::from_secs(10),
            revalidate: Duration::from_secs(5),
            if_error: Duration::from_secs(60),
        };
        assert_eq!(lifetime.keep(), Duration::from_secs(70));
        let absent = KeyPolicy {
            negative_ttl: Duration::from_secs(3),
            stale_if_error: Duration::from_secs(60),
            ..KeyPolicy::default()
        }
        .absence_lifetime();
        assert_eq!(absent.keep(), Duration::from_secs(3));
    }
}
