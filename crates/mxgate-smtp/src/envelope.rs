//! The envelope of one message as the local MTA handed it over, with the DSN
//! parameters of RFC 3461 and the ESMTP parameters of RFC 1870 / 6152 / 6531.
//!
//! This is what the queue stores next to the message and what delivery replays to the
//! destination.

use serde::{Deserialize, Serialize};

/// `MAIL FROM` and `RCPT TO` of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Reverse-path without angle brackets; empty for the null sender `<>`.
    pub sender: String,
    /// `BODY=` (RFC 6152).
    pub body: BodyType,
    /// `SMTPUTF8` was given (RFC 6531).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461 §4.3).
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded (RFC 3461 §4.4).
    pub envid: Option<String>,
    /// The recipients in the order they were accepted.
    pub recipients: Vec<Recipient>,
}

/// One accepted `RCPT TO`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// Forward-path without angle brackets.
    pub address: String,
    /// `NOTIFY=` (RFC 3461 §4.1); `None` when the parameter was absent.
    pub notify: Option<Notify>,
    /// `ORCPT=` as `addr-type;address`, xtext-decoded (RFC 3461 §4.2).
    pub orcpt: Option<String>,
}

impl Recipient {
    /// The domain part of the address, lower-cased (what MX resolution uses).
    pub fn domain(&self) -> String {
        self.address
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// `BODY=7BIT` / `BODY=8BITMIME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// `RET=FULL` / `RET=HDRS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Full,
    Hdrs,
}

/// `NOTIFY=NEVER` or a combination of `SUCCESS`, `FAILURE`, `DELAY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl Notify {
    /// `NOTIFY=NEVER`.
    pub const NEVER: Notify = Notify {
        success: false,
        failure: false,
        delay: false,
    };

    pub fn is_never(&self) -> bool {
        *self == Notify::NEVER
    }
}
