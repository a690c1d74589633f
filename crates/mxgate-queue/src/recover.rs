//! Startup recovery: rebuilds the in-memory index from the log's segments (record
//! headers and metadata, not bodies), and imports a version 1 spool (`msg/`, one file
//! per message) into the log on the first start after an upgrade.
//!
//! Records apply in log order: a message record adds the message (a later copy of the
//! same id, written by compaction or import, replaces its location and states), state
//! records update recipients, a done or deleted record removes it. A message whose
//! recipients are all final is dropped (its completion record was lost in a crash).
//!
//! This module does not schedule anything; it only produces the initial index.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::QueueError;
use crate::index::{BodyLoc, Entry, Index, Rcpt};
use crate::log::record::{self, Kind, MessageRec, RecordError, StateRec};
use crate::log::scan::{self, Item};
use crate::log::writer::parse_segment_name;
use crate::log::writer::LogWriter;
use crate::schedule::IdGen;
use crate::spool::{self, RecipientStatus, SpoolPaths};
use crate::transport::QueueId;

/// A version 1 message file found at startup, to be imported.
pub(crate) struct V1Message {
    id: String,
    path: PathBuf,
    rec: spool::Recovered,
}

fn new_rcpt(arrival_ms: u64) -> Rcpt {
    Rcpt {
        status: RecipientStatus::Pending,
        attempts: 0,
        next_ms: arrival_ms,
        last_attempt_ms: None,
        last_error: None,
        why: None,
        in_flight: false,
    }
}

/// The index entry of a message record (states included).
pub(crate) fn entry_from_rec(
    rec: &MessageRec,
    loc: BodyLoc,
    head_len: u64,
    size: u64,
) -> Result<Entry, RecordError> {
    let envelope = record::envelope_from_rec(rec.env.clone())?;
    let mut e = Entry {
        rcpts: vec![new_rcpt(rec.at); envelope.recipients.len()],
        envelope: Arc::new(envelope),
        arrival_ms: rec.at,
        loc,
        segs: vec![loc.seg],
        mem: None,
        busy: 0,
        op: None,
        moving: false,
        dsn_retry: None,
        size,
        head_len,
        dsn: rec.dsn,
        warned: false,
        jobs_in_flight: 0,
        sched: None,
    };
    apply_states(&mut e, &rec.st)?;
    Ok(e)
}

/// Applies state records to an entry (checked first, so a bad record changes nothing).
pub(crate) fn apply_states(e: &mut Entry, st: &[StateRec]) -> Result<(), RecordError> {
    let mut parsed = Vec::with_capacity(st.len());
    for s in st {
        if s.i >= e.rcpts.len() {
            return Err(RecordError(format!("recipient index {} out of range", s.i)));
        }
        let status = record::status_from_str(&s.st)?;
        let why = s.why.as_deref().map(record::reason_from_str).transpose()?;
        parsed.push((s, status, why));
    }
    for (s, status, why) in parsed {
        e.warned |= s.w;
        let r = &mut e.rcpts[s.i];
        r.status = status;
        r.attempts = s.a;
        r.next_ms = s.n;
        r.last_attempt_ms = (s.t > 0).then_some(s.t);
        r.last_error = s.e.clone().map(record::failure_from_rec);
        r.why = why;
    }
    Ok(())
}

/// Reads the spool at startup (blocking). Returns the index, the id generator, the
/// sequence number of the segment to write next, and the version 1 files to import.
pub(crate) fn recover(
    paths: &SpoolPaths,
) -> Result<(Index, IdGen, u64, Vec<V1Message>), QueueError> {
    let spool_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| QueueError::Spool { path, source }
    };
    paths.create().map_err(spool_err(&paths.root))?;
    let mut index = Index::default();
    let mut ids = IdGen::default();
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(&paths.log).map_err(spool_err(&paths.log))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match parse_segment_name(&name) {
            Some(seq) => seqs.push(seq),
            None => {
                tracing::warn!(file = %path.display(), "unexpected file in spool, quarantined");
                let _ = spool::quarantine(paths, &path);
            }
        }
    }
    seqs.sort_unstable();
    let last = seqs.last().copied();
    let mut bad_records = 0usize;
    for &seq in &seqs {
        let path = paths.log.join(crate::log::writer::segment_name(seq));
        let report = scan::scan(&path, &paths.quarantine, Some(seq) == last, |item| {
            if let Err(e) = apply(&mut index, &mut ids, seq, item) {
                bad_records += 1;
                tracing::error!(segment = seq, error = %e, "unusable spool record skipped");
            }
        })
        .map_err(spool_err(&path))?;
        if report.not_a_segment {
            tracing::warn!(file = %path.display(), "not a spool segment, quarantined");
        }
    }
    // Messages whose completion record was lost: every recipient final on disk.
    let finished: Vec<QueueId> = index
        .msgs
        .iter()
        .filter(|(_, e)| e.all_final())
        .map(|(id, _)| id.clone())
        .collect();
    for id in finished {
        index.remove(&id);
    }
    index.oldest_seg = seqs.first().copied().unwrap_or(1);
    let next_seq = last.map_or(1, |s| s + 1);
    let v1 = recover_v1(paths, &mut ids)?;
    tracing::info!(
        messages = index.msgs.len(),
        segments = seqs.len(),
        unusable_records = bad_records,
        version1_files = v1.len(),
        "queue recovered"
    );
    Ok((index, ids, next_seq, v1))
}

/// Applies one record of segment `seq` to the index.
fn apply(index: &mut Index, ids: &mut IdGen, seq: u64, item: Item) -> Result<(), RecordError> {
    match item {
        Item::Message {
            rec,
            body_offset,
            head_len,
            body_len,
            body_crc,
        } => {
            let loc = BodyLoc {
                seg: seq,
                offset: body_offset,
                crc: body_crc,
            };
            let entry = entry_from_rec(&rec, loc, head_len, body_len)?;
            ids.observe(&rec.id);
            let id = QueueId(rec.id);
            // A copy written forward replaces the older one (and its states).
            index.remove(&id);
            index.insert(id, entry);
        }
        Item::State(rec) => {
            let id = QueueId(rec.id);
            if let Some(e) = index.msgs.get_mut(&id) {
                apply_states(e, &rec.st)?;
                index.add_seg(&id, seq);
                index.reschedule(&id);
            }
        }
        Item::Done(id) | Item::Deleted(id) => {
            index.remove(&QueueId(id));
        }
    }
    Ok(())
}

/// Reads a version 1 spool (`msg/`), quarantining unreadable files and dropping
/// unacknowledged temp files; returns the messages still to import.
fn recover_v1(paths: &SpoolPaths, ids: &mut IdGen) -> Result<Vec<V1Message>, QueueError> {
    let mut out = Vec::new();
    if paths.tmp.is_dir() {
        for entry in std::fs::read_dir(&paths.tmp)? {
            let entry = entry?;
            tracing::info!(file = %entry.path().display(), "removing unfinished temp file");
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if !paths.msg.is_dir() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(&paths.msg)? {
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
        match spool::recover_file(&path) {
            Ok(rec) => {
                if rec.repaired {
                    tracing::warn!(id = %name, "torn last state record discarded");
                }
                ids.observe(&name);
                out.push(V1Message {
                    id: name,
                    path,
                    rec,
                });
            }
            Err(e) => match spool::quarantine(paths, &path) {
                Ok(dest) => {
                    tracing::warn!(file = %path.display(), error = %e, quarantine = %dest.display(), "unreadable spool file quarantined")
                }
                Err(qe) => {
                    tracing::error!(file = %path.display(), error = %e, quarantine_error = %qe, "unreadable spool file, cannot quarantine")
                }
            },
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// The log record of a version 1 message: its envelope and the final state of every
/// recipient its state lines mention.
fn v1_record(m: &V1Message) -> Result<MessageRec, RecordError> {
    let env = &m.rec.meta.envelope;
    let body = match env.body.as_str() {
        "SevenBit" => "7bit",
        "EightBitMime" => "8bitmime",
        other => return Err(RecordError(format!("unknown body type {other:?}"))),
    };
    let ret = match env.ret.as_deref() {
        None => None,
        Some("Full") => Some("full".to_string()),
        Some("Hdrs") => Some("hdrs".to_string()),
        Some(other) => return Err(RecordError(format!("unknown RET {other:?}"))),
    };
    let rcpt = env
        .recipients
        .iter()
        .map(|r| record::RecipientRec {
            to: r.address.clone(),
            notify: r.notify.map(|n| {
                if !n.success && !n.failure && !n.delay {
                    "never".to_string()
                } else {
                    [(n.success, 's'), (n.failure, 'f'), (n.delay, 'd')]
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, c)| *c)
                        .collect()
                }
            }),
            orcpt: r.orcpt.clone(),
        })
        .collect();
    let warned = m.rec.states.iter().any(|l| l.w);
    let mut last: std::collections::BTreeMap<usize, &spool::StateLine> = Default::default();
    for l in &m.rec.states {
        last.insert(l.i, l);
    }
    let st = last
        .values()
        .map(|l| StateRec {
            i: l.i,
            st: record::status_str(l.st).into(),
            a: l.a,
            n: l.n,
            t: l.t,
            e: l.e.as_ref().map(|f| record::FailureRec {
                kind: f.kind.clone(),
                status: f.status.clone(),
                mta: f.remote_mta.clone(),
                diag: f.diagnostic.clone(),
                remote: f.remote,
            }),
            why: l.why.map(|w| record::reason_str(w).into()),
            w: warned,
        })
        .collect();
    Ok(MessageRec {
        id: m.id.clone(),
        at: m.rec.meta.arrival_ms,
        dsn: m.rec.meta.dsn,
        env: record::EnvelopeRec {
            from: env.sender.clone(),
            body: body.into(),
            utf8: env.smtputf8,
            ret,
            envid: env.envid.clone(),
            rcpt,
        },
        st,
    })
}

/// Imports version 1 messages into the log: each is appended (and committed) as one
/// message record with its recipients' states, then its old file is removed. A crash
/// in between leaves both; the next start finds the id already in the log and only
/// removes the old file. Nothing acknowledged is lost at any point.
pub(crate) async fn import_v1(
    log: &LogWriter,
    index: &Mutex<Index>,
    paths: &SpoolPaths,
    msgs: Vec<V1Message>,
) -> Result<(), QueueError> {
    let lock = || index.lock().unwrap_or_else(|e| e.into_inner());
    /// Messages appended together (they share commits).
    const CHUNK: usize = 256;
    let mut imported = 0usize;
    let mut pending = msgs.into_iter().peekable();
    while pending.peek().is_some() {
        let mut batch = Vec::new();
        let mut records = Vec::new();
        for m in pending.by_ref().take(CHUNK) {
            let id = QueueId(m.id.clone());
            if lock().msgs.contains_key(&id) {
                let _ = std::fs::remove_file(&m.path);
                continue;
            }
            let rec = match v1_record(&m) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(id = %id, error = %e, "version 1 spool file cannot be imported, quarantined");
                    let _ = spool::quarantine(paths, &m.path);
                    continue;
                }
            };
            let (path, offset, len) = (m.path.clone(), m.rec.body_offset, m.rec.body_len);
            let body = tokio::task::spawn_blocking(move || spool::read_body(&path, offset, len))
                .await
                .map_err(|e| QueueError::Io(std::io::Error::other(e)))??;
            let meta =
                serde_json::to_vec(&rec).map_err(|e| QueueError::Io(std::io::Error::other(e)))?;
            let mut head = Vec::with_capacity(record::HEADER_LEN + meta.len());
            record::encode_head(&mut head, Kind::Message, &meta, &body);
            let head_len = head.len() as u64;
            let crc = record::body_crc(&body);
            let size = body.len() as u64;
            records.push((head, body));
            batch.push((id, m.path, rec, head_len, crc, size));
        }
        let results = log.append_all(records).await;
        for ((id, path, rec, head_len, crc, size), written) in batch.into_iter().zip(results) {
            let written = written?;
            let loc = BodyLoc {
                seg: written.seg,
                offset: written.offset + head_len,
                crc,
            };
            match entry_from_rec(&rec, loc, head_len, size) {
                Ok(entry) if !entry.all_final() => {
                    lock().insert(id, entry);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(id = %id, error = %e, "imported message unusable"),
            }
            // Only once its record is committed.
            std::fs::remove_file(&path)?;
            imported += 1;
        }
    }
    spool::sync_dir(&paths.msg)?;
    for d in [&paths.tmp, &paths.msg] {
        let _ = std::fs::remove_dir(d);
    }
    let _ = spool::sync_dir(&paths.root);
    tracing::info!(messages = imported, "version 1 spool imported into the log");
    Ok(())
}
