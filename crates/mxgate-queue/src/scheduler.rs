//! The scheduler: finds due recipients, groups them per (message, domain) into
//! [`DeliveryJob`]s, runs a bounded number at once, records every outcome durably,
//! bounces (with a DSN) what failed for good, and sends one delay warning per message
//! once it has waited `queue.delay_warning`.
//!
//! It never sleeps to poll: a stored message, a finished job or an operator command
//! wakes it, and otherwise it sleeps until the earliest next attempt. It does not know
//! how delivery works; the [`Transport`] does.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mxgate_smtp::{BodyType, Envelope, Recipient};
use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::dsn::{
    build_dsn, wants_delay_dsn, wants_failure_dsn, DsnAction, DsnInput, FailedRecipient,
};
use crate::error::QueueError;
use crate::index::{BodyLoc, Entry, Index, Op, PendingDsn, Rcpt, Snapshot};
use crate::log::record::{self, StateRec};
use crate::queue::Queue;
use crate::schedule::Decision;
use crate::spool::{BounceReason, RecipientStatus};
use crate::transport::{
    DeliveryFailure, DeliveryJob, FailureKind, Outcome, QueueId, RecipientOutcome, Transport,
};
use mxgate_smtp::EnhancedStatus;

/// How long running deliveries may finish after shutdown before they are aborted.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How often the queue gauges are refreshed when nothing else changes them.
const GAUGE_REFRESH: Duration = Duration::from_secs(15);
/// Longest wait before a DSN that could not be stored (disk full) is tried again.
const DSN_RETRY_MAX: Duration = Duration::from_secs(60);
/// Shortest such wait: a full disk is not polled faster than this.
const DSN_RETRY_MIN: Duration = Duration::from_secs(1);
/// Wait after a compaction pass that could not free the oldest segment (a message in
/// it was busy, or the disk is full) before the next pass.
const COMPACT_RETRY: Duration = Duration::from_secs(1);
/// Messages copied forward by compaction per commit, and their body bytes (at least
/// one message).
const COMPACT_BATCH: usize = 256;
const COMPACT_BATCH_BYTES: u64 = 4 << 20;

/// A job taken from the index, before its body is read.
#[derive(Debug)]
struct Due {
    id: QueueId,
    envelope: Arc<Envelope>,
    domain: String,
    recipients: Vec<usize>,
    attempt: u32,
    loc: BodyLoc,
    size: u64,
    /// The body, if still in memory since the `250`.
    mem: Option<Bytes>,
    /// One of our own DSNs (routed to `queue.bounce_relay` when set).
    dsn: bool,
}

pub(crate) fn state_line(i: usize, r: &Rcpt, warned: bool) -> StateRec {
    StateRec {
        i,
        st: record::status_str(r.status).into(),
        a: r.attempts,
        n: r.next_ms,
        t: r.last_attempt_ms.unwrap_or(0),
        e: r.last_error.as_ref().map(record::failure_rec),
        why: r.why.map(|w| record::reason_str(w).into()),
        w: warned,
    }
}

/// Decides the delay warning of a message after one of its recipients was deferred
/// (`deferred_now`): due once the message has waited `delay_warning` (like Postfix's
/// `delay_warning_time`, checked when a deferral is recorded, so it goes out with the
/// first retry after the threshold), once per message, never for our own DSNs or a
/// `<>` sender. Returns every recipient still pending after at least one failed attempt
/// that asked for delay reports ([`wants_delay_dsn`]) — one report for all of them —
/// and marks the message warned; returns nothing (and marks nothing) otherwise.
fn take_delay_warning(
    e: &mut Entry,
    delay_warning: Option<Duration>,
    deferred_now: bool,
    now_ms: u64,
) -> Vec<FailedRecipient> {
    let Some(after) = delay_warning else {
        return Vec::new();
    };
    let waited = now_ms.saturating_sub(e.arrival_ms);
    if !deferred_now
        || e.warned
        || e.dsn
        || e.envelope.sender.is_empty()
        || waited < after.as_millis() as u64
    {
        return Vec::new();
    }
    let delayed: Vec<FailedRecipient> = e
        .rcpts
        .iter()
        .enumerate()
        .filter(|(i, r)| r.status == RecipientStatus::Pending && wants_delay_dsn(&e.envelope, *i))
        .filter_map(|(i, r)| {
            Some(FailedRecipient {
                index: i,
                failure: r.last_error.clone()?,
                reason: BounceReason::Expired, // not used in a delayed report
                last_attempt_ms: r.last_attempt_ms,
            })
        })
        .collect();
    if !delayed.is_empty() {
        e.warned = true;
    }
    delayed
}

/// Whether a job's state lines must be appended and fsynced before the scheduler moves
/// on. Not when the job leaves every recipient final and nothing bounced or was warned
/// about: then the message file is simply unlinked (see the `spool` overview for the
/// duplicate window this accepts). A deferral or partial outcome must survive a crash
/// (else the attempt count and schedule are lost); a bounce must, so that a crash after
/// its DSN was queued does not send the DSN again.
fn needs_state_record(final_now: bool, bounced: bool, warned: bool) -> bool {
    !final_now || bounced || warned
}

/// Marks one job of `id` as finished; returns the entry if the message is still queued.
fn end_job<'a>(index: &'a mut Index, id: &QueueId) -> Option<&'a mut Entry> {
    let Index { msgs, active, .. } = index;
    let e = msgs.get_mut(id)?;
    e.jobs_in_flight = e.jobs_in_flight.saturating_sub(1);
    if e.jobs_in_flight == 0 {
        *active = active.saturating_sub(1);
    }
    Some(e)
}

/// Releases a job's recipients if its task ends without recording an outcome (the
/// transport panicked, or the task was aborted at shutdown): they are deferred, never
/// left "in flight" forever.
struct JobGuard {
    queue: Arc<Queue>,
    id: QueueId,
    recipients: Vec<usize>,
    armed: bool,
}

impl JobGuard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if !self.armed {
            self.queue.end_busy(&self.id);
            return;
        }
        tracing::error!(id = %self.id, "delivery task ended without an outcome; deferring");
        let now = self.queue.now_ms();
        let mut index = self.queue.lock();
        if let Some(e) = end_job(&mut index, &self.id) {
            for &i in &self.recipients {
                let r = &mut e.rcpts[i];
                if r.in_flight && r.status == RecipientStatus::Pending {
                    r.in_flight = false;
                    r.attempts += 1;
                    r.last_attempt_ms = Some(now);
                    r.next_ms = now + self.queue.retry.delay_after(r.attempts).as_millis() as u64;
                }
            }
        }
        index.reschedule(&self.id);
        self.queue.publish_counts(&index);
        drop(index);
        self.queue.end_busy(&self.id);
        self.queue.wake.notify_one();
    }
}

impl Queue {
    /// Runs deliveries until `shutdown` is cancelled, at most
    /// `settings.max_concurrent` at once; then gives running ones a grace period.
    pub async fn run<T: Transport>(
        self: Arc<Self>,
        transport: Arc<T>,
        shutdown: CancellationToken,
    ) {
        let max = self.settings.max_concurrent.max(1);
        let mut running = JoinSet::new();
        // `mxgate_queue_oldest_seconds` grows while nothing happens: refresh it.
        let mut gauges = tokio::time::interval(GAUGE_REFRESH);
        gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            while running.try_join_next().is_some() {}
            let (ops, dsns, next_dsn) = self.take_housekeeping();
            for id in ops {
                let q = Arc::clone(&self);
                running.spawn(async move { q.run_op(&id).await });
            }
            for id in dsns {
                let q = Arc::clone(&self);
                running.spawn(async move { q.retry_dsn(&id).await });
            }
            let mut next_compaction = None;
            match self.compaction_due(&self.lock()) {
                Some(at) if at > self.now_ms() => next_compaction = Some(at),
                Some(_) if !self.compacting.swap(true, Ordering::AcqRel) => {
                    let q = Arc::clone(&self);
                    running.spawn(async move {
                        q.compact().await;
                        q.compacting.store(false, Ordering::Release);
                    });
                }
                _ => {} // none, or a pass runs (it wakes the loop when it ends)
            }
            let budget = max.saturating_sub(running.len());
            let (jobs, next_due) = self.take_due(budget);
            let next_due = [next_due, next_dsn, next_compaction]
                .into_iter()
                .flatten()
                .min();
            for due in jobs {
                let q = Arc::clone(&self);
                let t = Arc::clone(&transport);
                running.spawn(async move {
                    let guard = JobGuard {
                        queue: Arc::clone(&q),
                        id: due.id.clone(),
                        recipients: due.recipients.clone(),
                        armed: true,
                    };
                    q.execute(due, &*t).await;
                    guard.disarm();
                    q.wake.notify_one();
                });
            }
            let wake_at = next_due.map(|ms| self.clock.instant_at(ms));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = gauges.tick() => self.publish_counts(&self.lock()),
                _ = async {
                    match wake_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                jobs = running.len(),
                "aborting deliveries still running at shutdown"
            );
            running.abort_all();
        }
    }

    /// Takes up to `budget` due jobs and marks their recipients in flight. Returns the
    /// earliest future attempt (`None` when the budget ran out: a finishing job wakes
    /// the scheduler).
    fn take_due(&self, budget: usize) -> (Vec<Due>, Option<u64>) {
        let now = self.now_ms();
        let mut index = self.lock();
        let due_ids: Vec<QueueId> = index
            .schedule
            .iter()
            .take_while(|(k, _)| *k <= now)
            .take(budget)
            .map(|(_, id)| id.clone())
            .collect();
        let mut jobs = Vec::new();
        for id in due_ids {
            {
                let Index { msgs, active, .. } = &mut *index;
                let Some(e) = msgs.get_mut(&id) else {
                    continue;
                };
                if e.op.is_some() || e.moving {
                    // Not due while it waits (`Index::reschedule`); back in the
                    // schedule once the operator action or the copy ends.
                    index.reschedule(&id);
                    continue;
                }
                let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
                for (i, r) in e.rcpts.iter().enumerate() {
                    if r.status == RecipientStatus::Pending && !r.in_flight && r.next_ms <= now {
                        let domain = e
                            .envelope
                            .recipients
                            .get(i)
                            .map(Recipient::domain)
                            .unwrap_or_default();
                        groups.entry(domain).or_default().push(i);
                    }
                }
                for (domain, recipients) in groups {
                    if jobs.len() >= budget {
                        break;
                    }
                    let attempt = recipients
                        .iter()
                        .map(|&i| e.rcpts[i].attempts)
                        .max()
                        .unwrap_or(0)
                        + 1;
                    for &i in &recipients {
                        e.rcpts[i].in_flight = true;
                    }
                    if e.jobs_in_flight == 0 {
                        *active += 1;
                    }
                    e.jobs_in_flight += 1;
                    e.busy += 1;
                    jobs.push(Due {
                        id: id.clone(),
                        envelope: Arc::clone(&e.envelope),
                        domain,
                        recipients,
                        attempt,
                        loc: e.loc,
                        size: e.size,
                        mem: e.mem.clone(),
                        dsn: e.dsn,
                    });
                }
            }
            index.reschedule(&id);
        }
        if !jobs.is_empty() {
            self.publish_counts(&index);
        }
        if jobs.len() >= budget {
            // A finishing job wakes the scheduler.
            return (jobs, None);
        }
        let next = index.schedule.first().map(|(k, _)| (*k).max(now + 1));
        (jobs, next)
    }

    /// Takes the body (from memory or the spool), hands the job to the transport and
    /// records the outcomes.
    async fn execute<T: Transport>(&self, due: Due, transport: &T) {
        let body = self.body(due.loc, due.size, due.mem.clone()).await;
        let outcomes = match body {
            Ok(message) => {
                let job = DeliveryJob {
                    id: due.id.clone(),
                    envelope: Arc::clone(&due.envelope),
                    domain: due.domain.clone(),
                    recipients: due.recipients.clone(),
                    message,
                    attempt: due.attempt,
                    relay: match self.settings.queue.bounce_relay.as_str() {
                        relay if due.dsn && !relay.is_empty() => Some(relay.to_string()),
                        _ => None,
                    },
                };
                transport.deliver(job).await
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // The body on disk is damaged: only this message is taken out.
                self.quarantine_message(&due, &e).await;
                return;
            }
            Err(e) => {
                tracing::error!(id = %due.id, error = %e, "cannot read message from spool");
                let failure = DeliveryFailure {
                    kind: FailureKind::Local,
                    status: EnhancedStatus::transient(3, 0),
                    remote_mta: None,
                    diagnostic: format!("cannot read message from spool: {e}"),
                    remote: false,
                };
                due.recipients
                    .iter()
                    .map(|&index| RecipientOutcome {
                        index,
                        outcome: Outcome::Deferred(failure.clone()),
                    })
                    .collect()
            }
        };
        self.record(&due, outcomes).await;
    }

    /// Takes a message whose body is damaged out of the queue: its record's bytes are
    /// copied to `quarantine/` and a deleted record is written.
    async fn quarantine_message(&self, due: &Due, e: &io::Error) {
        let seg = self
            .paths
            .log
            .join(crate::log::writer::segment_name(due.loc.seg));
        let dest = self.paths.quarantine.join(format!("{}.body", due.id));
        let (loc, size) = (due.loc, due.size);
        let copied = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(&seg)?;
            let mut buf = vec![0u8; usize::try_from(size).map_err(io::Error::other)?];
            f.read_exact_at(&mut buf, loc.offset)?;
            let out = crate::spool::create_private(&dest)?;
            out.write_all_at(&buf, 0)?;
            out.sync_all()?;
            Ok::<_, io::Error>(dest)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        match copied {
            Ok(dest) => {
                tracing::error!(id = %due.id, error = %e, quarantine = %dest.display(), "damaged message quarantined")
            }
            Err(qe) => {
                tracing::error!(id = %due.id, error = %e, quarantine_error = %qe, "damaged message, cannot copy it to quarantine")
            }
        }
        {
            let mut index = self.lock();
            end_job(&mut index, &due.id);
        }
        if let Err(e) = self.remove(&due.id, true).await {
            tracing::error!(id = %due.id, error = %e, "cannot record the damaged message as removed");
        }
    }

    /// Applies the outcomes of one job to the index, then makes them durable.
    async fn record(&self, due: &Due, outcomes: Vec<RecipientOutcome>) {
        let now = self.now_ms();
        let mut by_index: HashMap<usize, Outcome> = HashMap::new();
        for o in outcomes {
            if due.recipients.contains(&o.index) {
                by_index.insert(o.index, o.outcome);
            } else {
                tracing::warn!(id = %due.id, index = o.index, "transport reported a recipient not in the job");
            }
        }
        let mut lines = Vec::new();
        let mut failed = Vec::new();
        let mut deferred_now = false;
        // One jitter per job: recipients deferred together stay due together, so they
        // are retried over one connection (and expire into one DSN).
        let jitter = rand::rng().random_range(0.9..=1.1);
        let (snapshot, final_now, delayed) = {
            let mut index = self.lock();
            let Some(e) = end_job(&mut index, &due.id) else {
                return;
            };
            let warned = e.warned;
            for &i in &due.recipients {
                let arrival_ms = e.arrival_ms;
                let address = e
                    .envelope
                    .recipients
                    .get(i)
                    .map(|r| r.address.clone())
                    .unwrap_or_default();
                let r = &mut e.rcpts[i];
                r.in_flight = false;
                if r.status != RecipientStatus::Pending {
                    continue; // bounced by the operator meanwhile
                }
                let outcome = by_index.remove(&i).unwrap_or_else(|| {
                    Outcome::Deferred(DeliveryFailure {
                        kind: FailureKind::Local,
                        status: EnhancedStatus::transient(3, 0),
                        remote_mta: None,
                        diagnostic: "delivery returned no outcome for this recipient".into(),
                        remote: false,
                    })
                });
                r.attempts += 1;
                r.last_attempt_ms = Some(now);
                match self
                    .retry
                    .decide(&outcome, r.attempts, arrival_ms, now, jitter)
                {
                    Decision::Delivered => {
                        r.status = RecipientStatus::Delivered;
                        r.last_error = None;
                    }
                    Decision::Bounce(failure, why) => {
                        // The status the DSN reports for a failed recipient (RFC 3464 §2.3.3: class 5),
                        // so the log and the DSN agree after an expiry of a 4.x.x deferral.
                        let reported = failure
                            .status
                            .with_class(mxgate_smtp::StatusClass::Permanent);
                        tracing::info!(id = %due.id, to = %format_args!("<{}>", mxgate_smtp::LogValue(&address)), status = %reported, reason = %record::reason_str(why), diagnostic = mxgate_smtp::log_quoted(&failure.diagnostic).as_str(), "recipient bounced");
                        r.status = RecipientStatus::Bounced;
                        r.last_error = Some(failure.clone());
                        r.why = Some(why);
                        failed.push(FailedRecipient {
                            index: i,
                            failure,
                            reason: why,
                            last_attempt_ms: Some(now),
                        });
                    }
                    Decision::Defer { next_ms, failure } => {
                        r.next_ms = next_ms;
                        r.last_error = Some(failure);
                        deferred_now = true;
                    }
                }
                lines.push(state_line(i, r, warned));
            }
            let delayed =
                take_delay_warning(e, self.settings.queue.delay_warning, deferred_now, now);
            if !delayed.is_empty() {
                // Recorded with this job's outcomes, after the warning is queued
                // (`finish`): a crash in between repeats the warning, never loses it.
                for line in &mut lines {
                    line.w = true;
                }
            }
            let snapshot = Snapshot {
                envelope: Arc::clone(&e.envelope),
                arrival_ms: e.arrival_ms,
                dsn: e.dsn,
                loc: e.loc,
                size: e.size,
                mem: due.mem.clone(),
            };
            let final_now = e.all_final();
            if e.jobs_in_flight == 0 {
                index.release_mem(&due.id); // the first attempt is over
            }
            index.reschedule(&due.id);
            self.publish_counts(&index);
            (snapshot, final_now, delayed)
        };
        self.finish(&due.id, snapshot, lines, failed, delayed, final_now)
            .await;
    }

    /// DSNs first (failures, then the delay warning), then the state records, then
    /// removal: a crash between them repeats a report or an attempt, it never loses one.
    ///
    /// The common path — this job leaves every recipient final and no recipient
    /// bounced — writes no state record: only a lazy completion record (see
    /// `Queue::remove`: a crash that loses it delivers the message again, the duplicate
    /// window Postfix has too). Deferrals, partial outcomes and bounces are committed
    /// before anything else happens, so a crash never loses an outcome or repeats a
    /// bounce. A failure DSN that cannot be stored (disk full) leaves the bounce
    /// unrecorded and is tried again (`retry_dsn`); a crash meanwhile brings the
    /// recipients back as pending, to be bounced again with their DSN.
    async fn finish(
        &self,
        id: &QueueId,
        snapshot: Snapshot,
        mut lines: Vec<StateRec>,
        failed: Vec<FailedRecipient>,
        delayed: Vec<FailedRecipient>,
        final_now: bool,
    ) {
        if !failed.is_empty() {
            if let Err(e) = self
                .send_dsn(id, &snapshot, &failed, DsnAction::Failed)
                .await
            {
                tracing::error!(id = %id, error = %e, "cannot queue DSN; the bounce is recorded once it is queued");
                self.defer_dsn(id, snapshot, lines, failed);
                self.count_recorded();
                return;
            }
        }
        if !delayed.is_empty() {
            let until = snapshot.arrival_ms + self.retry.max_age.as_millis() as u64;
            let action = DsnAction::Delayed {
                will_retry_until_ms: until,
            };
            if let Err(e) = self.send_dsn(id, &snapshot, &delayed, action).await {
                // Not warned after all: the next deferral tries again.
                tracing::error!(id = %id, error = %e, "cannot queue delay DSN");
                if let Some(e) = self.lock().msgs.get_mut(id) {
                    e.warned = false;
                }
                for line in &mut lines {
                    line.w = false;
                }
            }
        }
        // While another task of this message runs (it may be storing the DSN of a
        // bounce already final in memory) or a DSN of an earlier bounce is parked, the
        // message stays, and the last of them to end removes it
        // (`Queue::remove_if_done`): this job's outcome must then be on disk itself.
        let lines = if needs_state_record(
            final_now && !self.removal_waits(id),
            !failed.is_empty(),
            !delayed.is_empty(),
        ) {
            // On failure (disk full) the outcome stays in memory; a crash repeats the
            // attempt.
            let _ = self.persist(id, lines).await;
            Vec::new()
        } else {
            lines
        };
        if final_now {
            if self.removal_waits(id) {
                let _ = self.persist(id, lines).await;
            } else if let Err(e) = self.remove(id, false).await {
                tracing::error!(id = %id, error = %e, "cannot record the message as done");
            }
        }
        self.count_recorded();
    }

    /// Whether a finished message must wait for something else of it before it may
    /// leave: bounces whose DSN is not stored yet, or a job, operator action or DSN
    /// retry other than the caller's (each holds one `busy`) still running.
    fn removal_waits(&self, id: &QueueId) -> bool {
        self.lock()
            .msgs
            .get(id)
            .is_some_and(|e| e.dsn_retry.is_some() || e.busy > 1)
    }

    /// The wait before the `tries`+1-th attempt to store a parked DSN.
    fn dsn_wait(&self, tries: u32) -> u64 {
        self.retry
            .delay_after(tries)
            .clamp(DSN_RETRY_MIN, DSN_RETRY_MAX)
            .as_millis() as u64
    }

    fn count_recorded(&self) {
        let mut index = self.lock();
        index.recorded += 1;
        self.publish_counts(&index);
    }

    /// Parks a bounce whose DSN could not be stored, to be tried again; one parked
    /// earlier for the same message (another job's, or an operator bounce) takes it
    /// along: one DSN for both, at the earlier one's time.
    fn defer_dsn(
        &self,
        id: &QueueId,
        snapshot: Snapshot,
        lines: Vec<StateRec>,
        failed: Vec<FailedRecipient>,
    ) {
        let at = self.now_ms() + self.dsn_wait(1);
        let mut index = self.lock();
        let Index { msgs, dsn_due, .. } = &mut *index;
        if let Some(e) = msgs.get_mut(id) {
            match &mut e.dsn_retry {
                Some(p) => {
                    p.lines.extend(lines);
                    p.failed.extend(failed);
                }
                None => {
                    dsn_due.insert((at, id.clone()));
                    e.dsn_retry = Some(Box::new(PendingDsn {
                        snapshot,
                        lines,
                        failed,
                        tries: 1,
                        due: Some(at),
                    }));
                }
            }
        }
        drop(index);
        self.wake.notify_one();
    }

    /// Tries again to store the DSN of the parked bounces of `id`, then records them.
    /// Runs as one of the message's busy tasks (`take_housekeeping`); the bounces stay
    /// parked until their DSN is stored, so that nothing removes the message before.
    async fn retry_dsn(&self, id: &QueueId) {
        let taken = self.lock().msgs.get(id).and_then(|e| {
            let p = e.dsn_retry.as_ref()?;
            Some((p.snapshot.clone(), p.failed.clone(), p.lines.len(), p.tries))
        });
        let Some((snapshot, failed, n_lines, tries)) = taken else {
            self.end_busy(id);
            return;
        };
        match self
            .send_dsn(id, &snapshot, &failed, DsnAction::Failed)
            .await
        {
            Err(e) => {
                tracing::warn!(id = %id, error = %e, tries = tries + 1, "cannot queue DSN yet");
                let at = self.now_ms() + self.dsn_wait(tries + 1);
                let mut index = self.lock();
                let Index { msgs, dsn_due, .. } = &mut *index;
                if let Some(p) = msgs.get_mut(id).and_then(|e| e.dsn_retry.as_mut()) {
                    p.tries += 1;
                    p.due = Some(at);
                    dsn_due.insert((at, id.clone()));
                }
            }
            Ok(()) => {
                let now = self.now_ms();
                let lines = {
                    let mut index = self.lock();
                    let Index { msgs, dsn_due, .. } = &mut *index;
                    let mut lines = Vec::new();
                    if let Some(e) = msgs.get_mut(id) {
                        if let Some(mut p) = e.dsn_retry.take() {
                            lines = p.lines.drain(..n_lines.min(p.lines.len())).collect();
                            p.failed.drain(..failed.len().min(p.failed.len()));
                            if p.failed.is_empty() {
                                lines.append(&mut p.lines);
                            } else {
                                // Bounced while this DSN was being stored: theirs next.
                                p.tries = 0;
                                p.due = Some(now);
                                dsn_due.insert((now, id.clone()));
                                e.dsn_retry = Some(p);
                            }
                        }
                    }
                    lines
                };
                let _ = self.persist(id, lines).await;
            }
        }
        self.lock().reschedule(id);
        self.end_busy(id);
        self.wake.notify_one();
    }

    /// Operator actions that became ready and parked DSNs that are due; also the time
    /// of the next parked DSN.
    fn take_housekeeping(&self) -> (Vec<QueueId>, Vec<QueueId>, Option<u64>) {
        let now = self.now_ms();
        let mut index = self.lock();
        let ops = std::mem::take(&mut index.ops_ready);
        let mut dsns = Vec::new();
        while let Some((at, _)) = index.dsn_due.first() {
            if *at > now {
                break;
            }
            let Some((_, id)) = index.dsn_due.pop_first() else {
                break;
            };
            // The retry is one of the message's busy tasks: an operator action or a
            // compaction copy waits for it.
            if let Some(e) = index.msgs.get_mut(&id) {
                if let Some(p) = e.dsn_retry.as_mut() {
                    p.due = None;
                    e.busy += 1;
                    dsns.push(id);
                }
            }
        }
        let next = index.dsn_due.first().map(|(at, _)| *at);
        (ops, dsns, next)
    }

    /// Ends one job, operator action, DSN retry or copy of `id`; when none is left, an
    /// operator action that waited for it becomes ready, or else a message with
    /// nothing left to do leaves (`Queue::remove_if_done`).
    pub(crate) fn end_busy(&self, id: &QueueId) {
        let mut index = self.lock();
        let (ready, idle) = match index.msgs.get_mut(id) {
            Some(e) => {
                e.busy = e.busy.saturating_sub(1);
                (e.busy == 0 && e.op.is_some(), e.busy == 0)
            }
            None => (false, false),
        };
        if ready {
            index.ops_ready.push(id.clone());
            drop(index);
            self.wake.notify_one();
        } else if idle {
            drop(index);
            self.remove_if_done(id);
        }
    }

    /// Runs an operator action that waited for a running attempt.
    async fn run_op(&self, id: &QueueId) {
        let op = {
            let mut index = self.lock();
            match index.msgs.get_mut(id) {
                Some(e) if e.busy == 0 => e.op.take(),
                _ => None,
            }
        };
        match op {
            Some(Op::Delete) => {
                tracing::info!(id = %id, "deleted by operator (after its attempt)");
                if let Err(e) = self.remove(id, true).await {
                    tracing::error!(id = %id, error = %e, "cannot record the delete");
                }
            }
            Some(Op::Bounce) => {
                let _ = self.bounce(id).await;
            }
            None => {}
        }
        self.lock().reschedule(id);
        self.wake.notify_one();
    }

    /// Copies the live messages of the oldest segment forward (a message record with
    /// their current states), so that a few long-deferred messages do not keep a whole
    /// segment on disk, nor the oldest segment every newer one (see
    /// `Queue::compaction_due`); the segment is then removed. Messages with a job, an
    /// operator action or a parked DSN are left for a later pass, after
    /// [`COMPACT_RETRY`]. Each copy is committed before the old record may go: a crash
    /// at any point leaves one of the two (recovery takes the later one).
    async fn compact(&self) {
        let oldest = self.lock().oldest_seg;
        let ids: Vec<QueueId> = self
            .lock()
            .msgs
            .iter()
            .filter(|(_, e)| e.segs.contains(&oldest))
            .map(|(id, _)| id.clone())
            .collect();
        let mut moved = 0usize;
        let mut ids = ids.into_iter().peekable();
        // In batches that share commits (a whole segment may be copied).
        while ids.peek().is_some() {
            let mut batch = Vec::new();
            let mut bytes = 0u64;
            while batch.len() < COMPACT_BATCH && bytes < COMPACT_BATCH_BYTES {
                let Some(id) = ids.next() else {
                    break;
                };
                if let Some((rec, loc, size)) = self.take_for_copy(&id) {
                    bytes += size;
                    batch.push((id, rec, loc, size));
                }
            }
            let mut records = Vec::with_capacity(batch.len());
            let mut copies = Vec::with_capacity(batch.len());
            let mut failure = None;
            for (id, rec, loc, size) in batch {
                if failure.is_some() {
                    self.end_copy(&id, None);
                    continue;
                }
                let encoded = async {
                    let body = self.body(loc, size, None).await?;
                    let meta = serde_json::to_vec(&rec).map_err(io::Error::other)?;
                    let mut head = Vec::with_capacity(record::HEADER_LEN + meta.len());
                    record::encode_head(&mut head, record::Kind::Message, &meta, &body);
                    Ok::<_, io::Error>((head, body))
                }
                .await;
                match encoded {
                    Ok((head, body)) => {
                        copies.push((id, loc.crc, head.len() as u64));
                        records.push((head, body));
                    }
                    Err(e) => {
                        self.end_copy(&id, None);
                        failure = Some((id, e));
                    }
                }
            }
            let written = self.log.append_all(records).await;
            for ((id, crc, head_len), w) in copies.into_iter().zip(written) {
                match w {
                    Ok(w) => {
                        let new = BodyLoc {
                            seg: w.seg,
                            offset: w.offset + head_len,
                            crc,
                        };
                        self.end_copy(&id, Some((new, head_len)));
                        moved += 1;
                    }
                    Err(e) => {
                        self.end_copy(&id, None);
                        failure.get_or_insert((id, e));
                    }
                }
            }
            if let Some((id, e)) = failure {
                tracing::warn!(id = %id, error = %e, "compaction stopped; the message stays where it is");
                break;
            }
        }
        let mut index = self.lock();
        self.trim_segments(&mut index);
        // Not freed (a message in it was busy, or a copy failed): not again at once.
        index.compact_after_ms = if index.oldest_seg == oldest {
            self.now_ms() + COMPACT_RETRY.as_millis() as u64
        } else {
            0
        };
        drop(index);
        if moved > 0 {
            tracing::info!(
                segment = oldest,
                messages = moved,
                "spool segment compacted"
            );
        }
        self.wake.notify_one();
    }

    /// Marks `id` as being copied forward (no job, operator action or DSN retry of it
    /// may start meanwhile) and returns its message record with its current states,
    /// unless something of it runs or waits.
    fn take_for_copy(&self, id: &QueueId) -> Option<(record::MessageRec, BodyLoc, u64)> {
        let mut index = self.lock();
        let taken = match index.msgs.get_mut(id) {
            Some(e) if e.busy == 0 && e.op.is_none() && e.dsn_retry.is_none() && !e.moving => {
                e.moving = true; // out of the schedule until copied (`end_copy`)
                e.busy += 1;
                let st = e
                    .rcpts
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.attempts > 0 || r.status != RecipientStatus::Pending)
                    .map(|(i, r)| state_line(i, r, e.warned))
                    .collect();
                Some((
                    record::MessageRec {
                        id: id.0.clone(),
                        at: e.arrival_ms,
                        dsn: e.dsn,
                        env: record::envelope_rec(&e.envelope),
                        st,
                    },
                    e.loc,
                    e.size,
                ))
            }
            _ => None,
        };
        index.reschedule(id);
        taken
    }

    /// Ends the copy of `id`: with its new place (committed), or where it was.
    fn end_copy(&self, id: &QueueId, copied: Option<(BodyLoc, u64)>) {
        {
            let mut index = self.lock();
            match copied {
                Some((new, head_len)) => {
                    if let Some(mut e) = index.remove(id) {
                        e.loc = new;
                        e.head_len = head_len;
                        e.segs = vec![new.seg];
                        e.moving = false;
                        index.insert(id.clone(), e);
                    }
                }
                None => {
                    if let Some(e) = index.msgs.get_mut(id) {
                        e.moving = false;
                    }
                }
            }
            index.reschedule(id);
        }
        self.end_busy(id);
    }

    /// Generates and stores one DSN for the recipients of `id` that failed in this pass
    /// (or, with [`DsnAction::Delayed`], are delayed) and asked for such reports.
    async fn send_dsn(
        &self,
        id: &QueueId,
        snapshot: &Snapshot,
        failed: &[FailedRecipient],
        action: DsnAction,
    ) -> Result<(), crate::transport::StoreError> {
        let env = &snapshot.envelope;
        if snapshot.dsn || env.sender.is_empty() {
            if action == DsnAction::Failed {
                tracing::warn!(id = %id, recipients = failed.len(), "undeliverable bounce message dropped");
            }
            return Ok(());
        }
        let wanted = match action {
            DsnAction::Failed => wants_failure_dsn,
            DsnAction::Delayed { .. } => wants_delay_dsn,
        };
        let reported: Vec<FailedRecipient> = failed
            .iter()
            .filter(|f| wanted(env, f.index))
            .cloned()
            .collect();
        if reported.is_empty() {
            return Ok(());
        }
        let original = self
            .body(snapshot.loc, snapshot.size, snapshot.mem.clone())
            .await
            .unwrap_or_else(|e| {
                tracing::error!(id = %id, error = %e, "cannot read original for the DSN");
                Bytes::new()
            });
        let boundary = format!(
            "{id}.{:016X}/{}",
            rand::rng().random::<u64>(),
            self.settings.hostname
        );
        let message = build_dsn(&DsnInput {
            action,
            reporting_mta: &self.settings.hostname,
            queue_id: id,
            envelope: env,
            arrival_ms: snapshot.arrival_ms,
            now_ms: self.now_ms(),
            failed: &reported,
            original: &original,
            boundary: &boundary,
        });
        let body = if message.iter().any(|&b| b >= 0x80) {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        };
        // Routed to `queue.bounce_relay` when set (see `execute`), else to the
        // sender's MX like any other message.
        let dsn_envelope = Envelope {
            sender: String::new(),
            body,
            smtputf8: env.smtputf8,
            ret: None,
            envid: None,
            recipients: vec![Recipient {
                address: env.sender.clone(),
                notify: None,
                orcpt: None,
            }],
        };
        let dsn_id = self
            .store_message(self.next_id(), dsn_envelope, message.into(), true)
            .await?;
        match action {
            DsnAction::Failed => {
                tracing::info!(id = %id, dsn = %dsn_id, recipients = reported.len(), "sender non-delivery notification")
            }
            DsnAction::Delayed { .. } => {
                tracing::info!(id = %id, dsn = %dsn_id, recipients = reported.len(), "sender delay notification")
            }
        }
        Ok(())
    }

    /// Bounces every pending recipient of `id` ("bounced by operator"), with a DSN.
    /// Returns how many recipients are bounced. If an attempt is running, the bounce
    /// takes effect when it ends, for the recipients it left pending (one it delivered
    /// meanwhile is not also bounced); the count is then of the recipients pending now.
    /// If the DSN cannot be stored (disk full), the bounce is parked like one of a
    /// delivery attempt: in effect at once (no further attempts), on disk once the DSN
    /// is, which is retried with a growing wait (one DSN with any bounce parked earlier).
    pub async fn bounce(&self, id: &QueueId) -> Result<usize, QueueError> {
        let mut lines = Vec::new();
        let mut failed = Vec::new();
        let snapshot = {
            let mut index = self.lock();
            let e = index
                .msgs
                .get_mut(id)
                .ok_or_else(|| QueueError::NotFound(id.clone()))?;
            if e.busy > 0 {
                let pending = e
                    .rcpts
                    .iter()
                    .filter(|r| r.status == RecipientStatus::Pending)
                    .count();
                if e.op.is_none() {
                    e.op = Some(Op::Bounce);
                }
                index.reschedule(id);
                tracing::info!(id = %id, recipients = pending, "bounce by operator: when the running attempt ends");
                return Ok(pending);
            }
            e.busy += 1;
            let warned = e.warned;
            for (i, r) in e.rcpts.iter_mut().enumerate() {
                if r.status != RecipientStatus::Pending {
                    continue;
                }
                let mut diagnostic = "bounced by operator".to_string();
                if let Some(last) = &r.last_error {
                    diagnostic.push_str(&format!("; last error: {}", last.diagnostic));
                }
                let failure = DeliveryFailure {
                    kind: FailureKind::OperatorBounce,
                    status: EnhancedStatus::permanent(0, 0),
                    remote_mta: None,
                    diagnostic,
                    remote: false,
                };
                r.status = RecipientStatus::Bounced;
                r.why = Some(BounceReason::Operator);
                r.last_error = Some(failure.clone());
                lines.push(state_line(i, r, warned));
                failed.push(FailedRecipient {
                    index: i,
                    failure,
                    reason: BounceReason::Operator,
                    last_attempt_ms: r.last_attempt_ms,
                });
            }
            let snapshot = Snapshot {
                envelope: Arc::clone(&e.envelope),
                arrival_ms: e.arrival_ms,
                dsn: e.dsn,
                loc: e.loc,
                size: e.size,
                mem: e.mem.clone(),
            };
            index.reschedule(id);
            snapshot
        };
        let n = failed.len();
        tracing::info!(id = %id, recipients = n, "bounced by operator");
        self.finish(id, snapshot, lines, failed, Vec::new(), true)
            .await;
        self.end_busy(id);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::needs_state_record;

    #[test]
    fn only_a_clean_final_job_skips_the_state_record() {
        // (all recipients final after this job, something bounced, delay warning sent)
        let table = [
            ((true, false, false), false), // common path: delivered, just unlink
            ((true, true, false), true),   // bounced: recorded so the DSN is not repeated
            ((true, false, true), true),
            ((false, false, false), true), // deferral or partial outcome
            ((false, true, false), true),
            ((false, false, true), true),
        ];
        for ((final_now, bounced, warned), want) in table {
            assert_eq!(
                needs_state_record(final_now, bounced, warned),
                want,
                "{final_now} {bounced} {warned}"
            );
        }
    }
}
