//! Client-side command formatting: what delivery writes to a destination server.
//!
//! ESMTP parameters are sent only when the server advertised the extension in its
//! EHLO reply ([`Capabilities`]). This module does not talk to sockets or decide what
//! to do when a command is refused.

use crate::ehlo::Capabilities;
use crate::envelope::{BodyType, Envelope, Recipient, Ret};
use crate::xtext;

pub const DATA: &[u8] = b"DATA\r\n";
pub const QUIT: &[u8] = b"QUIT\r\n";
pub const RSET: &[u8] = b"RSET\r\n";
pub const NOOP: &[u8] = b"NOOP\r\n";
pub const STARTTLS: &[u8] = b"STARTTLS\r\n";

/// Why a command cannot be sent to this server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientCommandError {
    /// RFC 6531 §3.2: a message with non-ASCII addresses needs a server that
    /// advertises SMTPUTF8; sending it otherwise is not allowed (bounce, 5.6.7).
    #[error("address {0:?} needs SMTPUTF8, which the server does not offer")]
    SmtpUtf8Required(String),
    /// RFC 1870 §6: the message exceeds the server's declared fixed maximum (5.3.4).
    #[error("message of {size} octets exceeds the server's limit of {limit}")]
    TooBig { size: u64, limit: u64 },
    /// A stored address with a control character or angle bracket (never sent).
    #[error("address {0:?} cannot be sent in an SMTP command")]
    InvalidAddress(String),
}

impl ClientCommandError {
    /// The RFC 3463 status for a DSN: all of these are permanent for this server.
    pub fn status(&self) -> &'static str {
        match self {
            ClientCommandError::SmtpUtf8Required(_) => "5.6.7",
            ClientCommandError::TooBig { .. } => "5.3.4",
            ClientCommandError::InvalidAddress(_) => "5.1.3",
        }
    }
}

/// `EHLO domain`.
pub fn ehlo(domain: &str) -> Vec<u8> {
    format!("EHLO {domain}\r\n").into_bytes()
}

/// `HELO domain`.
pub fn helo(domain: &str) -> Vec<u8> {
    format!("HELO {domain}\r\n").into_bytes()
}

fn check_address(address: &str) -> Result<(), ClientCommandError> {
    // A space is only possible inside a quoted local part.
    let bad_char =
        |c: char| c.is_control() || c == '<' || c == '>' || (c == ' ' && !address.starts_with('"'));
    if address.chars().any(bad_char) {
        return Err(ClientCommandError::InvalidAddress(address.to_string()));
    }
    Ok(())
}

/// `MAIL FROM:<sender> [SIZE=n] [BODY=8BITMIME] [SMTPUTF8] [RET=..] [ENVID=..]`.
///
/// `size` is the size of the message about to be sent. `SMTPUTF8` is sent when the
/// envelope asks for it and the server offers it; if the server does not, the command
/// is still possible as long as `addresses` (sender plus the recipients of this
/// transaction) are all ASCII.
pub fn mail_from(
    envelope: &Envelope,
    recipients: &[&Recipient],
    caps: &Capabilities,
    size: Option<u64>,
) -> Result<Vec<u8>, ClientCommandError> {
    check_address(&envelope.sender)?;
    if envelope.smtputf8 && !caps.smtputf8 {
        let non_ascii = std::iter::once(envelope.sender.as_str())
            .chain(recipients.iter().map(|r| r.address.as_str()))
            .find(|a| !a.is_ascii());
        if let Some(a) = non_ascii {
            return Err(ClientCommandError::SmtpUtf8Required(a.to_string()));
        }
    }
    let mut cmd = format!("MAIL FROM:<{}>", envelope.sender);
    if let Some(size) = size {
        if let Some(limit) = caps.size_limit() {
            if size > limit {
                return Err(ClientCommandError::TooBig { size, limit });
            }
        }
        if caps.size.is_some() {
            cmd.push_str(&format!(" SIZE={size}"));
        }
    }
    if envelope.body == BodyType::EightBitMime && caps.eight_bit_mime {
        cmd.push_str(" BODY=8BITMIME");
    }
    if envelope.smtputf8 && caps.smtputf8 {
        cmd.push_str(" SMTPUTF8");
    }
    if caps.dsn {
        match envelope.ret {
            Some(Ret::Full) => cmd.push_str(" RET=FULL"),
            Some(Ret::Hdrs) => cmd.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &envelope.envid {
            cmd.push_str(" ENVID=");
            cmd.push_str(&xtext::encode(envid));
        }
    }
    cmd.push_str("\r\n");
    Ok(cmd.into_bytes())
}

/// `RCPT TO:<address> [NOTIFY=..] [ORCPT=type;xtext]` (DSN parameters only when the
/// server offers DSN).
pub fn rcpt_to(recipient: &Recipient, caps: &Capabilities) -> Result<Vec<u8>, ClientCommandError> {
    check_address(&recipient.address)?;
    let mut cmd = format!("RCPT TO:<{}>", recipient.address);
    if caps.dsn {
        if let Some(n) = recipient.notify {
            cmd.push_str(" NOTIFY=");
            if n.is_never() {
                cmd.push_str("NEVER");
            } else {
                let words: Vec<&str> = [
                    (n.success, "SUCCESS"),
                    (n.failure, "FAILURE"),
                    (n.delay, "DELAY"),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, w)| *w)
                .collect();
                cmd.push_str(&words.join(","));
            }
        }
        if let Some(orcpt) = &recipient.orcpt {
            // RFC 3461 §4.2: "ORCPT=" addr-type ";" xtext
            let (kind, addr) = orcpt.split_once(';').unwrap_or(("rfc822", orcpt.as_str()));
            cmd.push_str(&format!(" ORCPT={};{}", kind, xtext::encode(addr)));
        }
    }
    cmd.push_str("\r\n");
    Ok(cmd.into_bytes())
}

/// Whether the header section of `message` (up to the first empty line) holds a
/// non-ASCII byte: such a message needs SMTPUTF8 (RFC 6532 §3, RFC 6531 §3.4), so at a
/// server that does not offer it the message bounces (5.6.7).
pub fn headers_need_utf8(message: &[u8]) -> bool {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(message.len());
    !message[..end].is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Notify;

    fn env() -> Envelope {
        Envelope {
            sender: "a@example.org".into(),
            body: BodyType::EightBitMime,
            smtputf8: false,
            ret: Some(Ret::Hdrs),
            envid: Some("id 1+2".into()),
            recipients: vec![],
        }
    }

    fn rcpt(address: &str) -> Recipient {
        Recipient {
            address: address.into(),
            notify: Some(Notify {
                success: true,
                failure: true,
                delay: false,
            }),
            orcpt: Some("rfc822;b+x@example.com".into()),
        }
    }

    fn all_caps() -> Capabilities {
        Capabilities {
            size: Some(1000),
            eight_bit_mime: true,
            smtputf8: true,
            dsn: true,
            ..Default::default()
        }
    }

    fn s(r: Result<Vec<u8>, ClientCommandError>) -> String {
        String::from_utf8(r.unwrap()).unwrap()
    }

    #[test]
    fn mail_from_with_everything() {
        assert_eq!(
            s(mail_from(&env(), &[], &all_caps(), Some(100))),
            "MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=id+201+2B2\r\n"
        );
    }

    #[test]
    fn mail_from_without_extensions() {
        assert_eq!(
            s(mail_from(&env(), &[], &Capabilities::default(), Some(100))),
            "MAIL FROM:<a@example.org>\r\n"
        );
        let mut e = env();
        e.sender = String::new();
        assert_eq!(
            s(mail_from(&e, &[], &Capabilities::default(), None)),
            "MAIL FROM:<>\r\n"
        );
    }

    #[test]
    fn mail_from_limits() {
        assert_eq!(
            mail_from(&env(), &[], &all_caps(), Some(1001)),
            Err(ClientCommandError::TooBig {
                size: 1001,
                limit: 1000
            })
        );
        let mut e = env();
        e.smtputf8 = true;
        let r = rcpt("ü@example.com");
        assert_eq!(
            mail_from(&e, &[&r], &Capabilities::default(), None),
            Err(ClientCommandError::SmtpUtf8Required("ü@example.com".into()))
        );
        // SMTPUTF8 requested but every address ASCII: send without it.
        let r = rcpt("u@example.com");
        assert_eq!(
            s(mail_from(&e, &[&r], &Capabilities::default(), None)),
            "MAIL FROM:<a@example.org>\r\n"
        );
        assert!(s(mail_from(&e, &[&r], &all_caps(), None)).contains(" SMTPUTF8"));
        e.sender = "a\r\nRCPT TO:<x@y>".into();
        assert!(matches!(
            mail_from(&e, &[], &all_caps(), None),
            Err(ClientCommandError::InvalidAddress(_))
        ));
    }

    #[test]
    fn rcpt_to_dsn() {
        assert_eq!(
            s(rcpt_to(&rcpt("b@example.com"), &all_caps())),
            "RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.com\r\n"
        );
        assert_eq!(
            s(rcpt_to(&rcpt("b@example.com"), &Capabilities::default())),
            "RCPT TO:<b@example.com>\r\n"
        );
        let mut r = rcpt("b@example.com");
        r.notify = Some(Notify::NEVER);
        r.orcpt = None;
        assert_eq!(
            s(rcpt_to(&r, &all_caps())),
            "RCPT TO:<b@example.com> NOTIFY=NEVER\r\n"
        );
        assert_eq!(s(Ok(ehlo("relay.example"))), "EHLO relay.example\r\n");
    }
}

#[cfg(test)]
mod utf8_header_tests {
    use super::headers_need_utf8;

    #[test]
    fn only_the_header_section_counts() {
        assert!(headers_need_utf8(
            "Subject: caf\u{e9}\r\n\r\nbody".as_bytes()
        ));
        assert!(!headers_need_utf8(
            "Subject: cafe\r\n\r\nbod\u{e9}".as_bytes()
        ));
        assert!(!headers_need_utf8(b"Subject: x\r\n\r\n"));
        assert!(headers_need_utf8("X: \u{e9}".as_bytes()));
    }
}
