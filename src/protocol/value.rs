//! A reply from Redis read into a tree, for the few replies the proxy itself
//! looks inside (`COMMAND`, `CLUSTER SLOTS`, `ROLE`, `SENTINEL …`, `INFO`).
//! Replies relayed to clients are never read into one (see [`super::Frame`]).

use bytes::Bytes;

use super::frame::{Frame, line};

/// One RESP2 or RESP3 value. RESP3's other scalar types (doubles, booleans,
/// big numbers, verbatim strings) are read as the text they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `$`, `+`, `=`, `,`, `#`, `(`: a string (a verbatim string without its
    /// format, a double or boolean as written).
    Text(Bytes),
    /// `:`: an integer.
    Int(i64),
    /// `$-1`, `*-1`, `_`: nothing.
    Null,
    /// `-`, `!`: an error reply's text.
    Error(Bytes),
    /// `*`, `~`, `>`: an array, set or push.
    Array(Vec<Value>),
    /// `%`: a map, as its pairs (`|` attributes are skipped).
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// The value `frame` holds.
    ///
    /// # Errors
    ///
    /// When the frame is not RESP, which a frame cut by the scanner never is.
    pub fn of(frame: &Frame) -> Result<Self, &'static str> {
        parse(&frame.bytes, 0).map(|(value, _)| value)
    }

    /// The text of a string, in lower case.
    pub fn text_lowercase(&self) -> Option<Vec<u8>> {
        match self {
            Value::Text(text) => Some(text.to_ascii_lowercase()),
            _ => None,
        }
    }

    /// A string's bytes.
    pub fn text(&self) -> Option<&Bytes> {
        match self {
            Value::Text(text) => Some(text),
            _ => None,
        }
    }

    /// An integer, or a string that spells one.
    pub fn int(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::Text(text) => std::str::from_utf8(text).ok()?.parse().ok(),
            _ => None,
        }
    }

    /// An array's (or set's) elements.
    pub fn items(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// A map's pairs, from a RESP3 map or a RESP2 array of alternating keys
    /// and values, with the keys in lower case.
    pub fn fields(&self) -> Option<Vec<(Vec<u8>, &Value)>> {
        match self {
            Value::Map(pairs) => Some(
                pairs
                    .iter()
                    .filter_map(|(k, v)| Some((k.text_lowercase()?, v)))
                    .collect(),
            ),
            Value::Array(items) => Some(
                items
                    .chunks_exact(2)
                    .filter_map(|pair| Some((pair[0].text_lowercase()?, &pair[1])))
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// The value at `at` in `b`, and where the next begins.
fn parse(b: &[u8], at: usize) -> Result<(Value, usize), &'static str> {
    const BROKEN: &str = "a reply that is not RESP";
    let kind = *b.get(at).ok_or(BROKEN)?;
    let (n, after) = match kind {
        b'$' | b'!' | b'=' | b'*' | b'~' | b'>' | b'%' | b'|' | b':' => {
            line(b, at + 1).ok_or(BROKEN)?
        }
        _ => (0, at + 1),
    };
    let rest_of_line = |from: usize| -> Result<(Bytes, usize), &'static str> {
        let eol = b[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(BROKEN)?;
        Ok((Bytes::copy_from_slice(&b[from..from + eol]), from + eol + 2))
    };
    let string = |len: i64| -> Result<(Bytes, usize), &'static str> {
        let len = usize::try_from(len).map_err(|_| BROKEN)?;
        let body = b.get(after..after + len).ok_or(BROKEN)?;
        Ok((Bytes::copy_from_slice(body), after + len + 2))
    };
    let elements = |count: usize| -> Result<(Vec<Value>, usize), &'static str> {
        let mut items = Vec::with_capacity(count.min(1024));
        let mut next = after;
        for _ in 0..count {
            let (item, end) = parse(b, next)?;
            items.push(item);
            next = end;
        }
        Ok((items, next))
    };
    Ok(match kind {
        b'+' | b',' | b'#' | b'(' => {
            let (text, next) = rest_of_line(at + 1)?;
            (Value::Text(text), next)
        }
        b'-' => {
            let (text, next) = rest_of_line(at + 1)?;
            (Value::Error(text), next)
        }
        b':' => (Value::Int(n), after),
        b'_' => (Value::Null, at + 3),
        b'$' | b'!' | b'=' if n < 0 => (Value::Null, after),
        b'$' => {
            let (text, next) = string(n)?;
            (Value::Text(text), next)
        }
        b'!' => {
            let (text, next) = string(n)?;
            (Value::Error(text), next)
        }
        b'=' => {
            // `txt:` and the like come first.
            let (text, next) = string(n)?;
            (Value::Text(text.slice(text.len().min(4)..)), next)
        }
        b'*' | b'~' | b'>' if n < 0 => (Value::Null, after),
        b'*' | b'~' | b'>' => {
            let (items, next) = elements(usize::try_from(n).map_err(|_| BROKEN)?)?;
            (Value::Array(items), next)
        }
        b'%' => {
            let (items, next) = elements(2 * usize::try_from(n).map_err(|_| BROKEN)?)?;
            let mut pairs = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                pairs.push((k, v));
            }
            (Value::Map(pairs), next)
        }
        b'|' => {
            // An attribute: skipped, the value it describes follows.
            let (_, next) = elements(2 * usize::try_from(n).map_err(|_| BROKEN)?)?;
            return parse(b, next);
        }
        _ => return Err(BROKEN),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn value(bytes: &[u8]) -> Value {
        let frame = super::super::frame::take(&mut BytesMut::from(bytes))
            .unwrap()
            .unwrap();
        Value::of(&frame).unwrap()
    }

    #[test]
    fn every_type_is_read() {
        let text = |s: &str| Value::Text(Bytes::copy_from_slice(s.as_bytes()));
        assert_eq!(value(b"+OK\r\n"), text("OK"));
        assert_eq!(value(b"$3\r\nabc\r\n"), text("abc"));
        assert_eq!(value(b"$-1\r\n"), Value::Null);
        assert_eq!(value(b"_\r\n"), Value::Null);
        assert_eq!(value(b":-7\r\n"), Value::Int(-7));
        assert_eq!(value(b"-ERR no\r\n"), Value::Error(Bytes::from("ERR no")));
        assert_eq!(value(b"=7\r\ntxt:abc\r\n"), text("abc"));
        assert_eq!(value(b",1.5\r\n"), text("1.5"));
        assert_eq!(
            value(b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n"),
            Value::Array(vec![Value::Int(1), Value::Array(vec![text("x")])])
        );
        assert_eq!(
            value(b"%1\r\n+a\r\n:2\r\n"),
            Value::Map(vec![(text("a"), Value::Int(2))])
        );
        assert_eq!(value(b"|1\r\n+k\r\n+v\r\n:7\r\n"), Value::Int(7));
    }

    #[test]
    fn maps_and_arrays_of_pairs_give_the_same_fields() {
        let map = value(b"%1\r\n+Name\r\n:2\r\n");
        let pairs = value(b"*2\r\n$4\r\nname\r\n:2\r\n");
        assert_eq!(map.fields(), pairs.fields());
        assert_eq!(map.fields().unwrap()[0].0, b"name");
    }
}
