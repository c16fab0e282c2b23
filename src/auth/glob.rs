//! Redis's glob-style key patterns, as ACL users' `~pattern` key permissions
//! and `KEYS` use them.
//!
//! ```text
//! *        any run of bytes, the empty one included
//! ?        any one byte
//! [abc]    one of a, b, c        [^abc]  any byte but those
//! [a-z]    one byte in the range (a reversed range is read in order)
//! \x       the byte x itself, whatever it is
//! ```
//!
//! A pattern is parsed once, when the configuration is loaded, and matched with
//! one backtracking point (the last `*`), so a match costs at most
//! O(pattern × key) whatever the pattern: Redis's own matcher was exponential on
//! patterns of many stars until it learned the same trick (CVE-2022-36021).

/// One parsed key pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// `*`: any run of bytes.
    Star,
    /// `?`: any one byte.
    Any,
    /// A byte matched as itself.
    Byte(u8),
    /// `[…]`: one byte in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

impl Token {
    /// Whether this token, which is not a star, matches byte `b`.
    fn matches(&self, b: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Byte(x) => *x == b,
            Token::Class { negated, ranges } => {
                ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&b)) != *negated
            }
        }
    }
}

impl Pattern {
    /// Parses `text`. Every text is a pattern: as in Redis, an unterminated
    /// class ends with the pattern, and a trailing backslash stands for itself.
    pub(crate) fn new(text: &str) -> Self {
        let bytes = text.as_bytes();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'*' => {
                    // A run of stars is one star.
                    if tokens.last() != Some(&Token::Star) {
                        tokens.push(Token::Star);
                    }
                    i += 1;
                }
                b'?' => {
                    tokens.push(Token::Any);
                    i += 1;
                }
                b'\\' if i + 1 < bytes.len() => {
                    tokens.push(Token::Byte(bytes[i + 1]));
                    i += 2;
                }
                b'[' => {
                    let (token, next) = class(bytes, i + 1);
                    tokens.push(token);
                    i = next;
                }
                b => {
                    tokens.push(Token::Byte(b));
                    i += 1;
                }
            }
        }
        Self { tokens }
    }

    /// Whether `key` matches the pattern as a whole.
    pub(crate) fn matches(&self, key: &[u8]) -> bool {
        let tokens = &self.tokens;
        let (mut t, mut k) = (0, 0);
        // Where to resume after the last star: the token after it, and the key
        // position it has been tried at.
        let mut resume: Option<(usize, usize)> = None;
        while k < key.len() {
            match tokens.get(t) {
                Some(Token::Star) => {
                    resume = Some((t + 1, k));
                    t += 1;
                }
                Some(token) if token.matches(key[k]) => {
                    t += 1;
                    k += 1;
                }
                _ => match resume {
                    // The last star takes one more byte, and matching goes on
                    // from there. Earlier stars need never be revisited: any
                    // match they could give up bytes for, the last star can too.
                    Some((after, at)) => {
                        resume = Some((after, at + 1));
                        t = after;
                        k = at + 1;
                    }
                    None => return false,
                },
            }
        }
        tokens[t..].iter().all(|token| *token == Token::Star)
    }
}

/// The class whose body starts at `bytes[start]` (after the `[`), and where the
/// pattern goes on after it.
fn class(bytes: &[u8], start: usize) -> (Token, usize) {
    let mut i = start;
    let negated = bytes.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    while i < bytes.len() {
        match bytes[i] {
            b']' => return (Token::Class { negated, ranges }, i + 1),
            b'\\' if i + 1 < bytes.len() => {
                ranges.push((bytes[i + 1], bytes[i + 1]));
                i += 2;
            }
            lo if i + 2 < bytes.len() && bytes[i + 1] == b'-' => {
                let hi = bytes[i + 2];
                ranges.push((lo.min(hi), lo.max(hi)));
                i += 3;
            }
            b => {
                ranges.push((b, b));
                i += 1;
            }
        }
    }
    (Token::Class { negated, ranges }, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, key: &str) -> bool {
        Pattern::new(pattern).matches(key.as_bytes())
    }

    #[test]
    fn stars_and_question_marks() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("app:*", "app:1"));
        assert!(m("app:*", "app:"));
        assert!(!m("app:*", "other:1"));
        assert!(!m("app:*", "ap"));
        assert!(m("*:1", "app:1"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("a**b", "ab"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("a*", "a"));
        assert!(m("*a*a*", "banana"));
        assert!(!m("*a*a*a*a*", "banana"));
    }

    #[test]
    fn classes_ranges_and_negation() {
        assert!(m("h[ae]llo", "hallo"));
        assert!(m("h[ae]llo", "hello"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("h[b-a]llo", "hallo"), "a reversed range is read in order");
        assert!(!m("h[a-b]llo", "hcllo"));
        assert!(m("user:[0-9][0-9]", "user:42"));
        assert!(m("x[\\]]", "x]"));
        // As in Redis, `a-]` is a range up to `]`, and the class is unterminated.
        assert!(m("x[a-]", "x_"));
        assert!(!m("x[a-]", "x-"));
    }

    #[test]
    fn escapes_and_unterminated_classes_as_redis_reads_them() {
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "aXb"));
        assert!(m("a\\?", "a?"));
        assert!(m("a\\", "a\\"), "a trailing backslash is itself");
        assert!(m("[ab", "a"), "an unterminated class ends with the pattern");
        assert!(!m("[ab", "c"));
        assert!(!m("x[", "x"), "an empty class matches nothing");
    }

    #[test]
    fn keys_are_bytes() {
        let pattern = Pattern::new("bin:*");
        assert!(pattern.matches(b"bin:\x00\xff"));
        assert!(Pattern::new("?").matches(b"\xff"));
    }

    #[test]
    fn many_stars_do_not_take_exponential_time() {
        // With a backtracking point per star this would not finish.
        let pattern = Pattern::new(&format!("{}b", "a*".repeat(30)));
        assert!(!pattern.matches("a".repeat(10_000).as_bytes()));
        assert!(pattern.matches(format!("{}b", "a".repeat(10_000)).as_bytes()));
    }
}
