//! Sans-IO SMTP codec shared by the listener (server side) and delivery (client side).
//!
//! Parsers take bytes and return values or "need more bytes"; nothing here reads a
//! socket, a clock or a file. This crate does not decide policy and keeps no session
//! beyond what a caller passes in.

pub mod envelope;

pub use envelope::{BodyType, Envelope, Notify, Recipient, Ret};
