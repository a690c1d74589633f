//! Pure mapping from resolver results to typed answers with a DNSSEC status.
//!
//! No I/O here: these functions take what hickory (or the `trust-ad` stub) returned and
//! decide Found / NODATA / NXDOMAIN / bogus / temporary failure, and read back the
//! CNAME chain the resolver followed ([`cname_chain`]). They do not query anything
//! and do not decide policy.

use hickory_resolver::net::{DnsError as HDnsError, NetError};
use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom;
use std::time::Duration;

use crate::{Alias, Answer, DnsError, DnssecStatus, MxHost, MxLookup};

/// One lookup: the answer, the CNAME chain it followed and, for a denial, how long it
/// may be cached.
pub(crate) struct Lookup {
    pub(crate) answer: Answer<Record>,
    pub(crate) alias: Option<Alias>,
    pub(crate) denial_ttl: Option<Duration>,
}

/// hickory's per-RRset proof as a status (RFC 4035 §4.3 names the same four states).
pub fn status_of_proof(proof: Proof) -> DnssecStatus {
    match proof {
        Proof::Secure => DnssecStatus::Secure,
        Proof::Insecure => DnssecStatus::Insecure,
        Proof::Bogus => DnssecStatus::Bogus,
        Proof::Indeterminate => DnssecStatus::Indeterminate,
    }
}

/// The status of a set of records: the weakest of them; `empty` when there are none.
pub fn combined_status<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    empty: DnssecStatus,
) -> DnssecStatus {
    let mut it = records.into_iter().peekable();
    if it.peek().is_none() {
        return empty;
    }
    it.fold(DnssecStatus::Secure, |acc, r| {
        acc.weakest(status_of_proof(r.proof))
    })
}

/// How the caller wants statuses derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusSource {
    /// Per-record proofs set by hickory's validator.
    Validator,
    /// No DNSSEC: everything is insecure.
    Off,
}

/// Turns a hickory lookup result into records of `rtype` with their status.
pub fn classify_hickory(
    name: &str,
    rtype: RecordType,
    result: Result<Vec<Record>, NetError>,
    source: StatusSource,
) -> Result<Answer<Record>, DnsError> {
    let rtype_str = rtype_name(rtype);
    let off = |s: DnssecStatus| match source {
        StatusSource::Off => DnssecStatus::Insecure,
        StatusSource::Validator => s,
    };
    match result {
        Ok(records) => {
            // The status covers the whole answer, CNAME links included (RFC 7672 §2.2.2:
            // a chain is secure only if every link is).
            let status = off(combined_status(records.iter(), DnssecStatus::Insecure));
            let wanted: Vec<Record> = records
                .into_iter()
                .filter(|r| r.record_type() == rtype)
                .collect();
            if status == DnssecStatus::Bogus {
                return Err(DnsError::Bogus {
                    name: name.to_string(),
                    rtype: rtype_str,
                });
            }
            if wanted.is_empty() {
                Ok(Answer::NoData { status })
            } else {
                Ok(Answer::Found {
                    records: wanted,
                    status,
                })
            }
        }
        Err(NetError::Dns(HDnsError::NoRecordsFound(nr))) => {
            // Validated denials keep their (secure) NSEC/NSEC3 records in the authority
            // section; an insecure zone has none that are secure.
            let status = match &nr.authorities {
                Some(auth) if auth.iter().any(|r| r.proof == Proof::Secure) => DnssecStatus::Secure,
                _ => DnssecStatus::Insecure,
            };
            negative(name, rtype_str, nr.response_code, off(status))
        }
        Err(NetError::Dns(HDnsError::Nsec {
            response, proof, ..
        })) => {
            let status = off(status_of_proof(proof));
            if status == DnssecStatus::Bogus {
                return Err(DnsError::Bogus {
                    name: name.to_string(),
                    rtype: rtype_str,
                });
            }
            negative(name, rtype_str, response.response_code, status)
        }
        Err(NetError::Dns(HDnsError::DnssecBogus)) => match source {
            StatusSource::Validator => Err(DnsError::Bogus {
                name: name.to_string(),
                rtype: rtype_str,
            }),
            StatusSource::Off => Err(DnsError::Temporary {
                name: name.to_string(),
                rtype: rtype_str,
                detail: "DNSSEC validation failed".to_string(),
            }),
        },
        Err(e) => Err(DnsError::Temporary {
            name: name.to_string(),
            rtype: rtype_str,
            detail: e.to_string(),
        }),
    }
}

/// Longest CNAME chain read back; a longer one (or a loop) is not trusted as secure.
const MAX_CNAME_LINKS: usize = 16;

/// The CNAME chain from `qname` in the answer records of one lookup, if there is one:
/// the fully expanded name and the weakest status of its links (`link_status` gives
/// each CNAME record's). RFC 7672 §2.2.3 uses the expanded name as a TLSA base domain
/// only when every link is secure; a chain that loops or runs longer than
/// [`MAX_CNAME_LINKS`] is reported as indeterminate, so it never counts as secure.
pub fn cname_chain(
    qname: &Name,
    records: &[Record],
    link_status: impl Fn(&Record) -> DnssecStatus,
) -> Option<Alias> {
    let mut current = host_name(qname);
    let mut status = DnssecStatus::Secure;
    let mut links = 0;
    while let Some((record, target)) = records.iter().find_map(|r| match &r.data {
        RData::CNAME(c) if host_name(&r.name) == current => Some((r, host_name(&c.0))),
        _ => None,
    }) {
        links += 1;
        if links > MAX_CNAME_LINKS {
            status = status.weakest(DnssecStatus::Indeterminate);
            break;
        }
        status = status.weakest(link_status(record));
        current = target;
    }
    (links > 0).then_some(Alias {
        target: current,
        status,
    })
}

/// [`cname_chain`] of a hickory answer: each link by its validator proof.
pub fn hickory_cname_chain(
    qname: &Name,
    result: &Result<Vec<Record>, NetError>,
    source: StatusSource,
) -> Option<Alias> {
    let records = result.as_ref().ok()?;
    cname_chain(qname, records, |r| match source {
        StatusSource::Off => DnssecStatus::Insecure,
        StatusSource::Validator => status_of_proof(r.proof),
    })
}

/// How long the denial in a hickory result may be cached (RFC 2308 §5, see
/// [`crate::negcache::denial_ttl`]); `None` for anything but a denial with an SOA.
pub fn hickory_denial_ttl(result: &Result<Vec<Record>, NetError>) -> Option<Duration> {
    match result {
        Err(NetError::Dns(HDnsError::NoRecordsFound(nr))) => match &nr.soa {
            Some(soa) => Some(
                Duration::from_secs(u64::from(soa.ttl.min(soa.data.minimum)))
                    .min(crate::negcache::MAX_TTL),
            ),
            None => nr
                .authorities
                .as_deref()
                .and_then(crate::negcache::denial_ttl),
        },
        Err(NetError::Dns(HDnsError::Nsec { response, .. })) => {
            crate::negcache::denial_ttl(&response.authorities)
        }
        _ => None,
    }
}

/// A negative answer by response code: NXDOMAIN, NOERROR/NODATA, or a failure.
pub fn negative<T>(
    name: &str,
    rtype: &'static str,
    code: ResponseCode,
    status: DnssecStatus,
) -> Result<Answer<T>, DnsError> {
    match code {
        ResponseCode::NXDomain => Ok(Answer::NxDomain { status }),
        ResponseCode::NoError => Ok(Answer::NoData { status }),
        other => Err(DnsError::Temporary {
            name: name.to_string(),
            rtype,
            detail: format!("response code {other}"),
        }),
    }
}

pub(crate) fn rtype_name(rtype: RecordType) -> &'static str {
    match rtype {
        RecordType::MX => "MX",
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::TLSA => "TLSA",
        RecordType::TXT => "TXT",
        _ => "other",
    }
}

/// Lower-case host name without the trailing dot.
pub fn host_name(name: &hickory_resolver::proto::rr::Name) -> String {
    let s = name.to_ascii().to_ascii_lowercase();
    s.strip_suffix('.').unwrap_or(&s).to_string()
}

/// MX records from an answer, then null-MX detection and ordering.
pub fn mx_lookup(answer: Answer<Record>, rng: &mut impl rand::Rng) -> MxLookup {
    let status = answer.status();
    match answer {
        Answer::NxDomain { status } => MxLookup::NxDomain { status },
        Answer::NoData { status } => MxLookup::NoMx { status },
        Answer::Found { records, .. } => {
            let hosts = records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(MxHost {
                        preference: mx.preference,
                        host: host_name(&mx.exchange),
                    }),
                    _ => None,
                })
                .collect();
            order_mx(hosts, status, rng)
        }
    }
}

/// RFC 7505 and RFC 5321 §5.1 ordering of MX hosts.
pub fn order_mx(
    mut hosts: Vec<MxHost>,
    status: DnssecStatus,
    rng: &mut impl rand::Rng,
) -> MxLookup {
    // RFC 7505 §3: "The Null MX RR is an ordinary MX record with an RDATA section
    // consisting of preference number 0 and a zero-length label, written in master files
    // as ".", as the exchange domain". A domain that publishes it and other MX records is
    // misconfigured; we then ignore the null MX and use the others.
    let had_null = hosts.iter().any(|h| h.host.is_empty());
    hosts.retain(|h| !h.host.is_empty());
    if hosts.is_empty() {
        return if had_null {
            MxLookup::NullMx { status }
        } else {
            MxLookup::NoMx { status }
        };
    }
    // RFC 5321 §5.1: "If there are multiple destinations with the same preference and
    // there is no clear reason to favor one (e.g., by recognition of an easily reached
    // address), then the sender-SMTP MUST randomize them to spread the load".
    hosts.shuffle(rng);
    hosts.sort_by_key(|h| h.preference); // stable: keeps the shuffle within a preference
    hosts.dedup_by(|a, b| a.host == b.host);
    MxLookup::Mx { hosts, status }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hickory_resolver::proto::op::Query;
    use hickory_resolver::proto::rr::rdata::{A, MX};
    use hickory_resolver::proto::rr::Name;
    use rand::SeedableRng;

    fn rec(name: &str, data: RData, proof: Proof) -> Record {
        let mut r = Record::from_rdata(Name::from_ascii(name).unwrap(), 300, data);
        r.proof = proof;
        r
    }

    fn mx(pref: u16, host: &str) -> RData {
        RData::MX(MX::new(pref, Name::from_ascii(host).unwrap()))
    }

    #[test]
    fn weakest_orders_statuses() {
        use DnssecStatus::*;
        let cases = [
            (Secure, Secure, Secure),
            (Secure, Insecure, Insecure),
            (Insecure, Indeterminate, Indeterminate),
            (Indeterminate, Bogus, Bogus),
            (Bogus, Secure, Bogus),
        ];
        for (a, b, want) in cases {
            assert_eq!(a.weakest(b), want, "{a} + {b}");
            assert_eq!(b.weakest(a), want, "{b} + {a}");
        }
    }

    #[test]
    fn positive_answers_take_the_weakest_proof() {
        let table = [
            (vec![Proof::Secure, Proof::Secure], Ok(DnssecStatus::Secure)),
            (
                vec![Proof::Secure, Proof::Insecure],
                Ok(DnssecStatus::Insecure),
            ),
            (vec![Proof::Indeterminate], Ok(DnssecStatus::Indeterminate)),
            (vec![Proof::Secure, Proof::Bogus], Err(DnssecStatus::Bogus)),
        ];
        for (proofs, want) in table {
            let records = proofs
                .iter()
                .map(|p| rec("a.example.", RData::A(A::new(192, 0, 2, 1)), *p))
                .collect();
            let got = classify_hickory(
                "a.example",
                RecordType::A,
                Ok(records),
                StatusSource::Validator,
            );
            match (got, want) {
                (Ok(a), Ok(s)) => assert_eq!(a.status(), s),
                (Err(e), Err(s)) => assert_eq!(e.status(), s),
                (got, want) => panic!("{proofs:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn off_mode_is_always_insecure() {
        let records = vec![rec(
            "a.example.",
            RData::A(A::new(192, 0, 2, 1)),
            Proof::Secure,
        )];
        let got =
            classify_hickory("a.example", RecordType::A, Ok(records), StatusSource::Off).unwrap();
        assert_eq!(got.status(), DnssecStatus::Insecure);
        assert_eq!(got.records().len(), 1);
    }

    #[test]
    fn records_of_other_types_are_nodata() {
        let records = vec![rec(
            "a.example.",
            RData::A(A::new(192, 0, 2, 1)),
            Proof::Secure,
        )];
        let got = classify_hickory(
            "a.example",
            RecordType::MX,
            Ok(records),
            StatusSource::Validator,
        )
        .unwrap();
        assert_eq!(
            got,
            Answer::NoData {
                status: DnssecStatus::Secure
            }
        );
    }

    #[test]
    fn negative_answers_by_code() {
        let q = Query::query(Name::from_ascii("x.example.").unwrap(), RecordType::MX);
        for (code, want) in [
            (
                ResponseCode::NXDomain,
                Some(Answer::NxDomain {
                    status: DnssecStatus::Insecure,
                }),
            ),
            (
                ResponseCode::NoError,
                Some(Answer::NoData {
                    status: DnssecStatus::Insecure,
                }),
            ),
            (ResponseCode::ServFail, None),
        ] {
            let nr = hickory_resolver::net::NoRecords::new(q.clone(), code);
            let got = classify_hickory(
                "x.example",
                RecordType::MX,
                Err(NetError::Dns(HDnsError::NoRecordsFound(nr))),
                StatusSource::Validator,
            );
            match want {
                Some(w) => assert_eq!(got.unwrap(), w),
                None => assert!(matches!(got, Err(DnsError::Temporary { .. }))),
            }
        }
    }

    #[test]
    fn bogus_and_failures_are_errors() {
        let got = classify_hickory(
            "x.example",
            RecordType::TLSA,
            Err(NetError::Dns(HDnsError::DnssecBogus)),
            StatusSource::Validator,
        );
        assert!(matches!(got, Err(DnsError::Bogus { .. })));
        let got = classify_hickory(
            "x.example",
            RecordType::TLSA,
            Err(NetError::Timeout),
            StatusSource::Validator,
        );
        assert!(matches!(got, Err(DnsError::Temporary { .. })));
    }

    #[test]
    fn cname_chains_are_read_back_with_their_weakest_link() {
        let cname = |owner: &str, target: &str, proof| {
            rec(
                owner,
                RData::CNAME(hickory_resolver::proto::rr::rdata::CNAME(
                    Name::from_ascii(target).unwrap(),
                )),
                proof,
            )
        };
        let a = |owner: &str| rec(owner, RData::A(A::new(192, 0, 2, 1)), Proof::Secure);
        let q = Name::from_ascii("MX.Example.").unwrap();
        let by_proof = |r: &Record| status_of_proof(r.proof);
        // No CNAME: no alias.
        assert_eq!(cname_chain(&q, &[a("mx.example.")], by_proof), None);
        // Two secure links.
        let chain = [
            cname("mx.example.", "b.example.", Proof::Secure),
            cname("b.example.", "Target.Provider.", Proof::Secure),
            a("target.provider."),
        ];
        assert_eq!(
            cname_chain(&q, &chain, by_proof),
            Some(Alias {
                target: "target.provider".into(),
                status: DnssecStatus::Secure
            })
        );
        // One insecure link makes the chain insecure, whatever the order in the answer.
        let chain = [
            a("target.provider."),
            cname("b.example.", "target.provider.", Proof::Insecure),
            cname("mx.example.", "b.example.", Proof::Secure),
        ];
        assert_eq!(
            cname_chain(&q, &chain, by_proof).map(|a| a.status),
            Some(DnssecStatus::Insecure)
        );
        // A CNAME of another owner is not part of the chain.
        let other = [cname("other.example.", "x.example.", Proof::Secure)];
        assert_eq!(cname_chain(&q, &other, by_proof), None);
        // A loop is never secure.
        let looped = [
            cname("mx.example.", "b.example.", Proof::Secure),
            cname("b.example.", "mx.example.", Proof::Secure),
        ];
        assert_eq!(
            cname_chain(&q, &looped, by_proof).map(|a| a.status),
            Some(DnssecStatus::Indeterminate)
        );
        // Off mode: every link is insecure.
        let chain = vec![cname("mx.example.", "t.example.", Proof::Secure)];
        assert_eq!(
            hickory_cname_chain(&q, &Ok(chain), StatusSource::Off).map(|a| a.status),
            Some(DnssecStatus::Insecure)
        );
    }

    #[test]
    fn mx_ordering_null_mx_and_implicit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let s = DnssecStatus::Secure;
        let ans = |v: Vec<RData>| Answer::Found {
            records: v
                .into_iter()
                .map(|d| rec("d.example.", d, Proof::Secure))
                .collect(),
            status: s,
        };
        assert_eq!(
            mx_lookup(ans(vec![mx(0, ".")]), &mut rng),
            MxLookup::NullMx { status: s }
        );
        assert_eq!(
            mx_lookup(Answer::NoData { status: s }, &mut rng),
            MxLookup::NoMx { status: s }
        );
        assert_eq!(
            mx_lookup(Answer::NxDomain { status: s }, &mut rng),
            MxLookup::NxDomain { status: s }
        );
        let got = mx_lookup(
            ans(vec![mx(20, "B.example."), mx(10, "a.example."), mx(0, ".")]),
            &mut rng,
        );
        let MxLookup::Mx { hosts, .. } = got else {
            panic!("{got:?}")
        };
        let names: Vec<_> = hosts.iter().map(|h| h.host.as_str()).collect();
        assert_eq!(names, ["a.example", "b.example"]);
    }

    #[test]
    fn equal_preferences_are_randomised() {
        let hosts: Vec<MxHost> = (0..6)
            .map(|i| MxHost {
                preference: 10,
                host: format!("mx{i}.example"),
            })
            .chain([MxHost {
                preference: 5,
                host: "first.example".into(),
            }])
            .collect();
        let mut seen = std::collections::HashSet::new();
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let MxLookup::Mx { hosts, .. } =
                order_mx(hosts.clone(), DnssecStatus::Insecure, &mut rng)
            else {
                panic!()
            };
            assert_eq!(hosts[0].host, "first.example");
            assert!(hosts.windows(2).all(|w| w[0].preference <= w[1].preference));
            seen.insert(hosts[1].host.clone());
        }
        assert!(seen.len() > 1, "always the same order: {seen:?}");
    }
}
