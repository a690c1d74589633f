//! Delivery Status Notifications (RFC 3464) for bounced recipients (`Action: failed`)
//! and for recipients still being retried after `queue.delay_warning`
//! (`Action: delayed`), honouring the DSN parameters of RFC 3461 (`NOTIFY`, `RET`,
//! `ENVID`, `ORCPT`).
//!
//! [`build_dsn`] is pure: it takes the original envelope and message, the recipients to
//! report, the [`DsnAction`] and the time, and returns the bytes of the report. It does
//! not decide whether a DSN is due beyond [`wants_failure_dsn`] and [`wants_delay_dsn`]
//! (the scheduler decides when), and it does not store or send it.

use mxgate_smtp::date::UtcDateTime;
use mxgate_smtp::{Envelope, Ret};

use crate::spool::BounceReason;
use crate::transport::{DeliveryFailure, QueueId};

/// One recipient to report as failed (or, with [`DsnAction::Delayed`], as delayed).
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    /// Index into the envelope's recipients.
    pub index: usize,
    /// The last error (for a delayed recipient, the last deferral).
    pub failure: DeliveryFailure,
    /// Why it bounced; ignored in a [`DsnAction::Delayed`] report.
    pub reason: BounceReason,
    /// Unix ms of the last delivery attempt, if there was one.
    pub last_attempt_ms: Option<u64>,
}

/// What a DSN reports about its recipients (RFC 3464 §2.3.3 `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// "failed": the recipients were bounced; the report ends the message's story.
    Failed,
    /// "delayed": RFC 3464 §2.3.3: "the reporting MTA has so far been unable to deliver
    /// or relay the message, but it will continue to attempt to do so".
    Delayed {
        /// Unix ms after which mxgate gives up (arrival + `queue.max_age`).
        will_retry_until_ms: u64,
    },
}

/// Everything a DSN is made of.
#[derive(Debug)]
pub struct DsnInput<'a> {
    pub action: DsnAction,
    /// `server.hostname`
    pub reporting_mta: &'a str,
    pub queue_id: &'a QueueId,
    pub envelope: &'a Envelope,
    pub arrival_ms: u64,
    pub now_ms: u64,
    pub failed: &'a [FailedRecipient],
    /// The original message as stored.
    pub original: &'a [u8],
    /// MIME boundary; must not occur in `original` (random in practice).
    pub boundary: &'a str,
}

/// Whether recipient `index` asked for a failure report and the message can have one.
pub fn wants_failure_dsn(envelope: &Envelope, index: usize) -> bool {
    // RFC 3461 §5.2.1: "a DSN MUST NOT be returned to the sender if the MAIL command's
    // reverse-path is empty" (the null sender).
    if envelope.sender.is_empty() {
        return false;
    }
    // RFC 3461 §4.1: "If no NOTIFY parameter was specified, the MTA ... SHOULD
    // behave as if NOTIFY=FAILURE,DELAY had been specified" — so failure is reported.
    envelope
        .recipients
        .get(index)
        .is_some_and(|r| r.notify.is_none_or(|n| n.failure))
}

/// Whether recipient `index` asked for a delay report (`Action: delayed`) and the
/// message can have one.
///
/// RFC 3461 §4.1: "For compatibility with SMTP clients that do not use the NOTIFY
/// facility, the absence of a NOTIFY parameter in a RCPT command may be interpreted as
/// either NOTIFY=FAILURE or NOTIFY=FAILURE,DELAY." mxgate takes NOTIFY=FAILURE,DELAY
/// (as Postfix does with `delay_warning_time`): a recipient without NOTIFY gets delay
/// warnings, one whose NOTIFY lacks DELAY (including NOTIFY=NEVER) does not.
pub fn wants_delay_dsn(envelope: &Envelope, index: usize) -> bool {
    // RFC 3461 §5.2.1: "a DSN MUST NOT be returned to the sender if the MAIL command's
    // reverse-path is empty".
    if envelope.sender.is_empty() {
        return false;
    }
    envelope
        .recipients
        .get(index)
        .is_some_and(|r| r.notify.is_none_or(|n| n.delay))
}

/// The RFC 5322 date of unix milliseconds, in UTC.
pub fn rfc5322_date(ms: u64) -> String {
    UtcDateTime::from_unix(i64::try_from(ms / 1000).unwrap_or(i64::MAX)).rfc5322()
}

/// One line of header or DSN field text: control characters (CR, LF, ...) become spaces
/// so nothing from the network can inject a header.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The `Status` of a reported recipient: the last error's detail with the class of the
/// action. RFC 3464 §2.3.3: "failed" — a failed recipient is reported with a permanent
/// (5.x.x) class even when the last attempt was a temporary failure (expiry); a
/// "delayed" one, still being retried, with the transient class (RFC 3463 §3.1:
/// "4.X.X Persistent Transient Failure").
fn report_status(status: &str, action: DsnAction) -> String {
    let class = match action {
        DsnAction::Failed => '5',
        DsnAction::Delayed { .. } => '4',
    };
    let parts: Vec<&str> = status.split('.').collect();
    let valid = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if valid {
        format!("{class}.{}.{}", parts[1], parts[2])
    } else {
        format!("{class}.0.0")
    }
}

/// The headers of a message: everything up to the first empty line.
fn headers_of(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => &message[..p + 2],
        None => message,
    }
}

fn human_reason(f: &FailedRecipient, action: DsnAction) -> String {
    let diag = clean(&f.failure.diagnostic);
    let security = f.failure.status.is_security();
    let what = if security {
        format!(
            "the TLS security level required for this destination could not be met, so the message was not \
             sent (mxgate never falls back to cleartext when TLS is required): {diag}"
        )
    } else if f.failure.remote {
        let host = f
            .failure
            .remote_mta
            .as_deref()
            .unwrap_or("the remote server");
        format!("host {} said: {diag}", clean(host))
    } else {
        diag
    };
    if let DsnAction::Delayed { .. } = action {
        return format!("delivery is delayed; the last problem was: {what}");
    }
    match f.reason {
        BounceReason::Rejected => what,
        BounceReason::Expired => {
            format!("delivery kept failing until the message expired; the last problem was: {what}")
        }
        BounceReason::Operator => format!("returned by the mail system administrator ({what})"),
    }
}

/// Builds the DSN message (RFC 3464 `multipart/report`).
pub fn build_dsn(input: &DsnInput<'_>) -> Vec<u8> {
    let host = clean(input.reporting_mta);
    let b = input.boundary;
    let env = input.envelope;
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n"
    ));
    out.push_str(&format!("To: <{}>\r\n", clean(&env.sender)));
    out.push_str(match input.action {
        DsnAction::Failed => "Subject: Undelivered Mail Returned to Sender\r\n",
        DsnAction::Delayed { .. } => "Subject: Delayed Mail (still being retried)\r\n",
    });
    out.push_str(&format!("Date: {}\r\n", rfc5322_date(input.now_ms)));
    out.push_str(&format!(
        "Message-ID: <{}.{}@{host}>\r\n",
        input.queue_id, b
    ));
    // RFC 3834 §5: automatic responses carry Auto-Submitted: auto-replied.
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{b}\"\r\n\r\n"
    ));
    out.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    // Part 1: for people.
    out.push_str(&format!("--{b}\r\nContent-Description: Notification\r\n"));
    out.push_str(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
    );
    out.push_str(&format!("This is the mail system at host {host}.\r\n\r\n"));
    match input.action {
        DsnAction::Failed => {
            out.push_str("Your message could not be delivered to one or more recipients.\r\n");
            out.push_str("It is attached below.\r\n\r\n");
        }
        DsnAction::Delayed {
            will_retry_until_ms,
        } => {
            out.push_str("Your message could not be delivered yet to one or more recipients.\r\n");
            out.push_str(&format!(
                "The mail system will keep trying until {}; you do not need to send it again.\r\n",
                rfc5322_date(will_retry_until_ms)
            ));
            out.push_str("Its headers are attached below.\r\n\r\n");
        }
    }
    for f in input.failed {
        let addr = env
            .recipients
            .get(f.index)
            .map(|r| clean(&r.address))
            .unwrap_or_default();
        out.push_str(&format!(
            "<{addr}>: {}\r\n\r\n",
            human_reason(f, input.action)
        ));
    }

    // Part 2: for machines (RFC 3464 §2.2 per-message, §2.3 per-recipient fields).
    out.push_str(&format!(
        "--{b}\r\nContent-Description: Delivery report\r\n"
    ));
    out.push_str("Content-Type: message/delivery-status\r\n\r\n");
    out.push_str(&format!("Reporting-MTA: dns; {host}\r\n"));
    out.push_str(&format!("X-Mxgate-Queue-ID: {}\r\n", input.queue_id));
    if let Some(envid) = &env.envid {
        out.push_str(&format!("Original-Envelope-Id: {}\r\n", clean(envid)));
    }
    out.push_str(&format!(
        "Arrival-Date: {}\r\n",
        rfc5322_date(input.arrival_ms)
    ));
    for f in input.failed {
        let Some(r) = env.recipients.get(f.index) else {
            continue;
        };
        out.push_str("\r\n");
        if let Some(orcpt) = &r.orcpt {
            let (kind, addr) = orcpt.split_once(';').unwrap_or(("rfc822", orcpt));
            out.push_str(&format!(
                "Original-Recipient: {}; {}\r\n",
                clean(kind.trim()),
                clean(addr.trim())
            ));
        }
        out.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            clean(&r.address)
        ));
        out.push_str(match input.action {
            DsnAction::Failed => "Action: failed\r\n",
            DsnAction::Delayed { .. } => "Action: delayed\r\n",
        });
        out.push_str(&format!(
            "Status: {}\r\n",
            report_status(&f.failure.status.to_string(), input.action)
        ));
        if let Some(mta) = &f.failure.remote_mta {
            out.push_str(&format!("Remote-MTA: dns; {}\r\n", clean(mta)));
        }
        let kind = if f.failure.remote { "smtp" } else { "x-mxgate" };
        out.push_str(&format!(
            "Diagnostic-Code: {kind}; {}\r\n",
            clean(&f.failure.diagnostic)
        ));
        if let Some(t) = f.last_attempt_ms {
            out.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc5322_date(t)));
        }
        // RFC 3464 §2.3.8: "For DSNs of type "delayed", the Will-Retry-Until field gives
        // the date after which the reporting MTA expects to abandon all attempts to
        // deliver the message to that recipient. The Will-Retry-Until field is optional
        // for "delay" DSNs, and MUST NOT appear in other DSNs."
        if let DsnAction::Delayed {
            will_retry_until_ms,
        } = input.action
        {
            out.push_str(&format!(
                "Will-Retry-Until: {}\r\n",
                rfc5322_date(will_retry_until_ms)
            ));
        }
    }
    out.push_str("\r\n");

    // Part 3: the original (RFC 3461 §4.3: RET=FULL the whole message, RET=HDRS or
    // absent the headers only). RET asks whether "the message should be included in any
    // failed DSN issued for this message transmission": a delay warning carries the
    // headers only, whatever RET says (the message is still on its way).
    let full = env.ret == Some(Ret::Full) && input.action == DsnAction::Failed;
    let mut bytes = out.into_bytes();
    if full {
        bytes.extend_from_slice(
            format!("--{b}\r\nContent-Description: Undelivered Message\r\nContent-Type: message/rfc822\r\n\r\n")
                .as_bytes(),
        );
        bytes.extend_from_slice(input.original);
    } else {
        bytes.extend_from_slice(
            format!(
                "--{b}\r\nContent-Description: Undelivered Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            )
            .as_bytes(),
        );
        bytes.extend_from_slice(headers_of(input.original));
    }
    if !bytes.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    bytes
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mxgate_smtp::{BodyType, Notify, Recipient};

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_354_456_000),
            "Sun, 22 Nov 2026 13:34:16 +0000"
        );
        assert_eq!(
            rfc5322_date(951_782_400_000),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
    }

    #[test]
    fn status_class_follows_the_action() {
        let failed = DsnAction::Failed;
        let delayed = DsnAction::Delayed {
            will_retry_until_ms: 0,
        };
        let rows = [
            ("4.4.7", failed, "5.4.7"),
            ("5.1.1", failed, "5.1.1"),
            ("garbage", failed, "5.0.0"),
            ("4.x.1", failed, "5.0.0"),
            ("4.7.5", delayed, "4.7.5"),
            ("5.7.1", delayed, "4.7.1"),
            ("garbage", delayed, "4.0.0"),
        ];
        for (status, action, want) in rows {
            assert_eq!(report_status(status, action), want, "{status} {action:?}");
        }
    }

    #[test]
    fn notify_rules() {
        let rcpt = |notify| Recipient {
            address: "b@example.com".into(),
            notify,
            orcpt: None,
        };
        let mut env = Envelope {
            sender: "a@example.net".into(),
            body: BodyType::SevenBit,
            smtputf8: false,
            ret: None,
            envid: None,
            recipients: vec![
                rcpt(None),
                rcpt(Some(Notify::NEVER)),
                rcpt(Some(Notify {
                    success: true,
                    failure: false,
                    delay: true,
                })),
                rcpt(Some(Notify {
                    success: false,
                    failure: true,
                    delay: false,
                })),
            ],
        };
        let got: Vec<bool> = (0..5).map(|i| wants_failure_dsn(&env, i)).collect();
        assert_eq!(got, [true, false, false, true, false]);
        // Absent NOTIFY means FAILURE,DELAY; NEVER and FAILURE alone exclude delays.
        let got: Vec<bool> = (0..5).map(|i| wants_delay_dsn(&env, i)).collect();
        assert_eq!(got, [true, false, true, false, false]);
        env.sender.clear();
        assert!(!wants_failure_dsn(&env, 0));
        assert!(!wants_delay_dsn(&env, 0));
    }

    #[test]
    fn delayed_report_fields() {
        let env = Envelope {
            sender: "a@example.net".into(),
            body: BodyType::SevenBit,
            smtputf8: false,
            ret: Some(Ret::Full),
            envid: Some("E1".into()),
            recipients: vec![Recipient {
                address: "b@example.com".into(),
                notify: None,
                orcpt: Some("rfc822;B@example.com".into()),
            }],
        };
        let failed = [FailedRecipient {
            index: 0,
            failure: DeliveryFailure {
                kind: crate::FailureKind::StarttlsNotOffered,
                status: mxgate_smtp::EnhancedStatus::transient(7, 5),
                remote_mta: None,
                diagnostic: "encrypt: STARTTLS not offered by mx.example.com".into(),
                remote: false,
            },
            reason: BounceReason::Expired,
            last_attempt_ms: Some(1_795_354_456_000),
        }];
        let id = QueueId("0193ABCDEF00001".into());
        let dsn = |action| {
            String::from_utf8(build_dsn(&DsnInput {
                action,
                reporting_mta: "relay.test",
                queue_id: &id,
                envelope: &env,
                arrival_ms: 1_795_354_000_000,
                now_ms: 1_795_354_456_000,
                failed: &failed,
                original: b"Subject: s\r\n\r\nthe body\r\n",
                boundary: "BOUNDARY",
            }))
            .unwrap()
        };
        let t = dsn(DsnAction::Delayed {
            will_retry_until_ms: 1_795_786_000_000,
        });
        assert!(t.contains("Subject: Delayed Mail (still being retried)\r\n"));
        assert!(t.contains("could not be delivered yet"), "{t}");
        assert!(
            t.contains("keep trying until Fri, 27 Nov 2026 13:26:40 +0000"),
            "{t}"
        );
        assert!(t.contains("<b@example.com>: delivery is delayed; the last problem was: the TLS security level required"), "{t}");
        assert!(t.contains(
            "Final-Recipient: rfc822; b@example.com\r\nAction: delayed\r\nStatus: 4.7.5\r\n"
        ));
        assert!(t.contains("Will-Retry-Until: Fri, 27 Nov 2026 13:26:40 +0000\r\n"));
        assert!(t.contains("Original-Envelope-Id: E1\r\n"));
        assert!(t.contains("Original-Recipient: rfc822; B@example.com\r\n"));
        assert!(t.contains("Content-Type: text/rfc822-headers"), "{t}");
        assert!(!t.contains("the body"), "RET=FULL is for failed DSNs only");
        assert!(!t.contains("expired"), "{t}");

        let t = dsn(DsnAction::Failed);
        assert!(t.contains("Action: failed\r\nStatus: 5.7.5\r\n"));
        assert!(
            !t.contains("Will-Retry-Until"),
            "MUST NOT appear in other DSNs"
        );
        assert!(t.contains("the body"), "RET=FULL");
    }
}
