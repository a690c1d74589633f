//! Reusing a cached session for the next job: [`IdleSession`] (what the cache holds)
//! and [`deliver_reused`] (`RSET`, then one transaction, by the same
//! [`ClientSession`] machine as a new connection).
//!
//! A cached session that does not answer `RSET` with `250` within
//! [`crate::drive::PROBE_TIMEOUT`], or that loses the connection during the
//! transaction before the final dot, is dropped silently: the caller falls back to a
//! fresh connection, and nothing counts as a delivery failure. A connection lost
//! after the final dot is not "dead": the message may have been delivered, so the
//! result stands and no fresh connection to that address is made in this attempt.
//!
//! Not here: which sessions may be kept (`machine`), keys, bounds and idle expiry
//! (`cache`).

use mxgate_queue::{DeliveryJob, FailureKind};

pub use crate::attempt::IdleSession;

use crate::attempt::{mail_of, Finished, SessionParams};
use crate::drive::drive;
use crate::facts::SessionError;
use crate::machine::{ClientSession, End};

/// `RSET`, then one transaction on `session`. `None`: the session was dead or
/// misbehaving and has been dropped; deliver on a fresh connection instead.
pub(crate) async fn deliver_reused(
    session: IdleSession,
    params: &SessionParams,
    job: &DeliveryJob,
    recipients: &[usize],
) -> Option<Finished> {
    let IdleSession {
        conn,
        local_ip,
        caps,
        tls,
    } = session;
    // Defence in depth: the cache key already keeps a cleartext session away from a
    // TLS-required job. Unread input (e.g. a `421` sent while idle) also disqualifies.
    if (tls.version.is_none() && !params.requirement.allows_cleartext())
        || conn.has_buffered_input()
    {
        return None;
    }
    let mut machine = ClientSession::resumed(
        params.peer(),
        params.requirement.clone(),
        caps,
        tls.version.is_some().then(|| tls.clone()),
        mail_of(job, recipients),
    );
    let first = machine.start();
    let (end, conn) = drive(&mut machine, first, conn, &params.tls_setup()).await;
    let finished = |result, idle| {
        Some(Finished {
            result,
            idle,
            local_ip,
            greeted: true,
        })
    };
    match end {
        End::Transacted { report, reusable } => {
            let idle = match (reusable, conn) {
                (true, Some(conn)) => Some(IdleSession {
                    conn,
                    local_ip,
                    caps: machine.capabilities().clone(),
                    tls,
                }),
                _ => None,
            };
            finished(Ok(report), idle)
        }
        // The message may have been delivered: never send it again to this address.
        End::Failed(SessionError::Unreachable { relay, failure })
            if failure.kind == FailureKind::LostAfterData =>
        {
            finished(Err(SessionError::Unreachable { relay, failure }), None)
        }
        End::Failed(SessionError::TlsPolicy { relay, failure }) => {
            finished(Err(SessionError::TlsPolicy { relay, failure }), None)
        }
        // The server went away between RSET and the final dot: nothing was decided,
        // so the job starts over on a new connection.
        End::Failed(SessionError::Unreachable { .. }) | End::Stale => {
            tracing::debug!(relay = %params.relay(), "cached session lost; dropped");
            None
        }
        End::RetryCleartext { .. } | End::Probed => None,
    }
}
