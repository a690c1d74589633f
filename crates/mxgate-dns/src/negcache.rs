//! Negative caching of NODATA and NXDOMAIN answers (RFC 2308).
//!
//! hickory's validating resolver does not cache a DNSSEC denial (it drops the
//! negative TTL of secure answers and does not keep insecure ones at all), and the
//! `trust-ad` stub caches nothing, so without this every delivery plan would ask again
//! for the AAAA records of an IPv4-only MX host, or for the TLSA records of a host
//! that has none. This map keeps such denials for as long as RFC 2308 allows, bounded
//! both in time ([`MAX_TTL`]) and in size ([`MAX_ENTRIES`]).
//!
//! Pure apart from a `Mutex`: the caller passes the current time. Only answers with a
//! known DNSSEC state (secure or insecure) are kept: bogus, indeterminate and failed
//! lookups are asked again every time, so a resolver that recovers is seen at once.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::{RData, Record, RecordType};

use crate::{Answer, DnssecStatus};

/// Longest time a denial is kept, whatever the zone says. RFC 2308 §5: "values of
/// one to three hours have been found to work well and would make sensible a
/// default"; one hour is also the longest back-off of the MTA-STS negative cache
/// (docs/policy.md), so no "nothing here" of mxgate outlives an hour.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// Upper bound of cached denials. Past it, expired entries are pruned, then all of
/// them (forgetting a denial costs one query).
pub const MAX_ENTRIES: usize = 50_000;

/// How long a denial may be cached, from the SOA record of its authority section.
///
/// RFC 2308 §5: "the TTL of this record is set from the minimum of the MINIMUM field
/// of the SOA record and the TTL of the SOA itself". "Negative responses without SOA
/// records SHOULD NOT be cached", hence `None` without one.
pub fn denial_ttl(authorities: &[Record]) -> Option<Duration> {
    authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => {
            Some(Duration::from_secs(u64::from(r.ttl.min(soa.minimum))).min(MAX_TTL))
        }
        _ => None,
    })
}

/// A cached denial: NODATA or NXDOMAIN with its DNSSEC state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denial {
    NoData(DnssecStatus),
    NxDomain(DnssecStatus),
}

impl Denial {
    fn of<T>(answer: &Answer<T>) -> Option<Denial> {
        let status = answer.status();
        if !matches!(status, DnssecStatus::Secure | DnssecStatus::Insecure) {
            return None;
        }
        match answer {
            Answer::Found { .. } => None,
            Answer::NoData { .. } => Some(Denial::NoData(status)),
            Answer::NxDomain { .. } => Some(Denial::NxDomain(status)),
        }
    }

    fn answer<T>(self) -> Answer<T> {
        match self {
            Denial::NoData(status) => Answer::NoData { status },
            Denial::NxDomain(status) => Answer::NxDomain { status },
        }
    }
}

/// Denials by (lower-case absolute name, record type), each with its expiry.
#[derive(Default)]
pub(crate) struct NegativeCache {
    entries: Mutex<HashMap<(String, RecordType), (Denial, Instant)>>,
}

impl NegativeCache {
    /// The cached denial of `rtype` at `name`, if one is still valid at `now`.
    pub(crate) fn get<T>(&self, name: &str, rtype: RecordType, now: Instant) -> Option<Answer<T>> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(&(key(name), rtype)) {
            Some((denial, until)) if *until > now => Some(denial.answer()),
            _ => None,
        }
    }

    /// Remembers `answer` for `ttl` if it is a denial with a known DNSSEC state.
    pub(crate) fn insert<T>(
        &self,
        name: &str,
        rtype: RecordType,
        answer: &Answer<T>,
        ttl: Duration,
        now: Instant,
    ) {
        let Some(denial) = Denial::of(answer) else {
            return;
        };
        if ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert((key(name), rtype), (denial, now + ttl.min(MAX_TTL)));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::{A, SOA};
    use hickory_resolver::proto::rr::Name;

    fn soa(ttl: u32, minimum: u32) -> Record {
        let n = Name::from_ascii("example.").unwrap();
        Record::from_rdata(
            n.clone(),
            ttl,
            RData::SOA(SOA::new(n.clone(), n, 1, 3600, 600, 86400, minimum)),
        )
    }

    #[test]
    fn ttl_is_the_smaller_of_soa_ttl_and_minimum_bounded() {
        let table = [
            (300, 60, Some(60)),
            (60, 300, Some(60)),
            (0, 300, Some(0)),
            (86400, 86400, Some(3600)),
        ];
        for (ttl, minimum, want) in table {
            assert_eq!(
                denial_ttl(&[soa(ttl, minimum)]),
                want.map(Duration::from_secs),
                "ttl {ttl} minimum {minimum}"
            );
        }
        let a = Record::from_rdata(
            Name::from_ascii("h.example.").unwrap(),
            60,
            RData::A(A::new(192, 0, 2, 1)),
        );
        assert_eq!(denial_ttl(&[a]), None, "no SOA: not cached");
        assert_eq!(denial_ttl(&[]), None);
    }

    #[test]
    fn denials_expire_and_only_known_states_are_kept() {
        let c = NegativeCache::default();
        let t0 = crate::clock::instant();
        let ttl = Duration::from_secs(60);
        let secure: Answer<()> = Answer::NoData {
            status: DnssecStatus::Secure,
        };
        c.insert("H.Example.", RecordType::AAAA, &secure, ttl, t0);
        assert_eq!(
            c.get::<()>("h.example", RecordType::AAAA, t0),
            Some(secure.clone())
        );
        assert_eq!(c.get::<()>("h.example", RecordType::A, t0), None);
        assert_eq!(
            c.get::<()>("h.example", RecordType::AAAA, t0 + Duration::from_secs(59)),
            Some(Answer::NoData {
                status: DnssecStatus::Secure
            })
        );
        assert_eq!(c.get::<()>("h.example", RecordType::AAAA, t0 + ttl), None);

        let nx: Answer<()> = Answer::NxDomain {
            status: DnssecStatus::Insecure,
        };
        c.insert("gone.example", RecordType::TLSA, &nx, ttl, t0);
        assert_eq!(c.get::<()>("gone.example", RecordType::TLSA, t0), Some(nx));

        for status in [DnssecStatus::Bogus, DnssecStatus::Indeterminate] {
            c.insert(
                "x.example",
                RecordType::MX,
                &Answer::<()>::NoData { status },
                ttl,
                t0,
            );
            assert_eq!(
                c.get::<()>("x.example", RecordType::MX, t0),
                None,
                "{status}"
            );
        }
        let found = Answer::Found {
            records: vec![()],
            status: DnssecStatus::Secure,
        };
        c.insert("y.example", RecordType::A, &found, ttl, t0);
        assert_eq!(c.get::<()>("y.example", RecordType::A, t0), None);
        c.insert("z.example", RecordType::A, &secure, Duration::ZERO, t0);
        assert_eq!(c.get::<()>("z.example", RecordType::A, t0), None);
    }

    #[test]
    fn the_map_is_bounded() {
        let c = NegativeCache::default();
        let t0 = crate::clock::instant();
        let d: Answer<()> = Answer::NoData {
            status: DnssecStatus::Insecure,
        };
        for i in 0..MAX_ENTRIES {
            c.insert(
                &format!("h{i}.example"),
                RecordType::AAAA,
                &d,
                Duration::from_secs(1),
                t0,
            );
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        // Past the bound, the expired entries go first...
        let later = t0 + Duration::from_secs(2);
        c.insert(
            "new.example",
            RecordType::AAAA,
            &d,
            Duration::from_secs(60),
            later,
        );
        assert_eq!(c.len(), 1);
        // ...then everything, when nothing has expired.
        for i in 1..MAX_ENTRIES {
            c.insert(
                &format!("n{i}.example"),
                RecordType::AAAA,
                &d,
                Duration::from_secs(60),
                later,
            );
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        c.insert(
            "last.example",
            RecordType::AAAA,
            &d,
            Duration::from_secs(60),
            later,
        );
        assert_eq!(c.len(), 1);
        assert!(c
            .get::<()>("last.example", RecordType::AAAA, later)
            .is_some());
    }
}
