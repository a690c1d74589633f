//! The listener's DATA framing (RFC 5321 §4.5.2, §2.3.8): `DataReader` fed the same
//! bytes in any chunking reaches the same outcome and leaves the same bytes after the
//! terminator; an accepted message holds no NUL, bare CR or bare LF and is CRLF lines;
//! and an accepted message, dot-stuffed for relaying, is read back as exactly that one
//! message with nothing left over — a message is never split in two.
//!
//! Input: the first byte picks chunk sizes, the rest is the stream after `354`.
//!
//! Shared by the fuzz target `smtp_data` and the corpus replay in mxgate-smtp's tests.

use bytes::BytesMut;
use mxgate_smtp::{dot_stuff, DataOutcome, DataReader};

const LIMIT: u64 = 64 * 1024;

/// Feeds `stream` in chunks of the given sizes (cycled); returns the outcome and the
/// bytes left after the terminator.
fn read(stream: &[u8], chunks: &[usize]) -> (Option<DataOutcome>, Vec<u8>) {
    let mut reader = DataReader::new(LIMIT);
    let mut buf = BytesMut::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().copied().cycle();
    loop {
        let n = sizes.next().unwrap_or(1).max(1).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        if let Some(outcome) = reader.feed(&mut buf) {
            let mut left = buf.to_vec();
            left.extend_from_slice(rest);
            return (Some(outcome), left);
        }
        if rest.is_empty() {
            return (None, buf.to_vec());
        }
    }
}

fn assert_clean(message: &[u8]) {
    assert!(!message.contains(&0), "NUL stored");
    for (i, &b) in message.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(message.get(i + 1), Some(&b'\n'), "bare CR stored at {i}"),
            b'\n' => assert!(i > 0 && message[i - 1] == b'\r', "bare LF stored at {i}"),
            _ => {}
        }
    }
    assert!(
        message.is_empty() || message.ends_with(b"\r\n"),
        "not CRLF lines"
    );
}

pub fn check(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = read(stream, &[stream.len().max(1)]);
    let chunks = [usize::from(seed % 7) + 1, usize::from(seed / 7 % 5) + 1, 64];
    let chunked = read(stream, &chunks);
    assert_eq!(
        whole, chunked,
        "the outcome depends on how the bytes arrived"
    );
    let bytewise = read(stream, &[1]);
    assert_eq!(
        whole, bytewise,
        "the outcome depends on how the bytes arrived"
    );

    let (Some(outcome), _) = whole else {
        return;
    };
    let Ok(message) = outcome.result else {
        return;
    };
    assert_eq!(outcome.size, message.len() as u64);
    assert_clean(&message);

    // Relayed: the receiver reads exactly this message, and nothing after it.
    let wire = dot_stuff(&message);
    let (again, left) = read(&wire, &[wire.len()]);
    let again = again.expect("the dot-stuffed message has a terminator");
    assert_eq!(
        again.result.as_deref(),
        Ok(&message[..]),
        "relayed message differs"
    );
    assert!(
        left.is_empty(),
        "the relayed message was split: {left:?} left over"
    );
}
