//! The SMTP server session as a pure state machine: command lines in, replies out.
//!
//! [`Session`] knows HELO/EHLO, the transaction (MAIL, RCPTs) and the limits; it builds
//! the envelope and the message with its `Received:` header once DATA has been read.
//! It does no I/O, keeps no clock (the caller passes the time) and does not store the
//! message: the connection loop in [`crate::server`] does that.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use mxgate_queue::{QueueId, StoreError};
use mxgate_smtp::{
    parse_command, BodyType, Command, CommandError, DataError, DataOutcome, Envelope, LineError,
    MailFrom, Recipient, Reply,
};

use crate::received::{received_header, Protocol};
use crate::settings::ListenerSettings;

/// What the connection loop must do after a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this reply and read the next command.
    Reply(Reply),
    /// Send this `354` and read the message with a DATA reader.
    StartData(Reply),
    /// Send this reply and close the connection.
    Close(Reply),
}

#[derive(Debug)]
struct Transaction {
    mail: MailFrom,
    recipients: Vec<Recipient>,
}

/// One client session.
#[derive(Debug)]
pub struct Session {
    settings: Arc<ListenerSettings>,
    peer: IpAddr,
    /// The HELO/EHLO name and whether it was EHLO.
    helo: Option<(String, bool)>,
    tx: Option<Transaction>,
}

fn seq_error(text: &str) -> Action {
    Action::Reply(Reply::new(503, (5, 5, 1), text))
}

impl Session {
    pub fn new(settings: Arc<ListenerSettings>, peer: IpAddr) -> Self {
        Session {
            settings,
            peer,
            helo: None,
            tx: None,
        }
    }

    /// `220 HOSTNAME ESMTP mxgate`.
    pub fn greeting(&self) -> Reply {
        Reply::plain(
            220,
            vec![format!("{} ESMTP mxgate", self.settings.hostname)],
        )
    }

    /// True between an accepted MAIL and the end of its transaction.
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some()
    }

    /// Handles one command line as returned by the line reader.
    pub fn command(&mut self, line: Result<BytesMut, LineError>) -> Action {
        let line = match line {
            Ok(line) => line,
            Err(LineError::TooLong { .. }) => {
                // RFC 5321 §4.5.3.1.9: "Errors due to exceeding these limits may be reported by
                // using the reply codes. Some examples of reply codes are: 500 Line too long."
                return Action::Reply(Reply::new(500, (5, 5, 2), "Line too long"));
            }
            Err(e) => {
                return Action::Reply(Reply::new(
                    500,
                    (5, 5, 2),
                    format!("Error: {e} in command (CRLF required)"),
                ));
            }
        };
        let command = match parse_command(&line) {
            Ok(c) => c,
            Err(e) => return Action::Reply(e.reply()),
        };
        match command {
            Command::Ehlo(name) => {
                self.tx = None;
                self.helo = Some((name, true));
                let s = &self.settings;
                Action::Reply(Reply::plain(
                    250,
                    vec![
                        s.hostname.clone(),
                        "PIPELINING".into(),
                        format!("SIZE {}", s.max_message_size),
                        "8BITMIME".into(),
                        "SMTPUTF8".into(),
                        "ENHANCEDSTATUSCODES".into(),
                        "DSN".into(),
                    ],
                ))
            }
            Command::Helo(name) => {
                self.tx = None;
                self.helo = Some((name, false));
                Action::Reply(Reply::plain(250, vec![self.settings.hostname.clone()]))
            }
            Command::Mail(mail) => self.mail(mail),
            Command::Rcpt(rcpt) => {
                let Some(tx) = self.tx.as_mut() else {
                    return seq_error("Error: need MAIL command");
                };
                // RFC 6531 §3.4: without SMTPUTF8 on MAIL, addresses are ASCII.
                if !tx.mail.smtputf8 && !rcpt.address.is_ascii() {
                    return Action::Reply(CommandError::NonAsciiAddress.reply());
                }
                if rcpt.address.rsplit_once('@').is_none() {
                    return Action::Reply(Reply::new(501, (5, 1, 3), "Recipient needs a domain"));
                }
                // RFC 5321 §4.5.3.1.10: "If an SMTP server has an implementation limit on
                // the number of RCPT commands and this limit is exhausted, it MUST use a
                // response code of 452".
                if tx.recipients.len() >= self.settings.max_recipients {
                    return Action::Reply(Reply::new(452, (4, 5, 3), "Too many recipients"));
                }
                tx.recipients.push(Recipient {
                    address: rcpt.address,
                    notify: rcpt.notify,
                    orcpt: rcpt.orcpt,
                });
                Action::Reply(Reply::new(250, (2, 1, 5), "Ok"))
            }
            Command::Data => match &self.tx {
                None => seq_error("Error: need MAIL command"),
                // RFC 5321 §3.3: "If there was no MAIL, or no RCPT, command, or all such
                // commands were rejected, the server MAY return a "command out of
                // sequence" (503) or "no valid recipients" (554) reply".
                Some(tx) if tx.recipients.is_empty() => seq_error("Error: need RCPT command"),
                Some(_) => Action::StartData(Reply::plain(
                    354,
                    vec!["End data with <CR><LF>.<CR><LF>".into()],
                )),
            },
            Command::Rset => {
                self.tx = None;
                Action::Reply(Reply::new(250, (2, 0, 0), "Ok"))
            }
            Command::Noop => Action::Reply(Reply::new(250, (2, 0, 0), "Ok")),
            Command::Help => Action::Reply(Reply::new(214, (2, 0, 0), "See RFC 5321")),
            Command::Vrfy(_) => Action::Reply(Reply::new(252, (2, 5, 0), "Cannot VRFY user")),
            Command::Quit => Action::Close(Reply::new(221, (2, 0, 0), "Bye")),
            // Loopback only: STARTTLS is not offered (docs/postfix.md).
            Command::StartTls => Action::Reply(Reply::new(502, (5, 5, 1), "STARTTLS not offered")),
        }
    }

    fn mail(&mut self, mail: MailFrom) -> Action {
        // RFC 5321 §4.1.4: "a client MUST issue HELO or EHLO before starting a mail
        // transaction."
        let Some((_, esmtp)) = &self.helo else {
            return seq_error("Error: send HELO/EHLO first");
        };
        if self.tx.is_some() {
            return seq_error("Error: nested MAIL command");
        }
        let extended = mail.size.is_some()
            || mail.body.is_some()
            || mail.smtputf8
            || mail.ret.is_some()
            || mail.envid.is_some();
        if extended && !esmtp {
            return Action::Reply(
                CommandError::UnknownParameter("(ESMTP parameter after HELO)".into()).reply(),
            );
        }
        // RFC 1870 §6.1: a declared size over the fixed maximum gets "552 message size
        // exceeds fixed maximium message size".
        if mail
            .size
            .is_some_and(|s| s > self.settings.max_message_size)
        {
            return Action::Reply(Reply::new(
                552,
                (5, 3, 4),
                "Message size exceeds fixed maximum message size",
            ));
        }
        self.tx = Some(Transaction {
            mail,
            recipients: Vec::new(),
        });
        Action::Reply(Reply::new(250, (2, 1, 0), "Ok"))
    }

    /// Ends the transaction with the result of the DATA reader. Returns the envelope
    /// and the message to store under `queue_id` (with `Received:` prepended, naming
    /// that id), or the rejection reply.
    pub fn finish_data(
        &mut self,
        outcome: DataOutcome,
        queue_id: &str,
        now: SystemTime,
    ) -> Result<(Envelope, Bytes), Reply> {
        let tx = self
            .tx
            .take()
            .ok_or_else(|| Reply::new(503, (5, 5, 1), "Error: no transaction"))?;
        let body = outcome.result.map_err(data_error_reply)?;
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        let protocol = match (esmtp, tx.mail.smtputf8) {
            (false, _) => Protocol::Smtp,
            (true, false) => Protocol::Esmtp,
            (true, true) => Protocol::Utf8Smtp,
        };
        let single = match tx.recipients.as_slice() {
            [only] => Some(only.address.as_str()),
            _ => None,
        };
        let header = received_header(
            &helo,
            self.peer,
            &self.settings.hostname,
            protocol,
            queue_id,
            single,
            now,
        );
        let mut message = BytesMut::with_capacity(header.len() + body.len());
        message.extend_from_slice(header.as_bytes());
        message.extend_from_slice(&body);
        let envelope = Envelope {
            sender: tx.mail.sender,
            body: tx.mail.body.unwrap_or(BodyType::SevenBit),
            smtputf8: tx.mail.smtputf8,
            ret: tx.mail.ret,
            envid: tx.mail.envid,
            recipients: tx.recipients,
        };
        Ok((envelope, message.freeze()))
    }

    /// The reply after the store answered.
    pub fn stored_reply(result: &Result<QueueId, StoreError>) -> Reply {
        match result {
            Ok(id) => Reply::new(250, (2, 0, 0), format!("Ok: queued as {id}")),
            Err(StoreError::NoSpace(_)) => {
                Reply::new(452, (4, 3, 1), "Insufficient system storage")
            }
            Err(e) => Reply::new(451, (4, 3, 0), format!("Local error: {e}")),
        }
    }
}

/// The reply for a message the DATA reader refused. The whole message was read to
/// its real `CRLF.CRLF`, so the session stays in step with the client and continues.
///
/// Bare CR/LF/NUL: `550 5.5.2`. A 5xx so the local MTA bounces rather than retries a
/// message that will never be acceptable; we keep the session (unlike Postfix's
/// `521` + disconnect) because our DATA framing only ever ends at a real CRLF.CRLF,
/// so there is no ambiguity left about where the next command starts. Nothing is
/// stored.
fn data_error_reply(e: DataError) -> Reply {
    match e {
        DataError::BareLf | DataError::BareCr | DataError::Nul => {
            // RFC 5321 §2.3.8: bare CR or LF "MUST NOT" be transmitted except as CRLF.
            Reply::new(
                550,
                (5, 5, 2),
                format!("Message rejected: {e} (SMTP smuggling defence)"),
            )
        }
        DataError::TooBig { .. } => Reply::new(
            552,
            (5, 3, 4),
            "Message size exceeds fixed maximum message size",
        ),
        // RFC 5321 §4.5.3.1.6: text lines are at most 1000 octets including CRLF.
        DataError::LineTooLong => {
            Reply::new(554, (5, 6, 0), "Message has a line longer than 1000 octets")
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
