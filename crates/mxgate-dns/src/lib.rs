//! DNS lookups with their DNSSEC status (RFC 4033–4035).
//!
//! [`DnsClient`] answers the four questions mxgate asks of the DNS — MX, A/AAAA, TLSA
//! and TXT — and attaches to every answer (positive or negative) a [`DnssecStatus`], so
//! that the policy engine can tell a DNSSEC-proven answer from an unsigned one, and
//! both from an attack (bogus) or an outage (lookup failure). Three modes, chosen by
//! `dns.dnssec`:
//!
//! - `validate`: hickory-resolver's in-process validator, from `dns.trust_anchor`
//!   (or the IANA root anchors built into hickory);
//! - `trust-ad`: a small stub resolver ([`stub`]) that sets the AD and DO bits and
//!   trusts the AD bit of the answer of a validating resolver, which must be on
//!   loopback;
//! - `off`: no DNSSEC, every answer is [`DnssecStatus::Insecure`].
//!
//! The mapping from resolver results to typed answers is pure code ([`classify`]) with
//! table tests. Denials (NODATA, NXDOMAIN) are cached here as RFC 2308 says
//! ([`negcache`], since neither hickory's validator nor the stub keeps them); positive
//! answers only in hickory's TTL-bound cache. This crate does not decide policy (that
//! is `mxgate-policy`) and does not do DNS-over-TLS/HTTPS.

pub mod classify;
mod client;
mod clock;
pub mod negcache;
pub mod selftest;
pub mod stub;

pub use client::DnsClient;
pub use selftest::SelfTest;

use std::net::IpAddr;

/// The DNSSEC state of an RRset or of a denial of existence (RFC 4033 §5, RFC 4035 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnssecStatus {
    /// A chain of signed DNSKEY and DS records from a trust anchor validates the answer.
    Secure,
    /// Provably unsigned (an insecure delegation above it), or DNSSEC is off.
    Insecure,
    /// Signatures fail or proof is missing where the chain says it must exist.
    Bogus,
    /// The resolver could not tell (e.g. could not fetch the DNSSEC records).
    Indeterminate,
}

impl DnssecStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DnssecStatus::Secure => "secure",
            DnssecStatus::Insecure => "insecure",
            DnssecStatus::Bogus => "bogus",
            DnssecStatus::Indeterminate => "indeterminate",
        }
    }

    /// The weaker of two statuses: one unvalidated link makes a chain unvalidated
    /// (bogus beats indeterminate beats insecure beats secure).
    pub fn weakest(self, other: DnssecStatus) -> DnssecStatus {
        fn rank(s: DnssecStatus) -> u8 {
            match s {
                DnssecStatus::Bogus => 0,
                DnssecStatus::Indeterminate => 1,
                DnssecStatus::Insecure => 2,
                DnssecStatus::Secure => 3,
            }
        }
        if rank(other) < rank(self) {
            other
        } else {
            self
        }
    }

    pub fn is_secure(self) -> bool {
        self == DnssecStatus::Secure
    }
}

impl std::fmt::Display for DnssecStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to one lookup of one record type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// At least one record of the type asked for (after following CNAMEs).
    Found {
        records: Vec<T>,
        status: DnssecStatus,
    },
    /// The name exists but has no record of this type (NOERROR/NODATA).
    NoData { status: DnssecStatus },
    /// The name does not exist (NXDOMAIN).
    NxDomain { status: DnssecStatus },
}

impl<T> Answer<T> {
    pub fn status(&self) -> DnssecStatus {
        match self {
            Answer::Found { status, .. }
            | Answer::NoData { status }
            | Answer::NxDomain { status } => *status,
        }
    }

    /// The records, empty for NODATA and NXDOMAIN.
    pub fn records(&self) -> &[T] {
        match self {
            Answer::Found { records, .. } => records,
            _ => &[],
        }
    }

    pub fn map<U>(self, f: impl FnOnce(Vec<T>) -> Vec<U>) -> Answer<U> {
        match self {
            Answer::Found { records, status } => {
                let records = f(records);
                if records.is_empty() {
                    Answer::NoData { status }
                } else {
                    Answer::Found { records, status }
                }
            }
            Answer::NoData { status } => Answer::NoData { status },
            Answer::NxDomain { status } => Answer::NxDomain { status },
        }
    }
}

/// One MX record; `host` is lower case without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub preference: u16,
    pub host: String,
}

/// The answer to an MX lookup (RFC 5321 §5.1, RFC 7505).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxLookup {
    /// MX hosts sorted by preference, random order among equal preferences.
    Mx {
        hosts: Vec<MxHost>,
        status: DnssecStatus,
    },
    /// RFC 7505 null MX (`0 .`): the domain accepts no mail.
    NullMx { status: DnssecStatus },
    /// The domain exists but publishes no MX (use the implicit MX, RFC 5321 §5.1).
    NoMx { status: DnssecStatus },
    /// The domain does not exist.
    NxDomain { status: DnssecStatus },
}

impl MxLookup {
    pub fn status(&self) -> DnssecStatus {
        match self {
            MxLookup::Mx { status, .. }
            | MxLookup::NullMx { status }
            | MxLookup::NoMx { status }
            | MxLookup::NxDomain { status } => *status,
        }
    }
}

/// One TLSA record (RFC 6698 §2.1), as numbers and bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// Addresses of one host (A and AAAA together).
pub type AddrAnswer = Answer<IpAddr>;

/// Where a name led through CNAME records (RFC 1034 §3.6.2): the fully expanded name
/// and how well the chain is proven. RFC 7672 §2.2.3 asks for both: TLSA records are
/// looked up at the expanded name only when every link of the chain is secure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The target of the last CNAME, lower case without the trailing dot.
    pub target: String,
    /// The weakest status of the CNAME records of the chain: secure only when every
    /// link is (in `trust-ad` mode the AD bit of the answer that carried the chain).
    pub status: DnssecStatus,
}

impl Alias {
    /// Every link of the chain is DNSSEC-secure.
    pub fn is_secure(&self) -> bool {
        self.status.is_secure()
    }
}

/// The addresses of one host, and the CNAME chain the lookups followed to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddresses {
    pub addresses: AddrAnswer,
    /// `None` when the host name itself owns its address records.
    pub alias: Option<Alias>,
}

/// A lookup that produced no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The resolver could not be set up (bad nameserver list, unreadable trust anchor).
    #[error("DNS setup: {0}")]
    Setup(String),
    /// The name is not a valid DNS name.
    #[error("invalid DNS name {name:?}")]
    InvalidName { name: String },
    /// DNSSEC validation failed: the answer may be forged (RFC 4035 §5.5).
    #[error("DNSSEC validation of {name} {rtype} failed (bogus)")]
    Bogus { name: String, rtype: &'static str },
    /// SERVFAIL, REFUSED, timeout, network error: try again later.
    #[error("DNS lookup of {name} {rtype} failed: {detail}")]
    Temporary {
        name: String,
        rtype: &'static str,
        detail: String,
    },
}

impl DnsError {
    /// The DNSSEC status this failure stands for, for reports.
    pub fn status(&self) -> DnssecStatus {
        match self {
            DnsError::Bogus { .. } => DnssecStatus::Bogus,
            _ => DnssecStatus::Indeterminate,
        }
    }
}
