//! The parts of a batch: how it ended, what it may hold in transparent mode,
//! the results waiting for their turn, and the replies made from them.

use std::collections::VecDeque;

use super::Close;
use crate::forward::Class;
use crate::lookup::{Answer, Error, Lookup};
use crate::protocol::{Protocol, Reply, Sink};
use crate::throttle::{Throttle, held_back};

/// How decoding a batch ended.
pub(super) struct Batch {
    /// The batch ends the connection (`QUIT`, or the protocol error).
    pub(super) end: Option<Close>,
    /// More complete requests may wait in the buffer (the batch was cut short).
    pub(super) more: bool,
}

impl Batch {
    /// Every complete request received is in the batch.
    pub(super) fn done() -> Self {
        Self {
            end: None,
            more: false,
        }
    }

    /// The batch was cut short: more requests may wait.
    pub(super) fn more() -> Self {
        Self {
            end: None,
            more: true,
        }
    }

    /// The batch ends the connection.
    pub(super) fn end(close: Close) -> Self {
        Self {
            end: Some(close),
            more: false,
        }
    }
}

/// What one batch may hold in transparent mode. Reads through the cache and
/// writes take different paths to Redis (the cache and its fetches; the
/// shared connection), so a batch holds one kind or the other: a read after a
/// write waits for the write's reply (and the invalidation that comes with it),
/// and a write after a read waits for the read's answer, as if the pipeline
/// ran on one connection.
#[derive(Default)]
pub(super) struct Order {
    lookups: bool,
    writes: bool,
}

impl Order {
    /// Whether a request of `class` may join the batch (and it then has).
    pub(super) fn admits(&mut self, class: Class) -> bool {
        match class {
            Class::Lookup if self.writes => false,
            Class::Lookup => {
                self.lookups = true;
                true
            }
            Class::Write if self.lookups => false,
            Class::Write => {
                self.writes = true;
                true
            }
            Class::Neutral => true,
        }
    }
}

/// Lookup results waiting for their replies to be encoded, in key order, and
/// the bytes of their values.
#[derive(Default)]
pub(super) struct Results {
    queue: VecDeque<Result<Answer, Error>>,
    pub(super) bytes: usize,
}

impl Results {
    pub(super) fn push(&mut self, result: Result<Answer, Error>) {
        self.bytes += value_len(&result);
        self.queue.push_back(result);
    }

    pub(super) fn pop(&mut self) -> Option<Result<Answer, Error>> {
        let result = self.queue.pop_front()?;
        self.bytes -= value_len(&result);
        Some(result)
    }

    pub(super) fn take(&mut self, n: usize) -> Vec<Result<Answer, Error>> {
        (0..n).filter_map(|_| self.pop()).collect()
    }

    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }
}

fn value_len(result: &Result<Answer, Error>) -> usize {
    match result {
        Ok(Answer::Lookup(Lookup {
            value: Some(value), ..
        }))
        | Ok(Answer::Reply(value)) => value.len(),
        _ => 0,
    }
}

fn value_reply(answer: Answer) -> Reply {
    match answer {
        Answer::Lookup(Lookup {
            value: Some(value), ..
        }) => Reply::Bulk(value),
        Answer::Lookup(_) => Reply::Null,
        // A GET is never forwarded: its key goes through the cache.
        Answer::Reply(_) => Reply::error("ERR unexpected reply"),
    }
}

pub(super) fn get_reply(result: Result<Answer, Error>) -> Reply {
    match result {
        Ok(answer) => value_reply(answer),
        Err(error) => error_reply(&error),
    }
}

/// The reply to `MGET`: an array of values, nil for a key holding another type
/// (as Redis answers), or the first other error for the whole command.
pub(super) fn mget_reply(results: Vec<Result<Answer, Error>>) -> Reply {
    let mut values = Vec::with_capacity(results.len());
    for result in results {
        match result {
            Ok(answer) => values.push(value_reply(answer)),
            Err(error) if error.is_wrong_type() => values.push(Reply::Null),
            Err(error) => return error_reply(&error),
        }
    }
    Reply::Array(values)
}

/// The error reply for a failed lookup, in this one place: the backend's own
/// error replies pass through as they are; anything else is `ERR` and the
/// error's short text. Server-side failures are logged with their cause.
pub(super) fn error_reply(error: &Error) -> Reply {
    match error {
        Error::Reply(reply) => Reply::error(&**reply),
        Error::Overloaded | Error::Timeout => Reply::error(format!("ERR {error}")),
        _ => {
            static FAILED: Throttle = Throttle::new();
            if let Some(held) = FAILED.admit() {
                let cause = std::error::Error::source(error).map(ToString::to_string);
                tracing::warn!(%error, ?cause, "request failed{}", held_back(held));
            }
            Reply::error(format!("ERR {error}"))
        }
    }
}

/// Writes a reply relayed as Redis sent it (a cached read's or a forwarded
/// command's), or the error that came instead.
pub(super) fn relayed(result: Result<Answer, Error>, protocol: Protocol, output: &mut impl Sink) {
    match result {
        Ok(Answer::Reply(reply))
        | Ok(Answer::Lookup(Lookup {
            value: Some(reply), ..
        })) => output.put_value(&reply),
        Ok(Answer::Lookup(_)) => Reply::Null.encode(protocol, output),
        Err(error) => error_reply(&error).encode(protocol, output),
    }
}

/// `reply`, a bulk or verbatim string (`INFO`'s), with `text` appended after
/// an empty line; `None` when it is neither (an error, say).
pub(super) fn appended(reply: &bytes::Bytes, text: &str) -> Option<bytes::Bytes> {
    let (kind, rest) = reply.split_first()?;
    if !matches!(kind, b'$' | b'=') {
        return None;
    }
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    let len: usize = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    let body = rest.get(end + 2..end + 2 + len)?;
    let mut joined = body.to_vec();
    if !joined.ends_with(b"\r\n") {
        joined.extend_from_slice(b"\r\n");
    }
    joined.extend_from_slice(b"\r\n");
    joined.extend_from_slice(text.as_bytes());
    let mut out = format!("{}{}\r\n", *kind as char, joined.len()).into_bytes();
    out.extend_from_slice(&joined);
    out.extend_from_slice(b"\r\n");
    Some(bytes::Bytes::from(out))
}
