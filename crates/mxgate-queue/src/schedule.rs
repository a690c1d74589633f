//! Pure scheduling decisions: what an outcome does to a recipient, when the next
//! attempt is due, when a message has expired; plus the queue's clock and id generator.
//!
//! Nothing here touches files or sockets. Time is passed in as unix milliseconds so the
//! decisions are table-testable; [`Clock`] maps tokio's (pausable) clock onto wall time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::spool::BounceReason;
use crate::transport::{DeliveryFailure, Outcome, QueueId};

/// Wall-clock time derived from tokio's clock, so that paused-time tests move it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    base_instant: tokio::time::Instant,
    base_ms: u64,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            base_instant: tokio::time::Instant::now(),
            base_ms: unix_ms(crate::clock::now()),
        }
    }

    /// Now, unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.base_instant.elapsed().as_millis() as u64
    }

    /// The tokio instant at which unix time `ms` is reached.
    pub fn instant_at(&self, ms: u64) -> tokio::time::Instant {
        self.base_instant + Duration::from_millis(ms.saturating_sub(self.base_ms))
    }
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Retry intervals and maximum age (from `[queue]`).
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    pub intervals: Vec<Duration>,
    pub max_age: Duration,
}

/// What to do with one recipient after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    Delivered,
    Bounce(DeliveryFailure, BounceReason),
    Defer {
        next_ms: u64,
        failure: DeliveryFailure,
    },
}

impl RetryPolicy {
    /// The delay after attempt number `attempts` (1-based): `intervals[attempts-1]`, the
    /// last one repeating. RFC 5321 §4.5.4.1: "the sender MUST delay retrying a
    /// particular destination after one attempt has failed".
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let i = (attempts.max(1) - 1) as usize;
        self.intervals
            .get(i)
            .or(self.intervals.last())
            .copied()
            .unwrap_or(Duration::from_secs(60))
    }

    /// Decides one recipient's fate. `jitter` is a factor in [0.9, 1.1] spreading retries.
    pub fn decide(
        &self,
        outcome: &Outcome,
        attempts: u32,
        arrival_ms: u64,
        now_ms: u64,
        jitter: f64,
    ) -> Decision {
        match outcome {
            Outcome::Delivered { .. } => Decision::Delivered,
            Outcome::Failed(f) => Decision::Bounce(f.clone(), BounceReason::Rejected),
            Outcome::Deferred(f) => {
                // RFC 5321 §4.5.4.1: "the give-up time generally needs to be at least
                // 4-5 days" — `max_age`, after which the recipient is bounced.
                if self.expired(arrival_ms, now_ms) {
                    return Decision::Bounce(f.clone(), BounceReason::Expired);
                }
                let delay = self.delay_after(attempts).mul_f64(jitter.clamp(0.9, 1.1));
                Decision::Defer {
                    next_ms: now_ms + delay.as_millis() as u64,
                    failure: f.clone(),
                }
            }
        }
    }

    pub fn expired(&self, arrival_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(arrival_ms) >= self.max_age.as_millis() as u64
    }
}

/// Queue ids: 11 hex digits of unix milliseconds and 5 of sequence, upper case, so ids
/// sort by arrival and are unique within and across runs of one spool.
#[derive(Debug, Default)]
pub(crate) struct IdGen {
    last_ms: u64,
    seq: u32,
}

impl IdGen {
    /// Never hands out an id at or below `id` (called with the ids found at startup).
    pub fn observe(&mut self, id: &str) {
        if let Some(ms) = id.get(..11).and_then(|s| u64::from_str_radix(s, 16).ok()) {
            let seq = id
                .get(11..)
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .unwrap_or(0);
            if (ms, seq) > (self.last_ms, self.seq) {
                self.last_ms = ms;
                self.seq = seq;
            }
        }
    }

    pub fn next(&mut self, now_ms: u64) -> QueueId {
        if now_ms > self.last_ms {
            self.last_ms = now_ms;
            self.seq = 0;
        } else {
            self.seq += 1;
            if self.seq > 0xF_FFFF {
                self.last_ms += 1;
                self.seq = 0;
            }
        }
        QueueId(format!("{:011X}{:05X}", self.last_ms, self.seq))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn failure(status: &str) -> DeliveryFailure {
        DeliveryFailure {
            kind: crate::FailureKind::Other,
            status: status.parse().unwrap(),
            remote_mta: None,
            diagnostic: "x".into(),
            remote: false,
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            intervals: vec![Duration::from_secs(60), Duration::from_secs(300)],
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn intervals_last_repeats() {
        let p = policy();
        let got: Vec<u64> = (1..=4).map(|a| p.delay_after(a).as_secs()).collect();
        assert_eq!(got, [60, 300, 300, 300]);
        let empty = RetryPolicy {
            intervals: vec![],
            max_age: Duration::from_secs(1),
        };
        assert_eq!(empty.delay_after(3), Duration::from_secs(60));
    }

    #[test]
    fn decision_table() {
        let p = policy();
        let t0 = 1_000_000;
        let delivered = Outcome::Delivered {
            relay: "r".into(),
            reply: "250".into(),
        };
        let rows: Vec<(Outcome, u32, u64, f64, Decision)> = vec![
            (delivered, 1, t0, 1.0, Decision::Delivered),
            (
                Outcome::Failed(failure("5.1.1")),
                1,
                t0,
                1.0,
                Decision::Bounce(failure("5.1.1"), BounceReason::Rejected),
            ),
            (
                Outcome::Deferred(failure("4.7.5")),
                1,
                t0,
                1.0,
                Decision::Defer {
                    next_ms: t0 + 60_000,
                    failure: failure("4.7.5"),
                },
            ),
            (
                Outcome::Deferred(failure("4.4.1")),
                2,
                t0,
                1.1,
                Decision::Defer {
                    next_ms: t0 + 330_000,
                    failure: failure("4.4.1"),
                },
            ),
            (
                Outcome::Deferred(failure("4.4.1")),
                9,
                t0,
                5.0, // clamped to 1.1
                Decision::Defer {
                    next_ms: t0 + 330_000,
                    failure: failure("4.4.1"),
                },
            ),
            (
                Outcome::Deferred(failure("4.4.1")),
                9,
                t0 + 3_600_000,
                1.0,
                Decision::Bounce(failure("4.4.1"), BounceReason::Expired),
            ),
        ];
        for (outcome, attempts, now, jitter, want) in rows {
            assert_eq!(
                p.decide(&outcome, attempts, t0, now, jitter),
                want,
                "{outcome:?}"
            );
        }
    }

    #[test]
    fn ids_are_ordered_and_unique() {
        let mut g = IdGen::default();
        let a = g.next(1000);
        let b = g.next(1000);
        let c = g.next(999); // clock went back
        let d = g.next(2000);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert_eq!(a.0.len(), 16);
        let mut g2 = IdGen::default();
        g2.observe(&d.0);
        assert!(g2.next(1500) > d);
    }
}
