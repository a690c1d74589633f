//! Durable spool, scheduling, retry, expiry and DSN generation (docs/operations.md).
//!
//! The listener hands a message over through [`MessageStore::store`]; it returns only
//! once message and envelope are on stable storage: a record in the log-structured
//! spool, covered by a group commit (one `fdatasync` for every record appended since
//! the previous one) on the spool's own writer thread. The scheduler
//! ([`Queue::run`]) hands due work to a [`Transport`] (implemented by
//! `mxgate-delivery`), records each recipient's [`Outcome`] durably, retries deferred
//! recipients along `queue.retry_intervals`, bounces after `queue.max_age`, and queues
//! an RFC 3464 DSN to the sender for bounced recipients that asked for one.
//!
//! Operators and tests use [`Queue::list`], [`Queue::show`], [`Queue::flush`],
//! [`Queue::delete`], [`Queue::bounce`], and wait with [`Queue::subscribe`],
//! [`Queue::wait_final`], [`Queue::wait_empty`].
//!
//! This crate never opens an SMTP connection itself and never decides TLS policy; it
//! does not serve the control socket (the binary does, calling these methods).

mod clock;
pub mod dsn;
mod error;
mod index;
mod log;
mod queue;
mod recover;
mod schedule;
mod scheduler;
mod spool;
pub mod transport;

pub use log::scan::{encode_record, scan_segment, RecordKind, ScannedRecord, SegmentScan};
pub use log::writer::Tuning;
pub use queue::{
    FinalEvent, MessageSummary, Queue, QueueCounts, QueueError, QueueSettings, RecipientSummary,
};
pub use spool::{BounceReason, RecipientStatus};
pub use transport::{
    DeliveryFailure, DeliveryJob, FailureKind, MessageStore, Outcome, QueueId, RecipientOutcome,
    StoreError, Transport, MAX_DIAGNOSTIC,
};
