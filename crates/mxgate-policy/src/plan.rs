//! The boundary between policy and delivery: [`PolicyEngine::plan`] gathers the DNS
//! and MTA-STS facts of a destination, hands them to [`crate::decide::decide`], and
//! returns a [`DeliveryPlan`]; [`PolicyEngine::client_config`] gives the rustls
//! configuration for each requirement. This file does no TLS and no SMTP itself.

use std::net::IpAddr;

use mxgate_config::{Level, OnTlsFailure, TlsVersion};

use crate::reason::SkipReason;
use crate::sts::fetch::FetchError;

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
    /// The level the operator set for this domain (`policy.domains`, else
    /// `policy.default`); `auto` where the level is learned from the domain's DNS.
    pub configured: Level,
    pub min_tls_version: TlsVersion,
    pub on_tls_failure: OnTlsFailure,
    /// The TCP port every MX of the plan is dialled on (`delivery.smtp_port` of the
    /// engine that made the plan). Its DANE requirements come from the TLSA records of
    /// `_PORT._tcp.HOST` for this very port (RFC 6698 §3, RFC 7672 §2.2.3), so delivery
    /// dials this port and no other.
    pub port: u16,
    pub mx: Vec<MxPlan>,
    /// The domain announces an MTA-STS policy (`_mta-sts` TXT, RFC 8461 §3.1) that
    /// could not be fetched or validated, no unexpired policy is cached, and that policy
    /// would have decided the level: the plan is the fallback (RFC 8461 §5), and TLS
    /// reports count each session as this failure (RFC 8460 §4.3.2.2). `None` otherwise,
    /// also where DANE applies (RFC 8461 §2).
    pub mta_sts_failure: Option<FetchError>,
}

impl DeliveryPlan {
    /// The plan for a message carrying `TLS-Required: No` (RFC 8689 §5: the sender
    /// asks that TLS policies "such as MTA-STS and DANE" be ignored so the message gets
    /// through). Only levels learned from the destination's DNS under `auto` are
    /// lowered, to `floor` on every MX (`may`, or the operator's stricter
    /// `policy.fallback`: what `auto` gives a domain that publishes no policy; an MX
    /// that MTA-STS excluded becomes dialable). A level the operator configured
    /// (`mta-sts`, `dane`, `dane-only` included, in `policy.domains` or as
    /// `policy.default`) stays, and so does the fallback.
    pub fn lowered_for_tls_required_no(mut self, floor: Level) -> DeliveryPlan {
        if self.configured != Level::Auto
            || !matches!(self.source, PolicySource::MtaSts | PolicySource::Dane)
        {
            return self;
        }
        self.level = floor;
        for mx in &mut self.mx {
            mx.requirement = match &mx.requirement {
                // A host without addresses stays undialable.
                Err(e @ (SkipReason::AddressLookup { .. } | SkipReason::NoAddress { .. })) => {
                    Err(e.clone())
                }
                _ => Ok(crate::decide::base_requirement(floor, &mx.host, &[])),
            };
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(
        configured: Level,
        source: PolicySource,
        level: Level,
        requirement: Result<TlsRequirement, SkipReason>,
    ) -> DeliveryPlan {
        DeliveryPlan {
            domain: "d.example".into(),
            level,
            source,
            configured,
            min_tls_version: TlsVersion::Tls12,
            on_tls_failure: OnTlsFailure::Defer,
            port: 25,
            mta_sts_failure: None,
            mx: vec![MxPlan {
                host: "mx.d.example".into(),
                preference: 10,
                addrs: vec![],
                requirement,
                shadow: None,
            }],
        }
    }

    #[test]
    fn tls_required_no_lowers_only_dns_learned_levels() {
        let pkix = || {
            Ok(TlsRequirement::Pkix {
                names: vec!["mx.d.example".into()],
            })
        };
        let dane = || {
            Ok(TlsRequirement::Dane {
                tlsa: vec![],
                names: vec![],
            })
        };
        let excluded = || {
            Err(SkipReason::NotInMtaStsPolicy {
                host: "mx.d.example".into(),
            })
        };
        let no_address = || {
            Err(SkipReason::NoAddress {
                host: "mx.d.example".into(),
            })
        };
        let cases = [
            (
                Level::Auto,
                PolicySource::MtaSts,
                Level::MtaSts,
                pkix(),
                Level::May,
                Ok(TlsRequirement::Opportunistic),
            ),
            (
                Level::Auto,
                PolicySource::MtaSts,
                Level::MtaSts,
                excluded(),
                Level::May,
                Ok(TlsRequirement::Opportunistic),
            ),
            (
                Level::Auto,
                PolicySource::Dane,
                Level::Dane,
                dane(),
                Level::May,
                Ok(TlsRequirement::Opportunistic),
            ),
            (
                Level::Auto,
                PolicySource::MtaSts,
                Level::MtaSts,
                no_address(),
                Level::May,
                no_address(),
            ),
            (
                Level::Verify,
                PolicySource::Config,
                Level::Verify,
                pkix(),
                Level::Verify,
                pkix(),
            ),
            (
                Level::DaneOnly,
                PolicySource::Config,
                Level::DaneOnly,
                dane(),
                Level::DaneOnly,
                dane(),
            ),
            (
                Level::Auto,
                PolicySource::Fallback,
                Level::Encrypt,
                Ok(TlsRequirement::Encrypt),
                Level::Encrypt,
                Ok(TlsRequirement::Encrypt),
            ),
            (
                Level::Auto,
                PolicySource::Fallback,
                Level::None,
                Ok(TlsRequirement::Cleartext),
                Level::None,
                Ok(TlsRequirement::Cleartext),
            ),
            // Levels the operator configured stay, even where DNS supplied the records.
            (
                Level::DaneOnly,
                PolicySource::Dane,
                Level::DaneOnly,
                dane(),
                Level::DaneOnly,
                dane(),
            ),
            (
                Level::Dane,
                PolicySource::Dane,
                Level::Dane,
                dane(),
                Level::Dane,
                dane(),
            ),
            (
                Level::MtaSts,
                PolicySource::MtaSts,
                Level::MtaSts,
                excluded(),
                Level::MtaSts,
                excluded(),
            ),
        ];
        for (configured, source, level, req, want_level, want_req) in cases {
            let lowered =
                plan(configured, source, level, req).lowered_for_tls_required_no(Level::May);
            assert_eq!(
                lowered.level, want_level,
                "{configured:?} {source:?} {level:?}"
            );
            let got = &lowered.mx[0].requirement;
            assert_eq!(got, &want_req, "{configured:?} {source:?} {level:?}");
            assert_eq!(lowered.source, source);
        }
    }

    /// The operator's floor for `auto` holds: with `policy.fallback = "verify"` a
    /// DNS-learned plan is lowered to `verify`, never to opportunistic TLS.
    #[test]
    fn tls_required_no_never_goes_below_a_stricter_fallback() {
        let dane = Ok(TlsRequirement::Dane {
            tlsa: vec![],
            names: vec![],
        });
        let lowered = plan(Level::Auto, PolicySource::Dane, Level::Dane, dane.clone())
            .lowered_for_tls_required_no(Level::Verify);
        assert_eq!(lowered.level, Level::Verify);
        assert_eq!(
            lowered.mx[0].requirement,
            Ok(TlsRequirement::Pkix {
                names: vec!["mx.d.example".into()]
            })
        );
        let lowered = plan(Level::Auto, PolicySource::MtaSts, Level::MtaSts, dane)
            .lowered_for_tls_required_no(Level::Encrypt);
        assert_eq!(
            (lowered.level, lowered.mx[0].requirement.clone()),
            (Level::Encrypt, Ok(TlsRequirement::Encrypt))
        );
    }
}
