//! What delivery tells the rest of mxgate about each session it tried: one
//! [`SessionReport`] per MX address dialled (and one per MX host the plan would not
//! dial), handed to an optional [`SessionSink`] the binary sets (TLS-RPT counters,
//! shadow-level checks).
//!
//! A report says whether the TLS requirement of the session was met, not whether the
//! mail was accepted: a session that reached `MAIL FROM` is a success even if the
//! server then refused a recipient (RFC 8460 §4.2 counts TLS sessions, not messages).
//!
//! Reports of messages that carry a `TLS-Report-Domain:` header (a TLS-RPT report
//! itself) are flagged [`SessionReport::is_tls_report`]: RFC 8460 §5.3 says such
//! sessions are not counted into reports, so no report loops arise.

use std::net::IpAddr;

use mxgate_config::Level;
use mxgate_policy::{PolicySource, TlsRequirement};
use mxgate_queue::FailureKind;

use crate::session::TlsFacts;

/// One delivery session (or one MX host skipped by policy) and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionReport {
    /// The destination (recipient) domain, lower-case.
    pub domain: String,
    /// The level applied to the destination (never `auto`).
    pub level: Level,
    /// Where the level came from.
    pub source: PolicySource,
    /// The MX host name dialled (or skipped).
    pub mx_host: String,
    /// The address dialled; `None` for an MX host the plan did not dial.
    pub mx_addr: Option<IpAddr>,
    /// Our side of the connection, when one was made.
    pub local_addr: Option<IpAddr>,
    /// The requirement the session ran under; `None` for a skipped MX host.
    pub requirement: Option<TlsRequirement>,
    /// TLS version, cipher and authentication, when TLS was established.
    pub tls: Option<TlsFacts>,
    /// The domain announces an MTA-STS policy that could not be fetched or validated
    /// (the plan's `mta_sts_failure`, as [`FailureKind::StsPolicyFetch`],
    /// [`FailureKind::StsPolicyInvalid`] or [`FailureKind::StsWebpkiInvalid`]): the
    /// session ran under the fallback level (RFC 8461 §5), and RFC 8460 §4.3.2.2 reports
    /// it as that policy failure.
    pub mta_sts_failure: Option<SessionFailure>,
    /// `Ok` when the session reached the mail transaction under its requirement;
    /// otherwise the failure's kind and a short sentence for people.
    pub result: Result<(), SessionFailure>,
    /// The message is a TLS-RPT report (`TLS-Report-Domain:` header): never count it
    /// into a report (RFC 8460 §5.3).
    pub is_tls_report: bool,
}

/// Why a session failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFailure {
    pub kind: FailureKind,
    /// `certificate for mx.example.com not valid: expired` — bounded, no Debug text.
    pub reason: String,
}

/// Receives a [`SessionReport`] after every session; set on
/// [`crate::Delivery::with_session_sink`]. Called on the delivery task: it must not
/// block (count, or hand off to a channel).
pub trait SessionSink: Send + Sync + 'static {
    fn session(&self, report: &SessionReport);
}

/// RFC 8460 §3 / §5.3: whether `message` has a `TLS-Report-Domain:` header (field
/// names are case-insensitive, RFC 5322 §1.2.2); only the header section is looked at.
pub fn is_tls_report(message: &[u8]) -> bool {
    const NAME: &[u8] = b"tls-report-domain";
    let mut rest = message;
    loop {
        // The header section ends at the first empty line.
        if rest.is_empty() || rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return false;
        }
        let line_end = memchr_lf(rest).map_or(rest.len(), |i| i + 1);
        let line = &rest[..line_end];
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = line[..colon].trim_ascii_end();
            if name.eq_ignore_ascii_case(NAME) {
                return true;
            }
        }
        rest = &rest[line_end..];
    }
}

/// RFC 8689 §5: whether `message` has `TLS-Required: No` (field name and value are
/// case-insensitive; "No" is the only value defined). Only the header section is
/// looked at; a folded value is unfolded.
pub fn tls_required_no(message: &[u8]) -> bool {
    const NAME: &[u8] = b"tls-required";
    let mut rest = message;
    while !(rest.is_empty() || rest.starts_with(b"\r\n") || rest.starts_with(b"\n")) {
        let line_end = memchr_lf(rest).map_or(rest.len(), |i| i + 1);
        let line = &rest[..line_end];
        rest = &rest[line_end..];
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].trim_ascii_end().eq_ignore_ascii_case(NAME) {
            continue;
        }
        let mut value = line[colon + 1..].to_vec();
        while rest.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            let end = memchr_lf(rest).map_or(rest.len(), |i| i + 1);
            value.extend_from_slice(&rest[..end]);
            rest = &rest[end..];
        }
        return value.trim_ascii().eq_ignore_ascii_case(b"no");
    }
    false
}

fn memchr_lf(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_required_no_is_read_from_the_header_section() {
        let rows: &[(&[u8], bool)] = &[
            (b"TLS-Required: No\r\n\r\nbody", true),
            (b"Subject: x\r\ntls-required:no\r\n\r\n", true),
            (b"TLS-Required:\r\n  NO \r\n\r\n", true),
            (b"TLS-Required: Yes\r\n\r\n", false),
            (b"TLS-Required: Noway\r\n\r\n", false),
            (b"Subject: x\r\n\r\nTLS-Required: No\r\n", false),
            (b"X-TLS-Required: No\r\n\r\n", false),
            (b"", false),
        ];
        for (msg, want) in rows {
            assert_eq!(
                tls_required_no(msg),
                *want,
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn tls_report_header_is_found_only_in_the_header_section() {
        let rows: &[(&[u8], bool)] = &[
            (
                b"From: a\r\nTLS-Report-Domain: example.com\r\n\r\nbody",
                true,
            ),
            (b"tls-report-domain:example.com\r\n\r\n", true),
            (b"Subject: x\r\nTLS-Report-Domain : e\r\n\r\n", true),
            (
                b"Subject: x\r\n\r\nTLS-Report-Domain: example.com\r\n",
                false,
            ),
            (b"Subject: TLS-Report-Domain: x\r\n\r\n", false),
            (b"X-TLS-Report-Domain: e\r\n\r\n", false),
            (b"Subject: x\r\n folded TLS-Report-Domain: e\r\n\r\n", false),
            (b"", false),
        ];
        for (msg, want) in rows {
            assert_eq!(
                is_tls_report(msg),
                *want,
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
    }
}
