//! Replies, and their encoding in RESP2 or RESP3 with `redis-protocol`.
//!
//! A [`Reply`] is built once and encoded for the connection's protocol version:
//!
//! ```text
//!                RESP2                 RESP3
//! Null           $-1\r\n               _\r\n
//! Map            *4\r\n k v k v        %2\r\n k v k v
//! Bulk           $5\r\nhello\r\n       $5\r\nhello\r\n
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::{BytesFrame as Frame3, FrameMap};

/// Where replies are encoded: a buffer, or a connection's output that takes
/// large values by reference.
pub(crate) trait Sink {
    /// The buffer small pieces are encoded into.
    fn buffer(&mut self) -> &mut BytesMut;

    /// Appends a value: copied into the buffer, or queued by reference.
    fn put_value(&mut self, value: &Bytes) {
        self.buffer().extend_from_slice(value);
    }
}

impl Sink for BytesMut {
    fn buffer(&mut self) -> &mut BytesMut {
        self
    }
}

/// The RESP version a connection speaks (switched by `HELLO`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2, every connection's start.
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// One reply to one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`
    Simple(&'static str),
    /// `-ERR …`: the text after `-`, code first; kept to one line.
    Error(String),
    /// `:42`
    Integer(i64),
    /// A bulk string, shared with the cache without copying.
    Bulk(Bytes),
    /// No value.
    Null,
    /// An array.
    Array(Vec<Reply>),
    /// A map in RESP3, a flat key-value array in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`
    pub const OK: Reply = Reply::Simple("OK");

    /// An error reply; line breaks in `message` become spaces, since a RESP error
    /// is one line.
    pub fn error(message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.contains(['\r', '\n']) {
            message = message.replace(['\r', '\n'], " ");
        }
        Reply::Error(message)
    }

    /// A bulk string from text.
    pub fn text(text: impl Into<String>) -> Self {
        Reply::Bulk(Bytes::from(text.into()))
    }

    /// Appends the encoding of this reply in `protocol` to `out`. A large
    /// value goes to the sink by reference when the sink can take it so.
    pub fn encode<S: Sink>(&self, protocol: Protocol, out: &mut S) {
        // The replies of the read path (bulk strings, nulls, and arrays of them
        // for MGET) are written directly: redis-protocol's encoder sizes the frame,
        // zero-fills that much of the buffer and then writes over it, which costs
        // a measurable share of a pipelined cache hit. Everything else goes
        // through the crate.
        match (self, protocol) {
            (Reply::Bulk(value), _) => {
                let buffer = out.buffer();
                buffer.reserve(value.len().min(64 * 1024) + 16);
                buffer.put_u8(b'$');
                buffer.put_slice(itoa::Buffer::new().format(value.len()).as_bytes());
                buffer.put_slice(b"\r\n");
                out.put_value(value);
                out.buffer().put_slice(b"\r\n");
                return;
            }
            (Reply::Null, Protocol::Resp2) => return out.buffer().put_slice(b"$-1\r\n"),
            (Reply::Null, Protocol::Resp3) => return out.buffer().put_slice(b"_\r\n"),
            (Reply::Array(items), _)
                if items
                    .iter()
                    .all(|i| matches!(i, Reply::Bulk(_) | Reply::Null)) =>
            {
                let buffer = out.buffer();
                buffer.put_u8(b'*');
                buffer.put_slice(itoa::Buffer::new().format(items.len()).as_bytes());
                buffer.put_slice(b"\r\n");
                for item in items {
                    item.encode(protocol, out);
                }
                return;
            }
            _ => {}
        }
        let buffer: &mut BytesMut = out.buffer();
        // Encoding a well-formed frame into a growable buffer cannot fail.
        match protocol {
            Protocol::Resp2 => {
                redis_protocol::resp2::encode::extend_encode(buffer, &self.to_resp2(), false)
                    .expect("encoding into a growable buffer");
            }
            Protocol::Resp3 => {
                redis_protocol::resp3::encode::complete::extend_encode(
                    buffer,
                    &self.to_resp3(),
                    false,
                )
                .expect("encoding into a growable buffer");
            }
        }
    }

    fn to_resp2(&self) -> Frame2 {
        match self {
            Reply::Simple(s) => Frame2::SimpleString(Bytes::from_static(s.as_bytes())),
            Reply::Error(e) => Frame2::Error(e.as_str().into()),
            Reply::Integer(n) => Frame2::Integer(*n),
            Reply::Bulk(b) => Frame2::BulkString(b.clone()),
            Reply::Null => Frame2::Null,
            Reply::Array(items) => Frame2::Array(items.iter().map(Reply::to_resp2).collect()),
            Reply::Map(pairs) => Frame2::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [k.to_resp2(), v.to_resp2()])
                    .collect(),
            ),
        }
    }

    fn to_resp3(&self) -> Frame3 {
        match self {
            Reply::Simple(s) => Frame3::SimpleString {
                data: Bytes::from_static(s.as_bytes()),
                attributes: None,
            },
            Reply::Error(e) => Frame3::SimpleError {
                data: e.as_str().into(),
                attributes: None,
            },
            Reply::Integer(n) => Frame3::Number {
                data: *n,
                attributes: None,
            },
            Reply::Bulk(b) => Frame3::BlobString {
                data: b.clone(),
                attributes: None,
            },
            Reply::Null => Frame3::Null,
            Reply::Array(items) => Frame3::Array {
                data: items.iter().map(Reply::to_resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => {
                let mut map = FrameMap::with_capacity(pairs.len());
                for (k, v) in pairs {
                    map.insert(k.to_resp3(), v.to_resp3());
                }
                Frame3::Map {
                    data: map,
                    attributes: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(reply: &Reply, protocol: Protocol) -> Vec<u8> {
        let mut out = BytesMut::new();
        reply.encode(protocol, &mut out);
        out.to_vec()
    }

    #[test]
    fn null_differs_by_protocol() {
        assert_eq!(encoded(&Reply::Null, Protocol::Resp2), b"$-1\r\n");
        assert_eq!(encoded(&Reply::Null, Protocol::Resp3), b"_\r\n");
    }

    #[test]
    fn bulk_is_byte_exact() {
        let reply = Reply::Bulk(Bytes::from_static(b"a\r\nb"));
        assert_eq!(encoded(&reply, Protocol::Resp2), b"$4\r\na\r\nb\r\n");
        assert_eq!(encoded(&reply, Protocol::Resp3), b"$4\r\na\r\nb\r\n");
    }

    #[test]
    fn map_is_flat_in_resp2_and_a_map_in_resp3() {
        let reply = Reply::Map(vec![(Reply::text("proto"), Reply::Integer(3))]);
        assert_eq!(
            encoded(&reply, Protocol::Resp2),
            b"*2\r\n$5\r\nproto\r\n:3\r\n"
        );
        assert_eq!(
            encoded(&reply, Protocol::Resp3),
            b"%1\r\n$5\r\nproto\r\n:3\r\n"
        );
    }

    #[test]
    fn errors_and_simple_strings() {
        assert_eq!(encoded(&Reply::OK, Protocol::Resp2), b"+OK\r\n");
        let error = Reply::error("ERR bad\r\nthing");
        assert_eq!(encoded(&error, Protocol::Resp2), b"-ERR bad  thing\r\n");
        assert_eq!(encoded(&error, Protocol::Resp3), b"-ERR bad  thing\r\n");
    }

    #[test]
    fn direct_encodings_match_the_crates() {
        let replies = [
            Reply::Bulk(Bytes::from_static(b"")),
            Reply::Bulk(Bytes::from(vec![7u8; 1000])),
            Reply::Null,
            Reply::Array(vec![]),
            Reply::Array(vec![
                Reply::text("x"),
                Reply::Null,
                Reply::Bulk(Bytes::new()),
            ]),
        ];
        for reply in &replies {
            let mut crate2 = BytesMut::new();
            redis_protocol::resp2::encode::extend_encode(&mut crate2, &reply.to_resp2(), false)
                .unwrap();
            assert_eq!(
                encoded(reply, Protocol::Resp2),
                crate2.to_vec(),
                "{reply:?}"
            );
            let mut crate3 = BytesMut::new();
            redis_protocol::resp3::encode::complete::extend_encode(
                &mut crate3,
                &reply.to_resp3(),
                false,
            )
            .unwrap();
            assert_eq!(
                encoded(reply, Protocol::Resp3),
                crate3.to_vec(),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn array_of_mixed_replies() {
        let reply = Reply::Array(vec![Reply::text("a"), Reply::Null]);
        assert_eq!(
            encoded(&reply, Protocol::Resp2),
            b"*2\r\n$1\r\na\r\n$-1\r\n"
        );
        assert_eq!(encoded(&reply, Protocol::Resp3), b"*2\r\n$1\r\na\r\n_\r\n");
    }
}
