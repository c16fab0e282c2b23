//! Where one reply from Redis ends, and the little the proxy needs to know
//! about it, without building it: replies are relayed as the bytes Redis sent.

use bytes::{Bytes, BytesMut};

/// The deepest nesting of aggregates a reply may have (Redis's own replies
/// nest a few levels; a deeper one is a broken stream).
const MAX_DEPTH: usize = 64;

/// What a reply is, as far as forwarding cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An error reply (`-` or `!`).
    Error,
    /// A RESP3 push (`>`): out-of-band, not the reply to a request.
    Push,
    /// Anything else.
    Reply,
}

/// One complete reply, as Redis sent it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The reply, as Redis sent it.
    pub bytes: Bytes,
    /// What it is.
    pub kind: Kind,
}

impl Frame {
    /// The elements of an array or push whose first element is a string: its
    /// lower-cased first element and, when the third is an integer, that
    /// integer. This is how Redis shapes pub/sub messages and (un)subscribe
    /// confirmations: `[subscribe, channel, count]`.
    pub fn pubsub(&self) -> Option<(Vec<u8>, Option<i64>)> {
        let b = &self.bytes[..];
        if !matches!(b.first(), Some(b'*' | b'>')) {
            return None;
        }
        let (count, mut at) = line(b, 1)?;
        if count < 2 {
            return None;
        }
        let (first, next) = element(b, at)?;
        at = next;
        let kind = first?.to_ascii_lowercase();
        let (_, next) = element(b, at)?;
        at = next;
        let third = match b.get(at) {
            Some(b':') => line(b, at + 1).map(|(n, _)| n),
            _ => None,
        };
        Some((kind, third))
    }

    /// What a tracking invalidation push says: `Some(None)` for "everything"
    /// (`FLUSHALL`, `FLUSHDB`), `Some(Some(keys))` for those keys; `None` when the
    /// frame is not an invalidation.
    pub fn invalidation(&self) -> Option<Option<Vec<Bytes>>> {
        let b = &self.bytes[..];
        if self.kind != Kind::Push {
            return None;
        }
        let (count, at) = line(b, 1)?;
        if count != 2 {
            return None;
        }
        let (kind, at) = element(b, at)?;
        if !kind?.eq_ignore_ascii_case(b"invalidate") {
            return None;
        }
        match b.get(at)? {
            b'_' => Some(None),
            b'*' => {
                let (n, mut at) = line(b, at + 1)?;
                if n < 0 {
                    return Some(None);
                }
                let mut keys = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let (key, next) = element(b, at)?;
                    keys.push(self.bytes.slice_ref(key?));
                    at = next;
                }
                Some(Some(keys))
            }
            _ => None,
        }
    }

    /// What a `GET`-like reply holds: `Some(Some(value))` for a bulk string
    /// (a slice of the frame, not a copy), `Some(None)` for nil, `None` for
    /// anything else.
    pub fn bulk(&self) -> Option<Option<Bytes>> {
        let b = &self.bytes[..];
        match b.first()? {
            b'_' => Some(None),
            b'$' => {
                let (len, start) = line(b, 1)?;
                if len < 0 {
                    return Some(None);
                }
                let end = start.checked_add(usize::try_from(len).ok()?)?;
                (end <= b.len()).then(|| Some(self.bytes.slice(start..end)))
            }
            _ => None,
        }
    }

    /// The elements of an array reply (`*`), each as Redis sent it; `None`
    /// for anything else (a null array included).
    pub fn elements(&self) -> Option<Vec<Bytes>> {
        let b = &self.bytes[..];
        if b.first() != Some(&b'*') {
            return None;
        }
        let (n, mut at) = line(b, 1)?;
        let mut elements = Vec::with_capacity(usize::try_from(n).ok()?);
        for _ in 0..n {
            let end = scan(b, at, 1).ok()??;
            elements.push(self.bytes.slice(at..end));
            at = end;
        }
        Some(elements)
    }

    /// A frame made of `bytes`, already known to be one whole reply.
    pub fn new(bytes: Bytes) -> Self {
        let kind = match bytes.first() {
            Some(b'-' | b'!') => Kind::Error,
            Some(b'>') => Kind::Push,
            _ => Kind::Reply,
        };
        Self { bytes, kind }
    }

    /// The error's text (without its `-`), for an error reply.
    pub fn error_text(&self) -> Option<String> {
        if self.kind != Kind::Error {
            return None;
        }
        let b = &self.bytes[..];
        let text = match b.first() {
            Some(b'-') => &b[1..b.len().saturating_sub(2)],
            _ => {
                let (_, start) = line(b, 1)?;
                &b[start..b.len().saturating_sub(2)]
            }
        };
        Some(String::from_utf8_lossy(text).into_owned())
    }
}

/// Takes the first complete reply off `input`, if it holds one.
///
/// # Errors
///
/// When the bytes are not RESP: the stream cannot be trusted past them.
pub(crate) fn take(input: &mut BytesMut) -> Result<Option<Frame>, &'static str> {
    let Some(end) = scan(input, 0, 0)? else {
        return Ok(None);
    };
    let kind = match input[0] {
        b'-' | b'!' => Kind::Error,
        b'>' => Kind::Push,
        _ => Kind::Reply,
    };
    Ok(Some(Frame {
        bytes: input.split_to(end).freeze(),
        kind,
    }))
}

/// The end of the reply that starts at `at`, `None` when it is incomplete.
fn scan(b: &[u8], at: usize, depth: usize) -> Result<Option<usize>, &'static str> {
    if depth > MAX_DEPTH {
        return Err("reply nested too deeply");
    }
    let Some(&kind) = b.get(at) else {
        return Ok(None);
    };
    let Some(eol) = find_crlf(b, at + 1) else {
        return Ok(None);
    };
    let number = || -> Result<i64, &'static str> {
        std::str::from_utf8(&b[at + 1..eol])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a length that is not a number")
    };
    let after = eol + 2;
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Some(after)),
        b'$' | b'!' | b'=' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some(after));
            }
            let end = after + len as usize + 2;
            Ok((b.len() >= end).then_some(end))
        }
        b'*' | b'>' | b'~' | b'%' | b'|' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some(after));
            }
            let elements = if matches!(kind, b'%' | b'|') {
                2 * n
            } else {
                n
            };
            let mut at = after;
            for _ in 0..elements {
                match scan(b, at, depth + 1)? {
                    Some(end) => at = end,
                    None => return Ok(None),
                }
            }
            if kind == b'|' {
                // An attribute precedes the reply it describes.
                return scan(b, at, depth + 1);
            }
            Ok(Some(at))
        }
        _ => Err("not a RESP reply"),
    }
}

fn find_crlf(b: &[u8], from: usize) -> Option<usize> {
    b.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

/// Where the bulk string reply at the start of `b` ends, once its header has
/// arrived; `None` for any other reply, or a header still incomplete.
pub(crate) fn bulk_end(b: &[u8]) -> Option<usize> {
    if b.first() != Some(&b'$') {
        return None;
    }
    let (len, start) = line(b, 1)?;
    Some(start + usize::try_from(len).ok()? + 2)
}

/// The number on the line starting at `at`, and where the next line begins.
pub(crate) fn line(b: &[u8], at: usize) -> Option<(i64, usize)> {
    let eol = find_crlf(b, at)?;
    let n = std::str::from_utf8(&b[at..eol]).ok()?.parse().ok()?;
    Some((n, eol + 2))
}

/// A string element at `at` (its bytes, `None` if it is not a string) and
/// where the next element begins.
pub(crate) fn element(b: &[u8], at: usize) -> Option<(Option<&[u8]>, usize)> {
    let end = scan(b, at, 0).ok()??;
    match b.get(at)? {
        b'$' => {
            let (len, start) = line(b, at + 1)?;
            let len = usize::try_from(len).ok()?;
            Some((b.get(start..start + len), end))
        }
        b'+' => Some((b.get(at + 1..end - 2), end)),
        _ => Some((None, end)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bytes: &[u8]) -> Vec<(String, Kind)> {
        let mut input = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(frame) = take(&mut input).unwrap() {
            out.push((
                String::from_utf8_lossy(&frame.bytes).into_owned(),
                frame.kind,
            ));
        }
        out
    }

    #[test]
    fn replies_are_cut_where_they_end_whatever_their_type() {
        let all = b"+OK\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n*1\r\n$1\r\nx\r\n%1\r\n+a\r\n,1.5\r\n_\r\n-ERR no\r\n>2\r\n+x\r\n+y\r\n|1\r\n+k\r\n+v\r\n:7\r\n";
        let got = frames(all);
        assert_eq!(
            got.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
            [
                "+OK\r\n",
                "$3\r\nabc\r\n",
                "$-1\r\n",
                "*2\r\n:1\r\n*1\r\n$1\r\nx\r\n",
                "%1\r\n+a\r\n,1.5\r\n",
                "_\r\n",
                "-ERR no\r\n",
                ">2\r\n+x\r\n+y\r\n",
                "|1\r\n+k\r\n+v\r\n:7\r\n",
            ]
        );
        assert_eq!(got[6].1, Kind::Error);
        assert_eq!(got[7].1, Kind::Push);
    }

    #[test]
    fn an_incomplete_reply_waits_and_garbage_is_an_error() {
        let partial = &b"*2\r\n$3\r\nabc\r\n$2\r\nx"[..];
        let mut input = BytesMut::from(partial);
        assert!(take(&mut input).unwrap().is_none());
        assert_eq!(input.len(), partial.len(), "nothing is consumed");
        assert!(take(&mut BytesMut::from(&b"hello\r\n"[..])).is_err());
    }

    #[test]
    fn an_array_is_split_into_its_elements() {
        let frame = take(&mut BytesMut::from(
            &b"*3\r\n+OK\r\n*1\r\n:1\r\n$-1\r\n"[..],
        ))
        .unwrap()
        .unwrap();
        let elements = frame.elements().unwrap();
        assert_eq!(elements, ["+OK\r\n", "*1\r\n:1\r\n", "$-1\r\n"]);
        let null = take(&mut BytesMut::from(&b"*-1\r\n"[..])).unwrap().unwrap();
        assert_eq!(null.elements(), None, "a null array");
        let error = take(&mut BytesMut::from(&b"-ERR x\r\n"[..]))
            .unwrap()
            .unwrap();
        assert_eq!(error.elements(), None);
    }

    #[test]
    fn bulk_replies_are_sliced_and_nil_is_none() {
        for (bytes, expected) in [
            (&b"$3\r\nabc\r\n"[..], Some(Some(Bytes::from("abc")))),
            (b"$0\r\n\r\n", Some(Some(Bytes::new()))),
            (b"$-1\r\n", Some(None)),
            (b"_\r\n", Some(None)),
            (b":1\r\n", None),
        ] {
            let frame = take(&mut BytesMut::from(bytes)).unwrap().unwrap();
            assert_eq!(frame.bulk(), expected, "{bytes:?}");
        }
    }

    #[test]
    fn pubsub_messages_show_their_kind_and_count() {
        let mut input = BytesMut::from(&b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"[..]);
        let frame = take(&mut input).unwrap().unwrap();
        assert_eq!(frame.pubsub(), Some((b"subscribe".to_vec(), Some(1))));
        let mut input = BytesMut::from(&b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"[..]);
        let frame = take(&mut input).unwrap().unwrap();
        assert_eq!(frame.pubsub(), Some((b"message".to_vec(), None)));
        let mut input = BytesMut::from(&b"-ERR x y\r\n"[..]);
        let frame = take(&mut input).unwrap().unwrap();
        assert_eq!(frame.error_text().as_deref(), Some("ERR x y"));
        let mut input = BytesMut::from(&b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n>2\r\n$10\r\ninvalidate\r\n_\r\n"[..]);
        let frame = take(&mut input).unwrap().unwrap();
        assert_eq!(
            frame.invalidation(),
            Some(Some(vec![Bytes::from("a"), Bytes::from("b")]))
        );
        let frame = take(&mut input).unwrap().unwrap();
        assert_eq!(frame.invalidation(), Some(None));
    }
}
