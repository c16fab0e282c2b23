//! Fuzzes the RESP request decoder.
//!
//! The first byte of the input picks a chunk size; the rest is fed to one decoder
//! in chunks of that size, as reads from a socket would arrive. The decoder must
//! never panic, and every request it decodes must survive a round trip: encoded
//! again as a multibulk (by redis-protocol) and decoded by a fresh decoder, it
//! yields the same arguments and consumes the whole encoding.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use redis_protocol::resp2::types::BytesFrame;
use redis_proxy::protocol::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(args)) => round_trip(args),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

fn round_trip(args: Vec<Bytes>) {
    assert!(!args.is_empty(), "empty requests are skipped, never returned");
    let frame = BytesFrame::Array(args.iter().cloned().map(BytesFrame::BulkString).collect());
    let mut encoded = BytesMut::new();
    redis_protocol::resp2::encode::extend_encode(&mut encoded, &frame, false).unwrap();
    let again = Decoder::default().decode(&mut encoded).expect("a valid encoding");
    assert_eq!(again, Some(args));
    assert!(encoded.is_empty(), "the whole encoding is one request");
}
