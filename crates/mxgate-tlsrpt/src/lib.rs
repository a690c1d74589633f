//! SMTP TLS Reporting (RFC 8460) for mxgate: tells every destination domain that
//! publishes a `_smtp._tls` record how its MTA-STS or DANE policy fared.
//!
//! - [`record`]: the `_smtp._tls` TXT parser (RFC 8460 §3), pure.
//! - [`model`]: what a session counts as (policy, result type, failure details), pure.
//! - [`report`]: the RFC 8460 §4.4 JSON, gzip, `report-id`, pure.
//! - [`mail`]: the RFC 8460 §5.3 `multipart/report` mail, pure; [`dkim`] signs it.
//! - [`store`]: the persisted counters and pending reports (`tlsrpt.path`).
//! - [`service`]: the task that counts, saves, closes periods and sends.
//! - [`shared`]: counters shared by several instances (one report per domain and
//!   period from one of them); [`sharing`] is the service's side of it.
//!
//! Not here: deciding what a delivery session's policy and result were (the binary
//! maps delivery's session facts into a [`SessionRecord`]), DNS (a [`Discover`] the
//! binary provides), and queueing mail (a [`MailSink`]). This crate depends on
//! neither the queue nor delivery.

mod clock;
pub mod dkim;
pub mod mail;
pub mod model;
pub mod record;
pub mod report;
pub mod service;
pub mod shared;
pub mod sharing;
pub mod store;
pub mod time;

pub use dkim::{DkimError, DkimSigner};
pub use model::{
    FailureDetail, Policy, PolicyType, ResultType, SessionRecord, SessionResult, Tally,
};
pub use record::{Destination, TlsRptRecord};
pub use report::{Report, Submitter};
pub use service::{
    start, Discover, DiscoverError, ListView, MailSink, PostError, SendSummary, Settings,
    StartError, SubmitError, TlsRpt, TxtAnswer,
};
pub use shared::{AddOutcome, ClaimOutcome, PeriodKey, SharedCounters};
