//! The client's reply side: `parse_reply` never takes a reply from a prefix of the
//! bytes that make it up (no reply is acted on before it is complete), a parsed reply
//! formats (`Reply::to_bytes`) and parses back to itself, and the EHLO capabilities
//! read from a reply are read back the same from a reply written from them.
//!
//! Shared by the fuzz target `smtp_reply` and the corpus replay in mxgate-smtp's tests.

use bytes::BytesMut;
use mxgate_smtp::{parse_reply, Capabilities, Reply};

fn parse(bytes: &[u8]) -> (Result<Option<Reply>, String>, usize) {
    let mut buf = BytesMut::from(bytes);
    let result = parse_reply(&mut buf).map_err(|e| e.to_string());
    (result, bytes.len() - buf.len())
}

/// An EHLO reply that advertises exactly `caps` (RFC 5321 §4.1.1.1 syntax).
fn ehlo_reply(caps: &Capabilities) -> Reply {
    let mut lines = vec![caps.domain.clone()];
    let mut flag = |on: bool, word: &str| {
        if on {
            lines.push(word.to_string());
        }
    };
    flag(caps.starttls, "STARTTLS");
    flag(caps.pipelining, "PIPELINING");
    flag(caps.eight_bit_mime, "8BITMIME");
    flag(caps.smtputf8, "SMTPUTF8");
    flag(caps.dsn, "DSN");
    flag(caps.enhanced_status_codes, "ENHANCEDSTATUSCODES");
    flag(caps.chunking, "CHUNKING");
    flag(caps.requiretls, "REQUIRETLS");
    if let Some(size) = caps.size {
        lines.push(format!("SIZE {size}"));
    }
    if !caps.auth.is_empty() {
        lines.push(format!("AUTH {}", caps.auth.join(" ")));
    }
    Reply::plain(250, lines)
}

/// Capabilities without the raw lines they were read from.
fn flags(mut caps: Capabilities) -> Capabilities {
    caps.raw.clear();
    caps
}

pub fn check(data: &[u8]) {
    let (result, consumed) = parse(data);
    let Ok(Some(reply)) = result else {
        if let Ok(None) = result {
            assert_eq!(consumed, 0, "an incomplete reply consumed bytes");
        }
        return;
    };
    assert!(consumed > 0 && data[consumed - 1] == b'\n');
    // Every line end inside the reply is a point where it was not complete yet.
    for (i, _) in data[..consumed - 1]
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
    {
        let (early, _) = parse(&data[..=i]);
        assert_eq!(
            early,
            Ok(None),
            "reply taken from its first {} bytes",
            i + 1
        );
    }

    // Reply text is read lossily (a non-UTF-8 byte becomes U+FFFD, three octets), so
    // only a UTF-8 reply keeps its length; a long non-UTF-8 one may format past the
    // 4096-octet line limit. mxgate never sends a remote reply back verbatim.
    let wire = reply.to_bytes();
    if std::str::from_utf8(&data[..consumed]).is_ok() {
        let (again, used) = parse(&wire);
        assert_eq!(again, Ok(Some(reply.clone())), "format/parse round trip");
        assert_eq!(used, wire.len());
    }

    let caps = Capabilities::from_ehlo(&reply);
    // Capabilities as advertised by a reply written from them read back the same.
    // (The domain is the first word of the greeting line.)
    if !caps.domain.is_empty() {
        let written = ehlo_reply(&caps);
        assert_eq!(
            flags(Capabilities::from_ehlo(&written)),
            flags(caps.clone())
        );
    }
    if let Some(limit) = caps.size_limit() {
        assert!(limit > 0);
    }
}
