//! The report behind `mxgate policy DOMAIN --json` (contract §4): the effective level,
//! where it came from, the MX hosts with their DNSSEC state and TLSA records, and the
//! MTA-STS policy with its age. Plain serde data; this module does no lookups.

use std::net::IpAddr;

use mxgate_dns::{DnssecStatus, MxHost};
use serde::Serialize;

use crate::decide::{AddrFacts, HostFacts, TlsaFacts};
use crate::plan::{MxPlan, TlsRequirement, TlsaRecord};
use crate::sts::store::CachedPolicy;

/// `{"domain","level","source","mx":[...],"mta_sts":...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub domain: String,
    /// The configured level (may be `auto`).
    pub configured_level: String,
    /// The level applied (`none|may|encrypt|verify|mta-sts|dane`).
    pub level: String,
    pub source: String,
    pub min_tls_version: String,
    pub mx: Vec<MxReport>,
    pub mta_sts: Option<StsReport>,
}

/// One MX host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MxReport {
    pub host: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
    /// DNSSEC status of the MX RRset and this host's addresses (the weaker).
    pub dnssec: String,
    /// `3 1 1 <hex>` per record.
    pub tlsa: Vec<String>,
    /// `not looked up`, `secure usable`, `secure unusable`, `secure none`, `insecure`,
    /// or the failure.
    pub tlsa_state: String,
    /// `dane`, `pkix`, `encrypt`, `may`, `none`, or `skip: reason`.
    pub requirement: String,
}

impl MxReport {
    pub(crate) fn new(
        mx: &MxHost,
        addrs: &[IpAddr],
        hf: &HostFacts,
        tlsa: &[TlsaRecord],
        mx_status: DnssecStatus,
        plan: &MxPlan,
    ) -> MxReport {
        let dnssec = match &hf.addrs {
            AddrFacts::Found(s) => mx_status.weakest(*s),
            AddrFacts::NoAddress => mx_status,
            AddrFacts::Failed(failure) => failure.dnssec_status(),
        };
        MxReport {
            host: mx.host.clone(),
            preference: mx.preference,
            addrs: addrs.to_vec(),
            dnssec: dnssec.as_str().to_string(),
            tlsa: tlsa.iter().map(tlsa_text).collect(),
            tlsa_state: match &hf.tlsa {
                TlsaFacts::NotLooked => "not looked up".into(),
                TlsaFacts::SecureUsable(_) => "secure usable".into(),
                TlsaFacts::SecureUnusable => "secure unusable".into(),
                TlsaFacts::SecureNone => "secure none".into(),
                TlsaFacts::Insecure => "insecure".into(),
                TlsaFacts::Failed(failure) => format!("failed: {failure}"),
            },
            requirement: match &plan.requirement {
                Ok(TlsRequirement::Cleartext) => "none".into(),
                Ok(TlsRequirement::Opportunistic) => "may".into(),
                Ok(TlsRequirement::Encrypt) => "encrypt".into(),
                Ok(TlsRequirement::Pkix { names }) => format!("pkix ({})", names.join(", ")),
                Ok(TlsRequirement::Dane { names, .. }) => format!("dane ({})", names.join(", ")),
                Err(why) => format!("skip: {why}"),
            },
        }
    }
}

/// `3 1 1 ab12...` (RFC 6698 §2.2 presentation format).
pub fn tlsa_text(r: &TlsaRecord) -> String {
    let hex: String = r.data.iter().map(|b| format!("{b:02x}")).collect();
    format!("{} {} {} {hex}", r.usage, r.selector, r.matching)
}

/// The cached MTA-STS policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StsReport {
    pub mode: String,
    pub id: String,
    pub mx: Vec<String>,
    pub max_age: u64,
    /// Unix seconds.
    pub fetched_at: u64,
    pub age_seconds: u64,
    pub expired: bool,
}

impl StsReport {
    pub(crate) fn new(c: &CachedPolicy, now: u64) -> StsReport {
        StsReport {
            mode: c.policy.mode.as_str().to_string(),
            id: c.id.clone(),
            mx: c.policy.mx.clone(),
            max_age: c.policy.max_age,
            fetched_at: c.fetched_at,
            age_seconds: now.saturating_sub(c.fetched_at),
            expired: !c.is_fresh(now),
        }
    }
}
