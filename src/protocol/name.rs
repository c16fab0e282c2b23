//! A command's name in lower case, as the command table and every match on a
//! name want it, on the stack: every Redis command and subcommand name is
//! short, and a name looked up once per request should cost no allocation.

/// The longest name kept on the stack; a longer one (no command Redis has)
/// is kept on the heap.
const INLINE: usize = 32;

/// A name in lower case.
pub(crate) enum Name {
    Inline([u8; INLINE], u8),
    Heap(Vec<u8>),
}

impl Name {
    /// `name` in lower case.
    pub(crate) fn lower(name: &[u8]) -> Self {
        if name.len() > INLINE {
            return Name::Heap(name.to_ascii_lowercase());
        }
        let mut buffer = [0u8; INLINE];
        for (to, from) in buffer.iter_mut().zip(name) {
            *to = from.to_ascii_lowercase();
        }
        Name::Inline(buffer, name.len() as u8)
    }

    /// The lower-case bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Name::Inline(buffer, len) => &buffer[..usize::from(*len)],
            Name::Heap(name) => name,
        }
    }

    /// The lower-case name as text (empty when it is not UTF-8: no command's).
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowered_on_the_stack_or_the_heap() {
        assert_eq!(Name::lower(b"HGetAll").as_bytes(), b"hgetall");
        assert!(matches!(Name::lower(b"GET"), Name::Inline(..)));
        let long = [b'X'; 40];
        let lowered = Name::lower(&long);
        assert!(matches!(lowered, Name::Heap(_)));
        assert_eq!(lowered.as_bytes(), [b'x'; 40]);
        assert_eq!(Name::lower(&[0xff]).as_str(), "");
    }
}
