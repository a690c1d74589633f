//! Extraction of CRLF-terminated lines from a receive buffer.
//!
//! [`LineReader::read_line`] takes complete lines off the front of a `BytesMut`;
//! `Ok(None)` means "need more bytes". A line that breaks the rules (bare LF, bare CR,
//! NUL, too long) is consumed and reported as a [`LineError`], so the caller can answer
//! it and carry on with the next line. This module does not interpret the line.

use bytes::{Buf, BytesMut};

/// RFC 5321 §4.5.3.1.4: "The maximum total length of a command line including the
/// command word and the <CRLF> is 512 octets."
pub const MAX_COMMAND_LINE: usize = 512;

/// The command line limit a server should enforce when it offers SIZE, DSN and
/// SMTPUTF8. RFC 1869 lets each service extension raise the 512-octet limit, and the
/// parameters we accept need it: RFC 3461 allows an ORCPT of 500 characters on RCPT and
/// an ENVID of 100 (up to 300 as xtext) on MAIL, next to a 256-octet path. 1000 octets
/// holds the longest legitimate MAIL or RCPT with room to spare.
pub const MAX_EXTENDED_COMMAND_LINE: usize = 1000;

/// RFC 5321 §4.5.3.1.6: "The maximum total length of a text line including the <CRLF>
/// is 1000 octets (not counting the leading dot duplicated for transparency)."
pub const MAX_TEXT_LINE: usize = 1000;

/// Why a line was rejected. The offending line has been consumed from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {limit} octets")]
    TooLong { limit: usize },
    #[error("bare LF (line feed without carriage return)")]
    BareLf,
    #[error("bare CR (carriage return without line feed)")]
    BareCr,
    #[error("NUL character in line")]
    Nul,
}

/// Takes CRLF lines off a buffer, remembering when it is skipping the rest of an
/// over-long line.
#[derive(Debug, Clone)]
pub struct LineReader {
    limit: usize,
    skipping: bool,
}

impl LineReader {
    /// `limit` is the maximum line length including the CRLF.
    pub fn new(limit: usize) -> Self {
        LineReader {
            limit,
            skipping: false,
        }
    }

    /// A reader for SMTP command lines ([`MAX_COMMAND_LINE`]).
    pub fn commands() -> Self {
        Self::new(MAX_COMMAND_LINE)
    }

    /// A reader for command lines with ESMTP parameters ([`MAX_EXTENDED_COMMAND_LINE`]).
    pub fn extended_commands() -> Self {
        Self::new(MAX_EXTENDED_COMMAND_LINE)
    }

    /// Returns the next complete line without its CRLF, `Ok(None)` when more bytes are
    /// needed, or an error for a line that broke the rules (already consumed).
    pub fn read_line(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, LineError> {
        loop {
            let lf = buf.iter().position(|&b| b == b'\n');
            if self.skipping {
                match lf {
                    None => {
                        buf.clear();
                        return Ok(None);
                    }
                    Some(pos) => {
                        buf.advance(pos + 1);
                        self.skipping = false;
                        continue;
                    }
                }
            }
            let Some(pos) = lf else {
                if buf.len() >= self.limit {
                    // The line cannot end within the limit any more: report now and skip
                    // the rest of it when it arrives.
                    buf.clear();
                    self.skipping = true;
                    return Err(LineError::TooLong { limit: self.limit });
                }
                return Ok(None);
            };
            let mut line = buf.split_to(pos + 1);
            // Length first: a line that arrives in pieces is reported too long as soon
            // as the limit is reached, before its end (and any bad byte in it) is
            // seen, so the complete line must get the same verdict.
            if pos + 1 > self.limit {
                return Err(LineError::TooLong { limit: self.limit });
            }
            // RFC 5321 §2.3.8: "SMTP client implementations MUST NOT transmit these
            // characters except when they are intended as line terminators and then
            // MUST, as indicated above, transmit them only as a <CRLF> sequence."
            if pos == 0 || line[pos - 1] != b'\r' {
                return Err(LineError::BareLf);
            }
            line.truncate(pos - 1);
            if line.contains(&b'\r') {
                return Err(LineError::BareCr);
            }
            if line.contains(&0) {
                return Err(LineError::Nul);
            }
            return Ok(Some(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], limit: usize) -> Vec<Result<Vec<u8>, LineError>> {
        let mut r = LineReader::new(limit);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match r.read_line(&mut buf) {
                Ok(Some(l)) => out.push(Ok(l.to_vec())),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
        out
    }

    #[test]
    fn table() {
        let cases: &[(&[u8], Vec<Result<&[u8], LineError>>)] = &[
            (b"NOOP\r\n", vec![Ok(b"NOOP")]),
            (b"NOOP\r\nQUIT\r\n", vec![Ok(b"NOOP"), Ok(b"QUIT")]),
            (b"NOOP\r", vec![]),
            (b"NOOP", vec![]),
            (b"\r\n", vec![Ok(b"")]),
            (b"NOOP\n", vec![Err(LineError::BareLf)]),
            (b"\n", vec![Err(LineError::BareLf)]),
            (b"NOOP\nQUIT\r\n", vec![Err(LineError::BareLf), Ok(b"QUIT")]),
            (b"NO\rOP\r\n", vec![Err(LineError::BareCr)]),
            (
                b"NO\0OP\r\nQUIT\r\n",
                vec![Err(LineError::Nul), Ok(b"QUIT")],
            ),
        ];
        for (input, want) in cases {
            let want: Vec<Result<Vec<u8>, LineError>> =
                want.iter().map(|r| r.map(|l| l.to_vec())).collect();
            assert_eq!(
                all(input, 512),
                want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn too_long_complete_line() {
        let mut line = vec![b'a'; 11];
        line.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(
            all(&line, 12),
            vec![Err(LineError::TooLong { limit: 12 }), Ok(b"NOOP".to_vec())]
        );
        // Exactly at the limit (10 + CRLF = 12) is fine.
        let mut ok = vec![b'a'; 10];
        ok.extend_from_slice(b"\r\n");
        assert_eq!(all(&ok, 12), vec![Ok(vec![b'a'; 10])]);
    }

    /// Found by the `smtp_command` fuzz target (docs/fuzzing.md): an over-long line
    /// with a NUL (or a bare CR) in it was `Nul` when it arrived in one read and
    /// `TooLong` when it arrived in pieces.
    #[test]
    fn too_long_wins_however_the_line_arrives() {
        for bad in [&b"\0"[..], b"\r"] {
            let mut input = b"aaaa".to_vec();
            input.extend_from_slice(bad);
            input.extend_from_slice(b"aaaaaaa\r\nNOOP\r\n");
            let whole = all(&input, 12);
            assert_eq!(
                whole,
                vec![Err(LineError::TooLong { limit: 12 }), Ok(b"NOOP".to_vec())],
                "{bad:?}"
            );
            let mut r = LineReader::new(12);
            let mut buf = BytesMut::new();
            let mut pieces = Vec::new();
            for byte in &input {
                buf.extend_from_slice(&[*byte]);
                while let Some(got) = r.read_line(&mut buf).transpose() {
                    pieces.push(got.map(|l| l.to_vec()));
                }
            }
            assert_eq!(pieces, whole, "{bad:?} byte by byte");
        }
    }

    #[test]
    fn too_long_streamed_line_is_skipped_to_its_end() {
        let mut r = LineReader::new(8);
        let mut buf = BytesMut::from(&b"aaaaaaaaaa"[..]);
        assert_eq!(r.read_line(&mut buf), Err(LineError::TooLong { limit: 8 }));
        buf.extend_from_slice(b"bbbbbbbbbbbbbbbbbbbb");
        assert_eq!(r.read_line(&mut buf), Ok(None));
        buf.extend_from_slice(b"bb\r\nQUIT\r\n");
        assert_eq!(
            r.read_line(&mut buf).map(|o| o.map(|l| l.to_vec())),
            Ok(Some(b"QUIT".to_vec()))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn split_crlf_across_reads() {
        let mut r = LineReader::commands();
        let mut buf = BytesMut::from(&b"HELO x\r"[..]);
        assert_eq!(r.read_line(&mut buf), Ok(None));
        buf.extend_from_slice(b"\n");
        assert_eq!(
            r.read_line(&mut buf).map(|o| o.map(|l| l.to_vec())),
            Ok(Some(b"HELO x".to_vec()))
        );
    }
}
