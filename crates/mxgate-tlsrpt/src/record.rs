//! The TLSRPT policy record at `_smtp._tls.<domain>` (RFC 8460 §3).
//!
//! ```text
//! tlsrpt-record  = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]
//! field-delim    = *WSP ";" *WSP
//! tlsrpt-field   = tlsrpt-rua / tlsrpt-extension
//! tlsrpt-version = %s"v=TLSRPTv1"
//! tlsrpt-rua     = %s"rua=" tlsrpt-uri *(*WSP "," *WSP tlsrpt-uri)
//! ```
//!
//! Pure: takes the TXT strings (each record's character-strings already joined), returns
//! the report destinations or why there are none.

use std::fmt;

/// The DNS name of a domain's TLSRPT record (RFC 8460 §3).
pub fn record_name(policy_domain: &str) -> String {
    format!("_smtp._tls.{}", policy_domain.trim_end_matches('.'))
}

/// Where one report goes: an `rua=` URI we can serve.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Destination {
    /// `mailto:` — the address (percent-decoded, without `?` parameters).
    Mailto(String),
    /// `https:` — the whole URL, POSTed to (RFC 8460 §5.4).
    Https(String),
}

impl Destination {
    /// The `via` metric label.
    pub fn via(&self) -> &'static str {
        match self {
            Destination::Mailto(_) => "mailto",
            Destination::Https(_) => "https",
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Mailto(a) => write!(f, "mailto:{a}"),
            Destination::Https(u) => f.write_str(u),
        }
    }
}

/// A valid TLSRPT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptRecord {
    /// Every `rua` URI we can serve, in record order. URIs of other schemes are left out
    /// (RFC 8460 §3 defines only `mailto:` and `https:`).
    pub rua: Vec<Destination>,
}

/// Why a domain has no usable TLSRPT record; each means "the domain does not implement
/// TLSRPT" (RFC 8460 §3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("no TXT record starts with v=TLSRPTv1;")]
    None,
    #[error("{0} TXT records start with v=TLSRPTv1; (exactly one allowed)")]
    Several(usize),
    #[error("TLSRPT record: {0}")]
    Syntax(&'static str),
    #[error("TLSRPT record: no mailto: or https: address in rua=")]
    NoUsableAddress,
}

/// Picks and parses the record among the TXT strings at `_smtp._tls.<domain>`.
pub fn parse_records(txts: &[String]) -> Result<TlsRptRecord, RecordError> {
    // RFC 8460 §3: "If multiple TXT records for "_smtp._tls" are returned by the
    // resolver, records that do not begin with "v=TLSRPTv1;" are discarded. If the
    // number of resulting records is not one, or if the resulting record is
    // syntactically invalid, senders MUST assume the recipient domain does not
    // implement TLSRPT."
    let candidates: Vec<&String> = txts.iter().filter(|t| begins_with_version(t)).collect();
    match candidates.as_slice() {
        [] => Err(RecordError::None),
        [one] => parse_record(one),
        many => Err(RecordError::Several(many.len())),
    }
}

/// `v=TLSRPTv1` followed by a field delimiter (`*WSP ";"`).
fn begins_with_version(txt: &str) -> bool {
    txt.strip_prefix("v=TLSRPTv1")
        .is_some_and(|rest| rest.trim_start_matches([' ', '\t']).starts_with(';'))
}

/// Parses one record that begins with the version.
pub fn parse_record(txt: &str) -> Result<TlsRptRecord, RecordError> {
    let mut fields = txt.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next() != Some("v=TLSRPTv1") {
        return Err(RecordError::Syntax("must begin with v=TLSRPTv1"));
    }
    let fields: Vec<&str> = fields.collect();
    let mut rua: Option<Vec<Destination>> = None;
    for (i, field) in fields.iter().enumerate() {
        if field.is_empty() {
            // `[field-delim]`: one trailing delimiter is allowed, nothing else empty.
            if i + 1 == fields.len() {
                continue;
            }
            return Err(RecordError::Syntax("empty field"));
        }
        let Some((name, value)) = field.split_once('=') else {
            return Err(RecordError::Syntax("field without '='"));
        };
        if name == "rua" {
            if rua.is_some() {
                return Err(RecordError::Syntax("rua= given twice"));
            }
            rua = Some(parse_rua(value)?);
        } else if !valid_extension(name, value) {
            // RFC 8460 §3: unknown fields of a syntactically valid superset are ignored.
            return Err(RecordError::Syntax("malformed extension field"));
        }
    }
    let Some(rua) = rua else {
        return Err(RecordError::Syntax("no rua= field"));
    };
    let usable: Vec<Destination> = rua.into_iter().collect();
    if usable.is_empty() {
        return Err(RecordError::NoUsableAddress);
    }
    Ok(TlsRptRecord { rua: usable })
}

/// `tlsrpt-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`,
/// `tlsrpt-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)`.
fn valid_extension(name: &str, value: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = name.len() <= 32
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    let value_ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| matches!(b, 0x21..=0x3a | 0x3c | 0x3e..=0x7e));
    first_ok && rest_ok && value_ok
}

/// The URI list of `rua=`; URIs of schemes other than `mailto:`/`https:` are skipped.
fn parse_rua(value: &str) -> Result<Vec<Destination>, RecordError> {
    let mut out = Vec::new();
    for uri in value.split(',').map(|u| u.trim_matches([' ', '\t'])) {
        if uri.is_empty() || uri.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(RecordError::Syntax("malformed URI in rua="));
        }
        let Some((scheme, rest)) = uri.split_once(':') else {
            return Err(RecordError::Syntax("URI without scheme in rua="));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "mailto" => {
                let addr = rest.split('?').next().unwrap_or_default();
                let addr = percent_decode(addr)
                    .ok_or(RecordError::Syntax("bad percent-encoding in mailto:"))?;
                match addr.rsplit_once('@') {
                    Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                        // The address becomes an SMTP recipient (RFC 5321 §4.1.2): no
                        // space or control character (DEL included), no angle bracket.
                        if addr
                            .bytes()
                            .any(|b| b <= b' ' || b == 0x7f || b == b'<' || b == b'>')
                        {
                            return Err(RecordError::Syntax("malformed mailto: address"));
                        }
                        out.push(Destination::Mailto(addr));
                    }
                    _ => return Err(RecordError::Syntax("mailto: without local@domain")),
                }
            }
            "https" => {
                let Some(host) = rest.strip_prefix("//") else {
                    return Err(RecordError::Syntax("https: URI without //host"));
                };
                if host.is_empty() || host.starts_with('/') {
                    return Err(RecordError::Syntax("https: URI without host"));
                }
                out.push(Destination::Https(uri.to_string()));
            }
            _ => {}
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(list: &[&str]) -> Result<TlsRptRecord, RecordError> {
        parse_records(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn mailto(a: &str) -> Destination {
        Destination::Mailto(a.into())
    }

    #[test]
    fn valid_records() {
        let cases: &[(&str, Vec<Destination>)] = &[
            (
                "v=TLSRPTv1; rua=mailto:r@example.com",
                vec![mailto("r@example.com")],
            ),
            (
                "v=TLSRPTv1;rua=mailto:r@example.com;",
                vec![mailto("r@example.com")],
            ),
            (
                "v=TLSRPTv1 ; rua=mailto:r@example.com",
                vec![mailto("r@example.com")],
            ),
            (
                "v=TLSRPTv1; rua=https://reports.example.com/v1/tlsrpt",
                vec![Destination::Https(
                    "https://reports.example.com/v1/tlsrpt".into(),
                )],
            ),
            (
                "v=TLSRPTv1; rua=mailto:a@x.example , https://c.example/r,mailto:b@y.example",
                vec![
                    mailto("a@x.example"),
                    Destination::Https("https://c.example/r".into()),
                    mailto("b@y.example"),
                ],
            ),
            // Unknown extension fields are ignored (RFC 8460 §3).
            (
                "v=TLSRPTv1; rua=mailto:r@example.com; ext=1",
                vec![mailto("r@example.com")],
            ),
            // Percent-encoded comma in a mailto address, and ?parameters dropped.
            (
                "v=TLSRPTv1; rua=mailto:a%2Cb@example.com?subject=x",
                vec![mailto("a,b@example.com")],
            ),
            // An unknown scheme is skipped when another address is usable.
            (
                "v=TLSRPTv1; rua=ftp://x.example/r,mailto:r@example.com",
                vec![mailto("r@example.com")],
            ),
        ];
        for (txt, want) in cases {
            assert_eq!(rec(&[txt]).map(|r| r.rua), Ok(want.clone()), "{txt}");
        }
    }

    #[test]
    fn several_records_or_a_bad_one_mean_none() {
        let cases: &[(&[&str], RecordError)] = &[
            (&[], RecordError::None),
            (&["v=spf1 -all"], RecordError::None),
            // Not followed by ';' is not the version (and not a TLSRPT record).
            (
                &["v=TLSRPTv10; rua=mailto:r@example.com"],
                RecordError::None,
            ),
            (&["v=tlsrptv1; rua=mailto:r@example.com"], RecordError::None),
            (
                &[
                    "v=TLSRPTv1; rua=mailto:a@example.com",
                    "v=TLSRPTv1; rua=mailto:b@example.com",
                ],
                RecordError::Several(2),
            ),
            (&["v=TLSRPTv1;"], RecordError::Syntax("no rua= field")),
            (&["v=TLSRPTv1; ext=1"], RecordError::Syntax("no rua= field")),
            (
                &["v=TLSRPTv1; rua="],
                RecordError::Syntax("malformed URI in rua="),
            ),
            (
                &["v=TLSRPTv1; rua=mailto:a@x.example; rua=mailto:b@x.example"],
                RecordError::Syntax("rua= given twice"),
            ),
            (
                &["v=TLSRPTv1;; rua=mailto:a@x.example"],
                RecordError::Syntax("empty field"),
            ),
            (
                &["v=TLSRPTv1; rua"],
                RecordError::Syntax("field without '='"),
            ),
            (
                &["v=TLSRPTv1; rua=mailto:nobody"],
                RecordError::Syntax("mailto: without local@domain"),
            ),
            (
                &["v=TLSRPTv1; rua=https:/x"],
                RecordError::Syntax("https: URI without //host"),
            ),
            (
                &["v=TLSRPTv1; rua=mailto:a%zz@x.example"],
                RecordError::Syntax("bad percent-encoding in mailto:"),
            ),
            (
                &["v=TLSRPTv1; rua=ftp://x.example/"],
                RecordError::NoUsableAddress,
            ),
            (
                &["v=TLSRPTv1; rua=mailto:a@x.example; b@d=1"],
                RecordError::Syntax("malformed extension field"),
            ),
        ];
        for (txts, want) in cases {
            assert_eq!(rec(txts), Err(want.clone()), "{txts:?}");
        }
    }

    #[test]
    fn other_txt_records_beside_the_one_are_discarded() {
        let r = rec(&[
            "v=spf1 -all",
            "v=TLSRPTv1; rua=mailto:r@example.com",
            "hello",
        ])
        .unwrap();
        assert_eq!(r.rua, vec![mailto("r@example.com")]);
    }

    #[test]
    fn no_control_character_in_a_mailto_address_even_percent_encoded() {
        for txt in [
            "v=TLSRPTv1; rua=mailto:a%7F@x.example",
            "v=TLSRPTv1; rua=mailto:a@x.example%7f",
            "v=TLSRPTv1; rua=mailto:a%0D%0A@x.example",
            "v=TLSRPTv1; rua=mailto:a%00@x.example",
            "v=TLSRPTv1; rua=mailto:%3Ca@x.example%3E",
        ] {
            assert_eq!(
                rec(&[txt]),
                Err(RecordError::Syntax("malformed mailto: address")),
                "{txt}"
            );
        }
    }

    #[test]
    fn record_name_is_under_smtp_tls() {
        assert_eq!(record_name("example.com."), "_smtp._tls.example.com");
    }
}
