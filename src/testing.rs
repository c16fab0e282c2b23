//! Helpers the unit tests of several modules share.

use bytes::{Bytes, BytesMut};

use crate::protocol::{Frame, take};

/// A request's arguments from words separated by single spaces.
pub(crate) fn args(words: &str) -> Vec<Bytes> {
    words
        .split(' ')
        .map(|w| Bytes::copy_from_slice(w.as_bytes()))
        .collect()
}

/// The one reply `bytes` holds, as a frame.
pub(crate) fn frame(bytes: &str) -> Frame {
    let mut input = BytesMut::from(bytes.as_bytes());
    let frame = take(&mut input).unwrap().unwrap();
    assert!(input.is_empty(), "one frame: {bytes:?}");
    frame
}
