//! The report behind `mxgate policy DOMAIN --json` (docs/operations.md): the effective level,
//! where it came from, the MX hosts with their DNSSEC state and TLSA records, the
//! MTA-STS policy with its age, and a verdict (deliver, defer or bounce, and why). It
//! explains failures too: a bogus, indeterminate or missing destination gets the same
//! object with `"level": "unknown"`. Plain serde data; this module does no lookups.

use std::net::IpAddr;

use mxgate_config::{Level, OnTlsFailure};
use mxgate_dns::{DnssecStatus, MxHost};
use serde::Serialize;

use crate::decide::{AddrFacts, HostFacts, TlsaFacts};
use crate::plan::{DeliveryPlan, MxPlan, TlsRequirement, TlsaRecord};
use crate::reason::{PlanError, SkipReason};
use crate::sts::CachedPolicy;

/// `level` when no level could be decided (the destination's own DNS failed).
pub const UNKNOWN_LEVEL: &str = "unknown";

/// `{"domain","level","source","dnssec","verdict","mx":[...],"mta_sts":...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub domain: String,
    /// The configured level (may be `auto`).
    pub configured_level: String,
    /// The level applied, by its configured name (`none|may|encrypt|verify|mta-sts|
    /// dane|dane-only`), or `unknown` when the DNS of the destination failed.
    pub level: String,
    /// `config|dane|mta-sts|fallback`; `null` when `level` is `unknown`.
    pub source: Option<String>,
    /// The configured shadow level (checked, never enforced), if any.
    pub shadow: Option<String>,
    pub min_tls_version: String,
    /// DNSSEC state of the MX lookup: `secure|insecure|bogus|indeterminate`, or `off`
    /// under `dns.dnssec = "off"` (nothing was checked).
    pub dnssec: String,
    /// `deliver to HOST with ...`, `defer: REASON` or `bounce: REASON`.
    pub verdict: String,
    /// Whether the verdict is `deliver` (exit status 0).
    pub deliverable: bool,
    /// Why no plan could be made (NXDOMAIN, null MX, DNS failure), else `null`.
    pub error: Option<String>,
    pub mx: Vec<MxReport>,
    pub mta_sts: Option<StsReport>,
}

/// How DNSSEC states are named: `off` when nothing was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusNames {
    pub dnssec_off: bool,
}

impl StatusNames {
    fn name(self, s: DnssecStatus) -> String {
        if self.dnssec_off {
            "off".into()
        } else {
            s.as_str().into()
        }
    }
}

/// The configured settings of the domain, for the report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Configured {
    pub level: Level,
    pub shadow: Option<Level>,
    pub min_tls_version: mxgate_config::TlsVersion,
}

impl Explanation {
    /// A decided plan.
    pub(crate) fn decided(
        configured: Configured,
        plan: &DeliveryPlan,
        hosts: &[(MxHost, Vec<IpAddr>, HostFacts, Vec<TlsaRecord>)],
        mx_status: DnssecStatus,
        names: StatusNames,
        mta_sts: Option<StsReport>,
    ) -> Explanation {
        let (deliverable, verdict) = verdict(plan);
        Explanation {
            domain: plan.domain.clone(),
            configured_level: configured.level.as_str().to_string(),
            level: plan.level.as_str().to_string(),
            source: Some(plan.source.as_str().to_string()),
            shadow: configured.shadow.map(|l| l.as_str().to_string()),
            min_tls_version: plan.min_tls_version.as_str().to_string(),
            dnssec: names.name(mx_status),
            verdict,
            deliverable,
            error: None,
            mx: hosts
                .iter()
                .zip(&plan.mx)
                .map(|((mx, addrs, hf, tlsa), p)| {
                    MxReport::new(mx, addrs, hf, tlsa, mx_status, p, names)
                })
                .collect(),
            mta_sts,
        }
    }

    /// No plan: the destination's DNS said no, or failed.
    pub(crate) fn undecided(
        domain: &str,
        configured: Configured,
        error: &PlanError,
        mx_status: DnssecStatus,
        names: StatusNames,
        mta_sts: Option<StsReport>,
    ) -> Explanation {
        let word = if error.is_permanent() {
            "bounce"
        } else {
            "defer"
        };
        Explanation {
            domain: domain.to_string(),
            configured_level: configured.level.as_str().to_string(),
            level: UNKNOWN_LEVEL.to_string(),
            source: None,
            shadow: configured.shadow.map(|l| l.as_str().to_string()),
            min_tls_version: configured.min_tls_version.as_str().to_string(),
            dnssec: names.name(mx_status),
            verdict: format!("{word}: {error}"),
            deliverable: false,
            error: Some(error.to_string()),
            mx: Vec::new(),
            mta_sts,
        }
    }
}

/// What delivery would do with this plan: dial the first MX it may dial, or defer
/// (bounce under `on_tls_failure = "bounce"`) with every MX's reason.
pub fn verdict(plan: &DeliveryPlan) -> (bool, String) {
    if let Some((mx, req)) = plan.mx.iter().find_map(|m| match &m.requirement {
        Ok(r) if !m.addrs.is_empty() => Some((m, r)),
        _ => None,
    }) {
        return (
            true,
            format!("deliver to {} with {}", mx.host, requirement_words(req)),
        );
    }
    let reasons: Vec<String> = plan
        .mx
        .iter()
        .filter_map(|m| m.requirement.as_ref().err().map(ToString::to_string))
        .collect();
    if reasons.is_empty() {
        return (
            false,
            format!("defer: no MX host of {} could be dialled", plan.domain),
        );
    }
    let word = match plan.on_tls_failure {
        OnTlsFailure::Bounce => "bounce",
        OnTlsFailure::Defer => "defer",
    };
    (false, format!("{word}: {}", reasons.join("; ")))
}

fn requirement_words(r: &TlsRequirement) -> String {
    match r {
        TlsRequirement::Cleartext => "no TLS (level none)".into(),
        TlsRequirement::Opportunistic => "opportunistic TLS".into(),
        TlsRequirement::Encrypt => "mandatory TLS, any certificate".into(),
        TlsRequirement::Pkix { names } => {
            format!("mandatory TLS, PKIX certificate for {}", names.join(" or "))
        }
        TlsRequirement::Dane { tlsa, .. } => {
            format!(
                "mandatory TLS authenticated by {} TLSA record(s)",
                tlsa.len()
            )
        }
    }
}

/// One MX host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MxReport {
    pub host: String,
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
    /// DNSSEC status of the MX RRset and this host's addresses (the weaker).
    pub dnssec: String,
    /// DNSSEC status of the host's address lookup alone.
    pub address_dnssec: String,
    /// The TLSA base domain whose `_PORT._tcp` records `tlsa` shows (RFC 7672 §2.2.3):
    /// the name a DNSSEC-secure CNAME chain expands the host to, or the host itself;
    /// `null` when TLSA was not looked up.
    pub tlsa_base: Option<String>,
    /// DNSSEC status of the TLSA lookup, `null` when TLSA was not looked up.
    pub tlsa_dnssec: Option<String>,
    /// `3 1 1 <hex>` per record.
    pub tlsa: Vec<String>,
    /// `not looked up`, `secure usable`, `secure unusable`, `secure none`, `insecure`,
    /// or the failure.
    pub tlsa_state: String,
    /// `dane`, `pkix`, `encrypt`, `may`, `none`, or `skip: reason`.
    pub requirement: String,
    /// What the shadow level would require of this host (same words), `null` without
    /// a shadow level.
    pub shadow_requirement: Option<String>,
}

impl MxReport {
    pub(crate) fn new(
        mx: &MxHost,
        addrs: &[IpAddr],
        hf: &HostFacts,
        tlsa: &[TlsaRecord],
        mx_status: DnssecStatus,
        plan: &MxPlan,
        names: StatusNames,
    ) -> MxReport {
        let address = match &hf.addrs {
            AddrFacts::Found(s) => *s,
            AddrFacts::NoAddress => mx_status,
            AddrFacts::Failed(failure) => failure.dnssec_status(),
        };
        let tlsa_status = match &hf.tlsa {
            TlsaFacts::NotLooked => None,
            TlsaFacts::SecureUsable(_) | TlsaFacts::SecureUnusable | TlsaFacts::SecureNone => {
                Some(DnssecStatus::Secure)
            }
            TlsaFacts::Insecure => Some(DnssecStatus::Insecure),
            TlsaFacts::Failed(f) => Some(f.dnssec_status()),
        };
        MxReport {
            host: mx.host.clone(),
            preference: mx.preference,
            addrs: addrs.to_vec(),
            dnssec: names.name(mx_status.weakest(address)),
            address_dnssec: names.name(address),
            tlsa_base: hf.tlsa_base.clone(),
            tlsa_dnssec: tlsa_status.map(|s| names.name(s)),
            tlsa: tlsa.iter().map(tlsa_text).collect(),
            tlsa_state: match &hf.tlsa {
                TlsaFacts::NotLooked => "not looked up".into(),
                TlsaFacts::SecureUsable(_) => "secure usable".into(),
                TlsaFacts::SecureUnusable => "secure unusable".into(),
                TlsaFacts::SecureNone => "secure none".into(),
                TlsaFacts::Insecure => "insecure".into(),
                TlsaFacts::Failed(failure) => format!("failed: {failure}"),
            },
            requirement: requirement_tag(&plan.requirement),
            shadow_requirement: plan
                .shadow
                .as_ref()
                .map(|s| requirement_tag(&s.requirement)),
        }
    }
}

fn requirement_tag(r: &Result<TlsRequirement, SkipReason>) -> String {
    match r {
        Ok(TlsRequirement::Cleartext) => "none".into(),
        Ok(TlsRequirement::Opportunistic) => "may".into(),
        Ok(TlsRequirement::Encrypt) => "encrypt".into(),
        Ok(TlsRequirement::Pkix { names }) => format!("pkix ({})", names.join(", ")),
        Ok(TlsRequirement::Dane { names, .. }) => format!("dane ({})", names.join(", ")),
        Err(why) => format!("skip: {why}"),
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
