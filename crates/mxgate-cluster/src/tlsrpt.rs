//! TLS-RPT counters shared on Redis ([`SharedCounters`] of mxgate-tlsrpt), so that each
//! policy domain gets one report per period (RFC 8460 §4) from one instance.
//!
//! Per policy domain and aligned period two keys, both expiring with the period's
//! shared lifetime:
//!
//! - `mxgate:tlsrpt:PERIOD:DOMAIN:counts`, a hash: one field per policy and count kind
//!   (successes, failures, one per failure detail; [`fields`]), summed with `HINCRBY`;
//! - `mxgate:tlsrpt:PERIOD:DOMAIN:claim`, the election: set with `SET NX PX` by the
//!   instance that sends the report.
//!
//! Both scripts run atomically in Redis: counts are added only while the period is
//! unclaimed, and the winner reads the sum in the same step that claims it, so no
//! count can slip in between the read and the report.

use std::sync::Arc;

use mxgate_tlsrpt::model::{FailureDetail, Policy, PolicyCounts, Tally};
use mxgate_tlsrpt::shared::{AddOutcome, ClaimOutcome, PeriodKey, SharedCounters, SharedFuture};
use serde::{Deserialize, Serialize};

use crate::Cluster;

/// KEYS[1] counts, KEYS[2] claim; ARGV[1] lifetime in ms, then field/increment pairs.
/// Returns 1 when added, 0 when the period is claimed already.
const ADD: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#;

/// KEYS[1] claim, KEYS[2] counts; ARGV[1] claimant, ARGV[2] lifetime in ms.
/// Returns {'1', field, count, ...} when this claimant holds the claim, {'0'} else.
const CLAIM: &str = r#"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return {'0'}
  end
end
local out = {'1'}
for _, v in ipairs(redis.call('HGETALL', KEYS[2])) do
  out[#out + 1] = v
end
return out
"#;

/// Sessions added to the shared counters.
pub const METRIC_SHARED_SESSIONS: &str = "mxgate_cluster_tlsrpt_shared_sessions_total";

fn keys(key: &PeriodKey<'_>) -> (String, String) {
    let base = format!("mxgate:tlsrpt:{}:{}", key.period, key.policy_domain);
    (format!("{base}:counts"), format!("{base}:claim"))
}

fn ttl_ms(key: &PeriodKey<'_>) -> u64 {
    u64::try_from(key.ttl.as_millis())
        .unwrap_or(u64::MAX)
        .max(1000)
}

/// One hash field: what is counted, for which policy. Serialised as JSON, so a field
/// is the same string on every instance of one version; decoding merges by value, so
/// differently spelled fields of the same policy still add up.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
enum Field {
    /// `total-successful-session-count`.
    S { p: Policy },
    /// `total-failure-session-count`.
    F { p: Policy },
    /// One `failure-details` entry's `failed-session-count`.
    D { p: Policy, d: FailureDetail },
}

/// The hash fields and increments of one domain's counts (pure).
pub fn fields(counts: &[PolicyCounts]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut push = |field: Field, n: u64| {
        if n > 0 {
            if let Ok(json) = serde_json::to_string(&field) {
                out.push((json, n));
            }
        }
    };
    for c in counts {
        push(
            Field::S {
                p: c.policy.clone(),
            },
            c.successes,
        );
        push(
            Field::F {
                p: c.policy.clone(),
            },
            c.failures,
        );
        for (d, n) in &c.details {
            push(
                Field::D {
                    p: c.policy.clone(),
                    d: d.clone(),
                },
                *n,
            );
        }
    }
    out
}

/// The counts from hash fields (pure); fields that do not parse are skipped and
/// counted in the second value.
pub fn counts(fields: &[(String, u64)]) -> (Vec<PolicyCounts>, usize) {
    let mut tally = Tally::default();
    let mut skipped = 0;
    for (field, n) in fields {
        let one = match serde_json::from_str::<Field>(field) {
            Ok(Field::S { p }) => PolicyCounts {
                policy: p,
                successes: *n,
                failures: 0,
                details: Vec::new(),
            },
            Ok(Field::F { p }) => PolicyCounts {
                policy: p,
                successes: 0,
                failures: *n,
                details: Vec::new(),
            },
            Ok(Field::D { p, d }) => PolicyCounts {
                policy: p,
                successes: 0,
                failures: 0,
                details: vec![(d, *n)],
            },
            Err(_) => {
                skipped += 1;
                continue;
            }
        };
        let mut add = Tally::default();
        add.domains.insert(String::new(), vec![one]);
        tally.merge(add);
    }
    let mut out = tally.domains.remove("").unwrap_or_default();
    out.sort_by(|a, b| a.policy.cmp(&b.policy));
    for c in &mut out {
        c.details.sort();
    }
    (out, skipped)
}

/// [`SharedCounters`] on the cluster's Redis.
pub struct RedisTlsRptCounters {
    cluster: Arc<Cluster>,
    add: redis::Script,
    claim: redis::Script,
}

impl RedisTlsRptCounters {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        metrics::describe_counter!(
            METRIC_SHARED_SESSIONS,
            "TLS-RPT sessions added to the counters shared on Redis"
        );
        RedisTlsRptCounters {
            cluster,
            add: redis::Script::new(ADD),
            claim: redis::Script::new(CLAIM),
        }
    }
}

impl SharedCounters for RedisTlsRptCounters {
    fn add<'a>(
        &'a self,
        key: PeriodKey<'a>,
        counts: &'a [PolicyCounts],
    ) -> SharedFuture<'a, AddOutcome> {
        Box::pin(async move {
            let (counts_key, claim_key) = keys(&key);
            let mut invocation = self.add.prepare_invoke();
            invocation.key(counts_key).key(claim_key).arg(ttl_ms(&key));
            for (field, n) in fields(counts) {
                invocation.arg(field).arg(n);
            }
            match self.cluster.invoke::<i64>(&invocation).await {
                Some(1) => {
                    let sessions: u64 = counts.iter().map(|c| c.successes + c.failures).sum();
                    metrics::counter!(METRIC_SHARED_SESSIONS).increment(sessions);
                    AddOutcome::Added
                }
                Some(_) => AddOutcome::AlreadyClaimed,
                None => AddOutcome::Unavailable,
            }
        })
    }

    fn claim<'a>(
        &'a self,
        key: PeriodKey<'a>,
        claimant: &'a str,
    ) -> SharedFuture<'a, ClaimOutcome> {
        Box::pin(async move {
            let (counts_key, claim_key) = keys(&key);
            let mut invocation = self.claim.prepare_invoke();
            invocation
                .key(claim_key)
                .key(counts_key)
                .arg(claimant)
                .arg(ttl_ms(&key));
            let Some(reply) = self.cluster.invoke::<Vec<String>>(&invocation).await else {
                return ClaimOutcome::Unavailable;
            };
            if reply.first().map(String::as_str) != Some("1") {
                return ClaimOutcome::Lost;
            }
            let pairs: Vec<(String, u64)> = reply[1..]
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].parse().unwrap_or(0)))
                .collect();
            let (sum, skipped) = counts(&pairs);
            if skipped > 0 {
                tracing::warn!(
                    domain = key.policy_domain,
                    skipped,
                    "cluster: shared TLS-RPT counts of an unknown form ignored"
                );
            }
            ClaimOutcome::Won(sum)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mxgate_tlsrpt::model::{ResultType, SessionRecord, SessionResult};

    fn tally_of(records: &[(Policy, SessionResult)]) -> Vec<PolicyCounts> {
        let mut t = Tally::default();
        for (policy, result) in records {
            t.record(SessionRecord {
                policy_domain: "d.example".into(),
                policy: policy.clone(),
                result: result.clone(),
            });
        }
        t.domains.remove("d.example").unwrap()
    }

    #[test]
    fn counts_survive_the_hash_and_add_up() {
        let sts = Policy::sts("version: STSv1\nmode: enforce\nmx: mx.d.example\nmax_age: 86400\n");
        let none = Policy::no_policy_found();
        let fail = |rt| {
            SessionResult::Failure(FailureDetail {
                receiving_mx_hostname: Some("mx.d.example".into()),
                ..FailureDetail::new(rt)
            })
        };
        let a = tally_of(&[
            (sts.clone(), SessionResult::Success),
            (sts.clone(), fail(ResultType::StarttlsNotSupported)),
            (none.clone(), SessionResult::Success),
        ]);
        let b = tally_of(&[
            (sts.clone(), SessionResult::Success),
            (sts.clone(), fail(ResultType::StarttlsNotSupported)),
            (sts.clone(), fail(ResultType::CertificateExpired)),
        ]);
        // HINCRBY of both instances' fields.
        let mut hash: std::collections::BTreeMap<String, u64> = Default::default();
        for (f, n) in fields(&a).into_iter().chain(fields(&b)) {
            *hash.entry(f).or_default() += n;
        }
        let pairs: Vec<(String, u64)> = hash.into_iter().collect();
        let (sum, skipped) = counts(&pairs);
        assert_eq!(skipped, 0);
        let sts_counts = sum.iter().find(|c| c.policy == sts).unwrap();
        assert_eq!((sts_counts.successes, sts_counts.failures), (2, 3));
        let starttls = sts_counts
            .details
            .iter()
            .find(|(d, _)| d.result_type == ResultType::StarttlsNotSupported)
            .unwrap();
        assert_eq!(starttls.1, 2);
        assert_eq!(sts_counts.details.len(), 2);
        let none_counts = sum.iter().find(|c| c.policy == none).unwrap();
        assert_eq!((none_counts.successes, none_counts.failures), (1, 0));
        // Round trip of one instance alone is exact.
        let (alone, _) = counts(&fields(&a));
        let mut a_sorted = a.clone();
        a_sorted.sort_by(|x, y| x.policy.cmp(&y.policy));
        assert_eq!(alone, a_sorted);
    }

    #[test]
    fn unknown_fields_are_skipped_not_fatal() {
        let (sum, skipped) = counts(&[("{\"k\":\"x\"}".into(), 3), ("garbage".into(), 1)]);
        assert!(sum.is_empty());
        assert_eq!(skipped, 2);
    }
}
