//! One mail transaction (RFC 5321 §3.3) over an established session: MAIL, RCPT, DATA,
//! body, pipelined when offered (RFC 2920), and whether the session may be kept for the
//! next job.
//!
//! A session is handed back for reuse only when the transaction ended cleanly: the final
//! reply to DATA was received, or every RCPT was refused and `RSET` was answered `250`;
//! and no reply was `421` (the server is closing the channel). Every other ending
//! sends `QUIT`, or drops the connection on a protocol or I/O error.
//!
//! Not here: connecting, EHLO and STARTTLS (`session`), `RSET` before reuse (`reuse`),
//! the cache itself (`cache`).

use std::time::Duration;

use mxgate_queue::{DeliveryJob, FailureKind, Outcome, RecipientOutcome};
use mxgate_smtp::client::{self, ClientCommandError};
use mxgate_smtp::{Capabilities, Recipient, Reply};

use crate::conn::{Conn, SmtpStream};
use crate::decide::{local_failure, rcpt_verdict, status, RcptVerdict};
use crate::reuse::IdleSession;
use crate::session::{lost, policy_failure, SessionError, SessionParams, TlsFacts, Transacted};

/// RFC 5321 §4.5.3.2.6: "DATA Termination: 10 minutes."
const DATA_TERMINATION_TIMEOUT: Duration = Duration::from_secs(600);

/// What a transaction leaves: its result and, when clean, the session for reuse.
pub(crate) struct Finished {
    pub result: Result<Transacted, SessionError>,
    pub idle: Option<IdleSession>,
    /// Our address on the connection, when one was made.
    pub local_ip: Option<std::net::IpAddr>,
}

impl Finished {
    fn closed(result: Result<Transacted, SessionError>) -> Self {
        Finished {
            result,
            idle: None,
            local_ip: None,
        }
    }
}

/// RFC 5321 §3.8: "the server ... SHOULD send a 421 response ... and then close the
/// transmission channel"; such a session is never kept.
fn closing(reply: &Reply) -> bool {
    reply.code == 421
}

/// What a MAIL/DATA/final reply means for every accepted recipient.
fn verdict_for_all(reply: &Reply, mx_host: &str) -> Outcome {
    match rcpt_verdict(reply, mx_host) {
        RcptVerdict::Failed(f) => Outcome::Failed(f),
        RcptVerdict::Deferred(f) => Outcome::Deferred(f),
        // A 2xx where a 354 was expected: protocol confusion, transient.
        RcptVerdict::Accepted => Outcome::Deferred(local_failure(
            FailureKind::ProtocolError,
            status::PROTOCOL,
            Some(mx_host),
            format!("unexpected reply {reply} from {mx_host}"),
        )),
    }
}

/// MAIL, RCPT, DATA, body (RFC 5321 §3.3), pipelined when offered (RFC 2920); `QUIT`
/// unless the session is handed back in [`Finished::idle`].
pub(crate) async fn transaction(
    mut conn: Conn<SmtpStream>,
    params: &SessionParams,
    job: &DeliveryJob,
    recipients: &[usize],
    caps: &Capabilities,
    tls: TlsFacts,
) -> Finished {
    match run(&mut conn, params, job, recipients, caps, tls.clone()).await {
        Ok((report, Ending::Reusable)) => Finished {
            local_ip: None,
            result: Ok(report),
            idle: Some(IdleSession {
                local_ip: conn.get_ref().local_ip(),
                conn,
                caps: caps.clone(),
                tls,
            }),
        },
        Ok((report, Ending::Quit)) => {
            conn.quit().await;
            Finished::closed(Ok(report))
        }
        Err((e, Ending::Quit)) => {
            conn.quit().await;
            Finished::closed(Err(e))
        }
        // A lost connection or a protocol error: nothing more to say to this server.
        Err((e, Ending::Reusable)) => Finished::closed(Err(e)),
    }
}

/// How the session ends after the transaction.
pub(crate) enum Ending {
    /// Clean: may be kept (errors: the connection is dropped without QUIT).
    Reusable,
    Quit,
}

async fn run(
    conn: &mut Conn<SmtpStream>,
    params: &SessionParams,
    job: &DeliveryJob,
    recipients: &[usize],
    caps: &Capabilities,
    tls: TlsFacts,
) -> Result<(Transacted, Ending), (SessionError, Ending)> {
    let lost = |e| (lost(params, e), Ending::Reusable);
    let relay = params.relay();
    let mx = params.mx_host.as_str();
    // Defence in depth (contract §2): no envelope command ever goes out in cleartext
    // when the requirement needs TLS, whatever path led here.
    if tls.version.is_none() && !params.requirement.allows_cleartext() {
        let what = format!("refusing to send the envelope to {mx} in cleartext");
        return Err((
            policy_failure(params, FailureKind::HandshakeFailed, what),
            Ending::Quit,
        ));
    }
    let report = |outcomes| Transacted {
        relay: relay.clone(),
        tls: tls.clone(),
        outcomes,
    };
    let mut outcomes: Vec<RecipientOutcome> = Vec::with_capacity(recipients.len());
    // Recipients we can name on the wire, with their RCPT command.
    let mut sendable: Vec<(usize, Vec<u8>)> = Vec::new();
    for &index in recipients {
        let Some(rcpt) = job.envelope.recipients.get(index) else {
            outcomes.push(RecipientOutcome {
                index,
                outcome: Outcome::Failed(local_failure(
                    FailureKind::BadAddress,
                    status::BAD_ADDRESS,
                    None,
                    "no such recipient in the envelope",
                )),
            });
            continue;
        };
        match client::rcpt_to(rcpt, caps) {
            Ok(cmd) => sendable.push((index, cmd)),
            Err(e) => outcomes.push(RecipientOutcome {
                index,
                outcome: Outcome::Failed(local_failure(
                    FailureKind::BadAddress,
                    status::BAD_ADDRESS,
                    Some(mx),
                    e.to_string(),
                )),
            }),
        }
    }
    let rcpt_refs: Vec<&Recipient> = sendable
        .iter()
        .filter_map(|(i, _)| job.envelope.recipients.get(*i))
        .collect();
    let mail = match client::mail_from(
        &job.envelope,
        &rcpt_refs,
        caps,
        Some(job.message.len() as u64),
    ) {
        Ok(cmd) => cmd,
        Err(e) => {
            let (kind, code) = match e {
                ClientCommandError::SmtpUtf8Required(_) => {
                    (FailureKind::Smtputf8NotSupported, status::SMTPUTF8_REQUIRED)
                }
                ClientCommandError::TooBig { .. } => (FailureKind::MessageTooBig, status::TOO_BIG),
                ClientCommandError::InvalidAddress(_) => {
                    (FailureKind::BadAddress, status::BAD_SENDER)
                }
            };
            let failure = local_failure(kind, code, Some(mx), format!("{mx}: {e}"));
            outcomes.extend(sendable.iter().map(|(index, _)| RecipientOutcome {
                index: *index,
                outcome: Outcome::Failed(failure.clone()),
            }));
            return Ok((report(outcomes), Ending::Quit));
        }
    };
    if sendable.is_empty() {
        return Ok((report(outcomes), Ending::Quit));
    }

    // MAIL and RCPT replies, pipelined or in lock-step.
    let mut rcpt_replies: Vec<Reply> = Vec::with_capacity(sendable.len());
    let mail_reply;
    if caps.pipelining {
        // RFC 2920 §3.1: "the client SMTP may send ... MAIL FROM, RCPT TO ... without
        // waiting for a response", and must then read every reply, in order.
        let mut batch = mail.clone();
        for (_, cmd) in &sendable {
            batch.extend_from_slice(cmd);
        }
        conn.send(&batch).await.map_err(lost)?;
        mail_reply = conn.reply().await.map_err(lost)?;
        for _ in &sendable {
            rcpt_replies.push(conn.reply().await.map_err(lost)?);
        }
    } else {
        conn.send(&mail).await.map_err(lost)?;
        mail_reply = conn.reply().await.map_err(lost)?;
        if mail_reply.is_positive() {
            for (_, cmd) in &sendable {
                conn.send(cmd).await.map_err(lost)?;
                rcpt_replies.push(conn.reply().await.map_err(lost)?);
            }
        }
    }
    if !mail_reply.is_positive() {
        let outcome = verdict_for_all(&mail_reply, mx);
        outcomes.extend(sendable.iter().map(|(index, _)| RecipientOutcome {
            index: *index,
            outcome: outcome.clone(),
        }));
        return Ok((report(outcomes), Ending::Quit));
    }
    let mut accepted: Vec<usize> = Vec::new();
    for ((index, _), reply) in sendable.iter().zip(&rcpt_replies) {
        match rcpt_verdict(reply, mx) {
            RcptVerdict::Accepted => accepted.push(*index),
            RcptVerdict::Deferred(f) => outcomes.push(RecipientOutcome {
                index: *index,
                outcome: Outcome::Deferred(f),
            }),
            RcptVerdict::Failed(f) => outcomes.push(RecipientOutcome {
                index: *index,
                outcome: Outcome::Failed(f),
            }),
        }
    }
    // RFC 5321 §3.3: "If there are no valid recipients ... the client SHOULD NOT send
    // DATA"; end the session instead.
    if accepted.is_empty() {
        let ending = if rcpt_replies.iter().any(closing) {
            Ending::Quit
        } else {
            reset(conn).await
        };
        return Ok((report(outcomes), ending));
    }
    conn.send(client::DATA).await.map_err(lost)?;
    let data_reply = conn.reply().await.map_err(lost)?;
    let mut ending = Ending::Quit;
    let outcome = if data_reply.code == 354 {
        conn.send(&mxgate_smtp::dot_stuff(&job.message))
            .await
            .map_err(lost)?;
        let timeout = params.command_timeout.max(DATA_TERMINATION_TIMEOUT);
        let final_reply = conn.reply_within(timeout).await.map_err(lost)?;
        if !closing(&final_reply) && !rcpt_replies.iter().any(closing) {
            ending = Ending::Reusable;
        }
        if final_reply.is_positive() {
            Outcome::Delivered {
                relay: relay.clone(),
                reply: final_reply.to_string(),
            }
        } else {
            verdict_for_all(&final_reply, mx)
        }
    } else {
        verdict_for_all(&data_reply, mx)
    };
    outcomes.extend(accepted.iter().map(|index| RecipientOutcome {
        index: *index,
        outcome: outcome.clone(),
    }));
    Ok((report(outcomes), ending))
}

/// RFC 5321 §4.1.1.5: "RSET ... Any stored sender, recipients, and mail data MUST be
/// discarded ... The receiver MUST send a '250 OK' reply to a RSET command with no
/// arguments." Anything else, and the session is not kept.
pub(crate) async fn reset(conn: &mut Conn<SmtpStream>) -> Ending {
    let timeout = conn.timeout();
    reset_within(conn, timeout).await
}

/// [`reset`] with its own reply timeout. Unread input (e.g. a `421` the server sent
/// while the session was idle) also fails it.
pub(crate) async fn reset_within(conn: &mut Conn<SmtpStream>, timeout: Duration) -> Ending {
    if conn.has_buffered_input() || conn.send(client::RSET).await.is_err() {
        return Ending::Quit;
    }
    match conn.reply_within(timeout).await {
        Ok(reply) if reply.code == 250 => Ending::Reusable,
        _ => Ending::Quit,
    }
}
