//! [`DnsClient`]: the async lookups, thin over hickory-resolver or the `trust-ad` stub.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::dnssec::TrustAnchors;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use mxgate_config::{DnsConfig, DnssecMode};

use crate::classify::{self, Lookup, StatusSource};
use crate::negcache::NegativeCache;
use crate::selftest::{self, SelfTest};
use crate::stub::StubResolver;
use crate::{AddrAnswer, Alias, Answer, DnsError, DnssecStatus, HostAddresses, MxLookup, Tlsa};

enum Backend {
    Hickory(Box<TokioResolver>, StatusSource),
    TrustAd(StubResolver),
}

/// DNS lookups with DNSSEC status. Cheap to share behind an `Arc`.
pub struct DnsClient {
    backend: Backend,
    /// Bound on one whole lookup, validation chain included.
    deadline: Duration,
    mode: DnssecMode,
    /// `dns.dnssec_probe`.
    probe: String,
    /// The last resolver self-test passed (true until one has run).
    validates: AtomicBool,
    /// NODATA and NXDOMAIN answers, kept as RFC 2308 says.
    denials: NegativeCache,
}

impl DnsClient {
    /// Builds the client from `[dns]`: `nameservers` (empty = `/etc/resolv.conf`),
    /// `timeout`, `dnssec` and `trust_anchor`.
    pub fn new(config: &DnsConfig) -> Result<DnsClient, DnsError> {
        let deadline = config
            .timeout
            .saturating_mul(4)
            .max(Duration::from_millis(100));
        let backend = match config.dnssec {
            DnssecMode::TrustAd => {
                let servers = if config.nameservers.is_empty() {
                    system_nameservers()?
                } else {
                    config.nameservers.clone()
                };
                // etc/mxgate.toml: the validating resolver "must then be on loopback": the AD
                // bit crosses the network unauthenticated (RFC 4035 §4.9.3, paraphrased: a
                // stub may trust AD only over a secure channel to its resolver), so
                // anything else is refused at startup.
                if let Some(bad) = servers.iter().find(|s| !s.ip().is_loopback()) {
                    return Err(DnsError::Setup(format!(
                        "dns.dnssec = \"trust-ad\" needs a resolver on loopback, not {bad}"
                    )));
                }
                Backend::TrustAd(StubResolver::new(servers, config.timeout)?)
            }
            DnssecMode::Validate | DnssecMode::Off => {
                let rc = if config.nameservers.is_empty() {
                    let (rc, _) = hickory_resolver::system_conf::read_system_conf()
                        .map_err(|e| DnsError::Setup(format!("/etc/resolv.conf: {e}")))?;
                    ResolverConfig::from_name_servers(rc.name_servers().to_vec())
                } else {
                    ResolverConfig::from_name_servers(
                        config.nameservers.iter().map(|a| name_server(*a)).collect(),
                    )
                };
                let mut builder =
                    Resolver::builder_with_config(rc, TokioRuntimeProvider::default());
                let opts = builder.options_mut();
                opts.timeout = config.timeout;
                opts.attempts = 2;
                opts.use_hosts_file = ResolveHosts::Never;
                opts.ndots = 0;
                opts.edns0 = true;
                let source = if config.dnssec == DnssecMode::Validate {
                    opts.validate = true;
                    if !config.trust_anchor.as_os_str().is_empty() {
                        let anchors =
                            TrustAnchors::from_file(&config.trust_anchor).map_err(|e| {
                                DnsError::Setup(format!(
                                    "dns.trust_anchor {}: {e}",
                                    config.trust_anchor.display()
                                ))
                            })?;
                        builder = builder.with_trust_anchor(Arc::new(anchors));
                    }
                    StatusSource::Validator
                } else {
                    StatusSource::Off
                };
                let resolver = builder
                    .build()
                    .map_err(|e| DnsError::Setup(format!("resolver: {e}")))?;
                Backend::Hickory(Box::new(resolver), source)
            }
        };
        Ok(DnsClient {
            backend,
            deadline,
            mode: config.dnssec,
            probe: config.dnssec_probe.clone(),
            validates: AtomicBool::new(true),
            denials: NegativeCache::default(),
        })
    }

    /// Runs the resolver self-test (see [`selftest`]) and remembers its result for
    /// [`DnsClient::resolver_validates`].
    pub async fn self_test(&self) -> SelfTest {
        let probe = self.probe.trim();
        let (name, rtype) = match probe.split_once(char::is_whitespace) {
            Some((n, t)) => (n.trim(), t.trim()),
            None => (probe, "NS"),
        };
        let result = if self.mode == DnssecMode::Off {
            SelfTest::Skipped
        } else {
            match RecordType::from_str(&rtype.to_ascii_uppercase()) {
                Err(_) => SelfTest::LookupFailed {
                    detail: format!("dns.dnssec_probe {probe:?}: unknown record type"),
                },
                Ok(rt) => {
                    let answer = self.lookup_root_or(name, rt).await;
                    selftest::judge(self.mode, probe, answer.as_ref().map(|a| a.status()))
                }
            }
        };
        self.validates.store(result.passed(), Ordering::Relaxed);
        result
    }

    /// Whether the last self-test passed (true before the first one): while it is
    /// false, bogus and indeterminate answers are the resolver's fault.
    pub fn resolver_validates(&self) -> bool {
        self.validates.load(Ordering::Relaxed)
    }

    /// [`DnsClient::lookup`], also for the root name `.`.
    async fn lookup_root_or(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<Answer<Record>, DnsError> {
        if name.trim_end_matches('.').is_empty() {
            return Ok(self.lookup_fqdn(".", Name::root(), rtype).await?.answer);
        }
        self.lookup(name, rtype).await
    }

    /// The configured DNSSEC mode.
    pub fn dnssec_mode(&self) -> DnssecMode {
        self.mode
    }

    /// Records of `rtype` at `name` (CNAMEs followed), with their status.
    pub async fn lookup(&self, name: &str, rtype: RecordType) -> Result<Answer<Record>, DnsError> {
        Ok(self.lookup_fqdn(name, fqdn(name)?, rtype).await?.answer)
    }

    async fn lookup_fqdn(
        &self,
        name: &str,
        fqdn: Name,
        rtype: RecordType,
    ) -> Result<Lookup, DnsError> {
        let key = fqdn.to_ascii();
        if let Some(answer) = self.denials.get(&key, rtype, crate::clock::instant()) {
            return Ok(Lookup {
                answer,
                alias: None,
                denial_ttl: None,
            });
        }
        let fut = async {
            match &self.backend {
                Backend::Hickory(resolver, source) => {
                    let result = resolver
                        .lookup(fqdn.clone(), rtype)
                        .await
                        .map(|l| l.answers().to_vec());
                    let denial_ttl = classify::hickory_denial_ttl(&result);
                    let alias = classify::hickory_cname_chain(&fqdn, &result, *source);
                    classify::classify_hickory(name, rtype, result, *source).map(|answer| Lookup {
                        answer,
                        alias,
                        denial_ttl,
                    })
                }
                Backend::TrustAd(stub) => stub.lookup(name, &fqdn, rtype).await,
            }
        };
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(Ok(lookup)) => {
                if let Some(ttl) = lookup.denial_ttl {
                    self.denials
                        .insert(&key, rtype, &lookup.answer, ttl, crate::clock::instant());
                }
                Ok(lookup)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DnsError::Temporary {
                name: name.to_string(),
                rtype: classify::rtype_name(rtype),
                detail: format!("timed out after {:?}", self.deadline),
            }),
        }
    }

    /// MX hosts of `domain`, sorted by preference (random among equals), with null MX
    /// (RFC 7505), NODATA and NXDOMAIN told apart.
    pub async fn mx(&self, domain: &str) -> Result<MxLookup, DnsError> {
        let answer = self.lookup(domain, RecordType::MX).await?;
        Ok(classify::mx_lookup(answer, &mut rand::rng()))
    }

    /// A and AAAA records of `host` (IPv4 first). The status is the weaker of the two
    /// lookups; NXDOMAIN only if the name does not exist.
    pub async fn addresses(&self, host: &str) -> Result<AddrAnswer, DnsError> {
        Ok(self.host_addresses(host).await?.addresses)
    }

    /// [`DnsClient::addresses`] with the CNAME chain the lookups followed, for the TLSA
    /// base domains of RFC 7672 §2.2.3.
    pub async fn host_addresses(&self, host: &str) -> Result<HostAddresses, DnsError> {
        let name = fqdn(host)?;
        let (a, aaaa) = tokio::join!(
            self.lookup_fqdn(host, name.clone(), RecordType::A),
            self.lookup_fqdn(host, name, RecordType::AAAA)
        );
        let (a, aaaa) = (a?, aaaa?);
        let alias = merge_aliases(a.alias, aaaa.alias);
        Ok(HostAddresses {
            addresses: merge_addresses(a.answer, aaaa.answer),
            alias,
        })
    }

    /// TLSA records at `_PORT._tcp.HOST` (RFC 6698 §3, RFC 7672 §2.2).
    pub async fn tlsa(&self, port: u16, host: &str) -> Result<Answer<Tlsa>, DnsError> {
        let name = format!("_{port}._tcp.{}", host.trim_end_matches('.'));
        let answer = self.lookup(&name, RecordType::TLSA).await?;
        Ok(answer.map(|records| {
            records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TLSA(t) => Some(Tlsa {
                        usage: t.cert_usage.into(),
                        selector: t.selector.into(),
                        matching: t.matching.into(),
                        data: t.cert_data.clone(),
                    }),
                    _ => None,
                })
                .collect()
        }))
    }

    /// [`DnsClient::txt`] with the smallest TTL of the records found (`None` for
    /// NODATA/NXDOMAIN), for callers that cache the answer (RFC 8460 §3 discovery).
    pub async fn txt_with_ttl(
        &self,
        name: &str,
    ) -> Result<(Answer<String>, Option<Duration>), DnsError> {
        let answer = self.lookup(name, RecordType::TXT).await?;
        let ttl = answer
            .records()
            .iter()
            .map(|r| r.ttl)
            .min()
            .map(|t| Duration::from_secs(u64::from(t)));
        Ok((answer.map(|records| txt_strings(&records)), ttl))
    }

    /// TXT records at `name`, each the concatenation of its character-strings
    /// (RFC 8461 §3.1 asks for that); non-UTF-8 bytes become U+FFFD.
    pub async fn txt(&self, name: &str) -> Result<Answer<String>, DnsError> {
        let answer = self.lookup(name, RecordType::TXT).await?;
        Ok(answer.map(|records| txt_strings(&records)))
    }
}

/// Each TXT record as the concatenation of its character-strings.
fn txt_strings(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => {
                let bytes: Vec<u8> = t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            _ => None,
        })
        .collect()
}

fn name_server(addr: SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    ns.connections = vec![udp, tcp];
    ns
}

fn system_nameservers() -> Result<Vec<SocketAddr>, DnsError> {
    let (rc, _) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| DnsError::Setup(format!("/etc/resolv.conf: {e}")))?;
    let mut out: Vec<SocketAddr> = Vec::new();
    for ns in rc.name_servers() {
        let port = ns.connections.first().map(|c| c.port).unwrap_or(53);
        let sa = SocketAddr::new(ns.ip, port);
        if !out.contains(&sa) {
            out.push(sa);
        }
    }
    Ok(out)
}

/// `name` as an absolute DNS name (no search list).
pub(crate) fn fqdn(name: &str) -> Result<Name, DnsError> {
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() {
        return Err(DnsError::InvalidName {
            name: name.to_string(),
        });
    }
    Name::from_ascii(format!("{trimmed}.")).map_err(|_| DnsError::InvalidName {
        name: name.to_string(),
    })
}

/// The CNAME chains of the A and the AAAA lookup → one. Both lead to the same name in
/// a consistent zone; when they do not, the expansion is not trusted as secure (only
/// the original name remains a TLSA base domain).
pub(crate) fn merge_aliases(a: Option<Alias>, aaaa: Option<Alias>) -> Option<Alias> {
    match (a, aaaa) {
        (Some(a), Some(b)) if a.target == b.target => Some(Alias {
            status: a.status.weakest(b.status),
            target: a.target,
        }),
        (Some(a), Some(_)) => Some(Alias {
            status: a.status.weakest(DnssecStatus::Indeterminate),
            target: a.target,
        }),
        (a, b) => a.or(b),
    }
}

/// A + AAAA → one answer.
pub(crate) fn merge_addresses(a: Answer<Record>, aaaa: Answer<Record>) -> AddrAnswer {
    let status = a.status().weakest(aaaa.status());
    let nx = matches!(a, Answer::NxDomain { .. }) && matches!(aaaa, Answer::NxDomain { .. });
    let mut addrs: Vec<IpAddr> = Vec::new();
    for r in a.records().iter().chain(aaaa.records()) {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        if !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    if !addrs.is_empty() {
        // Only the RRsets that exist count for the status of the addresses found: a
        // secure A with an insecure empty AAAA is still a secure address set.
        let status = match (a.records().is_empty(), aaaa.records().is_empty()) {
            (false, true) => a.status(),
            (true, false) => aaaa.status(),
            _ => status,
        };
        Answer::Found {
            records: addrs,
            status,
        }
    } else if nx {
        Answer::NxDomain { status }
    } else {
        Answer::NoData { status }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hickory_resolver::proto::dnssec::Proof;
    use hickory_resolver::proto::rr::rdata::{A, AAAA};

    fn found(data: RData, proof: Proof) -> Answer<Record> {
        let mut r = Record::from_rdata(Name::from_ascii("h.example.").unwrap(), 60, data);
        r.proof = proof;
        Answer::Found {
            records: vec![r],
            status: classify::status_of_proof(proof),
        }
    }

    #[test]
    fn merge_addresses_table() {
        use DnssecStatus::*;
        let a = || found(RData::A(A::new(192, 0, 2, 1)), Proof::Secure);
        let aaaa_ins = || {
            found(
                RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                Proof::Insecure,
            )
        };
        let got = merge_addresses(a(), Answer::NoData { status: Insecure });
        assert_eq!(
            got,
            Answer::Found {
                records: vec!["192.0.2.1".parse().unwrap()],
                status: Secure
            }
        );
        let got = merge_addresses(a(), aaaa_ins());
        assert_eq!(got.status(), Insecure);
        assert_eq!(got.records().len(), 2);
        let got = merge_addresses(
            Answer::NxDomain { status: Secure },
            Answer::NxDomain { status: Secure },
        );
        assert_eq!(got, Answer::NxDomain { status: Secure });
        let got = merge_addresses(
            Answer::NoData { status: Secure },
            Answer::NoData { status: Insecure },
        );
        assert_eq!(got, Answer::NoData { status: Insecure });
    }

    #[test]
    fn fqdn_rejects_empty_and_adds_root() {
        assert_eq!(fqdn("Example.COM").unwrap().to_ascii(), "Example.COM.");
        assert!(fqdn(".").is_err());
        assert!(fqdn("").is_err());
    }

    #[test]
    fn trust_ad_refuses_remote_resolvers() {
        let cfg = DnsConfig {
            nameservers: vec!["192.0.2.53:53".parse().unwrap()],
            dnssec: DnssecMode::TrustAd,
            ..DnsConfig::default()
        };
        assert!(matches!(DnsClient::new(&cfg), Err(DnsError::Setup(_))));
    }
}
