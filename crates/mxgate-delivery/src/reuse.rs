//! Reusing a cached session for the next job: [`IdleSession`] (what the cache holds)
//! and [`deliver_reused`] (`RSET`, then one transaction).
//!
//! A cached session that does not answer `RSET` with `250` within
//! [`REUSE_PROBE_TIMEOUT`], or that loses the connection during the transaction, is
//! dropped silently: the caller falls back to a fresh connection, and nothing counts as
//! a delivery failure.
//!
//! Not here: which sessions may be kept (`transaction`), keys, bounds and idle expiry
//! (`cache`).

use std::time::Duration;

use mxgate_queue::DeliveryJob;
use mxgate_smtp::Capabilities;

use crate::cache::Idle;
use crate::conn::{Conn, SmtpStream};
use crate::session::{SessionError, SessionParams, TlsFacts};
use crate::transaction::{reset_within, transaction, Ending, Finished};

/// How long a cached session may take to answer `RSET` before it is given up for a
/// fresh connection (capped by the command timeout).
pub const REUSE_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A session parked between transactions: the connection, what the server advertised
/// in its last EHLO (after STARTTLS when TLS is up), and the TLS facts.
pub struct IdleSession {
    pub(crate) conn: Conn<SmtpStream>,
    pub(crate) local_ip: Option<std::net::IpAddr>,
    pub(crate) caps: Capabilities,
    pub(crate) tls: TlsFacts,
}

impl Idle for IdleSession {
    async fn close(mut self) {
        self.conn.quit().await;
    }
}

/// `RSET`, then one transaction on `session`. `None`: the session was dead or
/// misbehaving and has been dropped; deliver on a fresh connection instead.
pub(crate) async fn deliver_reused(
    session: IdleSession,
    params: &SessionParams,
    job: &DeliveryJob,
    recipients: &[usize],
) -> Option<Finished> {
    let IdleSession {
        mut conn,
        local_ip,
        caps,
        tls,
    } = session;
    // Defence in depth (contract §2): the cache key already keeps a cleartext session
    // away from a TLS-required job.
    if tls.version.is_none() && !params.requirement.allows_cleartext() {
        return None;
    }
    let timeout = REUSE_PROBE_TIMEOUT.min(conn.timeout());
    if !matches!(reset_within(&mut conn, timeout).await, Ending::Reusable) {
        tracing::debug!(relay = %params.relay(), "cached session failed RSET; dropped");
        return None;
    }
    let mut finished = transaction(conn, params, job, recipients, &caps, tls).await;
    finished.local_ip = local_ip;
    match &finished.result {
        // The server went away between RSET and the end of the transaction: nothing
        // was decided, so the job starts over on a new connection.
        Err(SessionError::Unreachable { .. }) => {
            tracing::debug!(relay = %params.relay(), "cached session lost; dropped");
            None
        }
        _ => Some(finished),
    }
}
