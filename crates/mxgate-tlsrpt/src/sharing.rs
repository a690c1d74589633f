//! The service's side of shared counters ([`crate::shared`]): adding the open period's
//! counts to the shared store, and deciding each due report by the store's election.
//!
//! What a report of one domain and period becomes ([`decide`], pure):
//!
//! | counts not yet shared | election | this instance sends |
//! |---|---|---|
//! | added (or none left) | won | the shared sum (its own counts are in it) |
//! | added (or none left) | lost | nothing: the winner's report has its counts |
//! | refused (already claimed) | lost | only the refused counts (a second, partial report) |
//! | store unavailable | – | all of its own counts (a partial report; some sessions may also be in the winner's) |
//!
//! So no session is ever left out of every report; with Redis down at report time a
//! domain may get more than one (partial) report for a period (docs/scaling.md).

use std::time::Duration;

use crate::model::PolicyCounts;
use crate::shared::{AddOutcome, ClaimOutcome, PeriodKey, SharedCounters};
use crate::store::{PendingReport, State};
use crate::time::period_containing;

/// How long a period's shared entries live: every instance may still add to and
/// report a period until the end of the following one plus the send spread
/// (`store::State::close` gives up on a report then); one more period of margin.
pub fn shared_ttl(period: Duration, send_delay: Duration) -> Duration {
    period.max(Duration::from_secs(1)) * 3 + send_delay
}

fn key<'a>(domain: &'a str, start: u64, period: Duration, send_delay: Duration) -> PeriodKey<'a> {
    PeriodKey {
        policy_domain: domain,
        period: period_containing(start, period).0,
        ttl: shared_ttl(period, send_delay),
    }
}

fn sessions(counts: &[PolicyCounts]) -> u64 {
    counts.iter().map(|p| p.successes + p.failures).sum()
}

/// Adds the open period's unshared counts to the shared store, domain by domain; stops
/// at the first domain the store does not take in time (the rest waits for the next
/// flush). Returns whether the state changed.
pub async fn share_open(
    state: &mut State,
    shared: &dyn SharedCounters,
    period: Duration,
    send_delay: Duration,
) -> bool {
    let start = state.current.start;
    let domains: Vec<String> = state.current.unshared.domains.keys().cloned().collect();
    let mut changed = false;
    for domain in domains {
        let Some(counts) = state.current.unshared.domains.get(&domain) else {
            continue;
        };
        match shared
            .add(key(&domain, start, period, send_delay), counts)
            .await
        {
            AddOutcome::Added => {
                state.current.unshared.domains.remove(&domain);
                changed = true;
            }
            // Kept: this instance reports them itself when the period closes.
            AddOutcome::AlreadyClaimed => {}
            AddOutcome::Unavailable => break,
        }
    }
    changed
}

/// What [`decide`] made of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Won: `policies` is now the shared sum.
    SendSum,
    /// Send `policies` (its own counts or the refused part): a partial report.
    SendPartial,
    /// Another instance reports everything: drop it.
    Drop,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::SendSum => "won",
            Decision::SendPartial => "partial",
            Decision::Drop => "lost",
        }
    }
}

/// Decides one report from what the store said (pure; see the module's table).
/// `add` is `None` when nothing was left to add; `claim` is `None` when the store was
/// not asked (the add found it unavailable). Afterwards `p.shared` is `None`.
pub fn decide(
    p: &mut PendingReport,
    add: Option<AddOutcome>,
    claim: Option<ClaimOutcome>,
) -> Decision {
    let unshared = p.shared.take().unwrap_or_default();
    if add == Some(AddOutcome::Unavailable) {
        return Decision::SendPartial;
    }
    match claim {
        None | Some(ClaimOutcome::Unavailable) => Decision::SendPartial,
        Some(ClaimOutcome::Won(sum)) => {
            if sessions(&sum) < sessions(&p.policies) {
                // The store lost counts this instance added (e.g. Redis restarted
                // without persistence): its own counts are the better report.
                tracing::warn!(domain = %p.policy_domain,
                    "TLS-RPT: the shared counters hold fewer sessions than this instance counted; reporting its own");
                Decision::SendPartial
            } else {
                p.policies = sum;
                Decision::SendSum
            }
        }
        Some(ClaimOutcome::Lost) => {
            if add == Some(AddOutcome::AlreadyClaimed) && !unshared.is_empty() {
                p.policies = unshared;
                Decision::SendPartial
            } else {
                Decision::Drop
            }
        }
    }
}

/// Decides every due report still waiting for the election (adds its remaining counts,
/// then claims it). Returns whether the state changed.
pub async fn resolve_due(
    state: &mut State,
    shared: &dyn SharedCounters,
    now: u64,
    period: Duration,
    send_delay: Duration,
) -> bool {
    let waiting: Vec<String> = state
        .due(now)
        .into_iter()
        .map(|i| &state.pending[i])
        .filter(|p| p.shared.is_some())
        .map(|p| p.report_id.clone())
        .collect();
    let instance = state.instance.clone();
    for report_id in &waiting {
        let Some(i) = state.pending.iter().position(|p| &p.report_id == report_id) else {
            continue;
        };
        let p = &state.pending[i];
        let key = key(&p.policy_domain, p.period_start, period, send_delay);
        let unshared = p.shared.as_deref().unwrap_or_default();
        let add = if unshared.is_empty() {
            None
        } else {
            Some(shared.add(key, unshared).await)
        };
        let claim = if add == Some(AddOutcome::Unavailable) {
            None
        } else {
            let claimant = format!("{instance}/{report_id}");
            Some(shared.claim(key, &claimant).await)
        };
        let unavailable = matches!(claim, None | Some(ClaimOutcome::Unavailable));
        let p = &mut state.pending[i];
        let decision = decide(p, add, claim);
        if unavailable {
            tracing::warn!(domain = %p.policy_domain, report_id = %p.report_id,
                "TLS-RPT: shared counters unreachable at report time; sending this instance's own counts");
        }
        let label = if unavailable {
            "unavailable"
        } else {
            decision.as_str()
        };
        metrics::counter!("mxgate_tlsrpt_shared_reports_total", "result" => label).increment(1);
        if decision == Decision::Drop {
            tracing::info!(domain = %p.policy_domain, report_id = %p.report_id,
                "TLS-RPT: another instance reports this domain and period");
            state.pending.remove(i);
        }
    }
    !waiting.is_empty()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{Policy, SessionRecord, SessionResult};
    use std::collections::HashMap;
    use std::sync::Mutex;

    const DAY: Duration = Duration::from_secs(86400);
    const T0: u64 = 1_459_468_800;

    fn counts(successes: u64) -> Vec<PolicyCounts> {
        vec![PolicyCounts {
            policy: Policy::no_policy_found(),
            successes,
            failures: 0,
            details: Vec::new(),
        }]
    }

    fn pending(local: u64, unshared: u64) -> PendingReport {
        PendingReport {
            policy_domain: "d.example".into(),
            period_start: T0,
            period_end: T0 + 86400,
            report_id: "r1".into(),
            policies: counts(local),
            sent_to: Vec::new(),
            next_try: T0,
            attempts: 0,
            give_up_at: T0 + 2 * 86400,
            shared: Some(if unshared == 0 {
                Vec::new()
            } else {
                counts(unshared)
            }),
        }
    }

    #[test]
    fn every_row_of_the_table() {
        use AddOutcome::*;
        // Added, won: the sum.
        let mut p = pending(2, 1);
        assert_eq!(
            decide(&mut p, Some(Added), Some(ClaimOutcome::Won(counts(5)))),
            Decision::SendSum
        );
        assert_eq!((p.policies[0].successes, p.shared.is_none()), (5, true));
        // Nothing left to add, lost: dropped.
        let mut p = pending(2, 0);
        assert_eq!(
            decide(&mut p, None, Some(ClaimOutcome::Lost)),
            Decision::Drop
        );
        // Refused, lost: only the refused part.
        let mut p = pending(3, 1);
        assert_eq!(
            decide(&mut p, Some(AlreadyClaimed), Some(ClaimOutcome::Lost)),
            Decision::SendPartial
        );
        assert_eq!(p.policies[0].successes, 1);
        // Unavailable at add or at claim: all own counts.
        for (add, claim) in [
            (Some(Unavailable), None),
            (None, Some(ClaimOutcome::Unavailable)),
            (Some(Added), Some(ClaimOutcome::Unavailable)),
        ] {
            let mut p = pending(3, 1);
            assert_eq!(decide(&mut p, add, claim), Decision::SendPartial);
            assert_eq!((p.policies[0].successes, p.shared.is_none()), (3, true));
        }
        // Won, but the store lost counts: own counts.
        let mut p = pending(3, 0);
        assert_eq!(
            decide(&mut p, None, Some(ClaimOutcome::Won(counts(1)))),
            Decision::SendPartial
        );
        assert_eq!(p.policies[0].successes, 3);
    }

    /// The shared store in memory, with Redis's semantics (refuse after a claim; the
    /// same claimant wins again).
    #[derive(Default)]
    struct Memory {
        sums: Mutex<HashMap<(String, u64), crate::model::Tally>>,
        claims: Mutex<HashMap<(String, u64), String>>,
        down: std::sync::atomic::AtomicBool,
    }

    impl SharedCounters for Memory {
        fn add<'a>(
            &'a self,
            key: PeriodKey<'a>,
            counts: &'a [PolicyCounts],
        ) -> crate::shared::SharedFuture<'a, AddOutcome> {
            Box::pin(async move {
                if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                    return AddOutcome::Unavailable;
                }
                let k = (key.policy_domain.to_string(), key.period);
                if self.claims.lock().unwrap().contains_key(&k) {
                    return AddOutcome::AlreadyClaimed;
                }
                let mut add = crate::model::Tally::default();
                add.domains.insert(k.0.clone(), counts.to_vec());
                self.sums.lock().unwrap().entry(k).or_default().merge(add);
                AddOutcome::Added
            })
        }

        fn claim<'a>(
            &'a self,
            key: PeriodKey<'a>,
            claimant: &'a str,
        ) -> crate::shared::SharedFuture<'a, ClaimOutcome> {
            Box::pin(async move {
                if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                    return ClaimOutcome::Unavailable;
                }
                let k = (key.policy_domain.to_string(), key.period);
                let mut claims = self.claims.lock().unwrap();
                let owner = claims.entry(k.clone()).or_insert_with(|| claimant.into());
                if owner != claimant {
                    return ClaimOutcome::Lost;
                }
                let sums = self.sums.lock().unwrap();
                let sum = sums
                    .get(&k)
                    .and_then(|t| t.domains.get(&k.0).cloned())
                    .unwrap_or_default();
                ClaimOutcome::Won(sum)
            })
        }
    }

    fn rec(domain: &str) -> SessionRecord {
        SessionRecord {
            policy_domain: domain.into(),
            policy: Policy::no_policy_found(),
            result: SessionResult::Success,
        }
    }

    fn sharing_state(now: u64) -> State {
        let mut s = State::new(now, DAY);
        s.sharing = true;
        s
    }

    #[tokio::test]
    async fn two_instances_send_one_report_with_the_sum() {
        let store = Memory::default();
        let (mut a, mut b) = (sharing_state(T0), sharing_state(T0));
        for _ in 0..2 {
            a.record(rec("d.example"), T0 + 1, DAY, Duration::ZERO, "a");
        }
        b.record(rec("d.example"), T0 + 2, DAY, Duration::ZERO, "b");
        assert!(share_open(&mut a, &store, DAY, Duration::ZERO).await);
        assert!(a.current.unshared.is_empty());
        assert_eq!(a.current.tally.sessions(), 2, "the local tally stays whole");
        // B's counts go in only when its period closes (Redis was not asked before).
        let end = T0 + 86400;
        a.close(end, DAY, Duration::ZERO, "a");
        b.close(end, DAY, Duration::ZERO, "b");
        assert!(resolve_due(&mut b, &store, end, DAY, Duration::ZERO).await);
        assert!(resolve_due(&mut a, &store, end, DAY, Duration::ZERO).await);
        assert_eq!(b.pending.len(), 1, "B claimed first");
        assert_eq!(b.pending[0].policies[0].successes, 3);
        assert!(a.pending.is_empty(), "A sends nothing");
        // Decided once: a retry of B's report (e.g. after a failed POST) sends the
        // same sum without asking again.
        assert!(!resolve_due(&mut b, &store, end, DAY, Duration::ZERO).await);
    }

    #[tokio::test]
    async fn counts_stay_local_while_the_store_is_down_and_go_in_when_it_returns() {
        let store = Memory::default();
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut a = sharing_state(T0);
        a.record(rec("d.example"), T0 + 1, DAY, Duration::ZERO, "a");
        assert!(!share_open(&mut a, &store, DAY, Duration::ZERO).await);
        assert_eq!(a.current.unshared.sessions(), 1);
        store.down.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(share_open(&mut a, &store, DAY, Duration::ZERO).await);
        assert!(a.current.unshared.is_empty());
        // Down again at report time: A reports its own counts.
        let end = T0 + 86400;
        a.close(end, DAY, Duration::ZERO, "a");
        store.down.store(true, std::sync::atomic::Ordering::SeqCst);
        resolve_due(&mut a, &store, end, DAY, Duration::ZERO).await;
        assert_eq!(a.pending.len(), 1);
        assert!(a.pending[0].shared.is_none());
        assert_eq!(a.pending[0].policies[0].successes, 1);
    }

    #[tokio::test]
    async fn counts_after_the_claim_are_reported_by_their_instance() {
        let store = Memory::default();
        let (mut a, mut b) = (sharing_state(T0), sharing_state(T0));
        a.record(rec("d.example"), T0 + 1, DAY, Duration::ZERO, "a");
        b.record(rec("d.example"), T0 + 1, DAY, Duration::ZERO, "b");
        share_open(&mut b, &store, DAY, Duration::ZERO).await;
        // A closes early (`tlsrpt send`) and wins with both sessions.
        a.close(T0 + 10, DAY, Duration::ZERO, "a");
        resolve_due(&mut a, &store, T0 + 10, DAY, Duration::ZERO).await;
        assert_eq!(a.pending[0].policies[0].successes, 2);
        // B counts more in the same (aligned) period: refused, reported by B alone.
        b.record(rec("d.example"), T0 + 20, DAY, Duration::ZERO, "b");
        share_open(&mut b, &store, DAY, Duration::ZERO).await;
        assert_eq!(b.current.unshared.sessions(), 1);
        b.close(T0 + 86400, DAY, Duration::ZERO, "b");
        resolve_due(&mut b, &store, T0 + 86400, DAY, Duration::ZERO).await;
        assert_eq!(b.pending.len(), 1);
        assert_eq!(b.pending[0].policies[0].successes, 1);
    }
}
