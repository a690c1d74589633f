//! Netstring framing (D. J. Bernstein, "Netstrings", 1997), as Postfix's
//! socketmap_table(5) uses it: "Each request and each reply are sent as one netstring
//! object", `<length>:<bytes>,` with the length in decimal ASCII.
//!
//! Sans-IO: [`decode`] looks at the bytes received so far and says "a frame", "need
//! more bytes" or "malformed"; [`encode`] frames a reply. No sockets here.

/// socketmap_table(5) gives no request limit; Postfix's own client never sends keys
/// anywhere near this, and mxgate refuses longer requests (docs/postfix.md).
pub const MAX_QUERY: usize = 10_000;

/// socketmap_table(5): "The Postfix socketmap client requires that replies are not
/// longer than 100000 characters (not including the netstring encapsulation)."
pub const MAX_ANSWER: usize = 100_000;

/// A byte stream that is not a netstring within the limit. The connection that sent
/// it cannot be resynchronised and is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is empty, has a non-digit before `:`, or a leading zero
    /// ("leading zeros are prohibited" in the netstring definition).
    #[error("netstring length is not a decimal number without leading zeros")]
    BadLength,
    /// The announced length exceeds the limit.
    #[error("netstring of {len} bytes exceeds the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    /// The byte after the announced payload is not `,`.
    #[error("netstring does not end with ','")]
    MissingComma,
}

/// One complete frame at the start of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    pub payload: &'a [u8],
    /// Bytes of the buffer the frame used, prefix and comma included.
    pub consumed: usize,
}

/// Decimal digits of `n`.
fn digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Decodes the netstring at the start of `buf` whose payload may be at most `limit`
/// bytes. `Ok(None)`: the frame is not complete yet (read more). A length that can
/// only exceed `limit` is refused as soon as it is seen, without waiting for the
/// payload.
pub fn decode(buf: &[u8], limit: usize) -> Result<Option<Frame<'_>>, FrameError> {
    let max_digits = digits(limit);
    let mut len: usize = 0;
    let mut i = 0;
    loop {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        match b {
            b':' if i == 0 => return Err(FrameError::BadLength),
            b':' => break,
            b'0'..=b'9' => {
                if i == 1 && buf[0] == b'0' {
                    return Err(FrameError::BadLength);
                }
                if i >= max_digits {
                    return Err(FrameError::TooLong {
                        len: usize::MAX,
                        limit,
                    });
                }
                len = len * 10 + usize::from(b - b'0');
                i += 1;
            }
            _ => return Err(FrameError::BadLength),
        }
    }
    if len > limit {
        return Err(FrameError::TooLong { len, limit });
    }
    let start = i + 1;
    let end = start + len;
    match buf.get(end) {
        None => Ok(None),
        Some(b',') => Ok(Some(Frame {
            payload: &buf[start..end],
            consumed: end + 1,
        })),
        Some(_) => Err(FrameError::MissingComma),
    }
}

/// Appends `payload` as one netstring to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(payload);
    out.push(b',');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, FrameError> {
        decode(buf, MAX_QUERY).map(|f| f.map(|f| (f.payload.to_vec(), f.consumed)))
    }

    #[test]
    fn complete_frames() {
        assert_eq!(
            frame(b"19:postfix example.com,"),
            Ok(Some((b"postfix example.com".to_vec(), 23)))
        );
        assert_eq!(frame(b"0:,"), Ok(Some((Vec::new(), 3))));
        // A second frame after the first is left in the buffer.
        assert_eq!(frame(b"1:a,1:b,"), Ok(Some((b"a".to_vec(), 4))));
        // The payload may contain ':' and ','.
        assert_eq!(frame(b"3:,:,,"), Ok(Some((b",:,".to_vec(), 6))));
    }

    #[test]
    fn every_prefix_of_a_frame_needs_more_bytes() {
        let whole = b"19:postfix example.com,";
        for cut in 0..whole.len() {
            assert_eq!(frame(&whole[..cut]), Ok(None), "prefix of {cut} bytes");
        }
    }

    #[test]
    fn malformed_lengths() {
        for bad in [
            &b":x,"[..],
            b"x:",
            b"1x:a,",
            b"-1:a,",
            b" 1:a,",
            b"01:a,",
            b"00:,",
        ] {
            assert_eq!(frame(bad), Err(FrameError::BadLength), "{bad:?}");
        }
    }

    #[test]
    fn missing_comma() {
        assert_eq!(frame(b"1:ab"), Err(FrameError::MissingComma));
        assert_eq!(frame(b"0:;"), Err(FrameError::MissingComma));
        assert_eq!(frame(b"3:abc\n"), Err(FrameError::MissingComma));
    }

    #[test]
    fn limits() {
        let at_limit = format!("{MAX_QUERY}:{},", "a".repeat(MAX_QUERY));
        assert_eq!(
            frame(at_limit.as_bytes()).unwrap().unwrap().0.len(),
            MAX_QUERY
        );
        // Refused on the length alone, before any payload arrives.
        assert_eq!(
            frame(b"10001:"),
            Err(FrameError::TooLong {
                len: 10_001,
                limit: MAX_QUERY
            })
        );
        // An endless run of digits is refused once it cannot fit.
        assert!(matches!(frame(b"999999"), Err(FrameError::TooLong { .. })));
        assert_eq!(frame(b"99999"), Ok(None));
        assert!(matches!(frame(b"99999:"), Err(FrameError::TooLong { .. })));
        assert!(decode(b"100000:", MAX_ANSWER).unwrap().is_none());
        assert!(matches!(
            decode(b"100001:", MAX_ANSWER),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn encode_round_trips() {
        let mut out = Vec::new();
        encode(b"OK dane-only", &mut out);
        assert_eq!(out, b"12:OK dane-only,");
        encode(b"", &mut out);
        assert_eq!(&out[16..], b"0:,");
        assert_eq!(
            decode(&out, MAX_ANSWER).unwrap().unwrap().payload,
            b"OK dane-only"
        );
    }

    proptest::proptest! {
        /// Any payload within the limit survives encode → decode, and nothing the
        /// decoder is fed makes it panic.
        #[test]
        fn round_trip(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut out = Vec::new();
            encode(&payload, &mut out);
            let f = decode(&out, MAX_QUERY).unwrap().unwrap();
            proptest::prop_assert_eq!(f.payload, &payload[..]);
            proptest::prop_assert_eq!(f.consumed, out.len());
        }

        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode(&bytes, MAX_QUERY);
        }
    }
}
