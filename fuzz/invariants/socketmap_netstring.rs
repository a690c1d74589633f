//! The netstring reader of the Postfix socketmap server (socketmap_table(5): one
//! netstring per request and per reply, `<length>:<bytes>,`).
//!
//! - The stream read whole and the same stream read in arbitrary pieces (as TCP may
//!   deliver it) give the same sequence of frames, then the same end: the same error,
//!   or the same incomplete rest.
//! - No frame is longer than the limit; a frame is exactly `len:payload,` at the start
//!   of what was left; a refused length is refused for the same reason however it
//!   arrived.
//! - Every frame, encoded again, is the same bytes, and decodes to itself with nothing
//!   left over; every prefix of an encoded frame asks for more bytes.
//!
//! Input: the first byte picks the limit (the server's request limit, the reply limit,
//! or a small one so that the fuzzer reaches `TooLong`), the second seeds the split
//! points; the rest is the stream.
//!
//! Shared by the fuzz target `socketmap_netstring` and the corpus replay in
//! mxgate-socketmap's tests.

use mxgate_socketmap::netstring::{decode, encode, FrameError, MAX_ANSWER, MAX_QUERY};

/// What a reader makes of a stream: the frames it took, then how it stopped.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    end: End,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The stream ended inside a frame (or between frames): these bytes wait.
    Pending(Vec<u8>),
    /// The connection is closed on this error.
    Error(FrameError),
}

/// Reads `pieces` one after the other, as the server's connection loop does: append,
/// take every complete frame, stop at the first error.
fn read<'a>(pieces: impl IntoIterator<Item = &'a [u8]>, limit: usize) -> Outcome {
    let mut buf: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decode(&buf, limit) {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= limit, "frame over the limit");
                    let mut again = Vec::new();
                    encode(frame.payload, &mut again);
                    assert_eq!(
                        &buf[..frame.consumed],
                        &again[..],
                        "a frame is not `len:payload,` at the start"
                    );
                    frames.push(frame.payload.to_vec());
                    let consumed = frame.consumed;
                    buf.drain(..consumed);
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        end: End::Error(e),
                    }
                }
            }
        }
    }
    Outcome {
        frames,
        end: End::Pending(buf),
    }
}

/// Cut points from a small xorshift seeded by the input: pieces of 0 to 15 bytes
/// (empty reads included).
fn pieces(stream: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x100;
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = ((state % 16) as usize).min(stream.len() - at);
        out.push(&stream[at..at + n]);
        at += n;
    }
    out
}

fn check_round_trip(payload: &[u8], limit: usize) {
    let mut enc = Vec::new();
    encode(payload, &mut enc);
    for cut in 0..enc.len() {
        assert_eq!(
            decode(&enc[..cut], limit),
            Ok(None),
            "prefix of {cut} bytes"
        );
    }
    let frame = decode(&enc, limit)
        .expect("an encoded frame within the limit decodes")
        .expect("an encoded frame is complete");
    assert_eq!(frame.payload, payload);
    assert_eq!(frame.consumed, enc.len());
}

pub fn check(data: &[u8]) {
    let (Some(&pick), Some(&seed)) = (data.first(), data.get(1)) else {
        return;
    };
    let limit = match pick % 4 {
        0 => MAX_QUERY,
        1 => MAX_ANSWER,
        _ => usize::from(pick / 4),
    };
    let stream = &data[2..];

    let whole = read([stream], limit);
    let byte_by_byte = read(stream.chunks(1), limit);
    assert_eq!(whole, byte_by_byte, "whole vs byte by byte");
    let split = read(pieces(stream, seed), limit);
    assert_eq!(whole, split, "whole vs pieces");

    // Frames and the stream agree: the frames, encoded, are the start of the stream.
    let mut encoded = Vec::new();
    for f in &whole.frames {
        encode(f, &mut encoded);
        check_round_trip(f, limit);
    }
    assert!(stream.starts_with(&encoded));
    match &whole.end {
        End::Pending(rest) => assert_eq!(&stream[encoded.len()..], &rest[..]),
        End::Error(FrameError::TooLong { len, limit: l }) => {
            assert_eq!(*l, limit);
            assert!(*len > limit, "refused a length within the limit");
        }
        End::Error(_) => {}
    }
    // The stream read as one payload: encoded, it is a frame again if within the limit.
    if stream.len() <= limit {
        check_round_trip(stream, limit);
    } else {
        let mut enc = Vec::new();
        encode(stream, &mut enc);
        assert!(
            matches!(decode(&enc, limit), Err(FrameError::TooLong { .. })),
            "a payload over the limit was not refused"
        );
    }
}
