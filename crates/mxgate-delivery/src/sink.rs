//! Observers of delivery sessions (TLS reporting, RFC 8460): one [`SessionEvent`] per
//! MX session that was held to a TLS requirement, or per MX the plan excluded.
//!
//! Delivery only describes what happened; what is counted and how is the observer's
//! business (the binary maps these events into TLS-RPT records).

use std::net::SocketAddr;

use mxgate_policy::{DeliveryPlan, TlsRequirement};

use crate::decide::TlsPolicyFailure;
use crate::session::TlsFacts;

/// How one session fared.
#[derive(Debug, Clone, Copy)]
pub enum SessionResultRef<'a> {
    /// The session reached the mail transaction under its requirement.
    Established(&'a TlsFacts),
    /// The requirement was not met on this MX.
    TlsPolicy(&'a TlsPolicyFailure),
    /// The plan excluded this MX (e.g. not in the MTA-STS policy, TLSA lookup failed).
    Excluded(&'a str),
}

/// One session of one delivery attempt.
#[derive(Debug, Clone, Copy)]
pub struct SessionEvent<'a> {
    pub plan: &'a DeliveryPlan,
    pub mx_host: &'a str,
    /// `None` when the MX was never dialled.
    pub addr: Option<SocketAddr>,
    pub requirement: Option<&'a TlsRequirement>,
    pub result: SessionResultRef<'a>,
    /// The message carries `TLS-Report-Domain:` (it is a TLS-RPT report, RFC 8460
    /// §5.3): observers must not count it (no report loops).
    pub carries_tls_report: bool,
}

/// Receives every [`SessionEvent`]; must not block (it runs on the delivery path).
pub trait SessionSink: Send + Sync + 'static {
    fn session(&self, event: &SessionEvent<'_>);
}

/// Whether the header section of `message` has a field `name` (case-insensitive).
pub fn has_header(message: &[u8], name: &str) -> bool {
    header_value(message, name).is_some()
}

/// The (unfolded, trimmed) value of the first header field `name`.
pub fn header_value(message: &[u8], name: &str) -> Option<String> {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |p| p + 2);
    let head = &message[..end];
    let mut lines = head.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(name.as_bytes()) {
            continue;
        }
        let mut value = String::from_utf8_lossy(&line[colon + 1..]).into_owned();
        while let Some(next) = lines.peek() {
            if next.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                let next = next.strip_suffix(b"\r").unwrap_or(next);
                value.push_str(&String::from_utf8_lossy(next));
                lines.next();
            } else {
                break;
            }
        }
        return Some(value.trim().to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_only_in_the_header_section() {
        let m = b"Subject: x\r\ntls-report-domain: a.example\r\nTLS-Required:\r\n  No\r\n\r\nTLS-Report-Submitter: body\r\n";
        assert!(has_header(m, "TLS-Report-Domain"));
        assert_eq!(header_value(m, "tls-required").as_deref(), Some("No"));
        assert!(!has_header(m, "TLS-Report-Submitter"));
        assert!(!has_header(
            b"X-TLS-Report-Domain: a\r\n\r\n",
            "TLS-Report-Domain"
        ));
    }
}
