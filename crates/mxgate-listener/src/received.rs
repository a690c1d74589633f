//! The `Received:` trace header the listener prepends (RFC 5321 §4.4) and the RFC 5322
//! date it carries. Pure functions: the caller passes the time.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use mxgate_smtp::date::UtcDateTime;

/// What the `with` clause names (RFC 5321 §4.4, RFC 3848, RFC 6531 §3.7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HELO.
    Smtp,
    /// EHLO.
    Esmtp,
    /// EHLO with `SMTPUTF8` on MAIL.
    Utf8Smtp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "SMTP",
            Protocol::Esmtp => "ESMTP",
            Protocol::Utf8Smtp => "UTF8SMTP",
        }
    }
}

/// `Received: from HELO ([IP])\r\n\tby HOST (mxgate) with PROTO id QUEUEID [for <rcpt>];\r\n\tDATE\r\n`.
///
/// RFC 5321 §4.4: "When an SMTP server receives a message for delivery or further
/// processing, it MUST insert trace ("time stamp" or "Received") information at the
/// beginning of the message content". Its `Opt-info` clauses come in the RFC's order
/// (`with`, `id`, `for`); `id` is the queue id (`mxgate queue show ID`, the delivery
/// log's `id=`), as Postfix names its own. The `for` clause names the recipient only
/// when there is exactly one, so a message to many does not disclose the others.
pub fn received_header(
    helo: &str,
    ip: IpAddr,
    hostname: &str,
    protocol: Protocol,
    queue_id: &str,
    single_recipient: Option<&str>,
    now: SystemTime,
) -> String {
    let literal = match ip.to_canonical() {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    };
    let mut h = format!(
        "Received: from {helo} ({literal})\r\n\tby {hostname} (mxgate) with {} id {queue_id}",
        protocol.as_str()
    );
    if let Some(rcpt) = single_recipient {
        h.push_str(&format!(" for <{rcpt}>"));
    }
    h.push_str(";\r\n\t");
    h.push_str(&rfc5322_date(now));
    h.push_str("\r\n");
    h
}

/// RFC 5322 §3.3 date-time in UTC: `Sun, 22 Nov 2026 13:34:28 +0000`.
pub fn rfc5322_date(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = UtcDateTime::from_unix(i64::try_from(secs).unwrap_or(i64::MAX));
    format!(
        "{}, {} {} {} {} +0000",
        t.weekday_name(),
        t.day,
        t.month_name(),
        t.year,
        t.time_of_day()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(at(0)), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(at(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(at(1_795_354_468)),
            "Sun, 22 Nov 2026 13:34:28 +0000"
        );
        assert_eq!(
            rfc5322_date(at(4_133_980_799)),
            "Fri, 31 Dec 2100 23:59:59 +0000"
        );
    }

    #[test]
    fn header() {
        let h = received_header(
            "client.example",
            "127.0.0.1".parse().unwrap(),
            "relay.example",
            Protocol::Esmtp,
            "1A2400B257D00000",
            Some("b@example.com"),
            at(0),
        );
        assert_eq!(
            h,
            "Received: from client.example ([127.0.0.1])\r\n\tby relay.example (mxgate) with ESMTP \
             id 1A2400B257D00000 for <b@example.com>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        let h = received_header(
            "c",
            "::1".parse().unwrap(),
            "r",
            Protocol::Utf8Smtp,
            "Q1",
            None,
            at(0),
        );
        assert!(h.starts_with(
            "Received: from c ([IPv6:::1])\r\n\tby r (mxgate) with UTF8SMTP id Q1;\r\n"
        ));
    }
}
