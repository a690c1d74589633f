//! TLS-RPT counters shared by several mxgate instances (docs/scaling.md), so that each
//! policy domain gets one report per period from one instance, with every instance's
//! sessions in it (RFC 8460 §4: a report covers the sessions of one reporting period
//! for one policy domain).
//!
//! Each instance adds what it counted into the shared store (keyed by policy domain,
//! aligned period and policy) and, when a report is due, runs an election for that
//! domain and period: the winner receives the summed counts and sends the report, the
//! others send nothing. Counts offered after the election are refused, so they stay
//! with their instance, which reports them itself: a second, partial report rather than
//! a lost one.
//!
//! An implementation bounds every call by its own short timeout and answers
//! [`AddOutcome::Unavailable`] / [`ClaimOutcome::Unavailable`] when the store cannot be
//! reached: the service then keeps the counts locally (docs/scaling.md says what is
//! reported then). No implementation lives in this crate (mxgate-cluster has the Redis
//! one).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::model::PolicyCounts;

/// A future returned by [`SharedCounters`].
pub type SharedFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One domain's reporting period in the shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodKey<'a> {
    pub policy_domain: &'a str,
    /// Start of the aligned reporting period (unix seconds; `time::period_containing`),
    /// the same on every instance with the same `tlsrpt.period`.
    pub period: u64,
    /// How long the shared entries must live: past the last moment any instance may
    /// still add to or report this period.
    pub ttl: Duration,
}

/// What became of counts offered to the shared store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// Added to the shared sum.
    Added,
    /// The period's report was already claimed: not added, the caller reports them.
    AlreadyClaimed,
    /// The store did not answer in time: nothing added, the caller keeps them.
    Unavailable,
}

/// The result of an election for one domain and period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This instance sends the report, with these summed counts.
    Won(Vec<PolicyCounts>),
    /// Another instance (or another report of this one) has claimed it.
    Lost,
    /// The store did not answer in time.
    Unavailable,
}

/// The shared counters (mxgate-cluster implements it on Redis).
pub trait SharedCounters: Send + Sync {
    /// Adds `counts` to the shared sum of `key`, unless its report is claimed.
    fn add<'a>(
        &'a self,
        key: PeriodKey<'a>,
        counts: &'a [PolicyCounts],
    ) -> SharedFuture<'a, AddOutcome>;

    /// The election: claims the report of `key` for `claimant` (a value unique to one
    /// report of one instance, so that a retry of the same report wins again) and, when
    /// won, returns the sum. Counts can no longer be added once it is claimed.
    fn claim<'a>(&'a self, key: PeriodKey<'a>, claimant: &'a str)
        -> SharedFuture<'a, ClaimOutcome>;
}
