//! How the replies of several nodes to one command become one reply, as
//! Redis's command tips say: a command marked `request_policy:all_shards` (or
//! `all_nodes`) goes to every primary of a cluster, and its `response_policy`
//! says how their replies combine: `DBSIZE` sums, `KEYS` gathers, `FLUSHALL`
//! and `SCRIPT LOAD` succeed everywhere or fail, `SCRIPT EXISTS` says 1 where
//! every primary has the script.
//!
//! Commands whose replies combine in a way of their own (`response_policy:special`:
//! `INFO`, `MEMORY STATS`) have no [`Combine`].

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{self, Frame, Kind};

/// How the replies of every primary become one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// No policy: arrays are joined into one (`KEYS`); of other replies, the
    /// first that is not null (`RANDOMKEY`).
    Gather,
    /// `all_succeeded`: the first reply, unless one is an error.
    AllSucceeded,
    /// `one_succeeded`: the first reply that is not an error.
    OneSucceeded,
    /// `agg_sum` of integers.
    Sum,
    /// `agg_min` of integers.
    Min,
    /// `agg_max` of integers.
    Max,
    /// `agg_logical_and` of integers, or of arrays of them element by element.
    And,
    /// `agg_logical_or`, as `And`.
    Or,
}

impl Combine {
    /// What a command's tips (lower case) ask for; `None` unless it goes to
    /// every shard and its replies combine in one of the ways above.
    pub fn from_tips(tips: &[Vec<u8>]) -> Option<Self> {
        let everywhere = tips
            .iter()
            .any(|tip| tip == b"request_policy:all_shards" || tip == b"request_policy:all_nodes");
        everywhere.then(|| Self::response_policy(tips)).flatten()
    }

    /// How the replies to a command split by its keys' shards combine, for a
    /// command whose tips say it may be (`request_policy:multi_shard`,
    /// `DEL`, `MSET`, …) and whose replies combine without knowing which key
    /// each came from; `None` for every other.
    pub fn from_split_tips(tips: &[Vec<u8>]) -> Option<Self> {
        if !tips.iter().any(|tip| tip == b"request_policy:multi_shard") {
            return None;
        }
        Self::response_policy(tips).filter(|how| *how != Self::Gather)
    }

    /// The tips' `response_policy`, `Gather` without one.
    fn response_policy(tips: &[Vec<u8>]) -> Option<Self> {
        let policy = tips
            .iter()
            .find_map(|tip| tip.strip_prefix(b"response_policy:"));
        Some(match policy {
            None => Self::Gather,
            Some(b"all_succeeded") => Self::AllSucceeded,
            Some(b"one_succeeded") => Self::OneSucceeded,
            Some(b"agg_sum") => Self::Sum,
            Some(b"agg_min") => Self::Min,
            Some(b"agg_max") => Self::Max,
            Some(b"agg_logical_and") => Self::And,
            Some(b"agg_logical_or") => Self::Or,
            Some(_) => return None,
        })
    }

    /// One reply from every primary's, in the primaries' order. An error
    /// answers for all, but for `OneSucceeded`; a reply of an unexpected shape
    /// is passed on as the first primary sent it.
    pub fn apply(self, replies: Vec<Frame>) -> Frame {
        let Some(first) = replies.first() else {
            return error("ERR redis cluster: no primary to send the command to");
        };
        if self == Self::OneSucceeded {
            return replies
                .iter()
                .find(|reply| reply.kind != Kind::Error)
                .unwrap_or(first)
                .clone();
        }
        if let Some(failed) = replies.iter().find(|reply| reply.kind == Kind::Error) {
            return failed.clone();
        }
        let combined = match self {
            Self::Gather => Some(gather(&replies)),
            Self::AllSucceeded | Self::OneSucceeded => None,
            Self::Sum => fold(&replies, |a, b| a.saturating_add(b)),
            Self::Min => fold(&replies, i64::min),
            Self::Max => fold(&replies, i64::max),
            Self::And => logical(&replies, |a, b| a && b),
            Self::Or => logical(&replies, |a, b| a || b),
        };
        combined.unwrap_or_else(|| first.clone())
    }
}

/// An error reply.
pub fn error(text: &str) -> Frame {
    Frame::new(Bytes::from(format!("-{text}\r\n")))
}

pub(crate) fn reply(bytes: BytesMut) -> Frame {
    Frame::new(bytes.freeze())
}

/// Arrays (or sets) of one type joined into one; else the first reply that is
/// not null.
fn gather(replies: &[Frame]) -> Frame {
    let kind = replies[0].bytes[0];
    let parts: Option<Vec<(i64, usize)>> = replies
        .iter()
        .map(|r| match r.bytes.first() {
            Some(&k) if k == kind && matches!(k, b'*' | b'~') => frame::line(&r.bytes, 1),
            _ => None,
        })
        .collect();
    let Some(parts) = parts.filter(|parts| parts.iter().all(|(n, _)| *n >= 0)) else {
        return replies
            .iter()
            .find(|r| !matches!(&r.bytes[..], b"$-1\r\n" | b"*-1\r\n" | b"_\r\n"))
            .unwrap_or(&replies[0])
            .clone();
    };
    let count: i64 = parts.iter().map(|(n, _)| n).sum();
    let size: usize = replies.iter().map(|r| r.bytes.len()).sum();
    let mut out = BytesMut::with_capacity(size + 24);
    out.put_u8(kind);
    out.put_slice(format!("{count}\r\n").as_bytes());
    for (r, (_, body)) in replies.iter().zip(parts) {
        out.put_slice(&r.bytes[body..]);
    }
    reply(out)
}

/// An integer reply's value.
fn integer(frame: &Frame) -> Option<i64> {
    match frame.bytes.first() {
        Some(b':') => frame::line(&frame.bytes, 1).map(|(n, _)| n),
        _ => None,
    }
}

/// An array of integers' values.
fn integers(frame: &Frame) -> Option<Vec<i64>> {
    let b = &frame.bytes[..];
    if b.first() != Some(&b'*') {
        return None;
    }
    let (n, mut at) = frame::line(b, 1)?;
    let mut values = Vec::with_capacity(usize::try_from(n).ok()?);
    for _ in 0..n {
        if b.get(at) != Some(&b':') {
            return None;
        }
        let (value, next) = frame::line(b, at + 1)?;
        values.push(value);
        at = next;
    }
    Some(values)
}

fn fold(replies: &[Frame], f: impl Fn(i64, i64) -> i64) -> Option<Frame> {
    let values = replies.iter().map(integer).collect::<Option<Vec<_>>>()?;
    let value = values.into_iter().reduce(f)?;
    Some(reply(BytesMut::from(format!(":{value}\r\n").as_bytes())))
}

fn logical(replies: &[Frame], f: impl Fn(bool, bool) -> bool) -> Option<Frame> {
    if let Some(values) = replies.iter().map(integer).collect::<Option<Vec<_>>>() {
        let value = values.into_iter().map(|v| v != 0).reduce(&f)?;
        return Some(reply(BytesMut::from(if value {
            &b":1\r\n"[..]
        } else {
            b":0\r\n"
        })));
    }
    let arrays = replies.iter().map(integers).collect::<Option<Vec<_>>>()?;
    let len = arrays[0].len();
    if arrays.iter().any(|a| a.len() != len) {
        return None;
    }
    let mut out = BytesMut::new();
    out.put_slice(format!("*{len}\r\n").as_bytes());
    for i in 0..len {
        let value = arrays.iter().map(|a| a[i] != 0).reduce(&f)?;
        out.put_slice(if value { b":1\r\n" } else { b":0\r\n" });
    }
    Some(reply(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::frame;

    fn combine(how: Combine, replies: &[&str]) -> String {
        let replies = replies.iter().map(|r| frame(r)).collect();
        String::from_utf8(how.apply(replies).bytes.to_vec()).unwrap()
    }

    fn tips(tips: &[&str]) -> Option<Combine> {
        Combine::from_tips(&owned(tips))
    }

    fn owned(tips: &[&str]) -> Vec<Vec<u8>> {
        tips.iter().map(|t| t.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multi_shard_commands_split_when_their_replies_combine_without_their_keys() {
        let split = |t: &[&str]| Combine::from_split_tips(&owned(t));
        assert_eq!(
            split(&["request_policy:multi_shard", "response_policy:agg_sum"]),
            Some(Combine::Sum)
        );
        assert_eq!(
            split(&[
                "request_policy:multi_shard",
                "response_policy:all_succeeded"
            ]),
            Some(Combine::AllSucceeded)
        );
        // MGET: its replies' order is its keys'.
        assert_eq!(split(&["request_policy:multi_shard"]), None);
        assert_eq!(
            split(&["request_policy:all_shards", "response_policy:agg_sum"]),
            None
        );
        assert_eq!(
            tips(&["request_policy:multi_shard", "response_policy:agg_sum"]),
            None
        );
    }

    #[test]
    fn tips_name_the_commands_sent_everywhere_and_how_replies_combine() {
        assert_eq!(
            tips(&["request_policy:all_shards", "response_policy:agg_sum"]),
            Some(Combine::Sum)
        );
        assert_eq!(
            tips(&["request_policy:all_shards", "nondeterministic_output_order"]),
            Some(Combine::Gather)
        );
        assert_eq!(
            tips(&["request_policy:all_nodes", "response_policy:all_succeeded"]),
            Some(Combine::AllSucceeded)
        );
        assert_eq!(
            tips(&["request_policy:all_shards", "response_policy:special"]),
            None
        );
        assert_eq!(
            tips(&["nondeterministic_output", "request_policy:special"]),
            None
        );
        assert_eq!(tips(&[]), None);
    }

    #[test]
    fn replies_combine_as_their_policy_says() {
        assert_eq!(
            combine(Combine::Sum, &[":3\r\n", ":0\r\n", ":4\r\n"]),
            ":7\r\n"
        );
        assert_eq!(combine(Combine::Min, &[":3\r\n", ":1\r\n"]), ":1\r\n");
        assert_eq!(combine(Combine::Max, &[":3\r\n", ":1\r\n"]), ":3\r\n");
        assert_eq!(
            combine(
                Combine::Gather,
                &[
                    "*2\r\n$1\r\na\r\n$1\r\nb\r\n",
                    "*0\r\n",
                    "*1\r\n$1\r\nc\r\n"
                ]
            ),
            "*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
        );
        assert_eq!(
            combine(Combine::Gather, &["$-1\r\n", "$1\r\nk\r\n"]),
            "$1\r\nk\r\n"
        );
        assert_eq!(combine(Combine::Gather, &["_\r\n", "_\r\n"]), "_\r\n");
        assert_eq!(
            combine(Combine::And, &["*2\r\n:1\r\n:1\r\n", "*2\r\n:1\r\n:0\r\n"]),
            "*2\r\n:1\r\n:0\r\n"
        );
        assert_eq!(combine(Combine::Or, &[":0\r\n", ":1\r\n"]), ":1\r\n");
        assert_eq!(
            combine(Combine::AllSucceeded, &["+OK\r\n", "+OK\r\n"]),
            "+OK\r\n"
        );
        // An error answers for all, but where one success is enough.
        assert_eq!(
            combine(Combine::AllSucceeded, &["+OK\r\n", "-ERR no\r\n"]),
            "-ERR no\r\n"
        );
        assert_eq!(
            combine(Combine::Sum, &[":1\r\n", "-ERR no\r\n"]),
            "-ERR no\r\n"
        );
        assert_eq!(
            combine(Combine::OneSucceeded, &["-ERR no\r\n", "+OK\r\n"]),
            "+OK\r\n"
        );
        // A shape the policy does not expect passes as the first node sent it.
        assert_eq!(combine(Combine::Sum, &["+x\r\n", ":1\r\n"]), "+x\r\n");
    }
}
