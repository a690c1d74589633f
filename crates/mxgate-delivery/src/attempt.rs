//! What one session at one MX address takes ([`SessionParams`]) and leaves
//! ([`Finished`], with an [`IdleSession`] when the connection may be kept), shared by
//! the fresh-connection path (`session`) and the reuse path (`reuse`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mxgate_policy::TlsRequirement;
use mxgate_queue::DeliveryJob;
use mxgate_smtp::Capabilities;
use rustls::ClientConfig;

use crate::cache::Idle;
use crate::conn::{Conn, SmtpStream};
use crate::drive::TlsSetup;
use crate::facts::{SessionError, ShadowVerdict, TlsFacts, Transacted};
use crate::machine::{Mail, Peer};

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
    pub(crate) fn failed(e: SessionError, local_ip: Option<IpAddr>) -> Self {
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

/// A session parked between transactions: the connection, what the server advertised
/// in its last EHLO (after STARTTLS when TLS is up), and the TLS facts.
pub struct IdleSession {
    pub(crate) conn: Conn<SmtpStream>,
    pub(crate) local_ip: Option<IpAddr>,
    pub(crate) caps: Capabilities,
    pub(crate) tls: TlsFacts,
}

impl Idle for IdleSession {
    async fn close(mut self) {
        self.conn.quit().await;
    }
}
