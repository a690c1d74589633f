//! The DATA phase: the server-side incremental reader (dot-unstuffing, terminator,
//! size, smuggling checks) and the client-side dot-stuffing encoder (RFC 5321 §4.5.2).
//!
//! [`DataReader`] consumes bytes up to and including the `CRLF.CRLF` terminator and
//! leaves whatever follows (pipelined commands) in the buffer. Only a dot alone on a
//! line that started after a real CRLF ends the data: `LF.LF`, `LF.CRLF` and friends
//! do not, and any bare CR, bare LF or NUL taints the message so the caller rejects it
//! (SMTP smuggling). This module stores nothing and decides no reply codes.

use bytes::{Buf, Bytes, BytesMut};

use crate::line::MAX_TEXT_LINE;

/// Why a received message must be rejected. The data was read to its terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("bare LF in message data")]
    BareLf,
    #[error("bare CR in message data")]
    BareCr,
    #[error("NUL in message data")]
    Nul,
    #[error("message of {size} octets exceeds the limit of {limit}")]
    TooBig { size: u64, limit: u64 },
    #[error("line longer than {MAX_TEXT_LINE} octets in message data")]
    LineTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// After CRLF (or at the start of DATA).
    LineStart,
    /// A `.` at the start of a line.
    Dot,
    /// `.` CR at the start of a line.
    DotCr,
    /// Inside a line.
    Mid,
    /// A CR inside a line, waiting for LF.
    Cr,
    /// The terminator was seen.
    Done,
}

/// Incremental reader of one message's DATA.
#[derive(Debug)]
pub struct DataReader {
    limit: u64,
    state: State,
    body: BytesMut,
    size: u64,
    line_len: usize,
    bare_lf: bool,
    bare_cr: bool,
    nul: bool,
    long_line: bool,
    /// `None`: text lines of any length are accepted (see [`DataReader::new`]).
    max_line: Option<usize>,
}

/// The result of a complete DATA phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOutcome {
    /// Unstuffed size in octets (counted even when the body was dropped).
    pub size: u64,
    /// The unstuffed message, or why it must be rejected.
    pub result: Result<Bytes, DataError>,
}

impl DataReader {
    /// A reader that keeps at most `limit` octets of message. Text lines of any
    /// length are accepted: a relay that receives a line over RFC 5321's 1000 octets
    /// (e.g. from Postfix with `smtp_line_length_limit = 0`, which keeps DKIM
    /// signatures intact) passes it on unchanged rather than bouncing the mail
    /// (docs/operations.md). [`DataReader::with_line_limit`] enforces a limit.
    pub fn new(limit: u64) -> Self {
        DataReader {
            limit,
            state: State::LineStart,
            body: BytesMut::new(),
            size: 0,
            line_len: 0,
            bare_lf: false,
            bare_cr: false,
            nul: false,
            long_line: false,
            max_line: None,
        }
    }

    /// Rejects the message ([`DataError::LineTooLong`]) when a text line, CRLF
    /// included and the transparency dot not counted, is longer than `max` octets
    /// ([`MAX_TEXT_LINE`] for RFC 5321 §4.5.3.1.6).
    pub fn with_line_limit(mut self, max: usize) -> Self {
        self.max_line = Some(max);
        self
    }

    fn emit(&mut self, b: u8) {
        self.size += 1;
        self.line_len += 1;
        if self.size <= self.limit {
            self.body.extend_from_slice(&[b]);
        } else if !self.body.is_empty() {
            // Over the limit: drop what we kept, but keep counting to the terminator.
            self.body = BytesMut::new();
        }
        if b == 0 {
            self.nul = true;
        }
    }

    fn end_line(&mut self) {
        // RFC 5321 §4.5.3.1.6: "The maximum total length of a text line including the
        // <CRLF> is 1000 octets (not counting the leading dot duplicated for
        // transparency)."
        if self.max_line.is_some_and(|max| self.line_len > max) {
            self.long_line = true;
        }
        self.line_len = 0;
    }

    /// A byte inside a line (state `Mid`).
    fn mid(&mut self, b: u8) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                // RFC 5321 §2.3.8: bare LF is never a line end, and taints the message.
                self.bare_lf = true;
                self.emit(b'\n');
                self.state = State::Mid;
            }
            _ => {
                self.emit(b);
                self.state = State::Mid;
            }
        }
    }

    /// Appends a run of ordinary bytes (no CR, LF or NUL) inside a line.
    fn emit_run(&mut self, run: &[u8]) {
        let len = run.len() as u64;
        self.size += len;
        self.line_len += run.len();
        if self.size <= self.limit {
            self.body.extend_from_slice(run);
        } else if !self.body.is_empty() {
            self.body = BytesMut::new();
        }
    }

    /// Consumes bytes from `buf`. Returns `Some` once the terminator was consumed
    /// (bytes after it stay in `buf`), `None` when more bytes are needed.
    pub fn feed(&mut self, buf: &mut BytesMut) -> Option<DataOutcome> {
        let data = &buf[..];
        let mut consumed = 0;
        while consumed < data.len() && self.state != State::Done {
            let b = data[consumed];
            match (self.state, b) {
                (State::Mid, _) => {
                    // Fast path: copy the run up to the next byte that needs a decision.
                    let rest = &data[consumed..];
                    let run = memchr::memchr3(b'\r', b'\n', 0, rest).unwrap_or(rest.len());
                    if run > 0 {
                        self.emit_run(&rest[..run]);
                        consumed += run;
                        continue;
                    }
                }
                // A line start or a leading dot followed by anything else is handled
                // exactly as inside a line: let the fast path take it.
                (State::LineStart, _) if b != b'.' => {
                    self.state = State::Mid;
                    continue;
                }
                (State::Dot, _) if b != b'\r' => {
                    self.state = State::Mid;
                    continue;
                }
                (State::Cr, b'\n') => {
                    consumed += 1;
                    self.emit_run(b"\r\n");
                    self.end_line();
                    self.state = State::LineStart;
                    continue;
                }
                _ => {}
            }
            consumed += 1;
            match self.state {
                State::LineStart => match b {
                    // RFC 5321 §4.5.2: "If the line is composed of a single period, it
                    // is treated as the end of mail indicator. If the first character
                    // is a period and there are other characters on the line, the
                    // first character is deleted."
                    b'.' => self.state = State::Dot,
                    _ => self.mid(b),
                },
                State::Dot => match b {
                    b'\r' => self.state = State::DotCr,
                    _ => self.mid(b),
                },
                State::DotCr => match b {
                    b'\n' => self.state = State::Done,
                    _ => {
                        self.bare_cr = true;
                        self.emit(b'\r');
                        self.mid(b);
                    }
                },
                State::Mid => self.mid(b),
                State::Cr => match b {
                    b'\n' => {
                        self.emit(b'\r');
                        self.emit(b'\n');
                        self.end_line();
                        self.state = State::LineStart;
                    }
                    _ => {
                        self.bare_cr = true;
                        self.emit(b'\r');
                        self.mid(b);
                    }
                },
                State::Done => {}
            }
        }
        buf.advance(consumed);
        if self.state != State::Done {
            return None;
        }
        let result = if self.bare_lf {
            Err(DataError::BareLf)
        } else if self.bare_cr {
            Err(DataError::BareCr)
        } else if self.nul {
            Err(DataError::Nul)
        } else if self.size > self.limit {
            Err(DataError::TooBig {
                size: self.size,
                limit: self.limit,
            })
        } else if self.long_line {
            Err(DataError::LineTooLong)
        } else {
            Ok(std::mem::take(&mut self.body).freeze())
        };
        Some(DataOutcome {
            size: self.size,
            result,
        })
    }

    /// Octets of message counted so far.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// Dot-stuffs a stored message (CRLF line ends) for sending after `354`, appends a
/// CRLF if the message does not end with one, and the `.` CRLF terminator.
///
/// RFC 5321 §4.5.2: "Before sending a line of mail text, the SMTP client checks the
/// first character of the line. If it is a period, one additional period is inserted
/// at the beginning of the line." A period after a bare LF is stuffed as well, so a
/// receiver that (wrongly) treats LF as a line end cannot see a terminator either.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut start = 0;
    if message.first() == Some(&b'.') {
        out.push(b'.');
    }
    // Every `.` that follows an LF (CRLF or bare) starts a line: copy up to and
    // including the LF, insert the extra dot, and continue from the original dot.
    for lf in memchr::memmem::find_iter(message, b"\n.") {
        out.extend_from_slice(&message[start..=lf]);
        out.push(b'.');
        start = lf + 1;
    }
    out.extend_from_slice(&message[start..]);
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(input: &[u8], limit: u64) -> (Option<DataOutcome>, Vec<u8>) {
        let mut r = DataReader::new(limit);
        let mut buf = BytesMut::from(input);
        let out = r.feed(&mut buf);
        (out, buf.to_vec())
    }

    fn ok(input: &[u8]) -> Vec<u8> {
        let (out, rest) = read(input, 1 << 20);
        assert!(rest.is_empty(), "left over {rest:?}");
        out.unwrap().result.unwrap().to_vec()
    }

    fn err(input: &[u8]) -> DataError {
        read(input, 1 << 20).0.unwrap().result.unwrap_err()
    }

    #[test]
    fn unstuffing_table() {
        assert_eq!(ok(b".\r\n"), b"");
        assert_eq!(ok(b"a\r\n.\r\n"), b"a\r\n");
        assert_eq!(ok(b"..a\r\n.\r\n"), b".a\r\n");
        assert_eq!(ok(b".a\r\n.\r\n"), b"a\r\n");
        assert_eq!(ok(b"...\r\n.\r\n"), b"..\r\n");
        assert_eq!(ok(b"a.\r\n.b\r\n.\r\n"), b"a.\r\nb\r\n");
        assert_eq!(ok(b"\r\n\r\n.\r\n"), b"\r\n\r\n");
    }

    #[test]
    fn smuggling_table() {
        // Each must not terminate at the fake end, and must be flagged when the real
        // terminator arrives.
        let fakes: &[&[u8]] = &[
            b"a\n.\nMAIL FROM:<x@y>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\r.\rMAIL FROM:<x@y>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\rMAIL FROM:<x@y>\r\n",
        ];
        for fake in fakes {
            let (out, _) = read(fake, 1 << 20);
            assert!(
                out.is_none(),
                "terminated early on {:?}",
                String::from_utf8_lossy(fake)
            );
            let mut full = fake.to_vec();
            full.extend_from_slice(b".\r\n");
            let e = err(&full);
            assert!(
                matches!(e, DataError::BareLf | DataError::BareCr),
                "{e:?} for {full:?}"
            );
        }
        assert_eq!(err(b"a\0b\r\n.\r\n"), DataError::Nul);
        assert_eq!(err(b"a\nb\r\n.\r\n"), DataError::BareLf);
        assert_eq!(err(b"a\rb\r\n.\r\n"), DataError::BareCr);
    }

    #[test]
    fn leaves_pipelined_bytes() {
        let (out, rest) = read(b"x\r\n.\r\nQUIT\r\n", 100);
        assert_eq!(out.unwrap().result.unwrap().as_ref(), b"x\r\n");
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn limits() {
        let (out, _) = read(b"0123456789\r\n.\r\n", 5);
        let out = out.unwrap();
        assert_eq!(out.size, 12);
        assert_eq!(out.result, Err(DataError::TooBig { size: 12, limit: 5 }));
        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        // By default a long text line is kept, byte for byte.
        assert_eq!(ok(&long), &long[..1001]);
        let limited = |input: &[u8]| {
            let mut r = DataReader::new(1 << 20).with_line_limit(MAX_TEXT_LINE);
            r.feed(&mut BytesMut::from(input)).unwrap().result
        };
        assert_eq!(limited(&long), Err(DataError::LineTooLong));
        let mut fine = vec![b'.'; 999];
        fine.extend_from_slice(b"\r\n.\r\n");
        // 999 dots stuffed = 998 unstuffed + CRLF = 1000: allowed.
        assert_eq!(ok(&fine).len(), 1000);
        assert_eq!(limited(&fine).unwrap().len(), 1000);
        let mut huge = vec![b'b'; 20_000];
        huge.extend_from_slice(b"\r\nend\r\n.\r\n");
        assert_eq!(ok(&huge), &huge[..20_007]);
    }

    #[test]
    fn stuffing_table() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(dot_stuff(b"a"), b"a\r\n.\r\n");
        assert_eq!(dot_stuff(b".\r\n.a\r\nb.\r\n"), b"..\r\n..a\r\nb.\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\n.b\r\n"), b"a\n..b\r\n.\r\n");
    }

    fn crlf_message() -> impl Strategy<Value = Vec<u8>> {
        // Lines of arbitrary bytes without CR/LF/NUL, short enough, joined with CRLF.
        proptest::collection::vec(
            proptest::collection::vec(
                prop_oneof![
                    Just(b'.'),
                    any::<u8>().prop_filter("no CR LF NUL", |b| !matches!(b, b'\r' | b'\n' | 0))
                ],
                0..40,
            ),
            0..20,
        )
        .prop_map(|lines| {
            let mut m = Vec::new();
            for l in lines {
                m.extend_from_slice(&l);
                m.extend_from_slice(b"\r\n");
            }
            m
        })
    }

    /// Feeds `input` cut at `cuts`; returns the outcome and what was left over.
    fn read_split(input: &[u8], cuts: &[usize], limit: u64) -> (Option<DataOutcome>, Vec<u8>) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut r = DataReader::new(limit);
        let mut buf = BytesMut::new();
        let mut prev = 0;
        let mut got = None;
        for cut in cuts.into_iter().chain(std::iter::once(input.len())) {
            buf.extend_from_slice(&input[prev..cut]);
            prev = cut;
            if got.is_none() {
                got = r.feed(&mut buf);
            }
        }
        (got, buf.to_vec())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_split_anywhere_give_the_same_outcome(
            input in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..200),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
            limit in 0u64..300,
        ) {
            let whole = read(&input, limit);
            prop_assert_eq!(read_split(&input, &cuts, limit), whole.clone());
            // The data ends exactly after the first CRLF "." CRLF that starts a line.
            let mut framed = b"\r\n".to_vec();
            framed.extend_from_slice(&input);
            let end = framed.windows(5).position(|w| w == b"\r\n.\r\n").map(|p| p + 5 - 2);
            match (whole.0, end) {
                (Some(_), Some(end)) => prop_assert_eq!(whole.1, input[end..].to_vec()),
                (None, None) => prop_assert!(whole.1.is_empty()),
                (got, want) => prop_assert!(false, "outcome {:?} but terminator at {:?}", got, want),
            }
        }

        #[test]
        fn stuff_then_unstuff_is_identity(msg in crlf_message(), splits in proptest::collection::vec(any::<usize>(), 0..8)) {
            let mut wire = dot_stuff(&msg);
            wire.extend_from_slice(b"NOOP\r\n");
            // One chunk.
            let (out, rest) = read(&wire, 1 << 20);
            prop_assert_eq!(out.unwrap().result.unwrap().to_vec(), msg.clone());
            prop_assert_eq!(rest, b"NOOP\r\n".to_vec());
            // Random splits.
            let mut cuts: Vec<usize> = splits.iter().map(|s| s % (wire.len() + 1)).collect();
            cuts.sort_unstable();
            let mut r = DataReader::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut prev = 0;
            let mut got = None;
            for cut in cuts.into_iter().chain(std::iter::once(wire.len())) {
                buf.extend_from_slice(&wire[prev..cut]);
                prev = cut;
                if got.is_none() {
                    got = r.feed(&mut buf);
                }
            }
            prop_assert_eq!(got.unwrap().result.unwrap().to_vec(), msg);
            prop_assert_eq!(buf.to_vec(), b"NOOP\r\n".to_vec());
        }
    }
}
