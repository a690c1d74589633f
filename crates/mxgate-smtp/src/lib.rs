//! Sans-IO SMTP codec shared by the listener (server side) and delivery (client side).
//!
//! Parsers take bytes and return values or "need more bytes"; nothing here reads a
//! socket, a clock or a file. This crate does not decide policy and keeps no session
//! beyond what a caller passes in.
//!
//! - [`line`]: CRLF line extraction with bare-LF/CR, NUL and length checks.
//! - [`command`]: server-side command parser (MAIL/RCPT parameters, addresses).
//! - [`reply`]: [`Reply`] formatting (server) and incremental parsing (client).
//! - [`ehlo`]: [`Capabilities`] from an EHLO reply.
//! - [`client`]: client command formatting from an [`Envelope`].
//! - [`data`]: DATA reader (server) and dot-stuffing (client).
//! - [`date`]: RFC 5322 and RFC 3339 dates of a Unix time, in UTC.
//! - [`logvalue`]: values from outside made safe for `key=value` log fields.
//! - [`status`]: RFC 3463 [`EnhancedStatus`].
//! - [`xtext`]: RFC 3461 xtext.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::type_complexity))]

pub mod client;
pub mod command;
pub mod data;
pub mod date;
pub mod ehlo;
pub mod envelope;
pub mod line;
pub mod logvalue;
pub mod reply;
pub mod status;
pub mod xtext;

pub use client::ClientCommandError;
pub use command::{parse_command, Command, CommandError, MailFrom, RcptTo};
pub use data::{dot_stuff, DataError, DataOutcome, DataReader};
pub use ehlo::Capabilities;
pub use envelope::{BodyType, Envelope, Notify, Recipient, Ret};
pub use line::{LineError, LineReader};
pub use logvalue::{log_quoted, LogValue};
pub use reply::{parse_reply, reply_complete, EnhancedCode, Reply, ReplyError, ReplyScan};
pub use status::{EnhancedStatus, StatusClass, StatusParseError};
