//! The [`Queue`]: opening and recovering the spool, durable stores with group-committed
//! directory fsyncs, the in-memory index, and the operator/test API.
//!
//! Only an index lives in memory (envelope, recipient states, arrival, size); bodies
//! stay on disk until a delivery starts. The scheduler is in `scheduler.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use mxgate_config::{Config, QueueConfig};
use mxgate_smtp::Envelope;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

use crate::schedule::{Clock, IdGen, RetryPolicy};
use crate::spool::{self, BounceReason, Meta, RecipientStatus, SpoolPaths, StateLine};
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

/// Why the queue could not be opened or an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("spool directory {path}: {source}")]
    Spool { path: PathBuf, source: io::Error },
    #[error("no message {0} in the queue")]
    NotFound(QueueId),
    #[error("spool I/O error: {0}")]
    Io(#[from] io::Error),
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

#[derive(Debug, Clone)]
pub(crate) struct Rcpt {
    pub status: RecipientStatus,
    pub attempts: u32,
    pub next_ms: u64,
    pub last_attempt_ms: Option<u64>,
    pub last_error: Option<DeliveryFailure>,
    pub why: Option<BounceReason>,
    pub in_flight: bool,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub envelope: Arc<Envelope>,
    pub arrival_ms: u64,
    pub body_offset: u64,
    pub size: u64,
    pub dsn: bool,
    /// The delay warning (`queue.delay_warning`) has been sent for this message.
    pub warned: bool,
    pub rcpts: Vec<Rcpt>,
    pub jobs_in_flight: u32,
    /// This entry's key in [`Index::schedule`].
    pub sched: Option<u64>,
}

impl Entry {
    pub fn all_final(&self) -> bool {
        self.rcpts
            .iter()
            .all(|r| r.status != RecipientStatus::Pending)
    }

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

#[derive(Debug, Default)]
pub(crate) struct Index {
    pub msgs: BTreeMap<QueueId, Entry>,
    pub active: usize,
    pub recorded: u64,
    /// `(earliest next attempt, id)` of every message with an idle pending recipient,
    /// so the scheduler finds due work without scanning the whole queue.
    pub schedule: BTreeSet<(u64, QueueId)>,
}

impl Index {
    pub fn insert(&mut self, id: QueueId, entry: Entry) {
        self.msgs.insert(id.clone(), entry);
        self.reschedule(&id);
    }

    pub fn remove(&mut self, id: &QueueId) -> Option<Entry> {
        let e = self.msgs.remove(id)?;
        if let Some(k) = e.sched {
            self.schedule.remove(&(k, id.clone()));
        }
        Some(e)
    }

    /// Brings `schedule` up to date after recipients of `id` changed.
    pub fn reschedule(&mut self, id: &QueueId) {
        let Some(e) = self.msgs.get_mut(id) else {
            return;
        };
        let key = e
            .rcpts
            .iter()
            .filter(|r| r.status == RecipientStatus::Pending && !r.in_flight)
            .map(|r| r.next_ms)
            .min();
        if key != e.sched {
            if let Some(old) = e.sched {
                self.schedule.remove(&(old, id.clone()));
            }
            if let Some(k) = key {
                self.schedule.insert((k, id.clone()));
            }
            e.sched = key;
        }
    }
}

type SyncWaiter = oneshot::Sender<Result<(), io::Error>>;

/// The durable queue. Shared as `Arc<Queue>`; [`MessageStore`] is implemented for
/// `Queue` (and so for `Arc<Queue>`).
pub struct Queue {
    pub(crate) settings: QueueSettings,
    pub(crate) retry: RetryPolicy,
    pub(crate) paths: SpoolPaths,
    pub(crate) clock: Clock,
    pub(crate) index: Mutex<Index>,
    pub(crate) wake: Notify,
    ids: Mutex<IdGen>,
    dir_sync: mpsc::UnboundedSender<SyncWaiter>,
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

/// Maps an I/O error to the listener's answer (contract §5: disk full is `452`).
pub(crate) fn store_error(e: io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace(e),
        _ => StoreError::Io(e),
    }
}

fn copy_io_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Group commit of `msg/` directory fsyncs: every store waiting when a sync starts is
/// answered by that one sync.
async fn dir_syncer(dir: PathBuf, mut rx: mpsc::UnboundedReceiver<SyncWaiter>) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let d = dir.clone();
        let result = tokio::task::spawn_blocking(move || spool::sync_dir(&d))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)));
        for w in waiters {
            let _ = w.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(copy_io_error(e)),
            });
        }
    }
}

impl Queue {
    /// Opens (creating if needed) the spool at `settings.queue.path` and recovers the
    /// messages in it. Must be called inside a tokio runtime. Unreadable files are moved
    /// to `quarantine/` with a warning; leftover temp files (never acknowledged) are
    /// removed.
    pub async fn open(settings: QueueSettings) -> Result<Arc<Queue>, QueueError> {
        let root = settings.queue.path.clone();
        let paths = SpoolPaths::new(&root);
        let p = paths.clone();
        let clock = Clock::new();
        let (index, idgen) = tokio::task::spawn_blocking(move || crate::recover::recover(&p))
            .await
            .map_err(|e| QueueError::Io(io::Error::other(e)))??;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(dir_syncer(paths.msg.clone(), rx));
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
            ids: Mutex::new(idgen),
            dir_sync: tx,
            events,
            counts: watch::Sender::new(QueueCounts::default()),
        });
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

    /// Stores a message durably and adds it to the index; `dsn` marks our own reports.
    pub(crate) async fn store_message(
        &self,
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
        let id = self
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next(crate::schedule::unix_ms(std::time::SystemTime::now()));
        let meta = Meta {
            arrival_ms,
            envelope,
            dsn,
        };
        let head = spool::encode_head(&meta, message.len())
            .map_err(|e| StoreError::Io(io::Error::other(e)))?;
        let body_offset = head.len() as u64;
        let paths = self.paths.clone();
        let name = id.0.clone();
        let body = message.clone();
        tokio::task::spawn_blocking(move || spool::write_new(&paths, &name, &head, &body))
            .await
            .map_err(|e| StoreError::Io(io::Error::other(e)))?
            .map_err(store_error)?;
        let (tx, rx) = oneshot::channel();
        let synced = match self.dir_sync.send(tx) {
            Ok(()) => rx.await.map_err(|_| StoreError::ShuttingDown)?,
            Err(_) => return Err(StoreError::ShuttingDown),
        };
        if let Err(e) = synced {
            // Not acknowledged, so it must not be delivered either.
            let _ = std::fs::remove_file(self.paths.message(&id.0));
            return Err(store_error(e));
        }
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
            meta.envelope.recipients.len()
        ];
        {
            let mut index = self.lock();
            index.insert(
                id.clone(),
                Entry {
                    envelope: Arc::new(meta.envelope),
                    arrival_ms,
                    body_offset,
                    size: message.len() as u64,
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

    /// Updates the `watch` of counts and the gauges (contract §7).
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

    /// Removes a message from disk and index and tells subscribers.
    ///
    /// After delivery (`deleted == false`) the unlink is not fsynced: if a crash loses
    /// it, recovery finds the file again and either drops it (every recipient final on
    /// disk) or delivers the still-pending recipients once more (at-least-once, the
    /// duplicate window Postfix has). An operator `delete` is made durable, so that a
    /// deleted message never comes back.
    pub(crate) async fn remove(&self, id: &QueueId, deleted: bool) {
        let path = self.paths.message(&id.0);
        let dir = self.paths.msg.clone();
        let result = tokio::task::spawn_blocking(move || {
            std::fs::remove_file(&path)?;
            if deleted {
                spool::sync_dir(&dir)?;
            }
            Ok::<(), io::Error>(())
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Ok(Err(e)) => tracing::error!(id = %id, error = %e, "cannot remove spool file"),
            Err(e) => tracing::error!(id = %id, error = %e, "cannot remove spool file"),
        }
        let summary = {
            let mut index = self.lock();
            let entry = index.remove(id);
            if let Some(e) = &entry {
                if e.jobs_in_flight > 0 {
                    index.active = index.active.saturating_sub(1);
                }
            }
            self.publish_counts(&index);
            entry.map(|e| e.summary(id))
        };
        if let Some(summary) = summary {
            let _ = self.events.send(FinalEvent { summary, deleted });
        }
    }

    /// Persists state lines for a message (fsync); errors are logged, not returned:
    /// the in-memory state is already updated and the worst case after a crash is a
    /// repeated attempt.
    pub(crate) async fn persist(&self, id: &QueueId, lines: Vec<StateLine>) {
        if lines.is_empty() {
            return;
        }
        let path = self.paths.message(&id.0);
        let result = tokio::task::spawn_blocking(move || spool::append_states(&path, &lines)).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(id = %id, "message removed before its state was recorded");
            }
            Ok(Err(e)) => tracing::error!(id = %id, error = %e, "cannot record recipient state"),
            Err(e) => tracing::error!(id = %id, error = %e, "cannot record recipient state"),
        }
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

    /// Deletes a message without any notification to its sender.
    pub async fn delete(&self, id: &QueueId) -> Result<(), QueueError> {
        if !self.lock().msgs.contains_key(id) {
            return Err(QueueError::NotFound(id.clone()));
        }
        tracing::info!(id = %id, "deleted by operator");
        self.remove(id, true).await;
        Ok(())
    }

    /// Final-state events (a message left the queue).
    pub fn subscribe(&self) -> broadcast::Receiver<FinalEvent> {
        self.events.subscribe()
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

impl MessageStore for Queue {
    async fn store(&self, envelope: Envelope, message: Bytes) -> Result<QueueId, StoreError> {
        self.store_message(envelope, message, false).await
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
        let q = Queue::open(settings).await.unwrap();
        // Replace tmp/ by a file: every store fails like an unwritable spool.
        std::fs::remove_dir(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("tmp"), b"").unwrap();
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
        let err = q
            .store(env, Bytes::from_static(b"x\r\n"))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Io(_)), "{err:?}");
        assert!(q.list().is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("msg")).unwrap().count(),
            0
        );
    }
}
