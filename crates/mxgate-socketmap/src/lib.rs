//! Postfix socketmap policy server (socketmap_table(5)): Postfix's own smtp client asks
//! `smtp_tls_policy_maps = socketmap:inet:HOST:PORT:NAME` for each next-hop domain, and
//! mxgate answers with the policy its engine decided, in Postfix's policy-table syntax
//! (docs/postfix.md, "Socketmap policy server").
//!
//! Layout: [`netstring`] frames bytes (sans-IO); [`query`] parses a request and
//! classifies its key; [`answer`] translates the engine's plan into a reply (pure);
//! [`lookup`] puts those together for one request; [`server`] is the thin tokio server
//! (accept loop, one task per connection, idle timeout, connection cap).
//!
//! This crate decides no TLS level: every answer comes from mxgate-policy's plan. It
//! does not deliver mail, and it never connects to an MX host.

pub mod answer;
pub mod lookup;
pub mod netstring;
pub mod query;
pub mod server;

pub use answer::{PostfixLevel, PostfixPolicy, Reply};
pub use lookup::{answer_request, PolicyLookup};
pub use server::{SocketmapServer, SocketmapSettings};

/// Counter: one per reply, `answer` = `dane|dane-only|secure|verify|encrypt|may|none|notfound|temp|perm`.
pub const METRIC_ANSWERS: &str = "mxgate_socketmap_answers_total";
/// Counter: connections closed by mxgate, `reason` = `malformed|idle`.
pub const METRIC_CLOSED: &str = "mxgate_socketmap_closed_total";

/// Registers the descriptions of this crate's metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        METRIC_ANSWERS,
        "Socketmap replies sent to Postfix, by answer type"
    );
    metrics::describe_counter!(
        METRIC_CLOSED,
        "Socketmap connections closed by mxgate (malformed netstring, idle)"
    );
}
