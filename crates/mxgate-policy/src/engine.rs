//! [`PolicyEngine`]: the thin async shell around the decision core. It resolves the MX
//! hosts, their addresses and TLSA records, consults the MTA-STS store when the facts
//! call for it, then lets [`decide`] choose. It also builds and caches rustls configs.
//! It does not connect to MX hosts.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use mxgate_config::{Config, Level, TlsVersion};
use mxgate_dns::{Answer, DnsClient, DnsError, DnssecStatus, HostAddresses, MxHost, MxLookup};
use rustls::crypto::CryptoProvider;
use rustls::RootCertStore;
use tokio::task::JoinSet;

use crate::decide::{
    decide, needs_sts, secure_alias, tlsa_base_domains, tlsa_settles, AddrFacts, DecisionInput,
    HostFacts, StsState, TlsaFacts,
};
use crate::explain::{Configured, Explanation, StatusNames, StsReport};
use crate::plan::{
    DeliveryPlan, MxPlan, PolicySource, ShadowRequirement, TlsRequirement, TlsaRecord,
};
use crate::reason::{LookupFailure, PlanError, SkipReason};
use crate::sts::fetch::{FetchError, NetworkSource, StsSource};
use crate::sts::store::{now_unix, CacheWrite, PolicyStore, StsLookup};
use crate::tls;

/// The engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum PolicyInitError {
    #[error(transparent)]
    Roots(#[from] tls::RootsError),
    #[error("MTA-STS client: {0}")]
    Http(#[from] FetchError),
    /// etc/mxgate.toml: with `dns.dnssec = "off"` there is no DANE, so `dane`/`dane-only`
    /// cannot be honoured.
    #[error("level {level} for {scope} needs DNSSEC, but dns.dnssec = \"off\"")]
    DaneWithoutDnssec { level: Level, scope: String },
}

/// Upper bound of cached rustls configurations (DANE ones differ per MX host).
const MAX_CACHED_CONFIGS: usize = 4096;

/// Decides the [`DeliveryPlan`] of each destination.
pub struct PolicyEngine {
    config: Arc<Config>,
    dns: Arc<DnsClient>,
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    configs: DashMap<(TlsRequirement, TlsVersion), Arc<rustls::ClientConfig>>,
    pkix: std::sync::OnceLock<Arc<rustls::client::WebPkiServerVerifier>>,
    sts: PolicyStore,
}

/// Addresses, DANE facts and every TLSA record (for reports) of one MX host.
type HostLookup = (Vec<IpAddr>, HostFacts, Vec<TlsaRecord>);

/// No plan, and the DNSSEC state of the MX lookup that said so (for reports).
struct GatherFailure {
    error: PlanError,
    mx_status: DnssecStatus,
}

impl GatherFailure {
    fn new(error: PlanError, mx_status: DnssecStatus) -> Self {
        GatherFailure { error, mx_status }
    }
}

/// Everything the lookups found, kept for [`PolicyEngine::explain`].
struct Facts {
    hosts: Vec<(MxHost, Vec<IpAddr>, HostFacts, Vec<TlsaRecord>)>,
    mx_status: DnssecStatus,
    sts: StsLookup,
}

impl PolicyEngine {
    /// Loads the trust roots (`delivery.ca_file`) and prepares the MTA-STS client and
    /// store (`policy.cache_path`, `policy.mta_sts_port`, `policy.mta_sts_timeout`).
    pub fn new(config: Arc<Config>, dns: Arc<DnsClient>) -> Result<Self, PolicyInitError> {
        let roots = Arc::new(tls::load_roots(&config.delivery.ca_file)?);
        let source = NetworkSource::new(
            dns.clone(),
            roots.clone(),
            config.policy.mta_sts_port,
            config.policy.mta_sts_timeout,
            config.policy.min_tls_version,
        )?;
        Self::with_sts_source(config, dns, roots, Arc::new(source))
    }

    /// As [`PolicyEngine::new`], with another MTA-STS source (tests).
    pub fn with_sts_source(
        config: Arc<Config>,
        dns: Arc<DnsClient>,
        roots: Arc<RootCertStore>,
        source: Arc<dyn StsSource>,
    ) -> Result<Self, PolicyInitError> {
        if dns.dnssec_mode() == mxgate_config::DnssecMode::Off {
            if config.policy.default.needs_dnssec() {
                return Err(PolicyInitError::DaneWithoutDnssec {
                    level: config.policy.default,
                    scope: "policy.default".into(),
                });
            }
            if let Some((d, e)) = config
                .policy
                .domains
                .iter()
                .find(|(_, e)| e.level.needs_dnssec())
            {
                return Err(PolicyInitError::DaneWithoutDnssec {
                    level: e.level,
                    scope: format!("policy.domains.{d:?}"),
                });
            }
        }
        let sts = PolicyStore::new(config.policy.cache_path.clone(), source);
        Ok(PolicyEngine {
            config,
            dns,
            provider: tls::provider(),
            roots,
            configs: DashMap::new(),
            pkix: std::sync::OnceLock::new(),
            sts,
        })
    }

    /// The plan for one destination domain.
    pub async fn plan(&self, domain: &str) -> Result<DeliveryPlan, PlanError> {
        self.plan_with_facts(domain, CacheWrite::Store)
            .await
            .map(|(plan, _, _)| plan)
            .map_err(|f| f.error)
    }

    async fn plan_with_facts(
        &self,
        domain: &str,
        write: CacheWrite,
    ) -> Result<(DeliveryPlan, Facts, Level), GatherFailure> {
        let domain = normalise(domain);
        let (level, match_names, min_tls_version, on_tls_failure) = self.settings(&domain);
        let shadow = self.config.policy.shadow_for(&domain);
        // One reading of the port for the TLSA lookups and the plan (which delivery
        // dials): RFC 7672 §2.2.3.
        let port = self.config.delivery.smtp_port;
        let facts = self.gather(&domain, level, shadow, port, write).await?;
        let host_facts: Vec<HostFacts> = facts.hosts.iter().map(|h| h.2.clone()).collect();
        let decide_at = |level| {
            decide(&DecisionInput {
                level,
                fallback: self.config.policy.fallback,
                match_names: &match_names,
                mx_status: facts.mx_status,
                hosts: &host_facts,
                sts: &facts.sts.state,
            })
        };
        let decision = decide_at(level);
        // The shadow level, decided from the same facts (docs/policy.md).
        let mut shadow_per_host = shadow.map(|l| (l, decide_at(l).per_host.into_iter()));
        let mx = facts
            .hosts
            .iter()
            .zip(decision.per_host)
            .map(|((mx, addrs, hf, _), req)| {
                let with_addrs = |req: Result<TlsRequirement, SkipReason>| match (
                    hf.addrs.skip_reason(&mx.host),
                    req,
                ) {
                    (Some(why), Ok(_)) => Err(why),
                    (_, r) => r,
                };
                let shadow = shadow_per_host.as_mut().and_then(|(level, per_host)| {
                    per_host.next().map(|r| ShadowRequirement {
                        level: *level,
                        requirement: with_addrs(r),
                    })
                });
                MxPlan {
                    host: mx.host.clone(),
                    preference: mx.preference,
                    addrs: addrs.clone(),
                    requirement: with_addrs(req),
                    shadow,
                }
            })
            .collect();
        // RFC 8460 §4.3.2.2: only where the policy that failed would have applied.
        let mta_sts_failure = match &facts.sts.state {
            StsState::Unavailable(e) if decision.source == PolicySource::Fallback => {
                Some(e.clone())
            }
            _ => None,
        };
        let plan = DeliveryPlan {
            domain,
            level: decision.level,
            source: decision.source,
            configured: level,
            min_tls_version,
            on_tls_failure,
            port,
            mx,
            mta_sts_failure,
        };
        Ok((plan, facts, level))
    }

    /// The effective policy of `domain` and why (`mxgate policy DOMAIN --json`),
    /// for every state: a destination whose DNS fails is explained too, with level
    /// `unknown`. With [`CacheWrite::ReadOnly`] a fetched MTA-STS policy is reported
    /// but not stored.
    pub async fn explain(&self, domain: &str, write: CacheWrite) -> Explanation {
        let domain = normalise(domain);
        let (level, _, min_tls_version, _) = self.settings(&domain);
        let configured = Configured {
            level,
            shadow: self.config.policy.shadow_for(&domain),
            min_tls_version,
        };
        let names = StatusNames {
            dnssec_off: self.dns.dnssec_mode() == mxgate_config::DnssecMode::Off,
        };
        let now = now_unix();
        let stored = self.sts.cached(&domain);
        match self.plan_with_facts(&domain, write).await {
            Ok((plan, facts, _)) => {
                let sts = stored.or(facts.sts.cached).map(|c| StsReport::new(&c, now));
                Explanation::decided(configured, &plan, &facts.hosts, facts.mx_status, names, sts)
            }
            Err(f) => Explanation::undecided(
                &domain,
                configured,
                &f.error,
                f.mx_status,
                names,
                stored.map(|c| StsReport::new(&c, now)),
            ),
        }
    }

    /// The rustls configuration for one TLS session under `requirement` (cached).
    pub fn client_config(
        &self,
        requirement: &TlsRequirement,
        min_tls_version: TlsVersion,
    ) -> Arc<rustls::ClientConfig> {
        let key = (requirement.clone(), min_tls_version);
        if let Some(c) = self.configs.get(&key) {
            return c.clone();
        }
        // Fails only if rustls rejects TLS 1.2/1.3 with the ring provider or the root
        // store is empty (webpki-roots never is): programming errors, not input.
        #[allow(clippy::expect_used)]
        let config =
            tls::build_client_config(&self.provider, &self.roots, requirement, min_tls_version)
                .expect("ring supports TLS 1.2/1.3 and webpki-roots is not empty");
        let config = Arc::new(config);
        if self.configs.len() >= MAX_CACHED_CONFIGS {
            self.configs.clear();
        }
        self.configs.insert(key, config.clone());
        config
    }

    /// The PKIX verifier of the trust roots (webpki-roots and `delivery.ca_file`), for
    /// [`crate::evaluate::evaluate`] on sessions built for another requirement.
    pub fn pkix_verifier(&self) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
        self.pkix
            .get_or_init(|| {
                let built = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    self.roots.clone(),
                    self.provider.clone(),
                )
                .build();
                // Fails only for an empty root store; webpki-roots never is.
                #[allow(clippy::expect_used)]
                built.expect("webpki-roots is not empty")
            })
            .clone()
    }

    /// Shares MTA-STS policies with other instances (docs/scaling.md).
    pub fn with_shared_cache(
        mut self,
        shared: Arc<dyn crate::sts::shared::SharedPolicyCache>,
    ) -> Self {
        self.sts.set_shared(shared);
        self
    }

    /// The configuration this engine was built from (the socketmap server reads the
    /// `[policy.domains]` entry of a query from the same engine that plans it).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The global `policy.min_tls_version` (for connections outside any destination's
    /// policy, such as the bounce relay).
    /// The MTA-STS policy held for `domain` (memory, else the persistent cache; no
    /// network), e.g. to describe it in a TLS report (RFC 8460 §4.4 `policy-string`).
    pub fn cached_mta_sts(&self, domain: &str) -> Option<crate::sts::MtaStsPolicy> {
        self.sts.cached(domain).map(|c| c.policy)
    }

    /// What `TLS-Required: No` (RFC 8689 §5) lowers a DNS-learned plan to: `may`, or
    /// `policy.fallback` where that is stricter (the operator's floor for `auto` still
    /// applies); `None` under `policy.tls_required_header = "ignore"`.
    pub fn tls_required_no_floor(&self) -> Option<Level> {
        if self.config.policy.tls_required_header != mxgate_config::TlsRequiredHeader::Honor {
            return None;
        }
        Some(match self.config.policy.fallback {
            Level::Encrypt => Level::Encrypt,
            Level::Verify => Level::Verify,
            _ => Level::May,
        })
    }

    pub fn min_tls_version(&self) -> TlsVersion {
        self.config.policy.min_tls_version
    }

    /// `[policy.domains]` entry or the global defaults.
    fn settings(
        &self,
        domain: &str,
    ) -> (Level, Vec<String>, TlsVersion, mxgate_config::OnTlsFailure) {
        let p = &self.config.policy;
        match p.domain_entry(domain) {
            Some((_, e)) => (
                e.level,
                e.match_names.iter().map(|n| normalise(n)).collect(),
                e.min_tls_version.unwrap_or(p.min_tls_version),
                e.on_tls_failure.unwrap_or(p.on_tls_failure),
            ),
            None => (p.default, Vec::new(), p.min_tls_version, p.on_tls_failure),
        }
    }

    async fn gather(
        &self,
        domain: &str,
        level: Level,
        shadow: Option<Level>,
        port: u16,
        write: CacheWrite,
    ) -> Result<Facts, GatherFailure> {
        let dane_level = |l| matches!(l, Level::Dane | Level::DaneOnly | Level::Auto);
        let enforces_dane = dane_level(level);
        // A DANE shadow level needs the TLSA facts too; only the applied level defers.
        let uses_dane = enforces_dane || shadow.is_some_and(dane_level);
        // While the resolver self-test fails, DNSSEC failures are the resolver's.
        let validates = self.dns.resolver_validates();
        let (hosts, mx_status) = match self.dns.mx(domain).await {
            Err(e) => {
                let status = e.status();
                return Err(GatherFailure::new(dns_error(domain, e, validates), status));
            }
            Ok(MxLookup::NullMx { status }) => {
                return Err(GatherFailure::new(
                    PlanError::NullMx {
                        domain: domain.to_string(),
                    },
                    status,
                ))
            }
            Ok(MxLookup::NxDomain { status }) => {
                return Err(GatherFailure::new(
                    PlanError::NxDomain {
                        domain: domain.to_string(),
                    },
                    status,
                ))
            }
            // RFC 5321 §5.1: "If an empty list of MXs is returned, the address is treated
            // as if it was associated with an implicit MX RR, with a preference of 0,
            // pointing to that host."
            Ok(MxLookup::NoMx { status }) => (
                vec![MxHost {
                    preference: 0,
                    host: domain.to_string(),
                }],
                status,
            ),
            Ok(MxLookup::Mx { hosts, status }) => (hosts, status),
        };
        // RFC 7672 §2.2.1: an MX lookup that is neither secure nor insecure cannot be
        // trusted either way; defer where DANE could apply.
        if enforces_dane && mx_status == DnssecStatus::Indeterminate {
            return Err(GatherFailure::new(
                PlanError::MxLookup {
                    domain: domain.to_string(),
                    failure: LookupFailure::Indeterminate.blame_resolver(validates),
                },
                mx_status,
            ));
        }
        let implicit = hosts.len() == 1 && hosts[0].host == domain && hosts[0].preference == 0;
        let mut set = JoinSet::new();
        for (i, mx) in hosts.iter().enumerate() {
            let dns = self.dns.clone();
            let host = mx.host.clone();
            set.spawn(
                async move { (i, host_facts(&dns, &host, port, uses_dane, validates).await) },
            );
        }
        let mut results: Vec<Option<HostLookup>> = vec![None; hosts.len()];
        while let Some(joined) = set.join_next().await {
            if let Ok((i, r)) = joined {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(r);
                }
            }
        }
        let mut out = Vec::with_capacity(hosts.len());
        for (mx, r) in hosts.into_iter().zip(results) {
            let r = r.unwrap_or_else(|| {
                (
                    Vec::new(),
                    HostFacts {
                        host: mx.host.clone(),
                        secure_alias: None,
                        addrs: AddrFacts::Failed(LookupFailure::Temporary("lookup aborted".into())),
                        tlsa: TlsaFacts::NotLooked,
                        tlsa_base: None,
                    },
                    Vec::new(),
                )
            });
            out.push((mx, r.0, r.1, r.2));
        }
        // The implicit MX of a domain without addresses: the domain does not take mail.
        if implicit && out.iter().all(|h| h.1.is_empty()) && out[0].2.addrs == AddrFacts::NoAddress
        {
            return Err(GatherFailure::new(
                PlanError::NoMailHost {
                    domain: domain.to_string(),
                },
                mx_status,
            ));
        }
        let host_facts: Vec<HostFacts> = out.iter().map(|h| h.2.clone()).collect();
        let sts =
            if needs_sts(level, &host_facts) || shadow.is_some_and(|l| needs_sts(l, &host_facts)) {
                self.sts.lookup_with(domain, now_unix(), write).await
            } else {
                StsLookup {
                    state: StsState::NotConsulted,
                    cached: None,
                }
            };
        Ok(Facts {
            hosts: out,
            mx_status,
            sts,
        })
    }
}

/// Address and TLSA facts of one MX host. Returns also every TLSA record (for reports).
async fn host_facts(
    dns: &DnsClient,
    host: &str,
    port: u16,
    uses_dane: bool,
    validates: bool,
) -> HostLookup {
    let from_status = |s| LookupFailure::from_status(s).blame_resolver(validates);
    let from_error = |e: &DnsError| LookupFailure::from_dns_error(e).blame_resolver(validates);
    let (addrs, addr_facts, alias) = match dns.host_addresses(host).await {
        Ok(HostAddresses { addresses, alias }) => {
            let (addrs, facts) = match addresses {
                Answer::Found { records, status } => match status {
                    DnssecStatus::Secure | DnssecStatus::Insecure => {
                        (records, AddrFacts::Found(status))
                    }
                    other => (Vec::new(), AddrFacts::Failed(from_status(other))),
                },
                _ => (Vec::new(), AddrFacts::NoAddress),
            };
            (addrs, facts, alias)
        }
        Err(e) => (Vec::new(), AddrFacts::Failed(from_error(&e)), None),
    };
    // RFC 7672 §2.2.3: a secure CNAME chain adds its expanded name as a TLSA base
    // domain; a bogus link fails the address lookup (never a downgrade).
    let (addrs, addr_facts, secure_alias) = match secure_alias(host, alias.as_ref()) {
        Ok(expanded) => (addrs, addr_facts, expanded),
        Err(failure) => (
            Vec::new(),
            AddrFacts::Failed(failure.blame_resolver(validates)),
            None,
        ),
    };
    let mut all = Vec::new();
    let mut tlsa = TlsaFacts::NotLooked;
    let mut tlsa_base = None;
    // RFC 7672 §2.2.2: TLSA records are looked up only when the address records are
    // secure.
    if uses_dane && addr_facts == AddrFacts::Found(DnssecStatus::Secure) {
        for base in tlsa_base_domains(host, secure_alias.as_deref()) {
            let (facts, records) = tlsa_at(dns, port, &base, validates).await;
            tlsa = facts;
            all = records;
            tlsa_base = Some(base);
            if tlsa_settles(&tlsa) {
                break;
            }
        }
    }
    if uses_dane {
        metrics::counter!("mxgate_dane_lookups_total", "result" => tlsa.metric_label())
            .increment(1);
    }
    (
        addrs,
        HostFacts {
            host: host.to_string(),
            secure_alias,
            addrs: addr_facts,
            tlsa,
            tlsa_base,
        },
        all,
    )
}

/// The TLSA facts at `_PORT._tcp.BASE` (RFC 6698 §3), and every record found (for
/// reports).
async fn tlsa_at(
    dns: &DnsClient,
    port: u16,
    base: &str,
    validates: bool,
) -> (TlsaFacts, Vec<TlsaRecord>) {
    let from_status = |s| LookupFailure::from_status(s).blame_resolver(validates);
    match dns.tlsa(port, base).await {
        Ok(Answer::Found { records, status }) => {
            let all: Vec<TlsaRecord> = records
                .into_iter()
                .map(|t| TlsaRecord {
                    usage: t.usage,
                    selector: t.selector,
                    matching: t.matching,
                    data: t.data,
                })
                .collect();
            let facts = match status {
                DnssecStatus::Secure => {
                    let usable: Vec<TlsaRecord> =
                        all.iter().filter(|r| r.is_usable()).cloned().collect();
                    if usable.is_empty() {
                        TlsaFacts::SecureUnusable
                    } else {
                        TlsaFacts::SecureUsable(usable)
                    }
                }
                DnssecStatus::Insecure => TlsaFacts::Insecure,
                other => TlsaFacts::Failed(from_status(other)),
            };
            (facts, all)
        }
        Ok(Answer::NoData { status } | Answer::NxDomain { status }) => {
            let facts = match status {
                DnssecStatus::Secure => TlsaFacts::SecureNone,
                DnssecStatus::Insecure => TlsaFacts::Insecure,
                other => TlsaFacts::Failed(from_status(other)),
            };
            (facts, Vec::new())
        }
        Err(e) => (
            TlsaFacts::Failed(LookupFailure::from_dns_error(&e).blame_resolver(validates)),
            Vec::new(),
        ),
    }
}

fn dns_error(domain: &str, e: DnsError, validates: bool) -> PlanError {
    match e {
        DnsError::InvalidName { .. } => PlanError::InvalidName {
            domain: domain.to_string(),
        },
        e => PlanError::MxLookup {
            domain: domain.to_string(),
            failure: LookupFailure::from_dns_error(&e).blame_resolver(validates),
        },
    }
}

fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delivery spawns `plan` on tokio: its future must be `Send`, and the engine
    /// shareable.
    #[test]
    fn engine_and_plan_future_are_send() {
        fn send<T: Send>(_: &T) {}
        fn sync<T: Send + Sync>() {}
        sync::<PolicyEngine>();
        #[allow(dead_code)]
        fn check(e: &PolicyEngine) {
            send(&e.plan("example.com"));
            send(&e.explain("example.com", CacheWrite::ReadOnly));
        }
    }
}
