//! Would an established session have met a TLS requirement? [`evaluate`] judges the
//! facts of one session (TLS or not, the peer's chain, the time) against a
//! [`TlsRequirement`] the session was *not* built for: a shadow level (docs/policy.md,
//! "Rolling out a stricter level") or an MTA-STS `testing` policy, which RFC 8461 §5
//! asks to check and report without enforcing ("In "testing" mode, … Sending MTAs …
//! SHOULD NOT reject messages"). Pure: the trust roots come in as a verifier, the time
//! as an argument; nothing here opens a connection or changes what is delivered.

use rustls::client::danger::ServerCertVerifier;
use rustls::{CertificateError, Error as TlsError};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::auth::Auth;
use crate::dane::{match_chain, DaneError};
use crate::plan::TlsRequirement;
use crate::reason::SkipReason;

/// What one established session showed, as delivery saw it.
#[derive(Debug, Clone, Copy)]
pub struct SessionFacts<'a> {
    /// Whether the session runs over TLS (a `may` session may be cleartext).
    pub tls: bool,
    /// The certificates the peer presented, leaf first (empty without TLS).
    pub peer_chain: &'a [CertificateDer<'a>],
    pub now: UnixTime,
}

/// Why a session would not have met a requirement. Field-less, with a stable tag for
/// the `reason` metric label and the `shadow=` log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RequirementFailure {
    #[error("no TLS on the session")]
    NoTls,
    #[error("no certificate presented")]
    NoCertificate,
    #[error("certificate expired or not yet valid")]
    CertificateExpired,
    #[error("certificate not issued by a trusted root")]
    CertificateNotTrusted,
    #[error("certificate not valid for the MX host name")]
    CertificateHostMismatch,
    #[error("no TLSA record matches the certificate chain")]
    TlsaMismatch,
    #[error("MX host not in the MTA-STS policy")]
    MxNotInPolicy,
    #[error("no usable secure TLSA records")]
    NoTlsa,
    #[error("DNS lookup failed for the requirement")]
    DnsFailure,
}

impl RequirementFailure {
    /// Stable tag (metric label `reason`, log field `shadow=failed:TAG`).
    pub fn as_str(self) -> &'static str {
        match self {
            RequirementFailure::NoTls => "no-tls",
            RequirementFailure::NoCertificate => "no-certificate",
            RequirementFailure::CertificateExpired => "certificate-expired",
            RequirementFailure::CertificateNotTrusted => "certificate-not-trusted",
            RequirementFailure::CertificateHostMismatch => "certificate-host-mismatch",
            RequirementFailure::TlsaMismatch => "tlsa-mismatch",
            RequirementFailure::MxNotInPolicy => "mx-not-in-policy",
            RequirementFailure::NoTlsa => "no-tlsa",
            RequirementFailure::DnsFailure => "dns-failure",
        }
    }

    /// The RFC 8460 §4.3 result type of this failure (TLS-RPT `result-type`).
    pub fn rfc8460_result_type(self) -> &'static str {
        match self {
            RequirementFailure::NoTls => "starttls-not-supported",
            RequirementFailure::NoCertificate | RequirementFailure::CertificateNotTrusted => {
                "certificate-not-trusted"
            }
            RequirementFailure::CertificateExpired => "certificate-expired",
            RequirementFailure::CertificateHostMismatch | RequirementFailure::MxNotInPolicy => {
                "certificate-host-mismatch"
            }
            RequirementFailure::TlsaMismatch => "validation-failure",
            RequirementFailure::NoTlsa => "tlsa-invalid",
            RequirementFailure::DnsFailure => "dnssec-invalid",
        }
    }
}

impl From<&SkipReason> for RequirementFailure {
    /// A host the requirement would never have dialled.
    fn from(reason: &SkipReason) -> Self {
        match reason {
            SkipReason::NotInMtaStsPolicy { .. } => RequirementFailure::MxNotInPolicy,
            SkipReason::DaneOnlyNoTlsa { .. } | SkipReason::DaneOnlyUnusableTlsa { .. } => {
                RequirementFailure::NoTlsa
            }
            SkipReason::AddressLookup { .. }
            | SkipReason::NoAddress { .. }
            | SkipReason::TlsaLookup { .. } => RequirementFailure::DnsFailure,
        }
    }
}

/// Whether `session` meets `requirement`, and how it would have been authenticated.
///
/// `pkix` is the PKIX verifier of the trust roots (`PolicyEngine::pkix_verifier`); it
/// judges the chain for each reference identifier of a `Pkix` requirement in turn,
/// exactly as the enforcing verifier does. `Dane` uses [`match_chain`], the function
/// the DANE verifier runs (RFC 7672 §3.1: DANE-EE ignores names and dates, DANE-TA
/// checks both).
pub fn evaluate(
    requirement: &TlsRequirement,
    session: &SessionFacts<'_>,
    pkix: &dyn ServerCertVerifier,
) -> Result<Auth, RequirementFailure> {
    match requirement {
        TlsRequirement::Cleartext | TlsRequirement::Opportunistic => Ok(Auth::None),
        _ if !session.tls => Err(RequirementFailure::NoTls),
        TlsRequirement::Encrypt => Ok(Auth::None),
        TlsRequirement::Pkix { names } => {
            let (leaf, intermediates) = session
                .peer_chain
                .split_first()
                .ok_or(RequirementFailure::NoCertificate)?;
            let mut failure = RequirementFailure::CertificateHostMismatch;
            for name in names {
                let Ok(server_name) = ServerName::try_from(name.as_str()) else {
                    continue;
                };
                match pkix.verify_server_cert(leaf, intermediates, &server_name, &[], session.now) {
                    Ok(_) => return Ok(Auth::Pkix),
                    Err(e) => failure = pkix_failure(&e),
                }
                // Only a name mismatch can be cured by the next name.
                if failure != RequirementFailure::CertificateHostMismatch {
                    break;
                }
            }
            Err(failure)
        }
        TlsRequirement::Dane { tlsa, names } => {
            match_chain(tlsa, session.peer_chain, names, session.now).map_err(|e| match e {
                DaneError::NoCertificate => RequirementFailure::NoCertificate,
                DaneError::BadName(_) => RequirementFailure::CertificateHostMismatch,
                DaneError::NoMatch(_) | DaneError::BadChain(_) => RequirementFailure::TlsaMismatch,
            })
        }
    }
}

/// The typed rustls verdict as a failure.
fn pkix_failure(e: &TlsError) -> RequirementFailure {
    match e {
        TlsError::InvalidCertificate(c) => match c {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => RequirementFailure::CertificateExpired,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                RequirementFailure::CertificateHostMismatch
            }
            _ => RequirementFailure::CertificateNotTrusted,
        },
        _ => RequirementFailure::CertificateNotTrusted,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "evaluate_tests.rs"]
mod tests;
