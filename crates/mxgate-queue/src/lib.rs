//! Durable spool, scheduling, retry, expiry and DSN generation (contract §5).
//!
//! The listener hands a message over through [`MessageStore::store`]; it returns only
//! once message and envelope are on stable storage. The scheduler hands due work to a
//! [`Transport`] (implemented by `mxgate-delivery`) and records each recipient's
//! [`Outcome`]. This crate never opens an SMTP connection itself and never decides
//! TLS policy.

pub mod transport;

pub use transport::{DeliveryFailure, DeliveryJob, MessageStore, Outcome, QueueId, RecipientOutcome, StoreError, Transport};
