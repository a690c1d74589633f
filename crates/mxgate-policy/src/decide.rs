//! The decision core: one pure function from configuration and DNS/MTA-STS facts to
//! the level applied and, per MX host, a [`TlsRequirement`] or a reason not to dial it.
//!
//! No I/O, no clock: [`decide`] takes what the lookups found and returns the plan. It
//! does not look anything up, fetch policies or verify certificates.

use mxgate_config::Level;
use mxgate_dns::{Alias, DnssecStatus};

use crate::plan::{PolicySource, TlsRequirement, TlsaRecord};
use crate::reason::{LookupFailure, SkipReason};
use crate::sts::fetch::FetchError;
use crate::sts::{MtaStsMode, MtaStsPolicy};

/// What the TLSA lookup for one MX host found (RFC 7672 §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaFacts {
    /// Not looked up: the host's address records are not secure (RFC 7672 §2.2.2), or
    /// the level does not use DANE.
    NotLooked,
    /// Secure TLSA RRset with at least one usable record (only the usable ones here).
    SecureUsable(Vec<TlsaRecord>),
    /// Secure TLSA RRset whose records are all unusable.
    SecureUnusable,
    /// Secure denial of existence: provably no TLSA records.
    SecureNone,
    /// Insecure TLSA RRset or insecure denial: as good as none.
    Insecure,
    /// Bogus, indeterminate, SERVFAIL or timeout.
    Failed(LookupFailure),
}

impl TlsaFacts {
    /// The `result` label of `mxgate_dane_lookups_total`: `ok` (usable TLSA),
    /// `unusable`, `not-applicable` (not looked up, or securely none), `insecure`,
    /// `tempfail`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TlsaFacts::SecureUsable(_) => "ok",
            TlsaFacts::SecureUnusable => "unusable",
            TlsaFacts::NotLooked | TlsaFacts::SecureNone => "not-applicable",
            TlsaFacts::Insecure => "insecure",
            TlsaFacts::Failed(_) => "tempfail",
        }
    }
}

/// What the address lookup for one MX host found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrFacts {
    /// Addresses found, with the status of their RRsets.
    Found(DnssecStatus),
    /// The name has no A/AAAA records (NODATA or NXDOMAIN).
    NoAddress,
    /// The lookup failed (bogus, indeterminate, SERVFAIL, timeout).
    Failed(LookupFailure),
}

impl AddrFacts {
    /// Why the host cannot be dialled, if it cannot.
    pub fn skip_reason(&self, host: &str) -> Option<SkipReason> {
        match self {
            AddrFacts::Found(_) => None,
            AddrFacts::NoAddress => Some(SkipReason::NoAddress {
                host: host.to_string(),
            }),
            AddrFacts::Failed(failure) => Some(SkipReason::AddressLookup {
                host: host.to_string(),
                failure: failure.clone(),
            }),
        }
    }
}

/// The facts about one MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub host: String,
    /// The name `host` expands to through a CNAME chain whose every link is
    /// DNSSEC-secure ([`secure_alias`]); `None` when the host is no alias or the chain
    /// is not secure.
    pub secure_alias: Option<String>,
    pub addrs: AddrFacts,
    pub tlsa: TlsaFacts,
    /// The TLSA base domain whose `_PORT._tcp` lookup `tlsa` reports (one of
    /// [`tlsa_base_domains`]); `None` when TLSA was not looked up.
    pub tlsa_base: Option<String>,
}

impl HostFacts {
    /// The reference identifiers of a DANE session with this host, TLSA base domain
    /// first (it is also the SNI, RFC 7672 §8.1). RFC 7672 §3.2.2 (paraphrased): the
    /// certificate may name the TLSA base domain or the MX host name; a securely
    /// expanded name is as good as the MX host name it stands for.
    pub fn reference_names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(2);
        for name in [
            self.tlsa_base.as_ref(),
            Some(&self.host),
            self.secure_alias.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }
}

/// The expanded name of an MX host reached through CNAME records, when RFC 7672
/// §2.2.3 lets it serve as a TLSA base domain: only when every link of the chain is
/// DNSSEC-secure. An insecure (or indeterminate) link leaves the MX host name as the
/// only base domain: `Ok(None)`. A bogus link is a failed address lookup (RFC 7672
/// §2.1.1, paraphrased: a bogus answer makes the host unreachable; DANE is never
/// silently skipped).
pub fn secure_alias(host: &str, alias: Option<&Alias>) -> Result<Option<String>, LookupFailure> {
    match alias {
        Some(a) if a.status == DnssecStatus::Bogus => Err(LookupFailure::Bogus),
        Some(a) if a.is_secure() && a.target != host => Ok(Some(a.target.clone())),
        _ => Ok(None),
    }
}

/// The TLSA base domains of an MX host in lookup order (RFC 7672 §2.2.3): a securely
/// expanded name first, then the MX host name itself; the MX host name alone when it
/// is no alias or its chain is not secure.
pub fn tlsa_base_domains(host: &str, secure_alias: Option<&str>) -> Vec<String> {
    match secure_alias {
        Some(expanded) if expanded != host => vec![expanded.to_string(), host.to_string()],
        _ => vec![host.to_string()],
    }
}

/// Whether the TLSA lookup at one base domain settles the host, or the next base
/// domain is tried (RFC 7672 §2.2.3, paraphrased: where no secure TLSA records are
/// found, the next candidate base domain is tried; a failed lookup defers).
pub fn tlsa_settles(facts: &TlsaFacts) -> bool {
    !matches!(facts, TlsaFacts::SecureNone | TlsaFacts::Insecure)
}

/// The MTA-STS state of the destination domain (RFC 8461 §3, §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StsState {
    /// Not consulted (the level does not use MTA-STS, or DANE decided everything).
    NotConsulted,
    /// No `_mta-sts` TXT record and no cached policy (or the TXT lookup failed).
    Absent,
    /// The `_mta-sts` TXT record announces a policy, but it could not be fetched or
    /// validated and no unexpired policy is cached. RFC 8461 §5: "senders MUST continue
    /// with delivery as though the domain has not implemented MTA-STS" — decided as
    /// [`StsState::Absent`]; the failure is kept for TLS reports (RFC 8460 §4.3.2.2).
    Unavailable(FetchError),
    /// A valid policy, fresh or cached and unexpired.
    Policy(MtaStsPolicy),
}

/// The configured inputs for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionInput<'a> {
    /// The configured level (`[policy.domains]` entry or `policy.default`).
    pub level: Level,
    /// `policy.fallback`.
    pub fallback: Level,
    /// The `match` list of the domain's `[policy.domains]` entry (for `verify`).
    pub match_names: &'a [String],
    /// Status of the MX RRset. Informational: a bogus or indeterminate MX RRset never
    /// reaches `decide` (the engine defers first), and an insecure one still allows
    /// DANE per host (half-DANE).
    pub mx_status: DnssecStatus,
    pub hosts: &'a [HostFacts],
    pub sts: &'a StsState,
}

/// The decision for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub level: Level,
    pub source: PolicySource,
    /// One entry per `hosts` entry, same order.
    pub per_host: Vec<Result<TlsRequirement, SkipReason>>,
}

/// Per-host DANE outcome, before MTA-STS and fallback are considered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DaneOutcome {
    Applies(TlsRequirement),
    Defer(SkipReason),
    NoDane,
}

/// RFC 7672 for one host.
fn dane_for_host(h: &HostFacts) -> DaneOutcome {
    match (&h.addrs, &h.tlsa) {
        // RFC 7672 §2.2.1/§2.2.2 (paraphrased): a failed (bogus, SERVFAIL, timeout) MX or
        // address lookup makes the MX host temporarily unreachable; DANE must not be
        // silently skipped.
        (AddrFacts::Failed(_) | AddrFacts::NoAddress, _) => match h.addrs.skip_reason(&h.host) {
            Some(why) => DaneOutcome::Defer(why),
            None => DaneOutcome::NoDane,
        },
        // RFC 7672 §2.2.2 (paraphrased): TLSA records are only looked up when the
        // address records are secure; otherwise delivery continues without DANE.
        (AddrFacts::Found(s), _) if !s.is_secure() => DaneOutcome::NoDane,
        (AddrFacts::Found(_), TlsaFacts::NotLooked) => DaneOutcome::NoDane,
        // RFC 7672 §2.2 (paraphrased): a secure TLSA RRset with a usable record makes
        // TLS mandatory, authenticated by those records. §2.2.1: "the SMTP client MAY
        // proceed to use DANE TLS [...] even with MX hosts obtained via an "insecure" MX
        // RRSet" (half-DANE); the MX host name is then the reference identifier (with
        // the TLSA base domain of a secure CNAME chain, §2.2.3, §3.2.2).
        (AddrFacts::Found(_), TlsaFacts::SecureUsable(tlsa)) => {
            DaneOutcome::Applies(TlsRequirement::Dane {
                tlsa: tlsa.clone(),
                names: h.reference_names(),
            })
        }
        // RFC 7672 §2.2 (paraphrased): a secure TLSA RRset whose records are all
        // unusable still makes TLS mandatory, without authentication.
        (AddrFacts::Found(_), TlsaFacts::SecureUnusable) => {
            DaneOutcome::Applies(TlsRequirement::Encrypt)
        }
        // RFC 7672 §2.2 (paraphrased): an insecure TLSA RRset, or none, means no DANE
        // for this host: pre-DANE opportunistic TLS.
        (AddrFacts::Found(_), TlsaFacts::SecureNone | TlsaFacts::Insecure) => DaneOutcome::NoDane,
        // RFC 7672 §2.2 (paraphrased): a failed TLSA lookup (bogus, SERVFAIL, timeout)
        // makes the MX host temporarily unreachable, and RFC 8461 §2 (paraphrased):
        // MTA-STS never overrides a failing DANE check (docs/policy.md).
        (AddrFacts::Found(_), TlsaFacts::Failed(failure)) => {
            DaneOutcome::Defer(SkipReason::TlsaLookup {
                host: h.host.clone(),
                failure: failure.clone(),
            })
        }
    }
}

/// The requirement of a base level (none/may/encrypt/verify) for one host.
pub(crate) fn base_requirement(level: Level, host: &str, match_names: &[String]) -> TlsRequirement {
    match level {
        Level::None => TlsRequirement::Cleartext,
        Level::Encrypt => TlsRequirement::Encrypt,
        Level::Verify => TlsRequirement::Pkix {
            names: if match_names.is_empty() {
                vec![host.to_string()]
            } else {
                match_names.to_vec()
            },
        },
        // `may`, and any non-base level given as fallback (config validation refuses
        // those), mean opportunistic TLS.
        Level::May | Level::MtaSts | Level::Dane | Level::DaneOnly | Level::Auto => {
            TlsRequirement::Opportunistic
        }
    }
}

/// The applied level of a fallback (always a base level).
fn base_level(level: Level) -> Level {
    match level {
        Level::None | Level::May | Level::Encrypt | Level::Verify => level,
        _ => Level::May,
    }
}

/// MTA-STS (RFC 8461 §4, §5) for one host; `None` = no policy, use the fallback.
fn sts_for_host(sts: &StsState, host: &str) -> Option<Result<TlsRequirement, SkipReason>> {
    match sts {
        StsState::NotConsulted | StsState::Absent | StsState::Unavailable(_) => None,
        StsState::Policy(p) => match p.mode {
            // RFC 8461 §5: "none: In this mode, Sending MTAs should treat the Policy
            // Domain as though it does not have any active policy."
            MtaStsMode::None => None,
            // RFC 8461 §5 (paraphrased): in testing mode failures are reported, not
            // treated as delivery failures: deliver as `may`.
            MtaStsMode::Testing => Some(Ok(TlsRequirement::Opportunistic)),
            // RFC 8461 §4.1/§4.2, §5 (paraphrased): in enforce mode an MX host matching no
            // `mx` pattern is not dialled, and the certificate must chain to a trusted
            // root and be valid for the MX host name.
            MtaStsMode::Enforce => Some(if p.mx_matches(host) {
                Ok(TlsRequirement::Pkix {
                    names: vec![host.to_string()],
                })
            } else {
                Err(SkipReason::NotInMtaStsPolicy {
                    host: host.to_string(),
                })
            }),
        },
    }
}

/// The one decision function (docs/policy.md). `hosts` are in dialling order.
pub fn decide(input: &DecisionInput<'_>) -> Decision {
    let hosts = input.hosts;
    let fallback = base_level(input.fallback);
    let fixed = |level: Level, source: PolicySource| Decision {
        level,
        source,
        per_host: hosts
            .iter()
            .map(|h| Ok(base_requirement(level, &h.host, input.match_names)))
            .collect(),
    };
    match input.level {
        // docs/policy.md: `none` never STARTTLS, `may` opportunistic, `encrypt` TLS with any
        // certificate, `verify` PKIX plus the MX name or `match` list (Postfix levels).
        Level::None | Level::May | Level::Encrypt | Level::Verify => {
            fixed(input.level, PolicySource::Config)
        }
        // RFC 8461 §5: enforce/testing/none as the policy says; no policy = fallback.
        Level::MtaSts => {
            let per: Vec<_> = hosts
                .iter()
                .map(|h| sts_for_host(input.sts, &h.host))
                .collect();
            if per.iter().all(Option::is_none) {
                return fixed(fallback, PolicySource::Fallback);
            }
            Decision {
                level: Level::MtaSts,
                source: PolicySource::MtaSts,
                per_host: per
                    .into_iter()
                    .zip(hosts)
                    .map(|(r, h)| r.unwrap_or_else(|| Ok(base_requirement(fallback, &h.host, &[]))))
                    .collect(),
            }
        }
        Level::Dane | Level::DaneOnly | Level::Auto => {
            let dane: Vec<DaneOutcome> = hosts.iter().map(dane_for_host).collect();
            let any_dane = dane.iter().any(|d| matches!(d, DaneOutcome::Applies(_)));
            let mut used_sts = false;
            let mut per_host = Vec::with_capacity(hosts.len());
            for (h, d) in hosts.iter().zip(dane) {
                per_host.push(match d {
                    // docs/policy.md: `dane-only`: "no usable secure TLSA record means
                    // defer" — the unauthenticated TLS that RFC 7672 §2.2 allows when
                    // every record is unusable is for opportunistic DANE only.
                    DaneOutcome::Applies(TlsRequirement::Encrypt)
                        if input.level == Level::DaneOnly =>
                    {
                        Err(SkipReason::DaneOnlyUnusableTlsa {
                            host: h.host.clone(),
                        })
                    }
                    DaneOutcome::Applies(req) => Ok(req),
                    DaneOutcome::Defer(why) => Err(why),
                    DaneOutcome::NoDane => match input.level {
                        // docs/policy.md: `dane-only`: "no usable secure TLSA record means defer".
                        Level::DaneOnly => Err(SkipReason::DaneOnlyNoTlsa {
                            host: h.host.clone(),
                        }),
                        // docs/policy.md `auto`: "otherwise MTA-STS where the domain publishes
                        // a policy"; RFC 8461 §2: only where DANE does not apply.
                        Level::Auto => match sts_for_host(input.sts, &h.host) {
                            Some(r) => {
                                used_sts = true;
                                r
                            }
                            None => Ok(base_requirement(fallback, &h.host, &[])),
                        },
                        // RFC 7672 §2.2: opportunistic DANE falls back to opportunistic TLS
                        // (here: the configured fallback).
                        _ => Ok(base_requirement(fallback, &h.host, &[])),
                    },
                });
            }
            let (level, source) = if any_dane || input.level == Level::DaneOnly {
                let source = if any_dane {
                    PolicySource::Dane
                } else {
                    PolicySource::Config
                };
                // docs/operations.md: the configured name stays (`dane-only` is not `dane`).
                let level = if input.level == Level::DaneOnly {
                    Level::DaneOnly
                } else {
                    Level::Dane
                };
                (level, source)
            } else if used_sts {
                (Level::MtaSts, PolicySource::MtaSts)
            } else if per_host.iter().any(Result::is_err) {
                // DNSSEC failures only: the level we could not establish is DANE.
                (Level::Dane, PolicySource::Dane)
            } else {
                (fallback, PolicySource::Fallback)
            };
            Decision {
                level,
                source,
                per_host,
            }
        }
    }
}

/// Whether `decide` would look at the MTA-STS state for these facts (so the engine only
/// fetches a policy when it can matter).
pub fn needs_sts(level: Level, hosts: &[HostFacts]) -> bool {
    match level {
        Level::MtaSts => true,
        Level::Auto => hosts
            .iter()
            .any(|h| dane_for_host(h) == DaneOutcome::NoDane),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "decide_tests.rs"]
mod tests;
