//! What a dedicated session knows of the state it keeps on its connection to
//! Redis: the transaction, `WATCH`, subscriptions, `MONITOR`, and what each
//! reply to come answers and by when.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::limit::Slot;
use crate::lookup::Writes;

/// By when a reply must come: the request timeout after it was sent, plus
/// the time a blocking command may block; `None`: it may wait for ever
/// (`BLPOP k 0`).
pub(super) type Due = Option<Instant>;

/// What the next reply from Redis answers, or a reply of the proxy's own
/// waiting for its turn.
pub(super) enum Expect {
    /// Relayed to the client, after dropping what it may have written. The
    /// client slot the request holds is given back with it.
    Reply {
        writes: Writes,
        due: Due,
        _slot: Option<Slot>,
    },
    /// `EXEC` or `DISCARD`: the transaction (and any `WATCH`) ends. `EXEC`'s
    /// results get the proxy's own queued commands' spliced in.
    End {
        writes: Writes,
        local: Vec<(usize, Vec<Bytes>)>,
        due: Due,
        _slot: Option<Slot>,
    },
    /// A `SELECT` of this database: the connection reads it from now on.
    Select { db: Option<u16>, due: Due },
    /// Redis's reply is not the client's: dropped.
    Swallow { due: Due },
    /// The proxy's own reply, sent once the replies before it are.
    Local(Bytes),
}

impl Expect {
    /// By when Redis must have sent it; `None` for the proxy's own, and for
    /// what may wait for ever.
    fn due(&self) -> Due {
        match self {
            Expect::Reply { due, .. }
            | Expect::End { due, .. }
            | Expect::Select { due, .. }
            | Expect::Swallow { due } => *due,
            Expect::Local(_) => None,
        }
    }

    /// Whether Redis, not the proxy, sends it.
    pub(super) fn sent_by_redis(&self) -> bool {
        !matches!(self, Expect::Local(_))
    }
}

/// The state that keeps the client on its dedicated connection.
#[derive(Default)]
pub(super) struct State {
    pub(super) multi: bool,
    pub(super) watching: bool,
    /// A command was refused inside the transaction: `EXEC` must fail.
    pub(super) poisoned: bool,
    /// What the transaction's queued commands write.
    pub(super) queued: Vec<Writes>,
    /// Commands queued in the transaction so far, Redis's and the proxy's.
    pub(super) queued_count: usize,
    /// The proxy's own commands queued in the transaction, by place.
    pub(super) queued_local: Vec<(usize, Vec<Bytes>)>,
    /// Channels, patterns and shard channels subscribed, as Redis last
    /// counted them.
    pub(super) subscriptions: i64,
    /// Of those: channels, patterns, shard channels (for `CLIENT LIST`).
    pub(super) subscribed: [i64; 3],
    /// (Un)subscribe confirmations still to come, and by when the first is due.
    pub(super) confirmations: usize,
    pub(super) confirming: Due,
    pub(super) monitor: bool,
    /// The client sent `QUIT`: the connection ends once the replies are out.
    pub(super) quit: bool,
    pub(super) expect: VecDeque<Expect>,
}

impl State {
    /// An (un)subscription confirmed by Redis (`kind`, e.g. `psubscribe`),
    /// with its count: Redis counts channels and patterns together, shard
    /// channels apart.
    pub(super) fn confirmed(&mut self, kind: &[u8], count: i64) {
        let [channels, patterns, shard] = &mut self.subscribed;
        match kind {
            b"subscribe" | b"unsubscribe" => *channels = (count - *patterns).max(0),
            b"psubscribe" | b"punsubscribe" => *patterns = (count - *channels).max(0),
            _ => *shard = count,
        }
        self.subscriptions = self.subscribed.iter().sum();
    }

    /// Whether the client may go back to the shared path.
    pub(super) fn over(&self) -> bool {
        !self.multi
            && !self.watching
            && self.subscriptions == 0
            && self.confirmations == 0
            && !self.monitor
            && self.expect.is_empty()
    }

    /// The earliest instant a reply is due by.
    pub(super) fn next_due(&self) -> Due {
        let confirming = self.confirming.filter(|_| self.confirmations > 0);
        self.expect
            .iter()
            .filter_map(Expect::due)
            .chain(confirming)
            .min()
    }

    /// What the requests that are still unanswered may write: what is dropped
    /// from the cache when their outcome will never be known.
    pub(super) fn unanswered_writes(&self) -> Writes {
        merge(self.expect.iter().filter_map(|expect| match expect {
            Expect::Reply { writes, .. } | Expect::End { writes, .. } => Some(writes.clone()),
            _ => None,
        }))
    }
}

/// What a transaction's commands together invalidate.
pub(super) fn merge(writes: impl IntoIterator<Item = Writes>) -> Writes {
    let mut keys = Vec::new();
    for write in writes {
        match write {
            Writes::Nothing => {}
            Writes::Keys(more) => keys.extend(more),
            Writes::All => return Writes::All,
        }
    }
    if keys.is_empty() {
        Writes::Nothing
    } else {
        Writes::Keys(keys)
    }
}

/// How long a blocking command (lower-case `name`, its arguments `args`) may
/// block by its own timeout: `Some(None)` for ever, `Some(Some(d))` for `d`,
/// `None` for a command that does not block.
pub(super) fn block_time(name: &[u8], args: &[Bytes]) -> Option<Option<Duration>> {
    let number =
        |arg: Option<&Bytes>| -> Option<f64> { std::str::from_utf8(arg?).ok()?.parse().ok() };
    let seconds = |arg: Option<&Bytes>| -> Option<Duration> {
        let n = number(arg).unwrap_or(0.0);
        (n > 0.0).then(|| Duration::from_secs_f64(n.min(1e9)))
    };
    let millis = |arg: Option<&Bytes>| -> Option<Duration> {
        let n = number(arg).unwrap_or(0.0);
        (n > 0.0).then(|| Duration::from_secs_f64((n / 1000.0).min(1e9)))
    };
    match name {
        b"blpop" | b"brpop" | b"brpoplpush" | b"blmove" | b"bzpopmin" | b"bzpopmax" => {
            Some(seconds(args.last()))
        }
        b"blmpop" | b"bzmpop" => Some(seconds(args.get(1))),
        b"wait" => Some(millis(args.last())),
        b"waitaof" => Some(millis(args.last())),
        b"xread" | b"xreadgroup" => {
            let block = args
                .iter()
                .position(|arg| arg.eq_ignore_ascii_case(b"block"))?;
            Some(millis(args.get(block + 1)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::args;

    #[test]
    fn blocking_commands_block_for_their_own_timeout() {
        assert_eq!(
            block_time(b"blpop", &args("BLPOP k 5")),
            Some(Some(Duration::from_secs(5)))
        );
        assert_eq!(block_time(b"blpop", &args("BLPOP k 0")), Some(None));
        assert_eq!(
            block_time(b"blmpop", &args("BLMPOP 0.5 1 k LEFT")),
            Some(Some(Duration::from_millis(500)))
        );
        assert_eq!(
            block_time(b"xread", &args("XREAD BLOCK 200 STREAMS s $")),
            Some(Some(Duration::from_millis(200)))
        );
        assert_eq!(block_time(b"xread", &args("XREAD STREAMS s 0")), None);
        assert_eq!(
            block_time(b"wait", &args("WAIT 1 100")),
            Some(Some(Duration::from_millis(100)))
        );
        assert_eq!(block_time(b"get", &args("GET k")), None);
    }
}
