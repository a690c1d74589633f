//! The two boundaries of the queue: what the listener calls to store a message, and
//! what the scheduler calls to deliver one.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use mxgate_smtp::Envelope;
use serde::{Deserialize, Serialize};

/// A queue id: short, unique, safe as a file name (upper-case hex, like Postfix's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(pub String);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a message could not be stored. The listener answers `452 4.3.1` for
/// [`StoreError::NoSpace`] and `451 4.3.0` for the rest (contract §5), never `250`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("spool full: {0}")]
    NoSpace(std::io::Error),
    #[error("spool I/O error: {0}")]
    Io(std::io::Error),
    #[error("queue is shutting down")]
    ShuttingDown,
}

/// Where the listener puts accepted messages.
pub trait MessageStore: Send + Sync + 'static {
    /// Stores `message` (exactly the bytes to relay, `Received:` already prepended, not
    /// dot-stuffed, CRLF line ends) with `envelope`. Resolves only after both are on
    /// stable storage (file and directory fsync).
    fn store(
        &self,
        envelope: Envelope,
        message: Bytes,
    ) -> impl Future<Output = Result<QueueId, StoreError>> + Send;
}

/// A shared store is a store (`Arc<Queue>` is what the binary hands the listener).
impl<S: MessageStore> MessageStore for Arc<S> {
    fn store(
        &self,
        envelope: Envelope,
        message: Bytes,
    ) -> impl Future<Output = Result<QueueId, StoreError>> + Send {
        (**self).store(envelope, message)
    }
}

/// One delivery attempt for the recipients of one message in one domain.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub id: QueueId,
    pub envelope: Arc<Envelope>,
    /// The destination domain, lower-case; every recipient below is in it.
    pub domain: String,
    /// Indices into `envelope.recipients`.
    pub recipients: Vec<usize>,
    /// The message as stored (not dot-stuffed).
    pub message: Bytes,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// `host:port` to deliver to instead of the domain's MX hosts (`queue.bounce_relay`
    /// for the queue's own DSNs); `None` = MX resolution and the domain's TLS policy.
    pub relay: Option<String>,
}

/// The outcome of one recipient of a [`DeliveryJob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// Index into `envelope.recipients`.
    pub index: usize,
    pub outcome: Outcome,
}

/// What happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The destination accepted it (`250` after DATA).
    Delivered {
        /// `host[addr]:port`
        relay: String,
        /// The server's final reply.
        reply: String,
    },
    /// Try again later (`4xx`, network, DNS temp-fail, TLS policy not met).
    Deferred(DeliveryFailure),
    /// Give up now and bounce (`5xx`, null MX, NXDOMAIN, `on_tls_failure = "bounce"`).
    Failed(DeliveryFailure),
}

/// Why a recipient was not delivered: what goes into logs and the DSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFailure {
    /// RFC 3463 enhanced status code, e.g. `4.7.5` or `5.1.1`.
    pub status: String,
    /// The remote MTA that answered, if one did (`mx.example.com`).
    pub remote_mta: Option<String>,
    /// The server's reply (`550 5.1.1 no such user`), or a local reason
    /// (`dane: no TLSA match for mx1.example.com (3 1 1)`).
    pub diagnostic: String,
    /// `true` when the diagnostic comes from the remote server (`smtp;` in the DSN),
    /// `false` for a local reason (`x-mxgate;`).
    pub remote: bool,
}

/// Delivers one [`DeliveryJob`]; implemented by `mxgate-delivery`.
pub trait Transport: Send + Sync + 'static {
    /// Returns exactly one outcome for each index in `job.recipients`.
    fn deliver(&self, job: DeliveryJob) -> impl Future<Output = Vec<RecipientOutcome>> + Send;
}
