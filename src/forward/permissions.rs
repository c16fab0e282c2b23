//! What a user may send in transparent mode, beyond the keys it names: Redis's
//! ACL rules for scripts, pub/sub channels and `SORT`'s patterns, applied by
//! the proxy because the backend sees every client as the proxy's one user.
//!
//! - **Keys:** every key a command names (by the command table's key
//!   specifications; every argument when they cannot be found) must match the
//!   user's patterns. Arguments Redis flags `not_key` (shard channels) are
//!   channels, not keys.
//! - **Scripts and functions** (the table's `@scripting` category) name keys
//!   inside their code, where the proxy cannot check them: a user whose
//!   patterns do not cover every key may run none, unless it is given
//!   `scripts = true`.
//! - **Channels:** `SUBSCRIBE`, `SSUBSCRIBE`, `PUBLISH` and `SPUBLISH` name
//!   channels that must match the user's channel patterns; a `PSUBSCRIBE`
//!   pattern must be one of them as written (Redis's rule: a client's pattern
//!   could match channels the user's patterns do not).
//! - **`SORT … BY pattern` and `SORT … GET pattern`** read keys the pattern
//!   builds from the sorted values: refused to a user without every key, as
//!   Redis does.

use bytes::Bytes;

use super::commands::Info;
use crate::auth::User;

/// The reply to a key outside the user's patterns.
const NOPERM_KEY: &str = "NOPERM No permissions to access a key";
/// The reply to a channel outside the user's channel patterns.
const NOPERM_CHANNEL: &str = "NOPERM No permissions to access a channel";

/// Why `user` may not send `args` (command `name`, lower case, described by
/// `info`): the error reply, or `None` when it may.
pub(super) fn check(name: &str, info: &Info, args: &[Bytes], user: &User) -> Option<String> {
    if info.flags.scripting && !user.may_run_scripts() {
        return Some(format!(
            "NOPERM User {} has no permissions to run the '{name}' command: its key patterns cannot bind a script (see `scripts` in [[users]])",
            user.name()
        ));
    }
    if matches!(name, "sort" | "sort_ro")
        && !user.has_all_keys()
        && let Some(option) = sort_patterns(args)
    {
        return Some(format!(
            "ERR {option} option of SORT denied due to insufficient ACL permissions."
        ));
    }
    let allowed = match info.access_keys(args) {
        Some(keys) => user.may_read_all(keys.iter().map(|k| &k[..])),
        None => user.may_read_all(args[1..].iter().map(|k| &k[..])),
    };
    if !allowed {
        return Some(NOPERM_KEY.into());
    }
    if let Some((channels, pattern)) = channels(name, args)
        && !channels
            .iter()
            .all(|channel| user.may_use_channel(channel, pattern))
    {
        return Some(NOPERM_CHANNEL.into());
    }
    None
}

/// The channels `args` subscribes or publishes to, and whether they are
/// patterns; `None` for a command that names no channel.
fn channels<'a>(name: &str, args: &'a [Bytes]) -> Option<(&'a [Bytes], bool)> {
    match name {
        "subscribe" | "ssubscribe" => Some((&args[1..], false)),
        "psubscribe" => Some((&args[1..], true)),
        "publish" | "spublish" => Some((args.get(1..2).unwrap_or_default(), false)),
        _ => None,
    }
}

/// The first option of a `SORT key …` that reads keys built from a pattern:
/// `GET`, or `BY` with a `*` in it (without one, Redis does not sort at all).
fn sort_patterns(args: &[Bytes]) -> Option<&'static str> {
    let mut i = 2;
    while i < args.len() {
        let option = args[i].to_ascii_lowercase();
        match &option[..] {
            b"by" if args.get(i + 1).is_some_and(|p| p.contains(&b'*')) => return Some("BY"),
            b"get" => return Some("GET"),
            b"by" | b"store" => i += 2,
            b"limit" => i += 3,
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::args;

    #[test]
    fn sort_options_that_read_other_keys_are_found() {
        assert_eq!(sort_patterns(&args("SORT k BY w_*")), Some("BY"));
        assert_eq!(sort_patterns(&args("SORT k BY nosort")), None);
        assert_eq!(sort_patterns(&args("SORT k LIMIT 0 10 GET #")), Some("GET"));
        assert_eq!(sort_patterns(&args("SORT k ALPHA STORE get")), None);
        assert_eq!(sort_patterns(&args("SORT k DESC")), None);
    }

    #[test]
    fn channels_are_found_in_every_pubsub_command() {
        let subscribe = args("SUBSCRIBE a b");
        assert_eq!(
            channels("subscribe", &subscribe),
            Some((&subscribe[1..], false))
        );
        let psubscribe = args("PSUBSCRIBE a*");
        assert_eq!(
            channels("psubscribe", &psubscribe),
            Some((&psubscribe[1..], true))
        );
        let publish = args("PUBLISH ch message");
        assert_eq!(channels("publish", &publish), Some((&publish[1..2], false)));
        assert_eq!(channels("publish", &args("PUBLISH")).unwrap().0.len(), 0);
        assert_eq!(channels("unsubscribe", &args("UNSUBSCRIBE a")), None);
    }
}
