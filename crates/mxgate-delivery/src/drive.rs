//! The one async driver of [`ClientSession`]: writes what the machine asks, reads
//! replies within the timeout it names, runs the TLS handshake, and feeds back what
//! happened. Delivery (`session`, `reuse`) and `mxgate check` use it alike, so both
//! see the same SNI, TLS version and cipher words and the same certificate verdicts.
//!
//! It decides nothing about SMTP: every rule is in `machine`.

use std::sync::Arc;
use std::time::Duration;

use mxgate_policy::TlsRequirement;
use mxgate_queue::FailureKind;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::conn::{Conn, ConnError, SmtpStream};
use crate::facts::TlsFacts;
use crate::machine::{ClientSession, End, Input, Lost, Step, Wait};

/// RFC 5321 §4.5.3.2.6: "DATA Termination: 10 minutes."
pub const DATA_TERMINATION_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a cached session may take to answer `RSET` (and anyone to answer `QUIT`)
/// before it is given up (capped by the command timeout).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handshake needs.
#[derive(Clone)]
pub struct TlsSetup {
    /// The rustls configuration (verifier); `None` when TLS is never used.
    pub config: Option<Arc<ClientConfig>>,
    /// SNI: the MX host name; for DANE the TLSA base domain ([`sni`]).
    pub sni: String,
    /// For `auth=` (which verifier authenticated the server).
    pub requirement: TlsRequirement,
    /// For reasons.
    pub mx_host: String,
}

/// SNI (docs/policy.md): the MX host name; for DANE, the TLSA base domain, which
/// the plan puts first in `names`.
pub fn sni(requirement: &TlsRequirement, mx_host: &str) -> String {
    match requirement {
        TlsRequirement::Dane { names, .. } => names
            .first()
            .cloned()
            .unwrap_or_else(|| mx_host.to_string()),
        _ => mx_host.to_string(),
    }
}

/// The TLS facts of an established session, in the words logs, metrics and `check`
/// share: `TLSv1.2`/`TLSv1.3`, the IANA cipher suite name, `auth=`.
pub fn tls_facts(session: &rustls::ClientConnection, requirement: &TlsRequirement) -> TlsFacts {
    TlsFacts {
        version: match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
            Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
            _ => None,
        },
        cipher: session.negotiated_cipher_suite().map(|c| {
            let suite = c.suite();
            suite
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("0x{:04x}", u16::from(suite)))
        }),
        auth: mxgate_policy::tls::authenticated_by(
            requirement,
            session.peer_certificates().unwrap_or_default(),
        )
        .as_str(),
        peer_chain: session
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.clone().into_owned())
            .collect(),
        shadow: None,
    }
}

/// Runs `machine` from `first` to its end over `conn`. Returns the end and the
/// connection when it is still open (a reusable session, or a probe to inspect).
pub async fn drive(
    machine: &mut ClientSession,
    first: Step,
    conn: Conn<SmtpStream>,
    tls: &TlsSetup,
) -> (End, Option<Conn<SmtpStream>>) {
    let command_timeout = conn.timeout();
    let mut conn = Some(conn);
    let mut step = first;
    loop {
        step = match step {
            Step::Done(end) => return (end, conn),
            Step::Send { bytes, wait } => match conn.as_mut() {
                None => machine.handle(Input::Lost(Lost::Closed("no connection".into()))),
                Some(c) => match c.send(&bytes).await {
                    Err(e) => machine.handle(Input::Lost(lost(e))),
                    Ok(()) => read(machine, c, wait, command_timeout).await,
                },
            },
            Step::Read { wait } => match conn.as_mut() {
                None => machine.handle(Input::Lost(Lost::Closed("no connection".into()))),
                Some(c) => read(machine, c, wait, command_timeout).await,
            },
            Step::StartTls => match conn.take() {
                None => machine.handle(Input::Lost(Lost::Closed("no connection".into()))),
                // RFC 3207 §4.2: nothing received before the handshake may be used.
                Some(c) if c.has_buffered_input() => machine.handle(Input::DataBeforeHandshake),
                Some(c) => match handshake(c, tls).await {
                    Ok((c, facts)) => {
                        conn = Some(c);
                        machine.handle(Input::TlsUp(facts))
                    }
                    Err((kind, reason)) => machine.handle(Input::TlsFailed { kind, reason }),
                },
            },
        };
    }
}

async fn read(
    machine: &mut ClientSession,
    conn: &mut Conn<SmtpStream>,
    wait: Wait,
    command_timeout: Duration,
) -> Step {
    let timeout = match wait {
        Wait::Command => command_timeout,
        Wait::DataEnd => command_timeout.max(DATA_TERMINATION_TIMEOUT),
        Wait::Probe => PROBE_TIMEOUT.min(command_timeout),
    };
    match conn.reply_within(timeout).await {
        Ok(reply) => machine.handle(Input::Reply(reply)),
        Err(e) => machine.handle(Input::Lost(lost(e))),
    }
}

fn lost(e: ConnError) -> Lost {
    match e {
        ConnError::Timeout(_) => Lost::Timeout(e.to_string()),
        ConnError::Malformed(_) => Lost::Garbled(e.to_string()),
        ConnError::Io(_) | ConnError::Closed => Lost::Closed(e.to_string()),
    }
}

async fn handshake(
    conn: Conn<SmtpStream>,
    tls: &TlsSetup,
) -> Result<(Conn<SmtpStream>, TlsFacts), (FailureKind, String)> {
    let timeout = conn.timeout();
    let SmtpStream::Plain(tcp) = conn.into_stream() else {
        return Err((FailureKind::HandshakeFailed, "TLS is already up".into()));
    };
    let Some(config) = tls.config.clone() else {
        return Err((FailureKind::HandshakeFailed, "no TLS configuration".into()));
    };
    let Ok(name) = ServerName::try_from(tls.sni.clone()) else {
        return Err((
            FailureKind::BadAddress,
            format!("{} is not a valid TLS server name", tls.sni),
        ));
    };
    let connect = TlsConnector::from(config).connect(name, tcp);
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(stream)) => {
            let facts = tls_facts(stream.get_ref().1, &tls.requirement);
            Ok((Conn::new(SmtpStream::Tls(Box::new(stream)), timeout), facts))
        }
        Ok(Err(e)) => {
            count_handshake_failure(handshake_failure_reason(&e));
            Err(handshake_failure(&tls.mx_host, &e))
        }
        Err(_) => {
            count_handshake_failure("timeout");
            Err((
                FailureKind::HandshakeFailed,
                format!("TLS handshake with {} timed out", tls.mx_host),
            ))
        }
    }
}

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

/// The kind and the sentence of a failed handshake; certificate problems name the
/// certificate.
fn handshake_failure(mx_host: &str, e: &std::io::Error) -> (FailureKind, String) {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(cert_error)) => {
            let (kind, detail) = certificate_problem(cert_error);
            (
                kind,
                format!("certificate for {mx_host} not valid: {detail}"),
            )
        }
        Some(other) => (
            FailureKind::HandshakeFailed,
            format!("TLS handshake with {mx_host} failed: {other}"),
        ),
        None => (
            FailureKind::HandshakeFailed,
            format!("TLS handshake with {mx_host} failed: {e}"),
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
