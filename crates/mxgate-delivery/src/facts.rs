//! What a session found out, shared by the machine, its driver and the MX loop: the
//! TLS facts, a transaction's outcomes, why a session decided nothing, and the shadow
//! level's verdict. Plain data; no I/O, no decisions.

use mxgate_queue::{DeliveryFailure, RecipientOutcome};

use crate::decide::TlsPolicyFailure;

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
