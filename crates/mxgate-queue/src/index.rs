//! The in-memory index of the queue: one [`Entry`] per message (envelope, recipient
//! states, where the body is, what is running for it), the due-work schedule, segment
//! use, the memory budget's account and the parked DSNs. Plain data with its
//! bookkeeping; the [`Queue`](crate::queue::Queue) holds it behind a mutex, recovery
//! (`recover.rs`) builds it, the scheduler (`scheduler.rs`) changes it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use mxgate_smtp::Envelope;

use crate::dsn::FailedRecipient;
use crate::log::record::StateRec;
use crate::spool::{BounceReason, RecipientStatus};
use crate::transport::{DeliveryFailure, QueueId};

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

/// Where a message's body is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BodyLoc {
    pub seg: u64,
    pub offset: u64,
    pub crc: u32,
}

/// An operator action that waits for the message's running attempt to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Bounce,
    Delete,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub envelope: Arc<Envelope>,
    pub arrival_ms: u64,
    pub loc: BodyLoc,
    /// Segments holding records of this message (each counted once in `Index::segs`).
    pub segs: Vec<u64>,
    /// The body, kept from the `250` to the end of the first attempt (memory budget).
    pub mem: Option<Bytes>,
    /// Jobs, operator actions and compaction copies not finished writing yet.
    pub busy: u32,
    /// An operator action to run once `busy` is 0.
    pub op: Option<Op>,
    /// Compaction is copying it forward: no new job starts meanwhile.
    pub moving: bool,
    /// Bounced recipients whose DSN could not be stored yet (disk full): retried; the
    /// bounce is recorded only once the DSN is on disk.
    pub dsn_retry: Option<Box<PendingDsn>>,
    pub size: u64,
    /// Length of the message record's header and metadata (the record is this plus
    /// `size`): what the message costs in the spool (compaction's accounting).
    pub head_len: u64,
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
}

/// How much of a segment live messages still use.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SegUse {
    /// Live messages with a record in it.
    pub msgs: u32,
    /// Bytes of the message records (header, metadata, body) of the live messages
    /// whose message record is in it.
    pub live_bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    pub msgs: BTreeMap<QueueId, Entry>,
    pub active: usize,
    pub recorded: u64,
    /// `(earliest next attempt, id)` of every message with an idle pending recipient,
    /// so the scheduler finds due work without scanning the whole queue.
    pub schedule: BTreeSet<(u64, QueueId)>,
    /// Use of every segment that live messages have records in.
    pub segs: BTreeMap<u64, SegUse>,
    /// The sum of every segment's `live_bytes`: what the queued mail needs on disk.
    pub live_bytes: u64,
    /// A compaction pass could not free the oldest segment (a message in it was busy):
    /// the next pass is not before this time (ms on the queue's clock).
    pub compact_after_ms: u64,
    /// The oldest segment that may still exist on disk; segments are removed in order.
    pub oldest_seg: u64,
    /// Body bytes held in memory for first attempts.
    pub mem_used: u64,
    /// `(when, id)` of messages whose DSN is to be stored again.
    pub dsn_due: BTreeSet<(u64, QueueId)>,
    /// Messages whose operator action can run now (`busy` reached 0).
    pub ops_ready: Vec<QueueId>,
}

impl Index {
    pub fn insert(&mut self, id: QueueId, mut entry: Entry) {
        // Not in `schedule` yet, whatever the entry says (it may come from `remove`).
        entry.sched = None;
        for &s in &entry.segs {
            self.segs.entry(s).or_default().msgs += 1;
        }
        let bytes = entry.head_len + entry.size;
        self.segs.entry(entry.loc.seg).or_default().live_bytes += bytes;
        self.live_bytes += bytes;
        if entry.mem.is_some() {
            self.mem_used += entry.size;
        }
        self.msgs.insert(id.clone(), entry);
        self.reschedule(&id);
    }

    pub fn remove(&mut self, id: &QueueId) -> Option<Entry> {
        let e = self.msgs.remove(id)?;
        if let Some(k) = e.sched {
            self.schedule.remove(&(k, id.clone()));
        }
        for &s in &e.segs {
            if let Some(u) = self.segs.get_mut(&s) {
                u.msgs = u.msgs.saturating_sub(1);
            }
        }
        let bytes = e.head_len + e.size;
        if let Some(u) = self.segs.get_mut(&e.loc.seg) {
            u.live_bytes = u.live_bytes.saturating_sub(bytes);
        }
        self.live_bytes = self.live_bytes.saturating_sub(bytes);
        if e.mem.is_some() {
            self.mem_used = self.mem_used.saturating_sub(e.size);
        }
        Some(e)
    }

    /// Notes that `id` has a record in segment `seg`.
    pub fn add_seg(&mut self, id: &QueueId, seg: u64) {
        let Some(e) = self.msgs.get_mut(id) else {
            return;
        };
        if !e.segs.contains(&seg) {
            e.segs.push(seg);
            self.segs.entry(seg).or_default().msgs += 1;
        }
    }

    /// Drops the in-memory body of `id` (its first attempt is over).
    pub fn release_mem(&mut self, id: &QueueId) {
        if let Some(e) = self.msgs.get_mut(id) {
            if e.mem.take().is_some() {
                self.mem_used = self.mem_used.saturating_sub(e.size);
            }
        }
    }

    /// The segments, oldest first, that no live message needs and that are older than
    /// `active`: they can be removed, in this order.
    pub fn removable_segments(&mut self, active: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while self.oldest_seg < active
            && self.segs.get(&self.oldest_seg).is_none_or(|u| u.msgs == 0)
        {
            self.segs.remove(&self.oldest_seg);
            out.push(self.oldest_seg);
            self.oldest_seg += 1;
        }
        out
    }

    /// Brings `schedule` up to date after recipients of `id` changed, or after an
    /// operator action or a compaction copy of it began or ended: while one waits or
    /// runs, no job may start, so the message is not in `schedule` at all (else the
    /// scheduler would find it due and skip it over and over, a busy loop).
    pub fn reschedule(&mut self, id: &QueueId) {
        let Some(e) = self.msgs.get_mut(id) else {
            return;
        };
        let key = if e.op.is_some() || e.moving {
            None
        } else {
            e.rcpts
                .iter()
                .filter(|r| r.status == RecipientStatus::Pending && !r.in_flight)
                .map(|r| r.next_ms)
                .min()
        };
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

/// What `finish` needs to know about the message.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub envelope: Arc<Envelope>,
    pub arrival_ms: u64,
    pub dsn: bool,
    pub loc: BodyLoc,
    pub size: u64,
    pub mem: Option<Bytes>,
}

/// Bounces whose DSN could not be stored yet (disk full), with the state lines of the
/// jobs that bounced them: retried by the scheduler; the lines are written only once
/// the DSN is stored. A message has at most one; a bounce parked while one exists is
/// appended to it (`failed` and `lines` only grow at the end, so a retry knows what
/// it covered by their lengths when it began).
#[derive(Debug, Clone)]
pub(crate) struct PendingDsn {
    pub snapshot: Snapshot,
    pub lines: Vec<StateRec>,
    pub failed: Vec<FailedRecipient>,
    /// The attempts made so far (the wait grows with them).
    pub tries: u32,
    /// Its key in [`Index::dsn_due`]; `None` while a retry runs.
    pub due: Option<u64>,
}
