//! xtext encoding of DSN parameters (RFC 3461 §4).
//!
//! ```text
//! xtext = *( xchar / hexchar )
//! xchar = any ASCII CHAR between "!" (33) and "~" (126) inclusive,
//!         except for "+" and "=".
//! hexchar = ASCII "+" immediately followed by two upper case
//!           hexadecimal digits
//! ```
//!
//! This module only converts; it does not know which parameter a value belongs to.

/// Why an xtext value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XtextError {
    #[error("invalid character {0:#04x} in xtext")]
    InvalidChar(u8),
    #[error("'+' in xtext not followed by two upper-case hex digits")]
    BadHexchar,
    #[error("decoded xtext is not UTF-8")]
    NotUtf8,
}

fn is_xchar(b: u8) -> bool {
    (b'!'..=b'~').contains(&b) && b != b'+' && b != b'='
}

/// Encodes `value` as xtext.
pub fn encode(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if is_xchar(b) {
            out.push(char::from(b));
        } else {
            out.push('+');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

fn upper_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes an xtext value; the result must be UTF-8.
pub fn decode(value: &str) -> Result<String, XtextError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'+' {
            let hi = bytes.get(i + 1).copied().and_then(upper_hex);
            let lo = bytes.get(i + 2).copied().and_then(upper_hex);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(XtextError::BadHexchar),
            }
            i += 3;
        } else if is_xchar(b) {
            out.push(b);
            i += 1;
        } else {
            return Err(XtextError::InvalidChar(b));
        }
    }
    String::from_utf8(out).map_err(|_| XtextError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn table() {
        assert_eq!(encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(encode("rfc822;user@example.com"), "rfc822;user@example.com");
        assert_eq!(encode("é"), "+C3+A9");
        assert_eq!(decode("a+2Bb+3Dc+20d").as_deref(), Ok("a+b=c d"));
        assert_eq!(decode("+2b"), Err(XtextError::BadHexchar));
        assert_eq!(decode("+2"), Err(XtextError::BadHexchar));
        assert_eq!(decode("a=b"), Err(XtextError::InvalidChar(b'=')));
        assert_eq!(decode("a b"), Err(XtextError::InvalidChar(b' ')));
        assert_eq!(decode("+FF"), Err(XtextError::NotUtf8));
    }

    proptest! {
        #[test]
        fn round_trip(s in any::<String>()) {
            let e = encode(&s);
            prop_assert!(e.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'='));
            prop_assert_eq!(decode(&e), Ok(s));
        }
    }
}
