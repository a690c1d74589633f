//! One SMTP client session to one address of one MX on a new connection: connect,
//! then [`ClientSession`] driven by [`drive`] (greeting, EHLO, STARTTLS as the
//! [`TlsRequirement`] demands, one transaction). At `may`, a failed TLS handshake is
//! retried once in cleartext on a new connection (docs/policy.md).
//!
//! [`deliver_fresh`] hands a cleanly finished session back for reuse; the public
//! [`deliver_to_address`] closes it with `QUIT`. It does not pick MX hosts, addresses
//! or levels, log, or count metrics (the caller in `lib.rs` does, from the returned
//! facts).

use mxgate_queue::{DeliveryJob, FailureKind};
use tokio::net::TcpStream;

pub use crate::attempt::{SessionParams, ShadowCheck};
pub use crate::facts::{SessionError, ShadowVerdict, TlsFacts, Transacted};

use crate::attempt::{mail_of, Finished, IdleSession};
use crate::conn::{Conn, SmtpStream};
use crate::decide::{local_failure, status};
use crate::drive::drive;
use crate::machine::{ClientSession, End};

/// Delivers `recipients` (indices into `job.envelope.recipients`) over one session to
/// `params.addr`, then `QUIT`. At `may`, a failed TLS handshake is retried once in
/// cleartext on a new connection.
pub async fn deliver_to_address(
    params: &SessionParams,
    job: &DeliveryJob,
    recipients: &[usize],
) -> Result<Transacted, SessionError> {
    let finished = deliver_fresh(params, job, recipients).await;
    if let Some(idle) = finished.idle {
        crate::cache::Idle::close(idle).await;
    }
    finished.result
}

/// Like [`deliver_to_address`], but a cleanly finished session is handed back (in
/// [`Finished::idle`]) instead of being closed.
pub(crate) async fn deliver_fresh(
    params: &SessionParams,
    job: &DeliveryJob,
    recipients: &[usize],
) -> Finished {
    let first = attempt(params, job, recipients, false).await;
    match first {
        Attempt::Finished(f) => *f,
        Attempt::RetryCleartext(reason) => {
            tracing::info!(id = %job.id, relay = %params.relay(), "TLS handshake failed ({reason}); retrying in cleartext");
            match attempt(params, job, recipients, true).await {
                Attempt::Finished(f) => *f,
                // A cleartext retry never tries STARTTLS.
                Attempt::RetryCleartext(reason) => Finished::failed(
                    unreachable(
                        params,
                        FailureKind::HandshakeFailed,
                        status::BAD_CONNECTION,
                        reason,
                    ),
                    None,
                ),
            }
        }
    }
}

enum Attempt {
    Finished(Box<Finished>),
    RetryCleartext(String),
}

async fn attempt(
    params: &SessionParams,
    job: &DeliveryJob,
    recipients: &[usize],
    retry_cleartext: bool,
) -> Attempt {
    let connect =
        tokio::time::timeout(params.connect_timeout, TcpStream::connect(params.addr)).await;
    let stream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Attempt::Finished(Box::new(Finished::failed(
                unreachable(
                    params,
                    FailureKind::ConnectFailed,
                    status::NO_ANSWER,
                    format!("connect failed: {e}"),
                ),
                None,
            )))
        }
        Err(_) => {
            return Attempt::Finished(Box::new(Finished::failed(
                unreachable(
                    params,
                    FailureKind::ConnectTimeout,
                    status::NO_ANSWER,
                    "connect timed out",
                ),
                None,
            )))
        }
    };
    let local_ip = stream.local_addr().ok().map(|a| a.ip());
    let conn = Conn::new(SmtpStream::Plain(stream), params.command_timeout);
    let mut machine = ClientSession::fresh(
        params.peer(),
        params.requirement.clone(),
        retry_cleartext,
        Some(mail_of(job, recipients)),
    );
    let first = machine.start();
    let (end, conn) = drive(&mut machine, first, conn, &params.tls_setup()).await;
    let greeted = machine.greeted();
    let finished = |result, idle| Finished {
        result,
        idle,
        local_ip,
        greeted,
    };
    Attempt::Finished(Box::new(match end {
        End::Transacted { report, reusable } => {
            let idle = match (reusable, conn) {
                (true, Some(conn)) => Some(IdleSession {
                    local_ip,
                    caps: machine.capabilities().clone(),
                    tls: machine.tls().cloned().unwrap_or_default(),
                    conn,
                }),
                _ => None,
            };
            finished(Ok(report), idle)
        }
        End::Failed(e) => finished(Err(e), None),
        End::RetryCleartext { reason, .. } => return Attempt::RetryCleartext(reason),
        End::Stale | End::Probed => finished(
            Err(unreachable(
                params,
                FailureKind::ProtocolError,
                status::BAD_CONNECTION,
                "the session ended before the transaction",
            )),
            None,
        ),
    }))
}

fn unreachable(
    params: &SessionParams,
    kind: FailureKind,
    status: mxgate_smtp::EnhancedStatus,
    detail: impl std::fmt::Display,
) -> SessionError {
    SessionError::Unreachable {
        relay: params.relay(),
        failure: local_failure(
            kind,
            status,
            Some(&params.mx_host),
            format!("{}: {detail}", params.relay()),
        ),
    }
}
