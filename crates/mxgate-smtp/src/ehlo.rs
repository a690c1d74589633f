//! The capabilities a server lists in its EHLO reply (RFC 5321 §4.1.1.1).
//!
//! This module only reads the keywords; it does not decide whether a capability is
//! good enough for a policy (that is delivery's and policy's job).

use crate::reply::Reply;

/// What the server advertised after EHLO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The domain the server named in the first line.
    pub domain: String,
    /// `STARTTLS` (RFC 3207).
    pub starttls: bool,
    /// `PIPELINING` (RFC 2920).
    pub pipelining: bool,
    /// `SIZE [n]` (RFC 1870): `Some(0)` when advertised without a fixed limit.
    pub size: Option<u64>,
    /// `8BITMIME` (RFC 6152).
    pub eight_bit_mime: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `DSN` (RFC 3461).
    pub dsn: bool,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    pub enhanced_status_codes: bool,
    /// `CHUNKING` (RFC 3030).
    pub chunking: bool,
    /// `REQUIRETLS` (RFC 8689).
    pub requiretls: bool,
    /// `AUTH` mechanisms (RFC 4954), upper-cased.
    pub auth: Vec<String>,
    /// Every keyword line as sent, for logs and `mxgate check`.
    pub raw: Vec<String>,
}

impl Capabilities {
    /// Reads a positive EHLO reply. Unknown keywords are kept only in `raw`.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        let mut lines = reply.lines.iter();
        if let Some(first) = lines.next() {
            caps.domain = first.split_whitespace().next().unwrap_or("").to_string();
        }
        for line in lines {
            caps.raw.push(line.clone());
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => {
                    // RFC 1870 §4: a missing or zero parameter means no fixed maximum.
                    caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
                }
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                "REQUIRETLS" => caps.requiretls = true,
                "AUTH" => caps.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        caps
    }

    /// The fixed maximum message size, if the server declared one.
    pub fn size_limit(&self) -> Option<u64> {
        self.size.filter(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn caps(input: &[u8]) -> Capabilities {
        let reply = crate::reply::parse_reply(&mut BytesMut::from(input))
            .unwrap()
            .unwrap();
        Capabilities::from_ehlo(&reply)
    }

    #[test]
    fn postfix_like() {
        let c = caps(
            b"250-mx.example.com Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n\
              250-ETRN\r\n250-STARTTLS\r\n250-AUTH PLAIN login\r\n250-ENHANCEDSTATUSCODES\r\n\
              250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
        );
        assert_eq!(c.domain, "mx.example.com");
        assert!(c.pipelining && c.starttls && c.eight_bit_mime && c.dsn && c.smtputf8);
        assert!(c.enhanced_status_codes && c.chunking && !c.requiretls);
        assert_eq!(c.size, Some(10_240_000));
        assert_eq!(c.size_limit(), Some(10_240_000));
        assert_eq!(c.auth, vec!["PLAIN", "LOGIN"]);
        assert_eq!(c.raw.len(), 11);
    }

    #[test]
    fn minimal_and_case() {
        let c = caps(b"250 mx.example\r\n");
        assert_eq!(
            c,
            Capabilities {
                domain: "mx.example".into(),
                ..Default::default()
            }
        );
        let c = caps(b"250-mx\r\n250-starttls\r\n250 size\r\n");
        assert!(c.starttls);
        assert_eq!(c.size, Some(0));
        assert_eq!(c.size_limit(), None);
    }
}
