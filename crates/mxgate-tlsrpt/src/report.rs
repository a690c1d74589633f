//! The aggregate report: RFC 8460 §4.4 JSON, gzip-compressed (§5.1), with its
//! `report-id` and file name.
//!
//! Field names are exactly the RFC's (`organization-name`, `date-range`,
//! `start-datetime`, `policies`, `policy-type`, `policy-string`, `policy-domain`,
//! `mx-host`, `total-successful-session-count`, `failure-details`, `result-type`,
//! `sending-mta-ip`, `receiving-mx-hostname`, `receiving-ip`, `failed-session-count`,
//! `additional-information`, `failure-reason-code`, ...). Pure.

use std::io::Write;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{PolicyCounts, PolicyType, ResultType};
use crate::time::rfc3339;

/// The whole report (RFC 8460 §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Report {
    pub organization_name: String,
    pub date_range: DateRange,
    pub contact_info: String,
    pub report_id: String,
    pub policies: Vec<PolicyReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct DateRange {
    pub start_datetime: String,
    pub end_datetime: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyReport {
    pub policy: PolicyJson,
    pub summary: Summary,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_details: Vec<FailureJson>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyJson {
    pub policy_type: PolicyType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_string: Vec<String>,
    pub policy_domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mx_host: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    pub total_successful_session_count: u64,
    pub total_failure_session_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct FailureJson {
    pub result_type: ResultType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_mx_hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_mx_helo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<IpAddr>,
    pub failed_session_count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_information: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason_code: Option<String>,
}

/// Who sends the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitter {
    /// `organization-name`.
    pub organization_name: String,
    /// `contact-info`.
    pub contact_info: String,
    /// The submitter's domain (`TLS-Report-Submitter:`, the file name).
    pub domain: String,
}

/// A new `report-id`: unique per report (RFC 8460 §4.4: "A unique identifier for the
/// report"): the period start, the policy domain and 64 random bits, `@` the submitter.
pub fn new_report_id(period_start: u64, policy_domain: &str, submitter: &str) -> String {
    let random: u64 = rand::random();
    format!(
        "{}.{policy_domain}.{random:016x}@{submitter}",
        rfc3339(period_start).replace([':', '-'], "")
    )
}

/// The report of one policy domain for the period `[start, end)`.
pub fn build(
    submitter: &Submitter,
    policy_domain: &str,
    start: u64,
    end: u64,
    report_id: &str,
    policies: &[PolicyCounts],
) -> Report {
    Report {
        organization_name: submitter.organization_name.clone(),
        date_range: DateRange {
            start_datetime: rfc3339(start),
            // The RFC's example ends a day at 23:59:59Z: the last second inside it.
            end_datetime: rfc3339(end.saturating_sub(1).max(start)),
        },
        contact_info: submitter.contact_info.clone(),
        report_id: report_id.to_string(),
        policies: policies
            .iter()
            .map(|p| PolicyReport {
                policy: PolicyJson {
                    policy_type: p.policy.policy_type,
                    policy_string: p.policy.policy_string.clone(),
                    policy_domain: policy_domain.to_string(),
                    mx_host: p.policy.mx_host.clone(),
                },
                summary: Summary {
                    total_successful_session_count: p.successes,
                    total_failure_session_count: p.failures,
                },
                failure_details: p
                    .details
                    .iter()
                    .map(|(d, n)| FailureJson {
                        result_type: d.result_type,
                        sending_mta_ip: d.sending_mta_ip,
                        receiving_mx_hostname: d.receiving_mx_hostname.clone(),
                        receiving_mx_helo: d.receiving_mx_helo.clone(),
                        receiving_ip: d.receiving_ip,
                        failed_session_count: *n,
                        additional_information: d.additional_information.clone(),
                        failure_reason_code: d.failure_reason_code.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The JSON, gzip-compressed (RFC 8460 §5.1: `application/tlsrpt+gzip`).
pub fn gzip_json(report: &Report) -> Vec<u8> {
    let json = serde_json::to_vec(report).unwrap_or_default();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(&json);
    enc.finish().unwrap_or_default()
}

/// RFC 8460 §5.1 file name: `sender!policy-domain!begin-timestamp!end-timestamp.json.gz`,
/// timestamps in seconds since the epoch.
pub fn file_name(submitter: &str, policy_domain: &str, start: u64, end: u64) -> String {
    format!("{submitter}!{policy_domain}!{start}!{end}.json.gz")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{FailureDetail, Policy, SessionRecord, SessionResult, Tally};
    use std::io::Read;

    #[test]
    fn json_has_the_rfc_field_names() {
        let sts =
            Policy::sts("version: STSv1\nmode: testing\nmx: *.mail.example\nmax_age: 86400\n");
        let mut t = Tally::default();
        t.record(SessionRecord {
            policy_domain: "example.com".into(),
            policy: sts.clone(),
            result: SessionResult::Success,
        });
        t.record(SessionRecord {
            policy_domain: "example.com".into(),
            policy: sts,
            result: SessionResult::Failure(FailureDetail {
                sending_mta_ip: Some("2001:db8::1".parse().unwrap()),
                receiving_mx_hostname: Some("mx1.mail.example".into()),
                receiving_ip: Some("203.0.113.56".parse().unwrap()),
                additional_information: Some("unknown issuer".into()),
                ..FailureDetail::new(ResultType::CertificateNotTrusted)
            }),
        });
        let sub = Submitter {
            organization_name: "Relay Inc".into(),
            contact_info: "postmaster@relay.example".into(),
            domain: "relay.example".into(),
        };
        let report = build(
            &sub,
            "example.com",
            1_459_468_800,
            1_459_468_800 + 86400,
            "id-1",
            &t.domains["example.com"],
        );
        let v = serde_json::to_value(&report).unwrap();
        let want = serde_json::json!({
            "organization-name": "Relay Inc",
            "date-range": {"start-datetime": "2016-04-01T00:00:00Z", "end-datetime": "2016-04-01T23:59:59Z"},
            "contact-info": "postmaster@relay.example",
            "report-id": "id-1",
            "policies": [{
                "policy": {
                    "policy-type": "sts",
                    "policy-string": ["version: STSv1", "mode: testing", "mx: *.mail.example", "max_age: 86400"],
                    "policy-domain": "example.com",
                    "mx-host": ["*.mail.example"]
                },
                "summary": {"total-successful-session-count": 1, "total-failure-session-count": 1},
                "failure-details": [{
                    "result-type": "certificate-not-trusted",
                    "sending-mta-ip": "2001:db8::1",
                    "receiving-mx-hostname": "mx1.mail.example",
                    "receiving-ip": "203.0.113.56",
                    "failed-session-count": 1,
                    "additional-information": "unknown issuer"
                }]
            }]
        });
        assert_eq!(v, want);
        // no-policy-found carries neither policy-string nor mx-host.
        let mut t = Tally::default();
        t.record(SessionRecord {
            policy_domain: "plain.example".into(),
            policy: Policy::no_policy_found(),
            result: SessionResult::Success,
        });
        let r = build(
            &sub,
            "plain.example",
            0,
            10,
            "id-2",
            &t.domains["plain.example"],
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["policies"][0]["policy"],
            serde_json::json!({"policy-type": "no-policy-found", "policy-domain": "plain.example"})
        );
        assert!(v["policies"][0].get("failure-details").is_none());
    }

    /// RFC 8460 §4.3.2.2: an announced MTA-STS policy that could not be obtained is an
    /// `sts` policy block without policy-string or mx-host, every session a failure of
    /// the policy failure's result type; a policy obtained later in the period is a
    /// policy block of its own.
    #[test]
    fn an_unobtainable_sts_policy_is_reported_as_sts_policy_failures() {
        let failure = |rt: ResultType, mx: &str| {
            SessionResult::Failure(FailureDetail {
                receiving_mx_hostname: Some(mx.into()),
                failure_reason_code: Some(rt.as_str().into()),
                ..FailureDetail::new(rt)
            })
        };
        let mut t = Tally::default();
        for result in [
            failure(ResultType::StsPolicyFetchError, "mx1.example.com"),
            failure(ResultType::StsPolicyFetchError, "mx1.example.com"),
            failure(ResultType::StsPolicyInvalid, "mx1.example.com"),
            failure(ResultType::StsWebpkiInvalid, "mx2.example.com"),
        ] {
            t.record(SessionRecord {
                policy_domain: "example.com".into(),
                policy: Policy::sts_unavailable(),
                result,
            });
        }
        t.record(SessionRecord {
            policy_domain: "example.com".into(),
            policy: Policy::sts(
                "version: STSv1\nmode: enforce\nmx: mx1.example.com\nmax_age: 600\n",
            ),
            result: SessionResult::Success,
        });
        let sub = Submitter {
            organization_name: "Relay Inc".into(),
            contact_info: "postmaster@relay.example".into(),
            domain: "relay.example".into(),
        };
        let r = build(
            &sub,
            "example.com",
            0,
            86400,
            "id-3",
            &t.domains["example.com"],
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["policies"].as_array().unwrap().len(), 2);
        assert_eq!(
            v["policies"][0]["policy"],
            serde_json::json!({"policy-type": "sts", "policy-domain": "example.com"})
        );
        assert_eq!(
            v["policies"][0]["summary"],
            serde_json::json!({"total-successful-session-count": 0, "total-failure-session-count": 4})
        );
        let details: Vec<(String, u64)> = v["policies"][0]["failure-details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["result-type"].as_str().unwrap().to_string(),
                    d["failed-session-count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            details,
            [
                ("sts-policy-fetch-error".to_string(), 2),
                ("sts-policy-invalid".to_string(), 1),
                ("sts-webpki-invalid".to_string(), 1)
            ]
        );
        assert_eq!(
            v["policies"][1]["policy"]["policy-string"][1],
            "mode: enforce"
        );
        assert_eq!(
            v["policies"][1]["summary"]["total-successful-session-count"],
            1
        );
    }

    #[test]
    fn gzip_round_trips_and_ids_are_unique() {
        let sub = Submitter {
            organization_name: "o".into(),
            contact_info: "c".into(),
            domain: "relay.example".into(),
        };
        let r = build(&sub, "d.example", 0, 86400, "x", &[]);
        let gz = gzip_json(&r);
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let mut out = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(serde_json::from_str::<Report>(&out).unwrap(), r);
        let a = new_report_id(0, "d.example", "relay.example");
        let b = new_report_id(0, "d.example", "relay.example");
        assert_ne!(a, b);
        assert!(
            a.starts_with("19700101T000000Z.d.example.") && a.ends_with("@relay.example"),
            "{a}"
        );
        assert_eq!(
            file_name("relay.example", "d.example", 0, 86400),
            "relay.example!d.example!0!86400.json.gz"
        );
    }
}
