//! xtext (RFC 3461 §4): `decode(encode(s)) == s` for every string, the encoding is
//! made of xchars and upper-case hexchars only, and whatever `decode` accepts encodes
//! to a form that decodes to the same value.
//!
//! Shared by the fuzz target `xtext` and the corpus replay in mxgate-smtp's tests.

use mxgate_smtp::xtext;

fn assert_is_xtext(encoded: &str) {
    let b = encoded.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                assert!(
                    i + 2 < b.len() && hex(b[i + 1]) && hex(b[i + 2]),
                    "bad hexchar in {encoded:?}"
                );
                i += 3;
            }
            c => {
                assert!(
                    (b'!'..=b'~').contains(&c) && c != b'=',
                    "bad xchar in {encoded:?}"
                );
                i += 1;
            }
        }
    }
}

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let encoded = xtext::encode(&text);
    assert_is_xtext(&encoded);
    assert_eq!(xtext::decode(&encoded).as_deref(), Ok(&*text), "round trip");

    if let Ok(as_xtext) = std::str::from_utf8(data) {
        if let Ok(decoded) = xtext::decode(as_xtext) {
            let again = xtext::encode(&decoded);
            assert_eq!(xtext::decode(&again).as_deref(), Ok(decoded.as_str()));
            // Only hexchars may differ: the canonical form is never longer.
            assert!(again.len() <= as_xtext.len(), "{as_xtext:?} -> {again:?}");
        }
    }
}
