//! The report mail (RFC 8460 §5.3): a `multipart/report; report-type="tlsrpt"`
//! message (RFC 6522) with a human-readable part and the gzip-compressed report as an
//! `application/tlsrpt+gzip` part, `TLS-Report-Domain:`, `TLS-Report-Submitter:`, and
//! `TLS-Required: No` (RFC 8689 §5) so that a report reaches a domain whose own TLS is
//! broken — which is what the report is about.
//!
//! Pure: builds bytes (CRLF line ends, 7-bit); signing is in `dkim`.

use base64::Engine;

use crate::report::{file_name, Report, Submitter};
use crate::time::rfc5322;

/// What the mail needs besides the report.
pub struct MailInput<'a> {
    pub submitter: &'a Submitter,
    /// `From:` and envelope sender (`tlsrpt.from`).
    pub from: &'a str,
    /// The `mailto:` address.
    pub to: &'a str,
    pub policy_domain: &'a str,
    pub report: &'a Report,
    /// The compressed report.
    pub gzip: &'a [u8],
    pub period_start: u64,
    pub period_end: u64,
    /// Unix seconds for `Date:`.
    pub now: u64,
}

/// Header names a report carries; the DKIM signer signs these.
pub const SIGNED_HEADERS: &[&str] = &[
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "tls-report-domain",
    "tls-report-submitter",
    "tls-required",
];

/// Removes CR, LF and other control characters so no value can start a new header.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// The whole message, CRLF line ends, unsigned.
pub fn build(input: &MailInput<'_>) -> Vec<u8> {
    let submitter = clean(&input.submitter.domain);
    let domain = clean(input.policy_domain);
    let id = clean(&input.report.report_id);
    let boundary = format!("tlsrpt-{:016x}", rand::random::<u64>());
    let name = file_name(&submitter, &domain, input.period_start, input.period_end);
    let mut out = String::new();
    let mut header = |name: &str, value: &str| {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    };
    header("From", &format!("<{}>", clean(input.from)));
    header("To", &format!("<{}>", clean(input.to)));
    // RFC 8460 §5.3: "Subject: Report Domain: <domain> Submitter: <submitter>
    // Report-ID: <report-id>"
    header(
        "Subject",
        &format!("Report Domain: {domain} Submitter: {submitter} Report-ID: <{id}>"),
    );
    header("Date", &rfc5322(input.now));
    header(
        "Message-ID",
        &format!("<{:016x}.{id}>", rand::random::<u64>()),
    );
    header("MIME-Version", "1.0");
    header("TLS-Report-Domain", &domain);
    header("TLS-Report-Submitter", &submitter);
    header("TLS-Required", "No");
    header(
        "Content-Type",
        &format!("multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"{boundary}\""),
    );
    out.push_str("\r\n");
    out.push_str("This is a MIME-formatted message.\r\n\r\n");
    out.push_str(&format!("--{boundary}\r\n"));
    out.push_str("Content-Type: text/plain; charset=us-ascii\r\n");
    out.push_str("Content-Transfer-Encoding: 7bit\r\n\r\n");
    let sessions: u64 = input
        .report
        .policies
        .iter()
        .map(|p| p.summary.total_successful_session_count + p.summary.total_failure_session_count)
        .sum();
    let failures: u64 = input
        .report
        .policies
        .iter()
        .map(|p| p.summary.total_failure_session_count)
        .sum();
    out.push_str(&format!(
        "This is an aggregate SMTP TLS report (RFC 8460) for {domain} from {submitter}:\r\n\
         {sessions} delivery sessions from {} to {}, {failures} of them failed.\r\n\
         The report is attached as {name}.\r\n\r\n",
        input.report.date_range.start_datetime, input.report.date_range.end_datetime
    ));
    out.push_str(&format!("--{boundary}\r\n"));
    out.push_str("Content-Type: application/tlsrpt+gzip\r\n");
    out.push_str("Content-Transfer-Encoding: base64\r\n");
    out.push_str(&format!(
        "Content-Disposition: attachment;\r\n\tfilename=\"{name}\"\r\n\r\n"
    ));
    let b64 = base64::engine::general_purpose::STANDARD.encode(input.gzip);
    for chunk in b64.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    out.into_bytes()
}

/// Whether a message is one of our reports (no report loops: its delivery is never
/// counted). RFC 8460 §5.3 names `TLS-Report-Domain:` as the marker.
pub fn is_report(message: &[u8]) -> bool {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |p| p + 2);
    message[..end]
        .split(|&b| b == b'\n')
        .any(|line| line.len() > 18 && line[..18].eq_ignore_ascii_case(b"tls-report-domain:"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::report::build as build_report;
    use std::io::Read;

    #[test]
    fn the_mail_has_the_rfc_8460_headers_and_part() {
        let sub = Submitter {
            organization_name: "o".into(),
            contact_info: "c".into(),
            domain: "relay.example".into(),
        };
        let report = build_report(&sub, "dest.example", 0, 86400, "ID1@relay.example", &[]);
        let gz = crate::report::gzip_json(&report);
        let msg = build(&MailInput {
            submitter: &sub,
            from: "noreply-tlsrpt@relay.example",
            to: "tlsrpt@dest.example\r\nBcc: x@evil.example",
            policy_domain: "dest.example",
            report: &report,
            gzip: &gz,
            period_start: 0,
            period_end: 86400,
            now: 86400,
        });
        let text = String::from_utf8(msg.clone()).unwrap();
        assert!(text.contains("\r\nSubject: Report Domain: dest.example Submitter: relay.example Report-ID: <ID1@relay.example>\r\n"));
        assert!(text.contains("\r\nTLS-Report-Domain: dest.example\r\n"));
        assert!(text.contains("\r\nTLS-Report-Submitter: relay.example\r\n"));
        assert!(text.contains("\r\nTLS-Required: No\r\n"));
        assert!(text.contains("multipart/report; report-type=\"tlsrpt\""));
        assert!(text.contains("Content-Type: application/tlsrpt+gzip\r\n"));
        assert!(text.contains("filename=\"relay.example!dest.example!0!86400.json.gz\""));
        assert!(!text.contains("\r\nBcc:"), "no header injection");
        assert!(!text.split("\r\n").any(|l| l.len() > 998));
        assert!(is_report(&msg));
        assert!(!is_report(
            b"Subject: hi\r\n\r\nTLS-Report-Domain: in the body\r\n"
        ));
        // The attachment decodes to the report.
        let b64: String = text
            .split("Content-Disposition")
            .nth(1)
            .unwrap()
            .split("\r\n\r\n")
            .nth(1)
            .unwrap()
            .split("--")
            .next()
            .unwrap()
            .replace("\r\n", "");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let mut json = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut json)
            .unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    }
}
