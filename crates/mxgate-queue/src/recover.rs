//! Startup recovery: rebuilds the in-memory index from `msg/` without reading bodies,
//! drops unacknowledged temp files, quarantines unreadable files, and removes messages
//! whose recipients were all final when the process stopped.
//!
//! This module does not schedule anything; it only produces the initial index.

use std::sync::Arc;

use crate::queue::{Entry, Index, QueueError, Rcpt};
use crate::schedule::IdGen;
use crate::spool::{self, RecipientStatus, SpoolPaths};
use crate::transport::QueueId;

/// Reads every spool file at startup (blocking).
pub(crate) fn recover(paths: &SpoolPaths) -> Result<(Index, IdGen), QueueError> {
    let spool_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| QueueError::Spool { path, source }
    };
    paths.create().map_err(spool_err(&paths.msg))?;
    // Temp files were never acknowledged: drop them.
    for entry in std::fs::read_dir(&paths.tmp).map_err(spool_err(&paths.tmp))? {
        let entry = entry?;
        tracing::info!(file = %entry.path().display(), "removing unfinished temp file");
        let _ = std::fs::remove_file(entry.path());
    }
    let mut index = Index::default();
    let mut ids = IdGen::default();
    let mut removed_any = false;
    for entry in std::fs::read_dir(&paths.msg).map_err(spool_err(&paths.msg))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !spool::is_queue_id(&name) {
            tracing::warn!(file = %path.display(), "unexpected file in spool, quarantined");
            let _ = spool::quarantine(paths, &path);
            continue;
        }
        let rec = match spool::recover_file(&path) {
            Ok(rec) => rec,
            Err(e) => {
                match spool::quarantine(paths, &path) {
                    Ok(dest) => {
                        tracing::warn!(file = %path.display(), error = %e, quarantine = %dest.display(), "unreadable spool file quarantined")
                    }
                    Err(qe) => {
                        tracing::error!(file = %path.display(), error = %e, quarantine_error = %qe, "unreadable spool file, cannot quarantine")
                    }
                }
                continue;
            }
        };
        if rec.repaired {
            tracing::warn!(id = %name, "torn last state record discarded");
        }
        ids.observe(&name);
        let mut rcpts = vec![
            Rcpt {
                status: RecipientStatus::Pending,
                attempts: 0,
                next_ms: rec.meta.arrival_ms,
                last_attempt_ms: None,
                last_error: None,
                why: None,
                in_flight: false,
            };
            rec.meta.envelope.recipients.len()
        ];
        let mut warned = false;
        for line in rec.states {
            warned |= line.w;
            let r = &mut rcpts[line.i];
            r.status = line.st;
            r.attempts = line.a;
            r.next_ms = line.n;
            r.last_attempt_ms = (line.t > 0).then_some(line.t);
            r.last_error = line.e;
            r.why = line.why;
        }
        let entry = Entry {
            envelope: Arc::new(rec.meta.envelope),
            arrival_ms: rec.meta.arrival_ms,
            body_offset: rec.body_offset,
            size: rec.body_len,
            dsn: rec.meta.dsn,
            warned,
            rcpts,
            jobs_in_flight: 0,
            sched: None,
        };
        if entry.all_final() {
            // Crashed between the last state record and the unlink.
            let _ = std::fs::remove_file(&path);
            removed_any = true;
            continue;
        }
        index.insert(QueueId(name), entry);
    }
    if removed_any {
        spool::sync_dir(&paths.msg)?;
    }
    tracing::info!(messages = index.msgs.len(), "queue recovered");
    Ok((index, ids))
}
