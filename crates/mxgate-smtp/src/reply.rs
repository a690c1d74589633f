//! SMTP replies (RFC 5321 §4.2) with RFC 3463 enhanced status codes (RFC 2034).
//!
//! [`Reply`] is formatted by the server ([`Reply::to_bytes`]) and parsed incrementally
//! by the client ([`parse_reply`], `Ok(None)` = need more bytes). This module does not
//! decide what a reply means for a message beyond the class helpers.

use std::fmt;

use bytes::{Buf, BytesMut};

/// RFC 5321 §4.5.3.1.5: "The maximum total length of a reply line including the reply
/// code and the <CRLF> is 512 octets." Real servers exceed it; we accept up to this
/// many octets per line before calling the reply garbage.
pub const MAX_REPLY_LINE: usize = 4096;
/// More lines than this in one reply is treated as garbage (a hostile server).
pub const MAX_REPLY_LINES: usize = 256;

/// RFC 3463 enhanced status code `class.subject.detail`.
pub type EnhancedCode = (u8, u16, u16);

/// One (possibly multi-line) SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code, when the reply carries one.
    pub enhanced: Option<EnhancedCode>,
    /// The text of each line, without code, separator or enhanced code.
    pub lines: Vec<String>,
}

/// Why bytes from the server are not an SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    #[error("reply code changed within a multi-line reply: {first} then {then}")]
    InconsistentCode { first: u16, then: u16 },
    #[error("reply line longer than {MAX_REPLY_LINE} octets")]
    LineTooLong,
    #[error("reply with more than {MAX_REPLY_LINES} lines")]
    TooManyLines,
    #[error("bare LF or CR in reply")]
    BareNewline,
}

impl Reply {
    /// A reply with an enhanced status code and one line of text.
    pub fn new(code: u16, enhanced: EnhancedCode, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO, HELO).
    pub fn plain(code: u16, lines: Vec<String>) -> Self {
        Reply {
            code,
            enhanced: None,
            lines,
        }
    }

    /// 2xx: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx: go on (354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: try again later (defer).
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not retry (bounce).
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The enhanced code as `x.y.z`, if present.
    pub fn enhanced_string(&self) -> Option<String> {
        self.enhanced.map(|(c, s, d)| format!("{c}.{s}.{d}"))
    }

    /// The enhanced status for logs and DSNs: the server's own, or `X.0.0` derived
    /// from the reply class when it sent none (RFC 3463 §3.1 "Other undefined status").
    /// A reply of no status class (3yz) gets `4.5.0` ("other or undefined protocol
    /// status", transient): it is a protocol error, never a success.
    pub fn status(&self) -> crate::EnhancedStatus {
        use crate::{EnhancedStatus, StatusClass};
        self.enhanced
            .and_then(|(c, s, d)| Some(EnhancedStatus::new(StatusClass::from_digit(c)?, s, d)))
            .or_else(|| EnhancedStatus::of_reply_code(self.code))
            .unwrap_or(EnhancedStatus::transient(5, 0))
    }

    /// The wire form: `250-...` for every line but the last, `250 ...` for the last,
    /// each line with the enhanced code when there is one.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let enhanced = self.enhanced_string();
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            let line = match (&enhanced, text.is_empty()) {
                (Some(e), true) => format!("{:03}{sep}{e}\r\n", self.code),
                (Some(e), false) => format!("{:03}{sep}{e} {text}\r\n", self.code),
                (None, _) => format!("{:03}{sep}{text}\r\n", self.code),
            };
            out.extend_from_slice(line.as_bytes());
        }
        out
    }
}

/// One line: `550 5.1.1 no such user`, lines joined with a space.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}", self.code)?;
        if let Some(e) = self.enhanced_string() {
            write!(f, " {e}")?;
        }
        for line in &self.lines {
            if !line.is_empty() {
                write!(f, " {line}")?;
            }
        }
        Ok(())
    }
}

fn parse_enhanced(text: &str, code: u16) -> Option<(EnhancedCode, &str)> {
    let (word, rest) = match text.split_once(' ') {
        Some((w, r)) => (w, r),
        None => (text, ""),
    };
    let mut parts = word.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject_s = parts.next()?;
    let detail_s = parts.next()?;
    if parts.next().is_some()
        || subject_s.is_empty()
        || detail_s.is_empty()
        || subject_s.len() > 3
        || detail_s.len() > 3
        || !subject_s.bytes().all(|b| b.is_ascii_digit())
        || !detail_s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // RFC 3463 §2: "class = "2"/"4"/"5"" and it matches the basic code's class.
    if u16::from(class) != code / 100 || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    let subject = subject_s.parse().ok()?;
    let detail = detail_s.parse().ok()?;
    Some(((class, subject, detail), rest))
}

/// Whether [`parse_reply`] on `buf` would now return something other than "need more
/// bytes" (a reply or an error). `scan` remembers how far `buf` holds only
/// continuation lines (`250-...`), so each call looks only at bytes that arrived since
/// the last one: a server trickling a long reply byte by byte costs linear time, not
/// quadratic. Start from `ReplyScan::default()` for each reply.
pub fn reply_complete(buf: &[u8], scan: &mut ReplyScan) -> bool {
    loop {
        let rest = buf.get(scan.offset..).unwrap_or_default();
        let Some(lf) = memchr::memchr(b'\n', rest) else {
            // An over-long partial line is an error parse_reply reports.
            return rest.len() > MAX_REPLY_LINE;
        };
        let line = &rest[..=lf];
        if line.get(3) != Some(&b'-')
            || scan.lines >= MAX_REPLY_LINES
            || line.len() > MAX_REPLY_LINE
        {
            // A last line, a malformed one, or too many: parse_reply decides.
            return true;
        }
        scan.lines += 1;
        scan.offset += lf + 1;
    }
}

/// Progress of [`reply_complete`] through the next reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplyScan {
    /// Bytes known to be continuation lines.
    pub offset: usize,
    /// How many.
    pub lines: usize,
}

/// Parses one complete reply off the front of `buf`; `Ok(None)` = need more bytes
/// (nothing consumed). The enhanced code is taken from the first line and stripped
/// from every line that repeats it.
pub fn parse_reply(buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
    let mut pos = 0;
    let mut raw_lines: Vec<(usize, usize)> = Vec::new();
    let mut code: Option<u16> = None;
    loop {
        let rest = &buf[pos..];
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
            return Ok(None);
        };
        if lf + 1 > MAX_REPLY_LINE {
            return Err(ReplyError::LineTooLong);
        }
        if lf == 0 || rest[lf - 1] != b'\r' || rest[..lf - 1].contains(&b'\r') {
            return Err(ReplyError::BareNewline);
        }
        let line = &rest[..lf - 1];
        // RFC 5321 §4.2.1: "every line, except the last, begin with the reply code,
        // followed immediately by a hyphen, "-" (also known as minus), followed by
        // text. The last line will begin with the reply code, followed immediately by
        // <SP>, optionally some text, and <CRLF>."
        let malformed = || ReplyError::Malformed(String::from_utf8_lossy(line).into_owned());
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(malformed());
        }
        if !(b'2'..=b'5').contains(&line[0]) || line[1] > b'5' {
            return Err(malformed());
        }
        let this = u16::from(line[0] - b'0') * 100
            + u16::from(line[1] - b'0') * 10
            + u16::from(line[2] - b'0');
        match code {
            None => code = Some(this),
            Some(first) if first != this => {
                return Err(ReplyError::InconsistentCode { first, then: this })
            }
            Some(_) => {}
        }
        let last = match line.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return Err(malformed()),
        };
        raw_lines.push((pos, pos + lf - 1));
        if raw_lines.len() > MAX_REPLY_LINES {
            return Err(ReplyError::TooManyLines);
        }
        pos += lf + 1;
        if last {
            break;
        }
    }
    let code = code.unwrap_or_default();
    let texts: Vec<String> = raw_lines
        .iter()
        .map(|&(s, e)| {
            let line = &buf[s..e];
            String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned()
        })
        .collect();
    buf.advance(pos);
    let enhanced = texts
        .first()
        .and_then(|t| parse_enhanced(t, code))
        .map(|(e, _)| e);
    let lines = texts
        .into_iter()
        .map(|t| match (enhanced, parse_enhanced(&t, code)) {
            (Some(e), Some((this, rest))) if this == e => rest.to_string(),
            _ => t,
        })
        .collect();
    Ok(Some(Reply {
        code,
        enhanced,
        lines,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<Option<Reply>, ReplyError> {
        parse_reply(&mut BytesMut::from(input))
    }

    #[test]
    fn format_single_and_multi() {
        let r = Reply::new(250, (2, 0, 0), "Ok");
        assert_eq!(r.to_bytes(), b"250 2.0.0 Ok\r\n");
        let r = Reply::plain(
            250,
            vec!["mx.example".into(), "PIPELINING".into(), "SIZE 10".into()],
        );
        assert_eq!(
            r.to_bytes(),
            b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        let r = Reply::new(354, (2, 0, 0), "go");
        assert_eq!(r.to_string(), "354 2.0.0 go");
        assert_eq!(Reply::plain(220, vec![]).to_bytes(), b"220 \r\n");
    }

    #[test]
    fn parse_table() {
        let ok = |code, enh, lines: &[&str]| {
            Ok(Some(Reply {
                code,
                enhanced: enh,
                lines: lines.iter().map(|s| s.to_string()).collect(),
            }))
        };
        let cases: Vec<(&[u8], Result<Option<Reply>, ReplyError>)> = vec![
            (b"250 Ok\r\n", ok(250, None, &["Ok"])),
            (b"250\r\n", ok(250, None, &[""])),
            (b"250 2.1.0 Ok\r\n", ok(250, Some((2, 1, 0)), &["Ok"])),
            (
                b"550 5.1.1 no such\r\n",
                ok(550, Some((5, 1, 1)), &["no such"]),
            ),
            // Class must match the code.
            (b"550 2.1.1 odd\r\n", ok(550, None, &["2.1.1 odd"])),
            (
                b"250-mx\r\n250-PIPELINING\r\n250 SIZE\r\n",
                ok(250, None, &["mx", "PIPELINING", "SIZE"]),
            ),
            (
                b"451-4.3.0 a\r\n451 4.3.0 b\r\n",
                ok(451, Some((4, 3, 0)), &["a", "b"]),
            ),
            (b"250-mx\r\n", Ok(None)),
            (b"250 Ok", Ok(None)),
            (b"250 Ok\r", Ok(None)),
            (b"", Ok(None)),
            (b"250 Ok\n", Err(ReplyError::BareNewline)),
            (b"250 O\rk\r\n", Err(ReplyError::BareNewline)),
            (b"25 Ok\r\n", Err(ReplyError::Malformed("25 Ok".into()))),
            (b"hello\r\n", Err(ReplyError::Malformed("hello".into()))),
            (b"650 x\r\n", Err(ReplyError::Malformed("650 x".into()))),
            (b"250xOk\r\n", Err(ReplyError::Malformed("250xOk".into()))),
            (
                b"250-a\r\n251 b\r\n",
                Err(ReplyError::InconsistentCode {
                    first: 250,
                    then: 251,
                }),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse(input),
                want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn consumes_only_one_reply() {
        let mut buf = BytesMut::from(&b"250 a\r\n354 b\r\n"[..]);
        assert_eq!(
            parse_reply(&mut buf).ok().flatten().map(|r| r.code),
            Some(250)
        );
        assert_eq!(&buf[..], b"354 b\r\n");
        assert_eq!(
            parse_reply(&mut buf).ok().flatten().map(|r| r.code),
            Some(354)
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn incremental_bytes_give_same_result() {
        let input = b"250-mx.example\r\n250-8BITMIME\r\n250 2.0.0 SIZE 100\r\n";
        let whole = parse(input);
        let mut buf = BytesMut::new();
        let mut got = None;
        for &b in input.iter() {
            buf.extend_from_slice(&[b]);
            if let Some(r) = parse_reply(&mut buf).unwrap_or(None) {
                got = Some(r);
            }
        }
        assert_eq!(Ok(got), whole);
    }

    #[test]
    fn reply_complete_agrees_with_parse_reply_byte_by_byte() {
        let inputs: [&[u8]; 5] = [
            b"250-mx.example\r\n250-8BITMIME\r\n250 2.0.0 SIZE 100\r\n",
            b"250 Ok\r\n",
            b"hello\r\n",
            b"250-a\r\n251 b\r\n",
            b"250 Ok\n",
        ];
        for input in inputs {
            let mut scan = ReplyScan::default();
            for n in 0..=input.len() {
                let prefix = &input[..n];
                let complete = reply_complete(prefix, &mut scan);
                let parsed = parse(prefix);
                assert_eq!(
                    complete,
                    !matches!(parsed, Ok(None)),
                    "{:?}",
                    String::from_utf8_lossy(prefix)
                );
            }
        }
        // Continuation lines are scanned once.
        let mut buf = Vec::new();
        let mut scan = ReplyScan::default();
        for _ in 0..100 {
            buf.extend_from_slice(b"250-continuation\r\n");
            assert!(!reply_complete(&buf, &mut scan));
            assert_eq!(scan.offset, buf.len());
        }
        // An endless multi-line reply ends in an error, not in unbounded memory.
        for _ in 100..=MAX_REPLY_LINES {
            buf.extend_from_slice(b"250-continuation\r\n");
        }
        assert!(reply_complete(&buf, &mut scan));
        assert_eq!(parse(&buf), Err(ReplyError::TooManyLines));
        let mut long = b"250-".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_REPLY_LINE + 1));
        assert!(reply_complete(&long, &mut ReplyScan::default()));
    }

    #[test]
    fn too_long_and_too_many() {
        let mut long = b"250 ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_REPLY_LINE + 1));
        assert_eq!(parse(&long), Err(ReplyError::LineTooLong));
        let mut many = Vec::new();
        for _ in 0..=MAX_REPLY_LINES {
            many.extend_from_slice(b"250-x\r\n");
        }
        assert_eq!(parse(&many), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn classes() {
        let r = |c| Reply::plain(c, vec![]);
        assert!(r(250).is_positive() && !r(250).is_transient());
        assert!(r(354).is_intermediate());
        assert!(r(421).is_transient() && !r(421).is_permanent());
        assert!(r(554).is_permanent());
        assert_eq!(r(554).status().to_string(), "5.0.0");
        assert_eq!(r(354).status().to_string(), "4.5.0");
        assert_eq!(
            Reply::new(450, (4, 7, 1), "x").status().to_string(),
            "4.7.1"
        );
    }
}
