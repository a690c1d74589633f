//! One SMTP client session to one address of one MX on a new connection: connect,
//! then [`ClientSession`] driven by [`drive`] (greeting, EHLO, STARTTLS as the
//! [`TlsRequirement`] demands, one transaction). At `may`, a failed TLS handshake is
//! retried once in cleartext on a new connection (docs/policy.md).
//!
//! [`deliver_fresh`] hands a cleanly finished session back for reuse; the public
//! [`deliver_to_address`] closes it with `QUIT`. It does not pick MX hosts, addresses
//! or levels, log, or count metrics (the caller in `lib.rs` does, from the returned
//! facts).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mxgate_policy::TlsRequirement;
use mxgate_queue::{DeliveryFailure, DeliveryJob, FailureKind, RecipientOutcome};
use rustls::ClientConfig;
use tokio::net::TcpStream;

use crate::conn::{Conn, SmtpStream};
use crate::decide::{local_failure, status, TlsPolicyFailure};
use crate::drive::{drive, TlsSetup};
use crate::machine::{ClientSession, End, Mail, Peer};
use crate::reuse::IdleSession;

/// Everything one session needs to know.
#[derive(Clone)]
pub struct SessionParams {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    /// The MX host name: SNI, reasons, `relay=`.
    pub mx_host: String,
    pub addr: SocketAddr,
    pub requirement: TlsRequirement,
    /// The rustls configuration (verifier) for STARTTLS; `None` only for `Cleartext`.
    pub tls_config: Option<Arc<ClientConfig>>,
    /// The level word used in reasons (`encrypt`, `verify`, `mta-sts`, `dane`).
    pub policy_label: String,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// The shadow level to check on this session, never enforced (docs/policy.md).
    pub shadow: Option<ShadowCheck>,
}

/// A shadow requirement and the PKIX verifier to judge it with.
#[derive(Clone)]
pub struct ShadowCheck {
    pub requirement: mxgate_policy::ShadowRequirement,
    pub pkix: Arc<dyn rustls::client::danger::ServerCertVerifier>,
}

/// What the shadow level said about a session (log field `shadow=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowVerdict {
    pub level: mxgate_policy::Level,
    pub result: Result<(), mxgate_policy::RequirementFailure>,
}

impl ShadowVerdict {
    /// `verify:ok` or `verify:certificate-not-trusted`.
    pub fn log_word(&self) -> String {
        match self.result {
            Ok(()) => format!("{}:ok", self.level.as_str()),
            Err(f) => format!("{}:{}", self.level.as_str(), f.as_str()),
        }
    }
}

/// Judges the session that `params` established (`facts`: TLS or not, the peer's
/// chain) against the shadow requirement, if any, with the pure
/// [`mxgate_policy::evaluate`]. Never changes the outcome.
pub(crate) fn shadow_verdict(params: &SessionParams, facts: &TlsFacts) -> Option<ShadowVerdict> {
    let check = params.shadow.as_ref()?;
    let result = match &check.requirement.requirement {
        Err(skip) => Err(skip.into()),
        Ok(requirement) => {
            let session = mxgate_policy::SessionFacts {
                tls: facts.version.is_some(),
                peer_chain: &facts.peer_chain,
                now: rustls_pki_types::UnixTime::now(),
            };
            mxgate_policy::evaluate(requirement, &session, check.pkix.as_ref()).map(|_| ())
        }
    };
    Some(ShadowVerdict {
        level: check.requirement.level,
        result,
    })
}

impl SessionParams {
    /// `host[addr]:port`, as Postfix logs it.
    pub fn relay(&self) -> String {
        format!("{}[{}]:{}", self.mx_host, self.addr.ip(), self.addr.port())
    }

    /// Who the machine talks to.
    pub(crate) fn peer(&self) -> Peer {
        Peer {
            helo_name: self.helo_name.clone(),
            mx_host: self.mx_host.clone(),
            relay: self.relay(),
            policy_label: self.policy_label.clone(),
        }
    }

    /// What the handshake needs.
    pub(crate) fn tls_setup(&self) -> TlsSetup {
        TlsSetup {
            config: self.tls_config.clone(),
            sni: crate::drive::sni(&self.requirement, &self.mx_host),
            requirement: self.requirement.clone(),
            mx_host: self.mx_host.clone(),
        }
    }
}

/// The TLS facts of a session, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFacts {
    /// `TLSv1.2` / `TLSv1.3`; `None` = cleartext.
    pub version: Option<&'static str>,
    pub cipher: Option<String>,
    /// How the server was authenticated (`auth=`): `none`, `pkix`, `dane-ee`, `dane-ta`.
    pub auth: &'static str,
    /// The certificates the peer presented, leaf first (empty in cleartext), for the
    /// shadow check.
    pub peer_chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The shadow level's verdict on this session, if one is configured.
    pub shadow: Option<ShadowVerdict>,
}

impl Default for TlsFacts {
    /// A cleartext session: no version, no cipher, `auth=none`.
    fn default() -> Self {
        TlsFacts {
            version: None,
            cipher: None,
            auth: "none",
            peer_chain: Vec::new(),
            shadow: None,
        }
    }
}

/// A session that reached a transaction: an outcome for every recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transacted {
    pub relay: String,
    pub tls: TlsFacts,
    pub outcomes: Vec<RecipientOutcome>,
}

/// A session that decided nothing about the recipients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Connect, greeting, EHLO or the conversation failed: try the next address / MX.
    #[error("{relay}: {}", failure.diagnostic)]
    Unreachable {
        relay: String,
        failure: DeliveryFailure,
    },
    /// The required TLS level was not met on this MX.
    #[error("{relay}: {}", failure.message)]
    TlsPolicy {
        relay: String,
        failure: TlsPolicyFailure,
    },
}

/// What one session leaves: its result, the connection when it may be kept, and
/// facts for limits and reports.
pub(crate) struct Finished {
    pub result: Result<Transacted, SessionError>,
    pub idle: Option<IdleSession>,
    /// Our address on the connection, when one was made.
    pub local_ip: Option<IpAddr>,
    /// EHLO (and TLS where used) completed: counts against `mx_session_limit`.
    pub greeted: bool,
}

impl Finished {
    fn failed(e: SessionError, local_ip: Option<IpAddr>) -> Self {
        Finished {
            result: Err(e),
            idle: None,
            local_ip,
            greeted: false,
        }
    }
}

/// The transaction's part of the job, for the machine.
pub(crate) fn mail_of(job: &DeliveryJob, recipients: &[usize]) -> Mail {
    Mail {
        envelope: job.envelope.clone(),
        recipients: recipients.to_vec(),
        message: job.message.clone(),
    }
}

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

/// What is wrong with a certificate, in words an operator understands (never a Debug
/// dump of the rustls or webpki error).
pub fn certificate_problem(e: &rustls::CertificateError) -> (FailureKind, String) {
    use rustls::CertificateError as C;
    let text = |s: &str| s.to_string();
    match e {
        C::UnknownIssuer => (FailureKind::CertificateNotTrusted, text("unknown issuer")),
        C::Expired | C::ExpiredContext { .. } => (FailureKind::CertificateExpired, text("expired")),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            (FailureKind::CertificateExpired, text("not yet valid"))
        }
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            (FailureKind::CertificateHostMismatch, text("name mismatch"))
        }
        C::BadSignature => (FailureKind::CertificateInvalid, text("bad signature")),
        C::BadEncoding => (
            FailureKind::CertificateInvalid,
            text("malformed certificate"),
        ),
        C::Revoked => (FailureKind::CertificateInvalid, text("revoked")),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => (
            FailureKind::CertificateInvalid,
            text("not issued for TLS server authentication"),
        ),
        C::ApplicationVerificationFailure => (
            FailureKind::DaneMismatch,
            text("no TLSA record matches the certificate chain"),
        ),
        C::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity) => (
                FailureKind::CertificateNotTrusted,
                text("self-signed certificate (a CA certificate used as the server certificate)"),
            ),
            Some(webpki::Error::EndEntityUsedAsCa) => (
                FailureKind::CertificateNotTrusted,
                text("a server certificate used as a CA certificate in the chain"),
            ),
            Some(
                webpki::Error::PathLenConstraintViolated | webpki::Error::MaximumPathDepthExceeded,
            ) => (
                FailureKind::CertificateNotTrusted,
                text("the certificate chain is too long"),
            ),
            Some(webpki::Error::NameConstraintViolation) => (
                FailureKind::CertificateNotTrusted,
                text("the chain violates its CA's name constraints"),
            ),
            Some(other) => (
                FailureKind::CertificateInvalid,
                format!("rejected: {other}"),
            ),
            None => (
                FailureKind::CertificateInvalid,
                format!("rejected: {other}"),
            ),
        },
        _ => (FailureKind::CertificateInvalid, text("not valid")),
    }
}
