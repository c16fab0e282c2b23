//! Keyless commands over a Redis Cluster: sent to every primary with their
//! replies combined (see [`Combine`]), and `SCAN`, which walks the primaries
//! one after another, the primary's place carried in the cursor's low bits.

use bytes::{BufMut, Bytes, BytesMut};

use super::node::{NodeRef, Outgoing};
use super::{Backend, Error};
use crate::protocol::{self as frame, Combine, Frame, Kind, combine, encoded};

impl Backend {
    /// `request` sent to every primary, their replies combined as `how` says.
    ///
    /// # Errors
    ///
    /// Why a primary could not be asked.
    pub(crate) async fn send_everywhere(
        &self,
        request: Outgoing,
        how: Combine,
    ) -> Result<Frame, Error> {
        self.prepared().await?;
        let asks = self
            .primaries()
            .into_iter()
            .map(|node| self.exchange(node, request.clone()));
        let replies = futures_util::future::try_join_all(asks).await?;
        Ok(how.apply(replies))
    }

    /// A command split by the nodes of its keys: each part sent to the
    /// primary of its slot, the replies combined as `how` says.
    ///
    /// # Errors
    ///
    /// Why a node could not be asked.
    pub(crate) async fn send_split(
        &self,
        parts: Vec<(Option<u16>, Outgoing)>,
        how: Combine,
    ) -> Result<Frame, Error> {
        let asks = parts
            .into_iter()
            .map(|(slot, request)| self.send(slot, request));
        let replies = futures_util::future::try_join_all(asks).await?;
        Ok(how.apply(replies))
    }

    /// `SCAN` in a cluster: `args` sent to the primary its cursor names, with
    /// that primary's own cursor, and the reply's cursor made to go on from
    /// there (see [`scan_reply`]).
    ///
    /// # Errors
    ///
    /// Why the primary could not be asked.
    pub(crate) async fn scan(
        &self,
        mut args: Vec<Bytes>,
        db: Option<u16>,
        resp3: bool,
    ) -> Result<Frame, Error> {
        self.prepared().await?;
        let mut primaries: Vec<NodeRef> = self.primaries();
        let nodes = primaries.len();
        if args.len() < 2 {
            // Redis's own word on a wrong number of arguments.
            let request = Outgoing::read(encoded(&args), db, resp3);
            return self.send(None, request).await;
        }
        let place =
            split_cursor(&args[1]).filter(|&(node, _)| node < nodes && nodes <= MAX_SCAN_NODES);
        let Some((node, cursor)) = place else {
            return Ok(combine::error("ERR invalid cursor"));
        };
        args[1] = Bytes::from(cursor.to_string());
        let request = Outgoing::read(encoded(&args), db, resp3);
        let page = self.exchange(primaries.swap_remove(node), request).await?;
        Ok(scan_reply(page, node, nodes))
    }
}

/// The low bits of a `SCAN` cursor through the proxy: which primary (its place
/// in address order) the scan is at. The rest is that primary's own cursor.
const NODE_BITS: u32 = 10;

/// The most primaries a `SCAN` can walk.
const MAX_SCAN_NODES: usize = 1 << NODE_BITS;

/// A client's `SCAN` cursor as the primary's place and its own cursor;
/// `None` when it is not a cursor.
fn split_cursor(cursor: &[u8]) -> Option<(usize, u64)> {
    let cursor: u64 = std::str::from_utf8(cursor).ok()?.parse().ok()?;
    let node = (cursor & (MAX_SCAN_NODES as u64 - 1)) as usize;
    Some((node, cursor >> NODE_BITS))
}

/// The `SCAN` reply of the primary at `node` (of `nodes`), with the cursor the
/// client goes on from: that primary's next one, the next primary's start when
/// it is done, 0 after the last.
fn scan_reply(page: Frame, node: usize, nodes: usize) -> Frame {
    let b = &page.bytes[..];
    let parsed = (|| {
        if page.kind != Kind::Reply || b.first() != Some(&b'*') {
            return None;
        }
        let (2, at) = frame::line(b, 1)? else {
            return None;
        };
        let (cursor, rest) = frame::element(b, at)?;
        let cursor: u64 = std::str::from_utf8(cursor?).ok()?.parse().ok()?;
        Some((cursor, rest))
    })();
    let Some((cursor, rest)) = parsed else {
        return page;
    };
    let next = if cursor != 0 {
        if cursor >> (u64::BITS - NODE_BITS) != 0 {
            return combine::error(
                "ERR a node's SCAN cursor is too large for redis-proxy to carry",
            );
        }
        cursor << NODE_BITS | node as u64
    } else if node + 1 < nodes {
        node as u64 + 1
    } else {
        0
    };
    let next = next.to_string();
    let mut out = BytesMut::with_capacity(b.len() + 24);
    out.put_slice(format!("*2\r\n${}\r\n{next}\r\n", next.len()).as_bytes());
    out.put_slice(&b[rest..]);
    combine::reply(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::frame;

    #[test]
    fn scan_cursors_carry_the_primary_and_walk_them_in_order() {
        assert_eq!(split_cursor(b"0"), Some((0, 0)));
        assert_eq!(split_cursor(b"x"), None);
        let cursor = |reply: Frame| {
            let b = reply.bytes.to_vec();
            let text = String::from_utf8(b).unwrap();
            text.split("\r\n").nth(2).unwrap().to_owned()
        };
        let page = |c: &str| frame(&format!("*2\r\n${}\r\n{c}\r\n*1\r\n$1\r\nk\r\n", c.len()));
        // The node's own cursor goes on, with the node in the low bits.
        let next = cursor(scan_reply(page("17"), 2, 3));
        assert_eq!(split_cursor(next.as_bytes()), Some((2, 17)));
        // A node done: the next node from its start, then 0 after the last.
        assert_eq!(cursor(scan_reply(page("0"), 0, 3)), "1");
        assert_eq!(cursor(scan_reply(page("0"), 2, 3)), "0");
        // The keys are passed on as they came.
        let whole = scan_reply(page("0"), 0, 3).bytes;
        assert!(whole.ends_with(b"*1\r\n$1\r\nk\r\n"));
        let error = scan_reply(frame("-ERR invalid cursor\r\n"), 0, 3);
        assert_eq!(&error.bytes[..], b"-ERR invalid cursor\r\n");
        assert_eq!(
            scan_reply(page(&u64::MAX.to_string()), 0, 3).kind,
            Kind::Error
        );
    }
}
