//! Decoding client requests: arrays of bulk strings, and inline commands.
//!
//! ```text
//! *2\r\n$3\r\nGET\r\n$3\r\nkey\r\n      multibulk: what every client library sends
//! GET key\r\n                          inline: what a person types into a socket
//! ```
//!
//! Written here rather than with `redis-protocol`'s decoder, which is used for
//! replies: a client may only send arrays of bulk strings (Redis rejects any other
//! frame type from a client), lengths must be bounded *before* anything is
//! buffered or allocated, and a partial frame should not be parsed again from the
//! start on every read. The crate's decoder accepts any frame type, has no length
//! limits (a `$999999999999` prefix simply waits for more input), and restarts
//! from the beginning of the buffer each time. This decoder keeps the arguments it
//! has already taken, so a large request costs O(its size) overall, and the limits
//! and error texts are Redis's own.
//!
//! Argument bytes are split off the read buffer without copying.
//!
//! The other direction, a request the proxy sends Redis, is [`encode`].

use bytes::{Buf, Bytes, BytesMut};

/// The largest bulk string a client may send, as in Redis (`proto-max-bulk-len`).
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;
/// The most arguments one command may have, as in Redis.
pub const MAX_ARGS: usize = 1024 * 1024;
/// The longest inline command or length line, as in Redis (`PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE_LEN: usize = 64 * 1024;
/// The most unparsed input one connection may hold. A read-only proxy needs keys,
/// not values, so this is far below Redis's 1 GiB query-buffer limit.
pub const MAX_BUFFERED: usize = 64 * 1024 * 1024;

/// Why a connection's input cannot be a request. The connection is answered with
/// `-ERR Protocol error: <message>` and closed, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// An array count that is not a number or is over [`MAX_ARGS`].
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    /// A bulk length that is not a number, is negative, or is over [`MAX_BULK_LEN`].
    #[error("invalid bulk length")]
    InvalidBulkLength,
    /// Something other than a bulk string inside a request array.
    #[error("expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    /// A bulk string not followed by CRLF.
    #[error("expected CRLF after bulk string")]
    MissingCrlf,
    /// A length line longer than [`MAX_INLINE_LEN`].
    #[error("too big count string")]
    TooBigCount,
    /// An inline command longer than [`MAX_INLINE_LEN`].
    #[error("too big inline request")]
    TooBigInline,
    /// An inline command with an unterminated quote.
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    /// More unparsed input than [`MAX_BUFFERED`].
    #[error("request larger than {} MiB", MAX_BUFFERED / (1024 * 1024))]
    TooLarge,
}

/// A resumable request decoder; one per connection.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The multibulk being read: arguments taken so far, and how many remain.
    partial: Option<(Vec<Bytes>, usize)>,
    /// Bytes of the arguments in `partial`.
    held: usize,
}

impl Decoder {
    /// Takes the next complete request off the front of `buf`: its arguments, the
    /// command name first. `Ok(None)` means more input is needed. Empty requests
    /// (`*0`, blank inline lines) are skipped, as Redis does.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] when the input cannot be a request; the connection
    /// should be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let decoded = self.decode_one(buf);
        if !matches!(decoded, Ok(None)) {
            self.held = 0;
        }
        decoded
    }

    /// Bytes of a request taken off the buffer but not yet complete: what the
    /// connection holds beyond its buffer.
    pub fn held(&self) -> usize {
        self.held
    }

    fn decode_one(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            let Some((args, remaining)) = &mut self.partial else {
                match buf.first() {
                    None => return Ok(None),
                    Some(b'*') => {
                        let Some((count, header)) = read_length(buf, ProtocolError::TooBigCount)?
                        else {
                            return need_more(buf, 0);
                        };
                        if count > MAX_ARGS as i64 {
                            return Err(ProtocolError::InvalidMultibulkLength);
                        }
                        buf.advance(header);
                        if count > 0 {
                            // Capacity grows with arguments received, never with
                            // what the header claims.
                            let count = count as usize;
                            self.partial = Some((Vec::with_capacity(count.min(16)), count));
                        }
                        continue;
                    }
                    Some(_) => match decode_inline(buf)? {
                        Some(args) if args.is_empty() => continue,
                        Some(args) => return Ok(Some(args)),
                        None => return need_more(buf, 0),
                    },
                }
            };
            while *remaining > 0 {
                match buf.first() {
                    None => return need_more(buf, self.held),
                    Some(b'$') => {}
                    Some(&other) => return Err(ProtocolError::ExpectedBulk(other)),
                }
                let Some((len, header)) = read_length(buf, ProtocolError::TooBigCount)? else {
                    return need_more(buf, self.held);
                };
                if !(0..=MAX_BULK_LEN as i64).contains(&len) {
                    return Err(ProtocolError::InvalidBulkLength);
                }
                let len = len as usize;
                if self.held + len > MAX_BUFFERED {
                    return Err(ProtocolError::TooLarge);
                }
                if buf.len() < header + len + 2 {
                    return need_more(buf, self.held);
                }
                if &buf[header + len..header + len + 2] != b"\r\n" {
                    return Err(ProtocolError::MissingCrlf);
                }
                buf.advance(header);
                args.push(buf.split_to(len).freeze());
                buf.advance(2);
                self.held += len;
                *remaining -= 1;
            }
            let (args, _) = self.partial.take().expect("a multibulk in progress");
            return Ok(Some(args));
        }
    }
}

/// `Ok(None)`, unless the unparsed input (what is buffered and the `held`
/// arguments of the request in progress) has outgrown its cap.
fn need_more(buf: &BytesMut, held: usize) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    if held + buf.len() > MAX_BUFFERED {
        return Err(ProtocolError::TooLarge);
    }
    Ok(None)
}

/// Reads `<prefix><integer>\r\n` at the front of `buf` without consuming it:
/// the integer and the header's length, or `None` when the line is incomplete.
fn read_length(buf: &[u8], too_long: ProtocolError) -> Result<Option<(i64, usize)>, ProtocolError> {
    let invalid = match buf[0] {
        b'*' => ProtocolError::InvalidMultibulkLength,
        _ => ProtocolError::InvalidBulkLength,
    };
    let line_end = buf
        .iter()
        .take(MAX_INLINE_LEN + 2)
        .position(|&b| b == b'\r');
    let Some(cr) = line_end else {
        if buf.len() > MAX_INLINE_LEN {
            return Err(too_long);
        }
        return Ok(None);
    };
    if buf.len() < cr + 2 {
        return Ok(None);
    }
    if buf[cr + 1] != b'\n' {
        return Err(invalid);
    }
    let digits = &buf[1..cr];
    let value = std::str::from_utf8(digits)
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 20)
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(invalid)?;
    Ok(Some((value, cr + 2)))
}

/// Takes one inline command (a line ending in `\n`, optionally `\r\n`) off `buf`,
/// split into arguments on spaces, with Redis's quoting rules.
fn decode_inline(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(newline) = buf
        .iter()
        .take(MAX_INLINE_LEN + 1)
        .position(|&b| b == b'\n')
    else {
        if buf.len() > MAX_INLINE_LEN {
            return Err(ProtocolError::TooBigInline);
        }
        return Ok(None);
    };
    let line = buf.split_to(newline + 1);
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    split_args(line).map(Some)
}

/// Splits an inline command line like Redis's `sdssplitargs`: arguments are
/// separated by white space; `"…"` allows `\n \r \t \b \a \\ \" \xHH` escapes,
/// `'…'` allows `\'`; a closing quote must be followed by white space or the end.
pub fn split_args(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let Some(&c) = line.get(i) else {
                if in_double || in_single {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                break;
            };
            if in_double {
                match c {
                    b'\\'
                        if i + 3 < line.len()
                            && line[i + 1] == b'x'
                            && line[i + 2].is_ascii_hexdigit()
                            && line[i + 3].is_ascii_hexdigit() =>
                    {
                        let hex = std::str::from_utf8(&line[i + 2..i + 4]).expect("hex digits");
                        arg.push(u8::from_str_radix(hex, 16).expect("hex digits"));
                        i += 3;
                    }
                    b'\\' if i + 1 < line.len() => {
                        i += 1;
                        arg.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    b'"' => {
                        if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        i += 1;
                        break;
                    }
                    _ => arg.push(c),
                }
            } else if in_single {
                match c {
                    b'\\' if line.get(i + 1) == Some(&b'\'') => {
                        arg.push(b'\'');
                        i += 1;
                    }
                    b'\'' => {
                        if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        i += 1;
                        break;
                    }
                    _ => arg.push(c),
                }
            } else {
                match c {
                    c if c.is_ascii_whitespace() => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    _ => arg.push(c),
                }
            }
            i += 1;
        }
        args.push(Bytes::from(arg));
    }
}

/// Writes `args` as a RESP array of bulk strings: a request as the proxy sends
/// it to Redis.
pub fn encode<A: AsRef<[u8]>>(args: &[A], out: &mut BytesMut) {
    out.extend_from_slice(b"*");
    out.extend_from_slice(itoa::Buffer::new().format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.extend_from_slice(b"$");
        out.extend_from_slice(itoa::Buffer::new().format(arg.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// [`encode`] into a buffer of its own, of the size it takes.
pub fn encoded<A: AsRef<[u8]>>(args: &[A]) -> Bytes {
    let size: usize = args.iter().map(|arg| arg.as_ref().len() + 16).sum();
    let mut out = BytesMut::with_capacity(size + 16);
    encode(args, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(args) = decoder.decode(&mut buf)? {
            out.push(args);
        }
        Ok(out)
    }

    fn strs(args: &[Bytes]) -> Vec<&[u8]> {
        args.iter().map(|a| &a[..]).collect()
    }

    #[test]
    fn multibulk_request_is_decoded() {
        let out = decode_all(b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n").unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(strs(&out[0]), [&b"GET"[..], b"key"]);
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let out =
            decode_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\nPING\r\n").unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(strs(&out[1]), [&b"GET"[..], b"a"]);
        assert_eq!(strs(&out[2]), [&b"PING"[..]]);
    }

    #[test]
    fn binary_arguments_are_kept_byte_exact() {
        let out = decode_all(b"*2\r\n$3\r\nGET\r\n$4\r\n\r\n\x00\xff\r\n").unwrap();
        assert_eq!(&out[0][1][..], b"\r\n\x00\xff");
    }

    #[test]
    fn input_split_at_every_byte_decodes_the_same() {
        let input = b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$2\r\nbc\r\nPING x\r\n";
        for split in 1..input.len() {
            let mut decoder = Decoder::default();
            let mut buf = BytesMut::from(&input[..split]);
            let mut out = Vec::new();
            while let Some(args) = decoder.decode(&mut buf).unwrap() {
                out.push(args);
            }
            buf.extend_from_slice(&input[split..]);
            while let Some(args) = decoder.decode(&mut buf).unwrap() {
                out.push(args);
            }
            assert_eq!(out.len(), 2, "split at {split}");
            assert_eq!(
                strs(&out[0]),
                [&b"MGET"[..], b"a", b"bc"],
                "split at {split}"
            );
            assert_eq!(strs(&out[1]), [&b"PING"[..], b"x"], "split at {split}");
        }
    }

    #[test]
    fn truncated_request_waits_for_more() {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$10\r\nabc"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn empty_requests_are_skipped() {
        let out = decode_all(b"*0\r\n\r\n   \r\n*-1\r\nPING\r\n").unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn huge_lengths_are_rejected_from_the_header_alone() {
        assert_eq!(
            decode_all(b"*2\r\n$3\r\nGET\r\n$536870913\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*2\r\n$3\r\nGET\r\n$99999999999999999999999\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*1048577\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            decode_all(b"*1\r\n$100000000\r\n"),
            Err(ProtocolError::TooLarge),
            "within Redis's limit but over the connection's buffer cap"
        );
    }

    #[test]
    fn negative_and_malformed_lengths_are_rejected() {
        assert_eq!(
            decode_all(b"*1\r\n$-5\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*1\r\n$-1\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*x\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            decode_all(b"*1\r\n$\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            decode_all(b"*1\rX"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
    }

    #[test]
    fn non_bulk_element_is_rejected() {
        assert_eq!(
            decode_all(b"*1\r\n:1\r\n"),
            Err(ProtocolError::ExpectedBulk(b':'))
        );
        assert_eq!(
            decode_all(b"*2\r\n$3\r\nGET\r\n*1\r\n"),
            Err(ProtocolError::ExpectedBulk(b'*'))
        );
    }

    #[test]
    fn bulk_without_crlf_is_rejected() {
        assert_eq!(
            decode_all(b"*1\r\n$3\r\nGETxx"),
            Err(ProtocolError::MissingCrlf)
        );
    }

    #[test]
    fn endless_lines_are_rejected_at_the_inline_limit() {
        let long = vec![b'a'; MAX_INLINE_LEN + 1];
        assert_eq!(decode_all(&long), Err(ProtocolError::TooBigInline));
        let mut count = b"*".to_vec();
        count.extend(std::iter::repeat_n(b'1', MAX_INLINE_LEN + 1));
        assert_eq!(decode_all(&count), Err(ProtocolError::TooBigCount));
    }

    #[test]
    fn inline_quoting_follows_redis() {
        let args = split_args(br#"SET "a b" 'c d' "\x41\n" plain"#).unwrap();
        assert_eq!(strs(&args), [&b"SET"[..], b"a b", b"c d", b"A\n", b"plain"]);
        assert_eq!(
            split_args(b"GET \"open"),
            Err(ProtocolError::UnbalancedQuotes)
        );
        assert_eq!(
            split_args(b"GET \"a\"b"),
            Err(ProtocolError::UnbalancedQuotes)
        );
        assert_eq!(split_args(b"  \t ").unwrap().len(), 0);
    }

    proptest::proptest! {
        /// Any request a client library could send decodes to exactly its
        /// arguments, however the bytes are split across reads.
        #[test]
        fn encoded_requests_decode_to_their_arguments(
            requests in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..8),
                1..6,
            ),
            chunk in 1usize..64,
        ) {
            use redis_protocol::resp2::types::BytesFrame;
            let mut wire = BytesMut::new();
            for args in &requests {
                let frame = BytesFrame::Array(
                    args.iter().map(|a| BytesFrame::BulkString(Bytes::copy_from_slice(a))).collect(),
                );
                redis_protocol::resp2::encode::extend_encode(&mut wire, &frame, false).unwrap();
            }
            let mut decoder = Decoder::default();
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(args) = decoder.decode(&mut buf).unwrap() {
                    decoded.push(args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
                }
            }
            proptest::prop_assert_eq!(decoded, requests);
            proptest::prop_assert!(buf.is_empty());
        }

        /// Inline commands of plain words decode to those words.
        #[test]
        fn inline_words_decode_to_themselves(
            words in proptest::collection::vec("[a-zA-Z0-9:_.-]{1,12}", 1..8),
        ) {
            let mut buf = BytesMut::from(format!("{}\r\n", words.join(" ")).as_bytes());
            let args = Decoder::default().decode(&mut buf).unwrap().unwrap();
            let args: Vec<String> = args.iter().map(|a| String::from_utf8(a.to_vec()).unwrap()).collect();
            proptest::prop_assert_eq!(args, words);
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        // A deterministic xorshift stream: every byte value, every position.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let len = (state % 64) as usize;
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    [
                        b'*',
                        b'$',
                        b'\r',
                        b'\n',
                        b'1',
                        b'-',
                        b'a',
                        (state >> 32) as u8,
                    ][(state % 8) as usize]
                })
                .collect();
            let _ = decode_all(&input);
        }
    }
}
