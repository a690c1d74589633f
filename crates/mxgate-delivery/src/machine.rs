//! The SMTP client conversation as a sans-IO state machine ([`ClientSession`]), in
//! the shape of rustls/quinn-proto: it is fed what happened ([`Input`]: a parsed
//! reply, "TLS is up", "the connection is gone", ...) and answers what to do next
//! ([`Step`]: write these bytes and read a reply, start TLS, done with this
//! [`End`]). Delivery (`session.rs` for new connections, `reuse.rs` for cached ones)
//! and `mxgate check` (probe mode, which stops before `MAIL`) drive the same machine;
//! no SMTP rule lives in a driver.
//!
//! The rules it keeps (RFC 5321, RFC 3207, RFC 2920, docs/policy.md):
//!
//! - No byte of the envelope before the TLS requirement is met: at every requirement
//!   above `may` a missing, refused or failed STARTTLS ends the session before `MAIL`.
//! - Bytes the server sent after `220 Ready to start TLS` and before the handshake are
//!   a response injection (RFC 3207 §4.2 discards them; we refuse the session).
//! - EHLO again after TLS (RFC 3207 §4.2); HELO (RFC 5321 §3.2) only where cleartext
//!   is allowed.
//! - A reply before TLS never bounces at `encrypt` and above: a `554` to STARTTLS is
//!   a TLS policy failure, which the MX loop defers (or bounces only under
//!   `on_tls_failure = "bounce"`).
//! - A connection lost or timed out after the final dot is [`FailureKind::LostAfterData`]
//!   (RFC 1047): the message may have been delivered.
//!
//! ```text
//!  Fresh ─► Greeting ─220─► Ehlo ──250──► (STARTTLS?) ──no──► Transaction
//!                │           │ 5xx           │ yes                 ▲
//!                │           ▼               ▼                     │
//!                │         Helo* ──250──►  StartTls ─220─► Handshake ─TLS up─► EhloTls ─250─┤
//!                ▼                          │ !220              │ fail/injection          │ probe
//!              Quit ◄────────────────────── ┴───────────────────┘                         ▼
//!  Resumed ─► Reset ─250─► Transaction:  Mail ─► Rcpt… ─► Data ─354─► DataEnd ─► Done | Quit
//!  (* only where cleartext is allowed; pipelined: Mail+Rcpt… in one write)
//! ```

use std::sync::Arc;

use bytes::Bytes;
use mxgate_policy::TlsRequirement;
use mxgate_queue::{DeliveryFailure, FailureKind, Outcome, RecipientOutcome};
use mxgate_smtp::client::{self, ClientCommandError};
use mxgate_smtp::{Capabilities, Envelope, Recipient, Reply};

use crate::decide::{
    bounded, greeting_failure, local_failure, rcpt_verdict, refused, reply_outcome, starttls_step,
    status, RcptVerdict, StartTlsStep, TlsPolicyFailure,
};
use crate::facts::{SessionError, TlsFacts, Transacted};

/// Who we are and whom we talk to, for commands and reasons.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    /// The MX host name (reasons, `Remote-MTA`).
    pub mx_host: String,
    /// `host[addr]:port`.
    pub relay: String,
    /// The level word that opens TLS reasons (`encrypt`, `mta-sts enforce`, ...).
    pub policy_label: String,
}

/// The mail transaction to run (absent in probe mode).
#[derive(Debug, Clone)]
pub struct Mail {
    pub envelope: Arc<Envelope>,
    /// Indices into `envelope.recipients`.
    pub recipients: Vec<usize>,
    /// The message, not dot-stuffed.
    pub message: Bytes,
}

/// What happened on the connection.
#[derive(Debug, Clone)]
pub enum Input {
    /// A complete reply.
    Reply(Reply),
    /// The connection is gone or unusable: closed, I/O error, timeout, garbage.
    Lost(Lost),
    /// The TLS handshake succeeded.
    TlsUp(TlsFacts),
    /// The TLS handshake failed; `reason` is a sentence for people.
    TlsFailed { kind: FailureKind, reason: String },
    /// The server sent bytes after `220` to STARTTLS, before the handshake.
    DataBeforeHandshake,
}

/// How the connection was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// EOF or an I/O error.
    Closed(String),
    /// No reply within the timeout the step asked for.
    Timeout(String),
    /// The server's bytes are not an SMTP reply.
    Garbled(String),
}

impl Lost {
    fn kind(&self) -> FailureKind {
        match self {
            Lost::Closed(_) => FailureKind::ConnectionLost,
            Lost::Timeout(_) => FailureKind::Timeout,
            Lost::Garbled(_) => FailureKind::ProtocolError,
        }
    }

    fn text(&self) -> &str {
        match self {
            Lost::Closed(t) | Lost::Timeout(t) | Lost::Garbled(t) => t,
        }
    }
}

/// Which timeout the driver applies while waiting for the next reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// `delivery.command_timeout`.
    Command,
    /// RFC 5321 §4.5.3.2.6 "DATA Termination: 10 minutes" (at least the command
    /// timeout).
    DataEnd,
    /// A cached session's `RSET`: short, a dead session is replaced by a fresh one.
    Probe,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write `bytes`, then read one reply (or report the connection lost).
    Send { bytes: Vec<u8>, wait: Wait },
    /// Read one more reply (pipelined replies).
    Read { wait: Wait },
    /// Discard unread input, run the TLS handshake, report [`Input::TlsUp`] or
    /// [`Input::TlsFailed`] (or [`Input::DataBeforeHandshake`] first if bytes were
    /// buffered).
    StartTls,
    /// The session is over; close the connection unless `End` says it may be kept.
    Done(End),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The transaction ran: an outcome for every recipient of the [`Mail`].
    /// `reusable`: the connection is clean and may be parked for the next job.
    Transacted { report: Transacted, reusable: bool },
    /// Nothing was decided about the recipients (try the next address or MX).
    Failed(SessionError),
    /// `may`: STARTTLS failed after it was attempted; retry in cleartext on a new
    /// connection (docs/policy.md).
    RetryCleartext { kind: FailureKind, reason: String },
    /// A resumed (cached) session did not answer `RSET` with `250`: drop it, dial
    /// afresh. Nothing was sent.
    Stale,
    /// Probe mode: greeting, EHLO, TLS and EHLO again succeeded; `QUIT` was sent.
    Probed,
}

/// Where the conversation is (also what probe mode reports when it ends early).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Greeting,
    Ehlo,
    StartTls,
    Handshake,
    EhloAfterTls,
    Transaction,
}

#[derive(Debug)]
enum State {
    Greeting,
    Ehlo { tls: bool },
    Helo { tls: bool },
    StartTls,
    Handshake,
    Reset,
    Pipelined,
    Mail,
    Rcpt,
    Data,
    DataEnd,
    RsetAfterRefusal,
    Quitting(Box<End>),
    Finished,
}

/// The recipients' side of a running transaction.
#[derive(Debug, Default)]
struct Txn {
    /// Recipients that can be named on the wire, with their RCPT command.
    sendable: Vec<(usize, Vec<u8>)>,
    outcomes: Vec<RecipientOutcome>,
    mail_reply: Option<Reply>,
    rcpt_replies: Vec<Reply>,
    accepted: Vec<usize>,
}

/// One client session to one address (see the module docs for the diagram).
#[derive(Debug)]
pub struct ClientSession {
    peer: Peer,
    requirement: TlsRequirement,
    retry_cleartext: bool,
    mail: Option<Mail>,
    state: State,
    phase: Phase,
    opportunistic: bool,
    caps: Capabilities,
    tls: Option<TlsFacts>,
    banner: Option<Reply>,
    ehlo_keywords: Vec<String>,
    greeted: bool,
    txn: Txn,
}

impl ClientSession {
    /// A new connection: the first step reads the greeting. `mail = None` is probe
    /// mode (stop after EHLO, with TLS where the requirement asks for it, then QUIT).
    /// `retry_cleartext`: the cleartext retry of a `may` session whose TLS failed.
    pub fn fresh(
        peer: Peer,
        requirement: TlsRequirement,
        retry_cleartext: bool,
        mail: Option<Mail>,
    ) -> Self {
        ClientSession {
            peer,
            requirement,
            retry_cleartext,
            mail,
            state: State::Greeting,
            phase: Phase::Greeting,
            opportunistic: false,
            caps: Capabilities::default(),
            tls: None,
            banner: None,
            ehlo_keywords: Vec::new(),
            greeted: false,
            txn: Txn::default(),
        }
    }

    /// A cached session (already greeted, TLS as negotiated then): `RSET`, then the
    /// transaction.
    pub fn resumed(
        peer: Peer,
        requirement: TlsRequirement,
        caps: Capabilities,
        tls: Option<TlsFacts>,
        mail: Mail,
    ) -> Self {
        let mut s = ClientSession::fresh(peer, requirement, false, Some(mail));
        s.state = State::Reset;
        s.phase = Phase::Transaction;
        s.caps = caps;
        s.tls = tls;
        s.greeted = true;
        s
    }

    /// The first step.
    pub fn start(&mut self) -> Step {
        match self.state {
            State::Reset => send(client::RSET.to_vec(), Wait::Probe),
            _ => Step::Read {
                wait: Wait::Command,
            },
        }
    }

    /// The server's greeting, once read.
    pub fn banner(&self) -> Option<&Reply> {
        self.banner.as_ref()
    }

    /// The EHLO keywords before STARTTLS.
    pub fn ehlo_keywords(&self) -> &[String] {
        &self.ehlo_keywords
    }

    /// What the server offers now (after TLS when TLS is up).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// The TLS facts, once TLS is up.
    pub fn tls(&self) -> Option<&TlsFacts> {
        self.tls.as_ref()
    }

    /// Where the conversation is (or ended).
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The session completed EHLO, and TLS where it was used
    /// (`delivery.mx_session_limit` counts these).
    pub fn greeted(&self) -> bool {
        self.greeted
    }

    /// Feeds what happened; returns what to do next.
    pub fn handle(&mut self, input: Input) -> Step {
        let state = std::mem::replace(&mut self.state, State::Finished);
        match (state, input) {
            (State::Quitting(end), _) => self.done(*end),
            (State::Finished, _) => self.done(End::Failed(self.unreachable(
                FailureKind::ProtocolError,
                "input after the session ended".into(),
            ))),
            // In the transaction a lost connection leaves the recipients undecided
            // (the next address may take them), except after the final dot.
            (State::DataEnd, Input::Lost(lost)) => {
                let failure = local_failure(
                    FailureKind::LostAfterData,
                    status::BAD_CONNECTION,
                    Some(&self.peer.mx_host),
                    format!(
                        "{}: lost connection after the final dot of DATA ({}); the message may be delivered more than once",
                        self.peer.relay,
                        lost.text()
                    ),
                );
                self.done(End::Failed(SessionError::Unreachable {
                    relay: self.peer.relay.clone(),
                    failure,
                }))
            }
            (State::RsetAfterRefusal, Input::Lost(_)) => self.transacted(false),
            (State::Reset, Input::Reply(r)) if r.code == 250 => self.transaction(),
            (State::Reset, _) => self.done(End::Stale),
            (State::StartTls, Input::Lost(lost)) if self.opportunistic => {
                self.done(End::RetryCleartext {
                    kind: lost.kind(),
                    reason: lost.text().to_string(),
                })
            }
            (_, Input::Lost(lost)) => {
                let failure = self.lost(&lost);
                self.done(End::Failed(failure))
            }
            (State::Greeting, Input::Reply(r)) => self.greeting(r),
            (State::Ehlo { tls }, Input::Reply(r)) => self.ehlo_reply(r, tls),
            (State::Helo { tls }, Input::Reply(r)) => self.helo_reply(r, tls),
            (State::StartTls, Input::Reply(r)) => self.starttls_reply(r),
            (State::Handshake, Input::DataBeforeHandshake) => {
                let reason = format!(
                    "{} sent data after 220 Ready to start TLS (response injection)",
                    self.peer.mx_host
                );
                self.tls_failed(FailureKind::ResponseInjection, reason)
            }
            (State::Handshake, Input::TlsFailed { kind, reason }) => self.tls_failed(kind, reason),
            (State::Handshake, Input::TlsUp(facts)) => {
                self.tls = Some(facts);
                self.state = State::Ehlo { tls: true };
                self.phase = Phase::EhloAfterTls;
                send(client::ehlo(&self.peer.helo_name), Wait::Command)
            }
            (State::Pipelined, Input::Reply(r)) => {
                if self.txn.mail_reply.is_none() {
                    self.txn.mail_reply = Some(r);
                } else {
                    self.txn.rcpt_replies.push(r);
                }
                if self.txn.rcpt_replies.len() < self.txn.sendable.len() {
                    self.state = State::Pipelined;
                    Step::Read {
                        wait: Wait::Command,
                    }
                } else {
                    self.after_rcpts()
                }
            }
            (State::Mail, Input::Reply(r)) => {
                let positive = r.is_positive();
                self.txn.mail_reply = Some(r);
                match self.txn.sendable.first() {
                    Some((_, cmd)) if positive => {
                        let cmd = cmd.clone();
                        self.state = State::Rcpt;
                        send(cmd, Wait::Command)
                    }
                    _ => self.after_rcpts(),
                }
            }
            (State::Rcpt, Input::Reply(r)) => {
                self.txn.rcpt_replies.push(r);
                match self.txn.sendable.get(self.txn.rcpt_replies.len()) {
                    Some((_, cmd)) => {
                        let cmd = cmd.clone();
                        self.state = State::Rcpt;
                        send(cmd, Wait::Command)
                    }
                    None => self.after_rcpts(),
                }
            }
            (State::RsetAfterRefusal, Input::Reply(r)) => self.transacted(r.code == 250),
            (State::Data, Input::Reply(r)) => {
                if r.code == 354 {
                    let body = self
                        .mail
                        .as_ref()
                        .map(|m| mxgate_smtp::dot_stuff(&m.message))
                        .unwrap_or_default();
                    self.state = State::DataEnd;
                    send(body, Wait::DataEnd)
                } else {
                    let outcome = self.verdict_for_all(&r);
                    self.decide_accepted(outcome);
                    self.quit_then_transacted()
                }
            }
            (State::DataEnd, Input::Reply(r)) => {
                let reusable = !closing(&r) && !self.txn.rcpt_replies.iter().any(closing);
                let outcome = if r.is_positive() {
                    Outcome::Delivered {
                        relay: self.peer.relay.clone(),
                        reply: bounded(&r.to_string()),
                    }
                } else {
                    self.verdict_for_all(&r)
                };
                self.decide_accepted(outcome);
                if reusable {
                    self.transacted(true)
                } else {
                    self.quit_then_transacted()
                }
            }
            // Anything else is the server (or driver) out of step: a protocol error.
            (_, _) => {
                let failure = self.unreachable(
                    FailureKind::ProtocolError,
                    "unexpected event in the SMTP conversation".into(),
                );
                self.done(End::Failed(failure))
            }
        }
    }

    fn greeting(&mut self, r: Reply) -> Step {
        // RFC 5321 §3.1: a 554 greeting means no service here; try elsewhere. A
        // greeting never bounces (it comes before TLS at every level).
        if !r.is_positive() {
            let failure = greeting_failure(&r, &self.peer.mx_host);
            return self.quit_then(End::Failed(SessionError::Unreachable {
                relay: self.peer.relay.clone(),
                failure,
            }));
        }
        self.banner = Some(r);
        self.state = State::Ehlo { tls: false };
        self.phase = Phase::Ehlo;
        send(client::ehlo(&self.peer.helo_name), Wait::Command)
    }

    fn ehlo_reply(&mut self, r: Reply, tls: bool) -> Step {
        if r.is_positive() {
            self.caps = Capabilities::from_ehlo(&r);
            return self.greeted_with_caps(tls);
        }
        if !self.requirement.allows_cleartext() {
            let failure = self.unreachable(
                FailureKind::HeloRejected,
                format!("EHLO rejected: {}", bounded(&r.to_string())),
            );
            return self.quit_then(End::Failed(failure));
        }
        self.state = State::Helo { tls };
        send(client::helo(&self.peer.helo_name), Wait::Command)
    }

    fn helo_reply(&mut self, r: Reply, tls: bool) -> Step {
        if r.is_positive() {
            self.caps = Capabilities::default();
            return self.greeted_with_caps(tls);
        }
        let failure = self.unreachable(
            FailureKind::HeloRejected,
            format!("HELO rejected: {}", bounded(&r.to_string())),
        );
        self.quit_then(End::Failed(failure))
    }

    fn greeted_with_caps(&mut self, tls: bool) -> Step {
        if tls {
            return self.ready();
        }
        self.ehlo_keywords = self.caps.raw.clone();
        match starttls_step(&self.requirement, self.caps.starttls, self.retry_cleartext) {
            StartTlsStep::Skip => self.ready(),
            StartTlsStep::NotOffered => {
                let what = format!("STARTTLS not offered by {}", self.peer.mx_host);
                let failure = self.policy(FailureKind::StarttlsNotOffered, what);
                self.quit_then(End::Failed(failure))
            }
            step @ (StartTlsStep::TryOpportunistic | StartTlsStep::Require) => {
                self.opportunistic = step == StartTlsStep::TryOpportunistic;
                self.state = State::StartTls;
                self.phase = Phase::StartTls;
                send(client::STARTTLS.to_vec(), Wait::Command)
            }
        }
    }

    fn starttls_reply(&mut self, r: Reply) -> Step {
        // RFC 3207 §4: "220 Ready to start TLS"; anything else means no TLS on this
        // connection. At `may` we go on in cleartext; at required levels it is a
        // policy failure, never a bounce, even for a 5xx.
        if r.code == 220 {
            self.state = State::Handshake;
            self.phase = Phase::Handshake;
            return Step::StartTls;
        }
        if self.opportunistic {
            return self.ready();
        }
        let what = format!(
            "STARTTLS refused by {}: {}",
            self.peer.mx_host,
            bounded(&r.to_string())
        );
        let failure = self.policy(FailureKind::StarttlsRefused, what);
        self.quit_then(End::Failed(failure))
    }

    fn tls_failed(&mut self, kind: FailureKind, reason: String) -> Step {
        if self.opportunistic {
            return self.done(End::RetryCleartext { kind, reason });
        }
        let failure = self.policy(kind, reason);
        self.done(End::Failed(failure))
    }

    /// EHLO done, TLS where used: the transaction (or, probing, the end).
    fn ready(&mut self) -> Step {
        self.greeted = true;
        if self.mail.is_none() {
            return self.quit_then(End::Probed);
        }
        self.transaction()
    }

    fn transaction(&mut self) -> Step {
        self.phase = Phase::Transaction;
        let Some(mail) = self.mail.clone() else {
            return self.quit_then(End::Probed);
        };
        let mx = self.peer.mx_host.clone();
        // Defence in depth: no envelope command in cleartext when TLS is required,
        // whatever path led here.
        if self.tls.is_none() && !self.requirement.allows_cleartext() {
            let what = format!("refusing to send the envelope to {mx} in cleartext");
            let failure = self.policy(FailureKind::HandshakeFailed, what);
            return self.quit_then(End::Failed(failure));
        }
        let caps = self.caps.clone();
        for &index in &mail.recipients {
            let Some(rcpt) = mail.envelope.recipients.get(index) else {
                self.txn.outcomes.push(RecipientOutcome {
                    index,
                    outcome: refused(local_failure(
                        FailureKind::BadAddress,
                        status::BAD_ADDRESS,
                        None,
                        "no such recipient in the envelope",
                    )),
                });
                continue;
            };
            match client::rcpt_to(rcpt, &caps) {
                Ok(cmd) => self.txn.sendable.push((index, cmd)),
                Err(e) => self.txn.outcomes.push(RecipientOutcome {
                    index,
                    outcome: refused(local_failure(
                        FailureKind::BadAddress,
                        status::BAD_ADDRESS,
                        Some(&mx),
                        e.to_string(),
                    )),
                }),
            }
        }
        let rcpt_refs: Vec<&Recipient> = self
            .txn
            .sendable
            .iter()
            .filter_map(|(i, _)| mail.envelope.recipients.get(*i))
            .collect();
        // RFC 6531 §3.4 / RFC 6532: a message whose headers need SMTPUTF8 cannot go
        // to a server that does not offer it (5.6.7), even with ASCII addresses.
        let mail_cmd = if mail.envelope.smtputf8
            && !caps.smtputf8
            && client::headers_need_utf8(&mail.message)
        {
            Err((
                FailureKind::Smtputf8NotSupported,
                status::SMTPUTF8_REQUIRED,
                format!("{mx}: the message headers need SMTPUTF8, which the server does not offer"),
            ))
        } else {
            client::mail_from(
                &mail.envelope,
                &rcpt_refs,
                &caps,
                Some(mail.message.len() as u64),
            )
            .map_err(|e| {
                let (kind, code) = match e {
                    ClientCommandError::SmtpUtf8Required(_) => {
                        (FailureKind::Smtputf8NotSupported, status::SMTPUTF8_REQUIRED)
                    }
                    ClientCommandError::TooBig { .. } => {
                        (FailureKind::MessageTooBig, status::TOO_BIG)
                    }
                    ClientCommandError::InvalidAddress(_) => {
                        (FailureKind::BadAddress, status::BAD_SENDER)
                    }
                };
                (kind, code, format!("{mx}: {e}"))
            })
        };
        let mail_cmd = match mail_cmd {
            Ok(cmd) => cmd,
            Err((kind, code, text)) => {
                let failure = local_failure(kind, code, Some(&mx), text);
                let all: Vec<usize> = self.txn.sendable.iter().map(|(i, _)| *i).collect();
                for index in all {
                    self.txn.outcomes.push(RecipientOutcome {
                        index,
                        outcome: refused(failure.clone()),
                    });
                }
                return self.quit_then_transacted();
            }
        };
        if self.txn.sendable.is_empty() {
            return self.quit_then_transacted();
        }
        if caps.pipelining {
            // RFC 2920 §3.1: MAIL FROM and RCPT TO may go out without waiting; every
            // reply is then read, in order.
            let mut batch = mail_cmd;
            for (_, cmd) in &self.txn.sendable {
                batch.extend_from_slice(cmd);
            }
            self.state = State::Pipelined;
            send(batch, Wait::Command)
        } else {
            self.state = State::Mail;
            send(mail_cmd, Wait::Command)
        }
    }

    fn after_rcpts(&mut self) -> Step {
        let Some(mail_reply) = self.txn.mail_reply.clone() else {
            return self.quit_then_transacted();
        };
        if !mail_reply.is_positive() {
            let outcome = self.verdict_for_all(&mail_reply);
            let all: Vec<usize> = self.txn.sendable.iter().map(|(i, _)| *i).collect();
            for index in all {
                self.txn.outcomes.push(RecipientOutcome {
                    index,
                    outcome: outcome.clone(),
                });
            }
            return self.quit_then_transacted();
        }
        let replies = std::mem::take(&mut self.txn.rcpt_replies);
        for ((index, _), reply) in self.txn.sendable.iter().zip(&replies) {
            match rcpt_verdict(reply, &self.peer.mx_host) {
                RcptVerdict::Accepted => self.txn.accepted.push(*index),
                RcptVerdict::Deferred(f) => self.txn.outcomes.push(RecipientOutcome {
                    index: *index,
                    outcome: Outcome::Deferred(f),
                }),
                RcptVerdict::Failed(f) => self.txn.outcomes.push(RecipientOutcome {
                    index: *index,
                    outcome: Outcome::Failed(f),
                }),
            }
        }
        let any_closing = replies.iter().any(closing);
        self.txn.rcpt_replies = replies;
        // RFC 5321 §3.3: no valid recipient, no DATA.
        if self.txn.accepted.is_empty() {
            if any_closing {
                return self.quit_then_transacted();
            }
            self.state = State::RsetAfterRefusal;
            return send(client::RSET.to_vec(), Wait::Command);
        }
        self.state = State::Data;
        send(client::DATA.to_vec(), Wait::Command)
    }

    fn verdict_for_all(&self, reply: &Reply) -> Outcome {
        reply_outcome(reply, &self.peer.mx_host)
    }

    fn decide_accepted(&mut self, outcome: Outcome) {
        for &index in &self.txn.accepted {
            self.txn.outcomes.push(RecipientOutcome {
                index,
                outcome: outcome.clone(),
            });
        }
    }

    fn report(&mut self) -> Transacted {
        Transacted {
            relay: self.peer.relay.clone(),
            tls: self.tls.clone().unwrap_or_default(),
            outcomes: std::mem::take(&mut self.txn.outcomes),
        }
    }

    fn transacted(&mut self, reusable: bool) -> Step {
        let report = self.report();
        self.done(End::Transacted { report, reusable })
    }

    fn quit_then_transacted(&mut self) -> Step {
        let report = self.report();
        self.quit_then(End::Transacted {
            report,
            reusable: false,
        })
    }

    fn quit_then(&mut self, end: End) -> Step {
        self.state = State::Quitting(Box::new(end));
        send(client::QUIT.to_vec(), Wait::Probe)
    }

    fn done(&mut self, end: End) -> Step {
        self.state = State::Finished;
        Step::Done(end)
    }

    fn unreachable(&self, kind: FailureKind, detail: String) -> SessionError {
        SessionError::Unreachable {
            relay: self.peer.relay.clone(),
            failure: local_failure(
                kind,
                status::BAD_CONNECTION,
                Some(&self.peer.mx_host),
                format!("{}: {detail}", self.peer.relay),
            ),
        }
    }

    fn lost(&self, lost: &Lost) -> SessionError {
        self.unreachable(lost.kind(), format!("lost connection: {}", lost.text()))
    }

    fn policy(&self, kind: FailureKind, what: String) -> SessionError {
        SessionError::TlsPolicy {
            relay: self.peer.relay.clone(),
            failure: TlsPolicyFailure {
                kind,
                message: bounded(&format!("{}: {what}", self.peer.policy_label)),
            },
        }
    }
}

fn send(bytes: Vec<u8>, wait: Wait) -> Step {
    Step::Send { bytes, wait }
}

/// RFC 5321 §3.8: "the server ... SHOULD send a 421 response ... and then close the
/// transmission channel"; such a session is never kept.
fn closing(reply: &Reply) -> bool {
    reply.code == 421
}

/// A failure the machine produced, for callers that need the [`DeliveryFailure`] of a
/// [`SessionError`].
pub fn failure_of(e: &SessionError) -> DeliveryFailure {
    match e {
        SessionError::Unreachable { failure, .. } => failure.clone(),
        SessionError::TlsPolicy { failure, .. } => {
            let (s, d) = failure.subject_detail();
            local_failure(
                failure.kind,
                mxgate_smtp::EnhancedStatus::transient(s, d),
                None,
                &failure.message,
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "machine_tests.rs"]
mod tests;
