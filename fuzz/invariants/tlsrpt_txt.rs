//! The TLSRPT policy record at `_smtp._tls.<domain>` (RFC 8460 §3).
//!
//! - The record set: the outcome does not depend on the order of the TXT records, and
//!   discarding those that do not begin with `v=TLSRPTv1;` (which §3 tells the sender
//!   to discard) changes nothing; a record is accepted only if exactly one begins so.
//! - An accepted record has at least one destination; every `mailto:` is `local@domain`
//!   with both parts non-empty and no space, control character or angle bracket (it
//!   becomes an SMTP recipient), every `https:` is `https://host…` with a host and no
//!   space, control character, `,` or `;`.
//! - Round trip: the destinations written back as a record (`mailto:` addresses
//!   percent-encoded, RFC 6068 §2), in the compact form and with white space around
//!   every delimiter and a trailing `;`, parse to the same destinations.
//!
//! Input: TXT records separated by NUL (lossy UTF-8, as the resolver hands them over).
//!
//! Shared by the fuzz target `tlsrpt_txt` and the corpus replay in mxgate-tlsrpt's
//! tests.

use mxgate_tlsrpt::record::{parse_record, parse_records, Destination};

/// `v=TLSRPTv1` then `*WSP ";"` (RFC 8460 §3, `tlsrpt-version field-delim`).
fn begins_with_version(txt: &str) -> bool {
    txt.strip_prefix("v=TLSRPTv1")
        .is_some_and(|rest| rest.trim_start_matches([' ', '\t']).starts_with(';'))
}

fn percent_encode(addr: &str) -> String {
    let mut out = String::new();
    for b in addr.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'-' | b'_' | b'+') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn format_uri(d: &Destination) -> String {
    match d {
        Destination::Mailto(addr) => format!("mailto:{}", percent_encode(addr)),
        Destination::Https(url) => url.clone(),
    }
}

fn check_destination(d: &Destination) {
    match d {
        Destination::Mailto(addr) => {
            let (local, domain) = addr.rsplit_once('@').expect("mailto: without @");
            assert!(!local.is_empty() && !domain.is_empty(), "{addr:?}");
            assert!(
                !addr
                    .bytes()
                    .any(|b| b <= b' ' || b == 0x7f || b == b'<' || b == b'>'),
                "mailto: address unfit for RCPT TO: {addr:?}"
            );
        }
        Destination::Https(url) => {
            let (scheme, rest) = url.split_once(':').expect("https: without scheme");
            assert!(scheme.eq_ignore_ascii_case("https"), "{url:?}");
            let host = rest.strip_prefix("//").expect("https: without //");
            assert!(!host.is_empty() && !host.starts_with('/'), "{url:?}");
            assert!(
                !url.bytes()
                    .any(|b| b <= b' ' || b == 0x7f || b == b',' || b == b';'),
                "{url:?}"
            );
        }
    }
}

pub fn check(data: &[u8]) {
    let txts: Vec<String> = data
        .split(|&b| b == 0)
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    let result = parse_records(&txts);

    let mut reversed = txts.clone();
    reversed.reverse();
    assert_eq!(parse_records(&reversed), result, "depends on record order");

    let candidates: Vec<String> = txts
        .iter()
        .filter(|t| begins_with_version(t))
        .cloned()
        .collect();
    assert_eq!(
        parse_records(&candidates),
        result,
        "discarding non-TLSRPT records changed the outcome"
    );
    if let [one] = candidates.as_slice() {
        assert_eq!(parse_record(one), result);
    }

    let Ok(record) = result else {
        return;
    };
    assert_eq!(candidates.len(), 1);
    assert!(!record.rua.is_empty(), "accepted without a destination");
    for d in &record.rua {
        check_destination(d);
    }

    let uris: Vec<String> = record.rua.iter().map(format_uri).collect();
    let compact = format!("v=TLSRPTv1;rua={}", uris.join(","));
    let spaced = format!("v=TLSRPTv1 ;\trua={} ; ", uris.join(" ,\t"));
    for formatted in [compact, spaced] {
        let again = parse_records(std::slice::from_ref(&formatted))
            .unwrap_or_else(|e| panic!("{formatted:?} does not parse again: {e}"));
        assert_eq!(again, record, "{formatted:?}");
    }
}
