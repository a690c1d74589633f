//! Values from outside (addresses, replies) made safe for `key=value` log fields.
//!
//! A quoted local part such as `"x\" status=sent"@d` (RFC 5321 §4.1.2) is a valid
//! address; written raw into a log line it would forge a field. [`LogValue`] escapes
//! what could end an unquoted field or forge another — space, `"`, `\`, `,` and
//! control characters, as `\xNN` per UTF-8 byte — and [`log_quoted`] prepares a value
//! that the log format itself quotes (the text format's `Debug` rendering of a `&str`,
//! or JSON).

use std::fmt;

/// Displays its string with every byte that could end or forge a field escaped.
#[derive(Debug, Clone, Copy)]
pub struct LogValue<'a>(pub &'a str);

impl fmt::Display for LogValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(|c: char| needs_escape(c)) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or('\0');
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                write!(f, "\\x{b:02x}")?;
            }
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, ' ' | '"' | '\\' | ',')
}

/// A value (a reply, a diagnostic) for a field the log format quotes itself: `"`
/// becomes `'`, so that even a naive reader of the text format finds no quote inside
/// the quoted value. The rest is escaped by the format: `Debug` in text (`\\`,
/// `\u{1b}`), JSON's own escapes in JSON.
pub fn log_quoted(s: &str) -> String {
    s.replace('"', "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_forge_fields() {
        let v = |s: &str| LogValue(s).to_string();
        assert_eq!(
            v("\"x\\\" status=sent\"@d"),
            "\\x22x\\x5c\\x22\\x20status=sent\\x22@d"
        );
        assert_eq!(v("plain@d.test"), "plain@d.test");
        assert_eq!(v("a,b\r\n"), "a\\x2cb\\x0d\\x0a");
        assert_eq!(v("é ü"), "é\\x20ü");
        assert_eq!(v(""), "");
        assert_eq!(log_quoted("550 \"no\" \\ x\x1b"), "550 'no' \\ x\x1b");
        for forged in ["\"x\\\" status=sent\"@d", "a status=sent b", "a\tb\u{85}c"] {
            let out = v(forged);
            assert!(
                !out.contains(' ') && !out.chars().any(char::is_control),
                "{out}"
            );
        }
    }
}
