//! The boundary between policy and delivery: [`PolicyEngine::plan`] gathers the DNS
//! and MTA-STS facts of a destination, hands them to [`crate::decide::decide`], and
//! returns a [`DeliveryPlan`]; [`PolicyEngine::client_config`] gives the rustls
//! configuration for each requirement. This file does no TLS and no SMTP itself.

use std::net::IpAddr;

use mxgate_config::{Level, OnTlsFailure, TlsVersion};

use crate::reason::SkipReason;

/// Where the level applied to a destination came from (log field `source=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicySource {
    Config,
    Dane,
    MtaSts,
    Fallback,
}

impl PolicySource {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicySource::Config => "config",
            PolicySource::Dane => "dane",
            PolicySource::MtaSts => "mta-sts",
            PolicySource::Fallback => "fallback",
        }
    }
}

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsaRecord {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

/// What one connection to one MX host must achieve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TlsRequirement {
    /// Level `none`: never STARTTLS.
    Cleartext,
    /// Level `may` (and MTA-STS `testing`, DANE fallback): STARTTLS if offered, no
    /// authentication; a failed handshake retries once in cleartext on a new connection.
    Opportunistic,
    /// TLS required, any certificate (`encrypt`, DANE with only unusable TLSA records).
    Encrypt,
    /// TLS required, PKIX chain to a trusted root, and one of `names` in the
    /// certificate (`verify`, MTA-STS `enforce`).
    Pkix { names: Vec<String> },
    /// TLS required, authenticated by these usable TLSA records (RFC 7672 §3);
    /// `names` are the reference identifiers for DANE-TA(2).
    Dane {
        tlsa: Vec<TlsaRecord>,
        names: Vec<String>,
    },
}

impl TlsRequirement {
    /// Whether a session without TLS is acceptable.
    pub fn allows_cleartext(&self) -> bool {
        matches!(
            self,
            TlsRequirement::Cleartext | TlsRequirement::Opportunistic
        )
    }
}

/// One MX host of a destination, in dialling order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxPlan {
    pub host: String,
    pub preference: u16,
    /// Every address of the host, in dialling order.
    pub addrs: Vec<IpAddr>,
    /// `Ok`: dial with this requirement. `Err`: never dial; the reason says why, and
    /// becomes the deferral reason if no MX is left.
    pub requirement: Result<TlsRequirement, SkipReason>,
    /// The shadow level's requirement for this host (`shadow =` in the configuration),
    /// decided from the same facts: checked on the session that `requirement` built
    /// with [`crate::evaluate::evaluate`], never enforced (docs/policy.md).
    pub shadow: Option<ShadowRequirement>,
}

/// What a shadow level would have required of one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowRequirement {
    pub level: Level,
    /// `Err`: the shadow level would not have dialled this host at all.
    pub requirement: Result<TlsRequirement, SkipReason>,
}

/// The policy for one destination domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryPlan {
    pub domain: String,
    /// The level applied (`none|may|encrypt|verify|mta-sts|dane|dane-only`; never
    /// `auto`). `dane-only` stays `dane-only` for people; metrics label it `dane`.
    pub level: Level,
    pub source: PolicySource,
    pub min_tls_version: TlsVersion,
    pub on_tls_failure: OnTlsFailure,
    pub mx: Vec<MxPlan>,
}
