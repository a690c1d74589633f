//! SMTP server that accepts mail from the local MTA (docs/postfix.md).
//!
//! [`Listener`] binds `listener.listen`, refuses clients outside `allowed_clients`
//! (`554 5.7.1`) and beyond `max_sessions` (`421 4.3.2`), and runs one [`Session`]
//! per connection: ESMTP with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
//! ENHANCEDSTATUSCODES and DSN; CRLF only (bare CR/LF is rejected in commands and in
//! DATA); one `Received:` header is prepended and the message is handed to the
//! [`mxgate_queue::MessageStore`], which answers before the client gets `250`.
//!
//! This crate does not offer STARTTLS or AUTH (it listens on loopback for the local
//! MTA), does not implement CHUNKING/BDAT, and does not deliver or queue anything
//! itself. Protocol parsing lives in `mxgate-smtp`; [`session`] is the pure state
//! machine and [`server`] the thin async shell.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::type_complexity))]

mod clock;
pub mod received;
pub mod server;
pub mod session;
pub mod settings;

pub use server::{describe_metrics, Listener, MESSAGES_RECEIVED};
pub use session::{Action, Session};
pub use settings::ListenerSettings;
