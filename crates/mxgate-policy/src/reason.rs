//! Why a destination or one of its MX hosts cannot be used, as types.
//!
//! Every reason the policy engine gives for not dialling an MX host ([`SkipReason`]) or
//! for having no plan at all ([`PlanError`]) is a variant here, with a `Display`
//! sentence for people (log line, DSN, `mxgate policy`). Callers decide by the variant
//! (defer or bounce, metric label, failure kind), never by the text.

use mxgate_dns::{DnsError, DnssecStatus};

/// Why one DNS lookup gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LookupFailure {
    /// DNSSEC validation failed: the answer may be forged (RFC 4035 §5.5).
    Bogus,
    /// The DNSSEC status could not be established (RFC 4033 §5).
    Indeterminate,
    /// SERVFAIL, REFUSED, timeout, network error; the resolver's words.
    Temporary(String),
    /// The resolver self-test fails (docs/operations.md, "Resolver self-test"): a bogus
    /// or indeterminate answer says nothing about the destination, the resolver does
    /// not validate DNSSEC.
    ResolverNotValidating,
}

impl LookupFailure {
    /// The DNSSEC state this failure reports (`mxgate policy`).
    pub fn dnssec_status(&self) -> DnssecStatus {
        match self {
            LookupFailure::Bogus => DnssecStatus::Bogus,
            LookupFailure::Indeterminate
            | LookupFailure::Temporary(_)
            | LookupFailure::ResolverNotValidating => DnssecStatus::Indeterminate,
        }
    }

    /// From an answer whose status is neither secure nor insecure.
    pub fn from_status(status: DnssecStatus) -> LookupFailure {
        match status {
            DnssecStatus::Bogus => LookupFailure::Bogus,
            _ => LookupFailure::Indeterminate,
        }
    }

    /// From a failed lookup (anything but [`DnsError::InvalidName`], which callers
    /// treat as a permanent error first).
    pub fn from_dns_error(e: &DnsError) -> LookupFailure {
        match e {
            DnsError::Bogus { .. } => LookupFailure::Bogus,
            DnsError::Temporary { detail, .. } => LookupFailure::Temporary(detail.clone()),
            DnsError::Setup(s) => LookupFailure::Temporary(s.clone()),
            DnsError::InvalidName { name } => {
                LookupFailure::Temporary(format!("invalid DNS name {name:?}"))
            }
        }
    }

    /// The same failure once the resolver self-test is known to fail: bogus and
    /// indeterminate answers are the resolver's fault then.
    pub fn blame_resolver(self, resolver_validates: bool) -> LookupFailure {
        match self {
            LookupFailure::Bogus | LookupFailure::Indeterminate if !resolver_validates => {
                LookupFailure::ResolverNotValidating
            }
            other => other,
        }
    }
}

impl std::fmt::Display for LookupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupFailure::Bogus => f.write_str("DNSSEC validation failed (bogus)"),
            LookupFailure::Indeterminate => f.write_str("DNSSEC status is indeterminate"),
            LookupFailure::Temporary(detail) => write!(f, "lookup failed: {detail}"),
            LookupFailure::ResolverNotValidating => f.write_str(
                "resolver does not validate DNSSEC (see docs/operations.md, resolver self-test)",
            ),
        }
    }
}

/// Why one MX host of a plan is not dialled. If no MX host is left, this is the
/// deferral reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum SkipReason {
    /// The A/AAAA lookup of the host failed (RFC 7672 §2.2.2: the host is then
    /// temporarily unreachable, DANE must not be silently skipped).
    #[error("address records of {host}: {failure}")]
    AddressLookup {
        host: String,
        failure: LookupFailure,
    },
    /// The host has no A/AAAA records.
    #[error("no address records for {host}")]
    NoAddress { host: String },
    /// The TLSA lookup failed (RFC 7672 §2.2: the host is temporarily unreachable;
    /// RFC 8461 §2: MTA-STS never overrides a failing DANE check).
    #[error("dane: TLSA records of {host}: {failure}")]
    TlsaLookup {
        host: String,
        failure: LookupFailure,
    },
    /// MTA-STS `enforce`: the host matches no `mx` pattern (RFC 8461 §4.1).
    #[error("mta-sts enforce: {host} not in policy")]
    NotInMtaStsPolicy { host: String },
    /// `dane-only`: no secure TLSA RRset for the host.
    #[error("dane-only: no secure TLSA records for {host}")]
    DaneOnlyNoTlsa { host: String },
    /// `dane-only`: a secure TLSA RRset, but every record unusable (RFC 7672 §2.2 would
    /// allow unauthenticated TLS; `dane-only` does not).
    #[error("dane-only: no usable TLSA records for {host} (all are unusable)")]
    DaneOnlyUnusableTlsa { host: String },
}

impl SkipReason {
    /// The DNS failure behind this reason, if it is one.
    pub fn lookup_failure(&self) -> Option<&LookupFailure> {
        match self {
            SkipReason::AddressLookup { failure, .. } | SkipReason::TlsaLookup { failure, .. } => {
                Some(failure)
            }
            _ => None,
        }
    }

    /// Whether the resolver self-test failure is the cause.
    pub fn is_resolver_failure(&self) -> bool {
        self.lookup_failure() == Some(&LookupFailure::ResolverNotValidating)
    }
}

/// No plan could be made for the destination domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// RFC 7505 null MX: the domain accepts no mail.
    #[error("domain {domain} does not accept mail (null MX)")]
    NullMx { domain: String },
    /// The domain does not exist (NXDOMAIN for the MX lookup).
    #[error("domain {domain} not found (NXDOMAIN)")]
    NxDomain { domain: String },
    /// No MX records and no address records for the implicit MX (RFC 5321 §5.1).
    #[error("domain {domain} has no MX and no address records")]
    NoMailHost { domain: String },
    /// Not a valid DNS name.
    #[error("{domain:?} is not a valid domain name")]
    InvalidName { domain: String },
    /// The MX lookup failed: bogus, indeterminate (where DANE could apply), SERVFAIL,
    /// timeout, or the resolver does not validate.
    #[error("MX records of {domain}: {failure}")]
    MxLookup {
        domain: String,
        failure: LookupFailure,
    },
}

impl PlanError {
    /// Bounce (`true`) or defer.
    pub fn is_permanent(&self) -> bool {
        match self {
            PlanError::NullMx { .. }
            | PlanError::NxDomain { .. }
            | PlanError::NoMailHost { .. }
            | PlanError::InvalidName { .. } => true,
            PlanError::MxLookup { .. } => false,
        }
    }

    /// The DNS failure behind this error, if it is a temporary one.
    pub fn lookup_failure(&self) -> Option<&LookupFailure> {
        match self {
            PlanError::MxLookup { failure, .. } => Some(failure),
            _ => None,
        }
    }

    /// The domain the error is about.
    pub fn domain(&self) -> &str {
        match self {
            PlanError::NullMx { domain }
            | PlanError::NxDomain { domain }
            | PlanError::NoMailHost { domain }
            | PlanError::InvalidName { domain }
            | PlanError::MxLookup { domain, .. } => domain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_blame_replaces_only_dnssec_failures() {
        assert_eq!(
            LookupFailure::Bogus.blame_resolver(false),
            LookupFailure::ResolverNotValidating
        );
        assert_eq!(
            LookupFailure::Indeterminate.blame_resolver(false),
            LookupFailure::ResolverNotValidating
        );
        assert_eq!(
            LookupFailure::Bogus.blame_resolver(true),
            LookupFailure::Bogus
        );
        let t = LookupFailure::Temporary("SERVFAIL".into());
        assert_eq!(t.clone().blame_resolver(false), t);
    }

    #[test]
    fn sentences_name_the_cause() {
        let r = SkipReason::TlsaLookup {
            host: "mx.example".into(),
            failure: LookupFailure::ResolverNotValidating,
        };
        assert!(r.to_string().contains("resolver does not validate DNSSEC"));
        assert!(r.is_resolver_failure());
        let e = PlanError::MxLookup {
            domain: "example".into(),
            failure: LookupFailure::Bogus,
        };
        assert!(!e.is_permanent());
        assert_eq!(
            e.to_string(),
            "MX records of example: DNSSEC validation failed (bogus)"
        );
        assert!(PlanError::NullMx { domain: "x".into() }.is_permanent());
    }
}
