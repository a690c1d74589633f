//! The [`Queue`]: opening and recovering the spool, durable stores through the log
//! writer's group commit, segment trimming, and the operator/test API.
//!
//! The index (`index.rs`) lives in memory (envelope, recipient states, arrival, size,
//! where the body is); a new message's body also stays in memory until its first
//! attempt, within `queue.memory_budget`, else it is read back from its segment. The
//! scheduler is in `scheduler.rs`, recovery in `recover.rs`.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use mxgate_config::{Config, QueueConfig};
use mxgate_smtp::Envelope;
use serde::Serialize;
use tokio::sync::{broadcast, watch, Notify};

pub use crate::error::QueueError;
use crate::index::{BodyLoc, Entry, Index, Op, Rcpt};
use crate::log::record::{self, Kind, StateRec};
use crate::log::writer::{LogWriter, Tuning, Written};
use crate::schedule::{Clock, IdGen, RetryPolicy};
use crate::spool::{BounceReason, RecipientStatus, SpoolPaths};
use crate::transport::{DeliveryFailure, MessageStore, QueueId, StoreError};

/// What [`Queue::open`] needs.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub queue: QueueConfig,
    /// `server.hostname`: the DSN's Reporting-MTA and From domain.
    pub hostname: String,
    /// Deliveries run at once (`delivery.max_connections`).
    pub max_concurrent: usize,
}

impl QueueSettings {
    pub fn from_config(config: &Config) -> Self {
        QueueSettings {
            queue: config.queue.clone(),
            hostname: config.server.hostname.clone(),
            max_concurrent: config.delivery.max_connections.max(1),
        }
    }
}

/// One recipient in [`MessageSummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecipientSummary {
    pub address: String,
    pub domain: String,
    pub state: RecipientStatus,
    pub attempts: u32,
    /// Unix seconds of the next attempt (pending recipients only).
    pub next_attempt: Option<u64>,
    pub last_error: Option<DeliveryFailure>,
    pub bounce_reason: Option<BounceReason>,
}

/// What `mxgate queue list/show` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageSummary {
    pub id: QueueId,
    /// Empty for `<>` (e.g. our own DSNs).
    pub sender: String,
    pub size: u64,
    /// Unix seconds.
    pub arrival: u64,
    pub dsn: bool,
    pub recipients: Vec<RecipientSummary>,
}

/// Sent on [`Queue::subscribe`] when a message leaves the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalEvent {
    pub summary: MessageSummary,
    /// `true` when removed by `delete` rather than by all recipients being final.
    pub deleted: bool,
}

/// Message counts, published on every change ([`Queue::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub messages: usize,
    /// Messages with a delivery running.
    pub active: usize,
    /// Delivery attempts and operator bounces whose outcome is on disk, since open.
    pub recorded: u64,
}

impl Entry {
    pub fn summary(&self, id: &QueueId) -> MessageSummary {
        MessageSummary {
            id: id.clone(),
            sender: self.envelope.sender.clone(),
            size: self.size,
            arrival: self.arrival_ms / 1000,
            dsn: self.dsn,
            recipients: self
                .rcpts
                .iter()
                .zip(&self.envelope.recipients)
                .map(|(r, e)| RecipientSummary {
                    address: e.address.clone(),
                    domain: e.domain(),
                    state: r.status,
                    attempts: r.attempts,
                    next_attempt: (r.status == RecipientStatus::Pending)
                        .then_some(r.next_ms / 1000),
                    last_error: r.last_error.clone(),
                    bounce_reason: r.why,
                })
                .collect(),
        }
    }
}

/// The durable queue. Shared as `Arc<Queue>`; [`MessageStore`] is implemented for
/// `Queue` (and so for `Arc<Queue>`).
pub struct Queue {
    pub(crate) settings: QueueSettings,
    pub(crate) retry: RetryPolicy,
    pub(crate) paths: SpoolPaths,
    pub(crate) clock: Clock,
    pub(crate) index: Mutex<Index>,
    pub(crate) wake: Notify,
    pub(crate) log: LogWriter,
    pub(crate) tuning: Tuning,
    /// A compaction pass is running.
    pub(crate) compacting: std::sync::atomic::AtomicBool,
    /// Turns of the scheduler loop (each a wake-up), for tests.
    pub(crate) wakeups: std::sync::atomic::AtomicU64,
    ids: Mutex<IdGen>,
    events: broadcast::Sender<FinalEvent>,
    counts: watch::Sender<QueueCounts>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("path", &self.settings.queue.path)
            .finish()
    }
}

/// Maps an I/O error to the listener's answer (docs/operations.md: disk full is `452`).
pub(crate) fn store_error(e: io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace(e),
        _ => StoreError::Io(e),
    }
}

impl Queue {
    /// Opens (creating if needed) the spool at `settings.queue.path` and recovers the
    /// messages in it. Must be called inside a tokio runtime. Damaged records are
    /// copied to `quarantine/` with a warning and a torn tail is cut; a version 1 spool
    /// (`msg/`) is imported into the log.
    pub async fn open(settings: QueueSettings) -> Result<Arc<Queue>, QueueError> {
        Self::open_tuned(settings, Tuning::default()).await
    }

    /// [`Queue::open`] with other segment sizes (tests use small ones).
    pub async fn open_tuned(
        settings: QueueSettings,
        tuning: Tuning,
    ) -> Result<Arc<Queue>, QueueError> {
        let root = settings.queue.path.clone();
        let paths = SpoolPaths::new(&root);
        let p = paths.clone();
        let clock = Clock::new();
        let (index, idgen, next_seq, v1) =
            tokio::task::spawn_blocking(move || crate::recover::recover(&p))
                .await
                .map_err(|e| QueueError::Io(io::Error::other(e)))??;
        let log = LogWriter::start(paths.log.clone(), next_seq, tuning).map_err(|source| {
            QueueError::Spool {
                path: paths.log.clone(),
                source,
            }
        })?;
        let retry = RetryPolicy {
            intervals: settings.queue.retry_intervals.clone(),
            max_age: settings.queue.max_age,
        };
        let (events, _) = broadcast::channel(1024);
        let queue = Arc::new(Queue {
            settings,
            retry,
            paths,
            clock,
            index: Mutex::new(index),
            wake: Notify::new(),
            log,
            tuning,
            compacting: std::sync::atomic::AtomicBool::new(false),
            wakeups: std::sync::atomic::AtomicU64::new(0),
            ids: Mutex::new(idgen),
            events,
            counts: watch::Sender::new(QueueCounts::default()),
        });
        if !v1.is_empty() {
            crate::recover::import_v1(&queue.log, &queue.index, &queue.paths, v1).await?;
        }
        queue.trim_segments(&mut queue.lock());
        queue.publish_counts(&queue.lock());
        Ok(queue)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves a consistent-enough index (every
        // mutation is a few field writes); keep serving rather than poisoning forever.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A fresh queue id (time-ordered, unique within this queue).
    pub(crate) fn next_id(&self) -> QueueId {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next(crate::schedule::unix_ms(crate::clock::now()))
    }

    /// Stores a message durably under `id` and adds it to the index; `dsn` marks our
    /// own reports.
    pub(crate) async fn store_message(
        &self,
        id: QueueId,
        envelope: Envelope,
        message: Bytes,
        dsn: bool,
    ) -> Result<QueueId, StoreError> {
        if envelope.recipients.is_empty() {
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "message without recipients",
            )));
        }
        let arrival_ms = self.now_ms();
        let rec = record::MessageRec {
            id: id.0.clone(),
            at: arrival_ms,
            dsn,
            env: record::envelope_rec(&envelope),
            st: Vec::new(),
        };
        let meta = serde_json::to_vec(&rec).map_err(|e| StoreError::Io(io::Error::other(e)))?;
        let mut head = Vec::with_capacity(record::HEADER_LEN + meta.len());
        record::encode_head(&mut head, Kind::Message, &meta, &message);
        let crc = u32::from_le_bytes([head[20], head[21], head[22], head[23]]);
        let head_len = head.len() as u64;
        let written = match self.log.append(head, message.clone(), true).await {
            Ok(w) => w,
            Err(e) => {
                let e = store_error(e);
                if matches!(e, StoreError::Io(_)) {
                    self.disown(&id).await;
                }
                return Err(e);
            }
        };
        let rcpts = vec![
            Rcpt {
                status: RecipientStatus::Pending,
                attempts: 0,
                next_ms: arrival_ms,
                last_attempt_ms: None,
                last_error: None,
                why: None,
                in_flight: false,
            };
            envelope.recipients.len()
        ];
        {
            let mut index = self.lock();
            let size = message.len() as u64;
            let keep = index.mem_used + size <= self.settings.queue.memory_budget;
            index.insert(
                id.clone(),
                Entry {
                    envelope: Arc::new(envelope),
                    arrival_ms,
                    loc: BodyLoc {
                        seg: written.seg,
                        offset: written.offset + head_len,
                        crc,
                    },
                    segs: vec![written.seg],
                    mem: keep.then_some(message),
                    busy: 0,
                    op: None,
                    moving: false,
                    dsn_retry: None,
                    size,
                    head_len,
                    dsn,
                    warned: false,
                    rcpts,
                    jobs_in_flight: 0,
                    sched: None,
                },
            );
            self.publish_counts(&index);
        }
        self.wake.notify_one();
        Ok(id)
    }

    /// After a store failed with an I/O error (a failed `fdatasync`: the record may
    /// be on disk although nobody was told so), records the message as deleted, so
    /// that one answered `451` does not come back at the next start and go out twice.
    /// Best effort: if this fails too, the worst case is that duplicate.
    async fn disown(&self, id: &QueueId) {
        if let Err(e) = self
            .log
            .append(Self::id_record(Kind::Deleted, id), Bytes::new(), false)
            .await
        {
            tracing::warn!(id = %id, error = %e, "cannot record the refused message as deleted; it may be delivered after a restart");
        }
    }

    /// The body of a message: from memory if still there, else read back from its
    /// segment and checked against its checksum.
    pub(crate) async fn body(
        &self,
        loc: BodyLoc,
        size: u64,
        mem: Option<Bytes>,
    ) -> io::Result<Bytes> {
        if let Some(b) = mem {
            return Ok(b);
        }
        let path = self
            .paths
            .log
            .join(crate::log::writer::segment_name(loc.seg));
        tokio::task::spawn_blocking(move || read_body(&path, loc, size))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
    }

    /// Encodes a state record for `id`.
    pub(crate) fn state_record(id: &QueueId, lines: Vec<StateRec>) -> Vec<u8> {
        let rec = record::StatesRec {
            id: id.0.clone(),
            st: lines,
        };
        let meta = serde_json::to_vec(&rec).unwrap_or_default();
        let mut out = Vec::with_capacity(record::HEADER_LEN + meta.len());
        record::encode_head(&mut out, Kind::State, &meta, &[]);
        out
    }

    fn id_record(kind: Kind, id: &QueueId) -> Vec<u8> {
        let meta = serde_json::to_vec(&record::IdRec { id: id.0.clone() }).unwrap_or_default();
        let mut out = Vec::with_capacity(record::HEADER_LEN + meta.len());
        record::encode_head(&mut out, kind, &meta, &[]);
        out
    }

    /// Removes segments nobody needs any more (oldest first), and wakes the scheduler
    /// when compaction has work now.
    pub(crate) fn trim_segments(&self, index: &mut Index) {
        let active = self.log.active();
        for seg in index.removable_segments(active) {
            self.log.remove(seg);
        }
        if self
            .compaction_due(index)
            .is_some_and(|at| at <= self.now_ms())
        {
            self.wake.notify_one(); // the scheduler loop starts compaction
        }
    }

    /// When compaction has work, the earliest time its next pass may start (now, or
    /// later after a pass that could not free the oldest segment). It has work when
    /// the oldest segment is closed, not the one before the active one, and either
    /// mostly dead (its live records fill at most a quarter of a segment) or the
    /// closed segments (counted as full) hold more than twice the live records plus
    /// one segment: then even a busy oldest segment is copied forward, since segments
    /// are removed in order and it keeps every newer one on disk. That is the bound of
    /// docs/operations.md; with more than that on disk at least the live bytes plus
    /// one segment are dead, so a pass through the log copies less than it frees.
    pub(crate) fn compaction_due(&self, index: &Index) -> Option<u64> {
        let active = self.log.active();
        let oldest = index.oldest_seg;
        if oldest + 1 >= active {
            return None;
        }
        let seg = self.tuning.segment_bytes;
        let live = index.segs.get(&oldest).map_or(0, |u| u.live_bytes);
        let closed = (active - oldest).saturating_mul(seg);
        let over = closed > index.live_bytes.saturating_mul(2).saturating_add(seg);
        (live <= seg / 4 || over).then_some(index.compact_after_ms)
    }

    /// Updates the `watch` of counts and the gauges (docs/operations.md).
    pub(crate) fn publish_counts(&self, index: &Index) {
        let counts = QueueCounts {
            messages: index.msgs.len(),
            active: index.active,
            recorded: index.recorded,
        };
        self.counts.send_replace(counts);
        metrics::gauge!("mxgate_queue_messages", "state" => "active").set(counts.active as f64);
        metrics::gauge!("mxgate_queue_messages", "state" => "deferred")
            .set(counts.messages.saturating_sub(counts.active) as f64);
        // Ids are time-ordered, so the first one is the oldest message.
        let oldest = index
            .msgs
            .values()
            .next()
            .map_or(0, |e| self.now_ms().saturating_sub(e.arrival_ms) / 1000);
        metrics::gauge!("mxgate_queue_oldest_seconds").set(oldest as f64);
    }

    /// Removes a message from the queue and tells subscribers.
    ///
    /// After delivery (`deleted == false`) the completion record is lazy: written with
    /// the next commit, never waited for. If a crash loses it, recovery finds the
    /// message again and either drops it (every recipient final on disk) or delivers the
    /// still-pending recipients once more (at-least-once, the duplicate window Postfix
    /// has). An operator `delete` is committed before it returns, so that a deleted
    /// message never comes back.
    pub(crate) async fn remove(&self, id: &QueueId, deleted: bool) -> io::Result<()> {
        if deleted {
            self.log
                .append(Self::id_record(Kind::Deleted, id), Bytes::new(), false)
                .await?;
        } else {
            self.log.append_lazy(Self::id_record(Kind::Done, id));
        }
        self.forget(id, deleted);
        Ok(())
    }

    /// Takes a message whose removal record is written (or, lazy, on its way) out of
    /// the index and tells subscribers.
    fn forget(&self, id: &QueueId, deleted: bool) {
        let summary = {
            let mut index = self.lock();
            let entry = index.remove(id);
            if let Some(e) = &entry {
                if e.jobs_in_flight > 0 {
                    index.active = index.active.saturating_sub(1);
                }
                if let Some(at) = e.dsn_retry.as_ref().and_then(|p| p.due) {
                    index.dsn_due.remove(&(at, id.clone()));
                }
            }
            self.trim_segments(&mut index);
            self.publish_counts(&index);
            entry.map(|e| e.summary(id))
        };
        if let Some(summary) = summary {
            let _ = self.events.send(FinalEvent { summary, deleted });
        }
    }

    /// Removes a delivered or bounced message (lazy completion record, see
    /// [`Queue::remove`]) if nothing is left to do for it: every recipient final, no
    /// job, operator action or copy running, and no bounce whose DSN is still parked.
    /// Called by whoever ends the last of these, so that a message whose last job
    /// ended while a DSN of an earlier bounce was parked leaves once that DSN is stored.
    pub(crate) fn remove_if_done(&self, id: &QueueId) {
        let done = self.lock().msgs.get(id).is_some_and(|e| {
            e.busy == 0 && e.op.is_none() && e.dsn_retry.is_none() && e.all_final()
        });
        if done {
            self.log.append_lazy(Self::id_record(Kind::Done, id));
            self.forget(id, false);
        }
    }

    /// Persists state records for a message (one commit).
    pub(crate) async fn persist(&self, id: &QueueId, lines: Vec<StateRec>) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let written: Written = self
            .log
            .append(Self::state_record(id, lines), Bytes::new(), false)
            .await
            .inspect_err(
                |e| tracing::error!(id = %id, error = %e, "cannot record recipient state"),
            )?;
        self.lock().add_seg(id, written.seg);
        Ok(())
    }

    /// All messages, oldest first.
    pub fn list(&self) -> Vec<MessageSummary> {
        self.lock()
            .msgs
            .iter()
            .map(|(id, e)| e.summary(id))
            .collect()
    }

    /// One message.
    pub fn show(&self, id: &QueueId) -> Option<MessageSummary> {
        self.lock().msgs.get(id).map(|e| e.summary(id))
    }

    /// Makes the deferred recipients of `id` (or of every message) due now.
    pub fn flush(&self, id: Option<&QueueId>) -> Result<usize, QueueError> {
        let mut index = self.lock();
        let mut n = 0;
        let mut touch = |e: &mut Entry| {
            for r in e
                .rcpts
                .iter_mut()
                .filter(|r| r.status == RecipientStatus::Pending)
            {
                r.next_ms = 0;
                n += 1;
            }
        };
        let ids: Vec<QueueId> = match id {
            Some(id) => {
                touch(
                    index
                        .msgs
                        .get_mut(id)
                        .ok_or_else(|| QueueError::NotFound(id.clone()))?,
                );
                vec![id.clone()]
            }
            None => {
                index.msgs.values_mut().for_each(touch);
                index.msgs.keys().cloned().collect()
            }
        };
        for id in &ids {
            index.reschedule(id);
        }
        drop(index);
        self.wake.notify_one();
        Ok(n)
    }

    /// Deletes a message without any notification to its sender. If an attempt is
    /// running, the delete takes effect when it ends (recipients it delivered stay
    /// delivered; the rest are never tried again). A DSN still parked for an earlier
    /// bounce (disk full) is dropped with it.
    pub async fn delete(&self, id: &QueueId) -> Result<(), QueueError> {
        {
            let mut index = self.lock();
            let e = index
                .msgs
                .get_mut(id)
                .ok_or_else(|| QueueError::NotFound(id.clone()))?;
            if e.busy > 0 {
                tracing::info!(id = %id, "delete by operator: when the running attempt ends");
                e.op = Some(Op::Delete);
                let id = id.clone();
                index.reschedule(&id);
                return Ok(());
            }
        }
        tracing::info!(id = %id, "deleted by operator");
        self.remove(id, true).await?;
        Ok(())
    }

    /// Final-state events (a message left the queue).
    pub fn subscribe(&self) -> broadcast::Receiver<FinalEvent> {
        self.events.subscribe()
    }

    /// Group commits (`fdatasync` calls of the spool writer) since open.
    pub fn spool_commits(&self) -> u64 {
        self.log.fsyncs()
    }

    /// Test hook: the next `n` group commits report `EIO` from `fdatasync` (after
    /// really syncing), as a failing disk would.
    #[cfg(feature = "test-util")]
    pub fn fail_next_syncs(&self, n: u32) {
        self.log.fail_next_syncs(n);
    }

    /// Test hook: how often the scheduler loop has woken up since open (it sleeps
    /// until an event or its next deadline, so this stays small while idle).
    #[cfg(feature = "test-util")]
    pub fn scheduler_wakeups(&self) -> u64 {
        self.wakeups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Test hook: the segment files on disk and the bytes the queued messages'
    /// records need (header, metadata and body each), as compaction counts them.
    #[cfg(feature = "test-util")]
    pub fn spool_use(&self) -> (u64, u64) {
        let index = self.lock();
        (self.log.active() + 1 - index.oldest_seg, index.live_bytes)
    }

    /// Counts, updated on every change.
    pub fn counts(&self) -> watch::Receiver<QueueCounts> {
        self.counts.subscribe()
    }

    /// Resolves once `id` is no longer in the queue (all recipients final, or deleted).
    pub async fn wait_final(&self, id: &QueueId) {
        let mut rx = self.counts.subscribe();
        while self.lock().msgs.contains_key(id) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves once the queue holds no message.
    pub async fn wait_empty(&self) {
        let mut rx = self.counts.subscribe();
        let _ = rx.wait_for(|c| c.messages == 0).await;
    }
}

/// Reads a body from its segment and checks its checksum (blocking).
pub(crate) fn read_body(path: &std::path::Path, loc: BodyLoc, size: u64) -> io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let want = usize::try_from(size).map_err(io::Error::other)?;
    let mut buf = vec![0u8; want];
    f.read_exact_at(&mut buf, loc.offset)?;
    if record::body_crc(&buf) != loc.crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message body does not match its checksum",
        ));
    }
    Ok(Bytes::from(buf))
}

impl MessageStore for Queue {
    fn reserve_id(&self) -> QueueId {
        self.next_id()
    }

    async fn store_as(
        &self,
        id: QueueId,
        envelope: Envelope,
        message: Bytes,
    ) -> Result<QueueId, StoreError> {
        self.store_message(id, envelope, message, false).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_maps_to_no_space() {
        for code in [libc::ENOSPC, libc::EDQUOT] {
            assert!(matches!(
                store_error(io::Error::from_raw_os_error(code)),
                StoreError::NoSpace(_)
            ));
        }
        for code in [libc::EACCES, libc::EIO, libc::EROFS] {
            assert!(matches!(
                store_error(io::Error::from_raw_os_error(code)),
                StoreError::Io(_)
            ));
        }
    }

    #[tokio::test]
    async fn unwritable_spool_is_an_error_not_an_ack() {
        let dir = tempfile::tempdir().unwrap();
        let settings = QueueSettings {
            queue: QueueConfig {
                path: dir.path().to_path_buf(),
                ..QueueConfig::default()
            },
            hostname: "relay.test".into(),
            max_concurrent: 1,
        };
        // Tiny segments: the second store must start segment 2, whose name is taken
        // by a directory, so the spool cannot be written.
        let tuning = Tuning {
            segment_bytes: 64,
            ..Tuning::default()
        };
        let q = Queue::open_tuned(settings, tuning).await.unwrap();
        let env = Envelope {
            sender: "a@b.test".into(),
            body: mxgate_smtp::BodyType::SevenBit,
            smtputf8: false,
            ret: None,
            envid: None,
            recipients: vec![mxgate_smtp::Recipient {
                address: "c@d.test".into(),
                notify: None,
                orcpt: None,
            }],
        };
        let first = q
            .store(env.clone(), Bytes::from_static(b"x\r\n"))
            .await
            .unwrap();
        std::fs::create_dir(
            dir.path()
                .join("log")
                .join(crate::log::writer::segment_name(2)),
        )
        .unwrap();
        let err = q
            .store(env, Bytes::from_static(b"x\r\n"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Io(_)), "{err:?}");
        let ids: Vec<QueueId> = q.list().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![first], "the refused message is not queued");
    }
}
