//! What is counted: one [`SessionRecord`] per delivery session, tallied per policy
//! domain and policy (RFC 8460 §4.4), with the failure details of §4.3.
//!
//! Pure data and arithmetic; persistence is in `store`, the JSON in `report`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// `policy-type` (RFC 8460 §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    /// An MTA-STS policy was applied (RFC 8461).
    Sts,
    /// DANE TLSA records were applied (RFC 7672).
    Tlsa,
    /// Neither applied.
    NoPolicyFound,
}

impl PolicyType {
    pub const ALL: [PolicyType; 3] = [PolicyType::Sts, PolicyType::Tlsa, PolicyType::NoPolicyFound];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// The policy a session was held to, as RFC 8460 §4.4 describes it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Policy {
    pub policy_type: PolicyType,
    /// `policy-string`: the MTA-STS policy's lines, or the TLSA records in presentation
    /// form (`3 1 1 ab12…`); empty for `no-policy-found`.
    pub policy_string: Vec<String>,
    /// `mx-host`: the MTA-STS policy's `mx` patterns, or the MX host the TLSA records
    /// belong to; empty for `no-policy-found`.
    pub mx_host: Vec<String>,
}

impl Policy {
    pub fn no_policy_found() -> Policy {
        Policy {
            policy_type: PolicyType::NoPolicyFound,
            policy_string: Vec::new(),
            mx_host: Vec::new(),
        }
    }

    /// An MTA-STS policy from its body: `policy-string` is its lines (CR/LF stripped,
    /// empty lines dropped), `mx-host` its `mx:` values.
    pub fn sts(policy_body: &str) -> Policy {
        let lines: Vec<String> = policy_body
            .lines()
            .map(|l| l.trim_end_matches('\r').trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let mx_host = lines
            .iter()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "mx").then(|| v.trim().to_string())
            })
            .collect();
        Policy {
            policy_type: PolicyType::Sts,
            policy_string: lines,
            mx_host,
        }
    }

    /// MTA-STS announced by the domain's `_mta-sts` TXT record (RFC 8461 §3.1) but not
    /// obtained: the fetch failed, the policy was invalid, or its host failed PKIX
    /// validation (RFC 8460 §4.3.2.2). `policy-type` is `sts` — the policy that was to
    /// be applied — with neither `policy-string` nor `mx-host`: RFC 8460 §4.4 fills
    /// those from the applied policy, and there is none to quote.
    pub fn sts_unavailable() -> Policy {
        Policy {
            policy_type: PolicyType::Sts,
            policy_string: Vec::new(),
            mx_host: Vec::new(),
        }
    }

    /// DANE: the TLSA records (presentation form) of one MX host.
    pub fn tlsa(mx_host: &str, records: Vec<String>) -> Policy {
        Policy {
            policy_type: PolicyType::Tlsa,
            policy_string: records,
            mx_host: vec![mx_host.to_string()],
        }
    }
}

/// `result-type` (RFC 8460 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    // §4.3.1 negotiation failures
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    // §4.3.2.1 DANE
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    // §4.3.2.2 MTA-STS
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

impl ResultType {
    pub const ALL: [ResultType; 11] = [
        ResultType::StarttlsNotSupported,
        ResultType::CertificateHostMismatch,
        ResultType::CertificateExpired,
        ResultType::CertificateNotTrusted,
        ResultType::ValidationFailure,
        ResultType::TlsaInvalid,
        ResultType::DnssecInvalid,
        ResultType::DaneRequired,
        ResultType::StsPolicyFetchError,
        ResultType::StsPolicyInvalid,
        ResultType::StsWebpkiInvalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }

    /// The result type named `name` (its RFC 8460 §4.3 spelling); `None` for any other
    /// string.
    pub fn parse(name: &str) -> Option<ResultType> {
        ResultType::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// The longest `additional-information` / `failure-reason-code` kept: reports stay
/// small and a hostile server cannot fill them.
pub const MAX_DETAIL_TEXT: usize = 256;
/// Distinct failure details kept per policy; further failures are counted in the
/// summary and merged into the last detail slot's neighbours by result type.
pub const MAX_DETAILS_PER_POLICY: usize = 200;

/// One entry of `failure-details` without its count (RFC 8460 §4.4).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FailureDetail {
    pub result_type: ResultType,
    pub sending_mta_ip: Option<IpAddr>,
    pub receiving_mx_hostname: Option<String>,
    pub receiving_mx_helo: Option<String>,
    pub receiving_ip: Option<IpAddr>,
    pub failure_reason_code: Option<String>,
    pub additional_information: Option<String>,
}

impl FailureDetail {
    /// A detail with only the result type.
    pub fn new(result_type: ResultType) -> FailureDetail {
        FailureDetail {
            result_type,
            sending_mta_ip: None,
            receiving_mx_hostname: None,
            receiving_mx_helo: None,
            receiving_ip: None,
            failure_reason_code: None,
            additional_information: None,
        }
    }

    /// Text fields bounded and free of control characters.
    fn bounded(mut self) -> FailureDetail {
        for field in [
            &mut self.receiving_mx_hostname,
            &mut self.receiving_mx_helo,
            &mut self.failure_reason_code,
            &mut self.additional_information,
        ] {
            if let Some(text) = field.take() {
                let clean: String = text
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                let mut end = clean.len().min(MAX_DETAIL_TEXT);
                while !clean.is_char_boundary(end) {
                    end -= 1;
                }
                *field = Some(clean[..end].to_string());
            }
        }
        self
    }
}

/// How a session fared against its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionResult {
    Success,
    Failure(FailureDetail),
}

/// One delivery session, counted once into its policy domain's report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The recipient domain whose `_smtp._tls` record is used (lower case).
    pub policy_domain: String,
    pub policy: Policy,
    pub result: SessionResult,
}

/// The counts of one policy of one domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounts {
    pub policy: Policy,
    pub successes: u64,
    pub failures: u64,
    /// Failure details with their `failed-session-count`.
    pub details: Vec<(FailureDetail, u64)>,
}

/// Counts of one reporting period: policy domain → its policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub domains: BTreeMap<String, Vec<PolicyCounts>>,
}

impl Tally {
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Counts one session.
    pub fn record(&mut self, record: SessionRecord) {
        let domain = record
            .policy_domain
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let policies = self.domains.entry(domain).or_default();
        let counts = match policies.iter().position(|p| p.policy == record.policy) {
            Some(i) => &mut policies[i],
            None => {
                policies.push(PolicyCounts {
                    policy: record.policy,
                    successes: 0,
                    failures: 0,
                    details: Vec::new(),
                });
                let last = policies.len() - 1;
                &mut policies[last]
            }
        };
        match record.result {
            SessionResult::Success => counts.successes += 1,
            SessionResult::Failure(detail) => {
                counts.failures += 1;
                add_detail(&mut counts.details, detail.bounded(), 1);
            }
        }
    }

    /// Adds every count of `other` (used when merging a persisted period with the
    /// sessions counted since).
    pub fn merge(&mut self, other: Tally) {
        for (domain, policies) in other.domains {
            let mine = self.domains.entry(domain).or_default();
            for p in policies {
                match mine.iter_mut().find(|m| m.policy == p.policy) {
                    Some(m) => {
                        m.successes += p.successes;
                        m.failures += p.failures;
                        for (d, n) in p.details {
                            add_detail(&mut m.details, d, n);
                        }
                    }
                    None => mine.push(p),
                }
            }
        }
    }

    /// Total sessions counted.
    pub fn sessions(&self) -> u64 {
        self.domains
            .values()
            .flatten()
            .map(|p| p.successes + p.failures)
            .sum()
    }
}

fn add_detail(details: &mut Vec<(FailureDetail, u64)>, detail: FailureDetail, n: u64) {
    if let Some((_, count)) = details.iter_mut().find(|(d, _)| *d == detail) {
        *count += n;
        return;
    }
    if details.len() < MAX_DETAILS_PER_POLICY {
        details.push((detail, n));
        return;
    }
    // Full: fold into the bare result type, so the count is never lost.
    let bare = FailureDetail::new(detail.result_type);
    match details.iter_mut().find(|(d, _)| *d == bare) {
        Some((_, count)) => *count += n,
        None => {
            if let Some(slot) = details.last_mut() {
                // Replace the last specific entry by a bare one holding both counts.
                if slot.0.result_type == detail.result_type {
                    slot.0 = bare;
                    slot.1 += n;
                } else {
                    details.push((bare, n));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn fail(rt: ResultType, mx: &str) -> SessionResult {
        SessionResult::Failure(FailureDetail {
            receiving_mx_hostname: Some(mx.into()),
            receiving_ip: Some("192.0.2.1".parse().unwrap()),
            sending_mta_ip: Some("198.51.100.7".parse().unwrap()),
            ..FailureDetail::new(rt)
        })
    }

    fn record(domain: &str, policy: &Policy, result: SessionResult) -> SessionRecord {
        SessionRecord {
            policy_domain: domain.into(),
            policy: policy.clone(),
            result,
        }
    }

    #[test]
    fn sessions_count_once_per_domain_and_policy() {
        let sts = Policy::sts("version: STSv1\r\nmode: enforce\r\nmx: mx.a.example\r\nmx: *.b.example\r\nmax_age: 86400\r\n");
        assert_eq!(sts.mx_host, vec!["mx.a.example", "*.b.example"]);
        assert_eq!(sts.policy_string.len(), 5);
        let none = Policy::no_policy_found();
        let mut t = Tally::default();
        t.record(record("A.example.", &sts, SessionResult::Success));
        t.record(record("a.example", &sts, SessionResult::Success));
        t.record(record(
            "a.example",
            &sts,
            fail(ResultType::CertificateNotTrusted, "mx.a.example"),
        ));
        t.record(record(
            "a.example",
            &sts,
            fail(ResultType::CertificateNotTrusted, "mx.a.example"),
        ));
        t.record(record(
            "a.example",
            &sts,
            fail(ResultType::StarttlsNotSupported, "mx.a.example"),
        ));
        t.record(record("a.example", &none, SessionResult::Success));
        t.record(record("b.example", &none, SessionResult::Success));
        assert_eq!(t.sessions(), 7);
        let a = &t.domains["a.example"];
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].successes, a[0].failures), (2, 3));
        assert_eq!(a[0].details.len(), 2);
        assert_eq!(a[0].details[0].1, 2);
        assert_eq!(
            a[0].details[0].0.result_type,
            ResultType::CertificateNotTrusted
        );
        assert_eq!((a[1].successes, a[1].failures), (1, 0));
        assert_eq!(t.domains["b.example"][0].successes, 1);
    }

    #[test]
    fn merge_adds_counts() {
        let p = Policy::no_policy_found();
        let mut a = Tally::default();
        a.record(record("x.example", &p, SessionResult::Success));
        a.record(record(
            "x.example",
            &p,
            fail(ResultType::ValidationFailure, "mx"),
        ));
        let mut b = a.clone();
        b.record(record("y.example", &p, SessionResult::Success));
        a.merge(b);
        assert_eq!(a.domains["x.example"][0].successes, 2);
        assert_eq!(a.domains["x.example"][0].failures, 2);
        assert_eq!(a.domains["x.example"][0].details[0].1, 2);
        assert_eq!(a.domains["y.example"][0].successes, 1);
    }

    #[test]
    fn details_are_bounded_and_cleaned() {
        let p = Policy::no_policy_found();
        let mut t = Tally::default();
        for i in 0..(MAX_DETAILS_PER_POLICY + 50) {
            let mut d = FailureDetail::new(ResultType::ValidationFailure);
            d.additional_information = Some(format!("server {i}\r\n{}", "x".repeat(1000)));
            t.record(record("x.example", &p, SessionResult::Failure(d)));
        }
        let counts = &t.domains["x.example"][0];
        assert_eq!(counts.failures, (MAX_DETAILS_PER_POLICY + 50) as u64);
        assert!(counts.details.len() <= MAX_DETAILS_PER_POLICY + 1);
        let sum: u64 = counts.details.iter().map(|(_, n)| n).sum();
        assert_eq!(sum, counts.failures, "no failure lost from the details");
        let info = counts.details[0]
            .0
            .additional_information
            .as_deref()
            .unwrap();
        assert!(info.len() <= MAX_DETAIL_TEXT && !info.contains('\r'));
    }

    #[test]
    fn result_types_have_the_rfc_names() {
        for rt in ResultType::ALL {
            assert_eq!(serde_json::to_value(rt).unwrap(), rt.as_str());
            assert_eq!(ResultType::parse(rt.as_str()), Some(rt));
        }
        assert_eq!(
            ResultType::parse("sts-policy-fetch-error"),
            Some(ResultType::StsPolicyFetchError)
        );
        assert_eq!(
            ResultType::parse("sts-policy-invalid"),
            Some(ResultType::StsPolicyInvalid)
        );
        assert_eq!(
            ResultType::parse("sts-webpki-invalid"),
            Some(ResultType::StsWebpkiInvalid)
        );
        for not_one in [
            "",
            "testing",
            "no-policy-found",
            "STS-POLICY-INVALID",
            "sts-policy-fetch",
        ] {
            assert_eq!(ResultType::parse(not_one), None, "{not_one:?}");
        }
        for pt in PolicyType::ALL {
            assert_eq!(serde_json::to_value(pt).unwrap(), pt.as_str());
        }
    }
}
