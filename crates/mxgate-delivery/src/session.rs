//! One SMTP client session to one address of one MX (RFC 5321, RFC 3207): greeting,
//! EHLO, STARTTLS as the [`TlsRequirement`] demands, then one transaction for the
//! recipients of a job.
//!
//! The decisions live in `decide` (pure, table-tested); this module only sequences I/O.
//! [`deliver_fresh`] hands a cleanly finished session back for reuse; the public
//! [`deliver_to_address`] closes it with `QUIT`. It does not pick MX hosts, addresses or levels, log, or count metrics (the caller in
//! `lib.rs` does, from the returned facts).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mxgate_policy::TlsRequirement;
use mxgate_queue::{DeliveryFailure, DeliveryJob, FailureKind, RecipientOutcome};
use mxgate_smtp::client;
use mxgate_smtp::Capabilities;
use mxgate_smtp::{EnhancedStatus, StatusClass};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::conn::{Conn, ConnError, SmtpStream};
use crate::decide::{
    local_failure, remote_failure, starttls_step, status, StartTlsStep, TlsPolicyFailure,
};
use crate::transaction::{transaction, Finished};

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
}

impl SessionParams {
    /// `host[addr]:port`, as Postfix logs it.
    pub fn relay(&self) -> String {
        format!("{}[{}]:{}", self.mx_host, self.addr.ip(), self.addr.port())
    }

    /// SNI (contract §2): the MX host name; for DANE, the TLSA base domain, which the
    /// plan puts first in `names`.
    fn sni(&self) -> String {
        match &self.requirement {
            TlsRequirement::Dane { names, .. } => names
                .first()
                .cloned()
                .unwrap_or_else(|| self.mx_host.clone()),
            _ => self.mx_host.clone(),
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
}

impl Default for TlsFacts {
    /// A cleartext session: no version, no cipher, `auth=none`.
    fn default() -> Self {
        TlsFacts {
            version: None,
            cipher: None,
            auth: "none",
        }
    }
}

/// A session that reached a transaction: an outcome for every recipient.
#[derive(Debug, Clone)]
pub struct Transacted {
    pub relay: String,
    pub tls: TlsFacts,
    pub outcomes: Vec<RecipientOutcome>,
}

/// A session that decided nothing about the recipients.
#[derive(Debug, Clone, thiserror::Error)]
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

/// Internal: a `may` handshake failure that calls for a cleartext retry.
enum Attempt {
    Done(Result<Transacted, SessionError>),
    Finished(Box<Finished>),
    RetryCleartext(String),
}

/// Delivers `recipients` (indices into `job.envelope.recipients`) over one session to
/// `params.addr`, then `QUIT`. At `may`, a failed TLS handshake is retried once in
/// cleartext on a new connection (contract §2).
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

/// Like [`deliver_to_address`] on a new connection, but a cleanly finished session is
/// handed back (in [`Finished::idle`]) instead of being closed.
pub(crate) async fn deliver_fresh(
    params: &SessionParams,
    job: &DeliveryJob,
    recipients: &[usize],
) -> Finished {
    let mut local_ip = None;
    let done = |result| Finished {
        result,
        idle: None,
        local_ip: None,
    };
    let mut finished = match attempt(params, job, recipients, false, &mut local_ip).await {
        Attempt::Done(result) => done(result),
        Attempt::Finished(finished) => *finished,
        Attempt::RetryCleartext(detail) => {
            tracing::info!(id = %job.id, relay = %params.relay(), "TLS handshake failed ({detail}); retrying in cleartext");
            match attempt(params, job, recipients, true, &mut local_ip).await {
                Attempt::Done(result) => done(result),
                Attempt::Finished(finished) => *finished,
                // Unreachable: a cleartext retry never tries STARTTLS.
                Attempt::RetryCleartext(detail) => done(Err(unreachable(
                    params,
                    FailureKind::HandshakeFailed,
                    status::BAD_CONNECTION,
                    detail,
                ))),
            }
        }
    };
    finished.local_ip = local_ip;
    finished
}

fn unreachable(
    params: &SessionParams,
    kind: FailureKind,
    status: EnhancedStatus,
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

pub(crate) fn lost(params: &SessionParams, e: ConnError) -> SessionError {
    let kind = match e {
        ConnError::Timeout(_) => FailureKind::Timeout,
        ConnError::Malformed(_) => FailureKind::ProtocolError,
        ConnError::Io(_) | ConnError::Closed => FailureKind::ConnectionLost,
    };
    unreachable(
        params,
        kind,
        status::BAD_CONNECTION,
        format!("lost connection: {e}"),
    )
}

pub(crate) fn policy_failure(
    params: &SessionParams,
    kind: FailureKind,
    what: String,
) -> SessionError {
    SessionError::TlsPolicy {
        relay: params.relay(),
        failure: TlsPolicyFailure {
            kind,
            message: format!("{}: {what}", params.policy_label),
        },
    }
}

async fn attempt(
    params: &SessionParams,
    job: &DeliveryJob,
    recipients: &[usize],
    retry_cleartext: bool,
    local_ip: &mut Option<IpAddr>,
) -> Attempt {
    let connect =
        tokio::time::timeout(params.connect_timeout, TcpStream::connect(params.addr)).await;
    let stream = match connect {
        Ok(Ok(s)) => {
            *local_ip = s.local_addr().ok().map(|a| a.ip());
            s
        }
        Ok(Err(e)) => {
            return Attempt::Done(Err(unreachable(
                params,
                FailureKind::ConnectFailed,
                status::NO_ANSWER,
                format!("connect failed: {e}"),
            )))
        }
        Err(_) => {
            return Attempt::Done(Err(unreachable(
                params,
                FailureKind::ConnectTimeout,
                status::NO_ANSWER,
                "connect timed out",
            )))
        }
    };
    let mut conn = Conn::new(stream, params.command_timeout);
    let greeting = match conn.reply().await {
        Ok(r) => r,
        Err(e) => return Attempt::Done(Err(lost(params, e))),
    };
    // RFC 5321 §3.1: a 554 greeting means no service; try elsewhere. A greeting never
    // bounces (it comes before TLS at every level), so it is made transient here.
    if !greeting.is_positive() {
        conn.quit().await;
        let mut failure = remote_failure(&greeting, &params.mx_host);
        failure.kind = FailureKind::GreetingRejected;
        failure.status = failure.status.with_class(StatusClass::Transient);
        return Attempt::Done(Err(SessionError::Unreachable {
            relay: params.relay(),
            failure,
        }));
    }
    let caps = match ehlo(&mut conn, params).await {
        Ok(c) => c,
        Err(e) => return Attempt::Done(Err(e)),
    };
    let step = starttls_step(&params.requirement, caps.starttls, retry_cleartext);
    let opportunistic = match step {
        StartTlsStep::Skip => {
            let conn = conn.map_stream(SmtpStream::Plain);
            return Attempt::Finished(Box::new(
                transaction(conn, params, job, recipients, &caps, TlsFacts::default()).await,
            ));
        }
        StartTlsStep::NotOffered => {
            conn.quit().await;
            let what = format!("STARTTLS not offered by {}", params.mx_host);
            return Attempt::Done(Err(policy_failure(
                params,
                FailureKind::StarttlsNotOffered,
                what,
            )));
        }
        StartTlsStep::TryOpportunistic => true,
        StartTlsStep::Require => false,
    };
    if let Err(e) = conn.send(client::STARTTLS).await {
        return Attempt::Done(Err(lost(params, e)));
    }
    let answer = match conn.reply().await {
        Ok(r) => r,
        Err(e) if opportunistic => return Attempt::RetryCleartext(e.to_string()),
        Err(e) => return Attempt::Done(Err(lost(params, e))),
    };
    // RFC 3207 §4: "220 Ready to start TLS"; anything else means no TLS on this
    // connection. At `may` we go on in cleartext; at required levels it is a policy
    // failure (never a bounce, even for a 5xx: contract §2).
    if answer.code != 220 {
        if opportunistic {
            let conn = conn.map_stream(SmtpStream::Plain);
            return Attempt::Finished(Box::new(
                transaction(conn, params, job, recipients, &caps, TlsFacts::default()).await,
            ));
        }
        conn.quit().await;
        let what = format!("STARTTLS refused by {}: {answer}", params.mx_host);
        return Attempt::Done(Err(policy_failure(
            params,
            FailureKind::StarttlsRefused,
            what,
        )));
    }
    // RFC 3207 §4.2: "The client MUST discard any knowledge obtained from the server,
    // such as the list of SMTP service extensions, which was not obtained from the TLS
    // negotiation itself." Bytes already sent after the 220 are a response injection
    // attempt (CVE-2011-0411 class): a protocol error.
    if conn.has_buffered_input() {
        if opportunistic {
            return Attempt::RetryCleartext("server sent data after 220 Ready to start TLS".into());
        }
        let what = format!(
            "{} sent data after 220 Ready to start TLS (response injection)",
            params.mx_host
        );
        return Attempt::Done(Err(policy_failure(
            params,
            FailureKind::ResponseInjection,
            what,
        )));
    }
    let stream = conn.into_stream();
    let Some(config) = params.tls_config.clone() else {
        return match opportunistic {
            true => Attempt::RetryCleartext("no TLS configuration".into()),
            false => Attempt::Done(Err(policy_failure(
                params,
                FailureKind::HandshakeFailed,
                "no TLS configuration".into(),
            ))),
        };
    };
    let sni = match ServerName::try_from(params.sni()) {
        Ok(n) => n,
        Err(_) if opportunistic => {
            return Attempt::RetryCleartext(format!("invalid SNI {}", params.sni()))
        }
        Err(_) => {
            let what = format!("{} is not a valid TLS server name", params.sni());
            return Attempt::Done(Err(policy_failure(params, FailureKind::BadAddress, what)));
        }
    };
    let handshake = tokio::time::timeout(
        params.command_timeout,
        TlsConnector::from(config).connect(sni, stream),
    )
    .await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            count_handshake_failure(handshake_failure_reason(&e));
            if opportunistic {
                return Attempt::RetryCleartext(e.to_string());
            }
            return Attempt::Done(Err(handshake_failure(params, &e)));
        }
        Err(_) if opportunistic => {
            count_handshake_failure("timeout");
            return Attempt::RetryCleartext("TLS handshake timed out".into());
        }
        Err(_) => {
            count_handshake_failure("timeout");
            let what = format!("TLS handshake with {} timed out", params.mx_host);
            return Attempt::Done(Err(policy_failure(
                params,
                FailureKind::HandshakeFailed,
                what,
            )));
        }
    };
    let (_, session) = tls.get_ref();
    let facts = TlsFacts {
        version: match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
            Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
            _ => None,
        },
        cipher: session
            .negotiated_cipher_suite()
            .map(|c| format!("{:?}", c.suite())),
        auth: mxgate_policy::tls::authenticated_by(
            &params.requirement,
            session.peer_certificates().unwrap_or_default(),
        )
        .as_str(),
    };
    let mut conn = Conn::new(SmtpStream::Tls(Box::new(tls)), params.command_timeout);
    // RFC 3207 §4.2: the client SHOULD send an EHLO command as the first command after
    // a successful TLS negotiation.
    let caps = match ehlo(&mut conn, params).await {
        Ok(c) => c,
        Err(e) => return Attempt::Done(Err(e)),
    };
    Attempt::Finished(Box::new(
        transaction(conn, params, job, recipients, &caps, facts).await,
    ))
}

/// Maps a handshake error to a policy reason: certificate problems name the certificate.
/// `mxgate_tls_handshake_failures_total{reason}`, at every level (at `may` the
/// session then falls back to cleartext).
fn count_handshake_failure(reason: &'static str) {
    metrics::counter!("mxgate_tls_handshake_failures_total", "reason" => reason).increment(1);
}

/// A bounded label for a failed handshake.
fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => "certificate_invalid",
        Some(rustls::Error::AlertReceived(_)) => "alert_received",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(_) => "protocol_error",
        None => "io_error",
    }
}

fn handshake_failure(params: &SessionParams, e: &std::io::Error) -> SessionError {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert_error)) => {
            let (kind, detail) = certificate_problem(cert_error);
            let what = format!("certificate for {} not valid: {detail}", params.mx_host);
            policy_failure(params, kind, what)
        }
        Some(other) => policy_failure(
            params,
            FailureKind::HandshakeFailed,
            format!("TLS handshake with {} failed: {other}", params.mx_host),
        ),
        None => policy_failure(
            params,
            FailureKind::HandshakeFailed,
            format!("TLS handshake with {} failed: {e}", params.mx_host),
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

/// EHLO, with the HELO fallback of RFC 5321 §3.2 only where cleartext is acceptable
/// (a HELO session cannot do STARTTLS).
async fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    params: &SessionParams,
) -> Result<Capabilities, SessionError> {
    conn.send(&client::ehlo(&params.helo_name))
        .await
        .map_err(|e| lost(params, e))?;
    let reply = conn.reply().await.map_err(|e| lost(params, e))?;
    if reply.is_positive() {
        return Ok(Capabilities::from_ehlo(&reply));
    }
    if !params.requirement.allows_cleartext() {
        conn.quit().await;
        return Err(unreachable(
            params,
            FailureKind::HeloRejected,
            status::BAD_CONNECTION,
            format!("EHLO rejected: {reply}"),
        ));
    }
    conn.send(&client::helo(&params.helo_name))
        .await
        .map_err(|e| lost(params, e))?;
    let reply = conn.reply().await.map_err(|e| lost(params, e))?;
    if reply.is_positive() {
        Ok(Capabilities::default())
    } else {
        conn.quit().await;
        Err(unreachable(
            params,
            FailureKind::HeloRejected,
            status::BAD_CONNECTION,
            format!("HELO rejected: {reply}"),
        ))
    }
}
