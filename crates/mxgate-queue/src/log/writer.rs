//! The log writer: one dedicated thread owns the current segment and appends every
//! record to it with group commit.
//!
//! The thread takes everything queued since its last commit, writes it with one
//! `pwrite`, and covers it with one `fdatasync`; the next commit starts as soon as that
//! one returns. A caller that needs durability (a new message before its `250`, a
//! deferral, a bounce) waits for the reply of the commit that covered its record; a
//! lazy record (the completion of a delivered message) is written with the next batch
//! and costs no `fdatasync` of its own: a batch of lazy records only is written, not
//! synced, and becomes durable with the next commit (or is lost in a crash, which
//! delivers that message again: the at-least-once window of ARCHITECTURE.md).
//!
//! Segments are preallocated with zeros ahead of the write position, so a commit
//! flushes data only (no file-size change for the journal) and a full disk shows up
//! while preallocating, before any record byte is written. New messages are refused
//! (`ENOSPC`) while the file system has less than the reserve free, so that state
//! records and DSNs still find room (Postfix's `queue_minfree` idea).
//!
//! Segments are removed in order, oldest first, when the index says so: a completion
//! record in a newer segment then always outlives the message it ends.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::record::SEGMENT_MAGIC;
use crate::spool::{create_private, sync_dir};

/// Sizes of the log; tests shrink them.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// A segment is closed once it holds this much (a bigger record still fits alone).
    pub segment_bytes: u64,
    /// Zeros written ahead of the write position at a time.
    pub prealloc_bytes: u64,
    /// New messages are refused while less than this is free on the file system.
    pub reserve_bytes: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            segment_bytes: 64 << 20,
            prealloc_bytes: 1 << 20,
            reserve_bytes: 2 << 20,
        }
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    pub seg: u64,
    /// Offset of the record's first byte in the segment.
    pub offset: u64,
}

/// How a commit's result reaches the waiting caller.
enum Reply {
    Async(oneshot::Sender<io::Result<Written>>),
    /// Waited for on the blocking pool (feature `test-util` only, see [`LogWriter::append`]).
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    Sync(mpsc::SyncSender<io::Result<Written>>),
}

impl Reply {
    fn send(self, r: io::Result<Written>) {
        match self {
            Reply::Async(tx) => {
                let _ = tx.send(r);
            }
            Reply::Sync(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

struct Append {
    /// Encoded header and metadata.
    head: Vec<u8>,
    body: Bytes,
    /// A new message: subject to the free-space reserve.
    new_message: bool,
    /// `None`: lazy, nobody waits.
    reply: Option<Reply>,
}

enum Cmd {
    Append(Append),
    /// Remove this segment (the index decided that nothing in it is needed).
    Remove(u64),
}

fn stopped() -> io::Error {
    io::Error::other("spool writer stopped")
}

/// The file name of segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:016X}.seg")
}

/// Parses a segment file name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// Handle to the writer thread. Dropping it lets the thread write (and sync) what is
/// queued, and waits for that.
pub(crate) struct LogWriter {
    tx: mpsc::Sender<Cmd>,
    thread: Option<std::thread::JoinHandle<()>>,
    active: Arc<AtomicU64>,
    fsyncs: Arc<AtomicU64>,
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once it is empty.
        let (dead, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl LogWriter {
    /// Creates segment `first_seq` in `dir` and starts the thread. A full disk does not
    /// stop the start: the segment is then created by the first commit that finds room
    /// (until then commits fail with `ENOSPC`, and new messages get `452`).
    pub fn start(dir: PathBuf, first_seq: u64, tuning: Tuning) -> io::Result<LogWriter> {
        let seg = match Segment::create(&dir, first_seq, tuning) {
            Ok(seg) => Some(seg),
            Err(e) if is_full(&e) => {
                tracing::error!(error = %e, "spool file system full at start; writing resumes when space returns");
                None
            }
            Err(e) => return Err(e),
        };
        let (tx, rx) = mpsc::channel();
        let active = Arc::new(AtomicU64::new(first_seq));
        let fsyncs = Arc::new(AtomicU64::new(0));
        let mut thread = Thread {
            dir,
            tuning,
            next_seq: if seg.is_some() {
                first_seq + 1
            } else {
                first_seq
            },
            seg,
            active: Arc::clone(&active),
            fsyncs: Arc::clone(&fsyncs),
        };
        let handle = std::thread::Builder::new()
            .name("mxgate-spool".into())
            .spawn(move || thread.run(rx))?;
        Ok(LogWriter {
            tx,
            thread: Some(handle),
            active,
            fsyncs,
        })
    }

    /// Appends a record and waits until a commit covers it.
    #[cfg(not(feature = "test-util"))]
    pub async fn append(
        &self,
        head: Vec<u8>,
        body: Bytes,
        new_message: bool,
    ) -> io::Result<Written> {
        let (tx, rx) = oneshot::channel();
        self.send(head, body, new_message, Reply::Async(tx))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Appends a record and waits until a commit covers it — on the blocking pool, so
    /// that tokio's paused test clock does not jump ahead while a commit is on its way
    /// to the disk (a blocking task holds auto-advance back; a foreign thread does not).
    #[cfg(feature = "test-util")]
    pub async fn append(
        &self,
        head: Vec<u8>,
        body: Bytes,
        new_message: bool,
    ) -> io::Result<Written> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(head, body, new_message, Reply::Sync(tx))?;
        tokio::task::spawn_blocking(move || rx.recv())
            .await
            .map_err(io::Error::other)?
            .map_err(|_| stopped())?
    }

    /// Appends many records at once (they share commits) and waits for all of them.
    pub async fn append_all(&self, records: Vec<(Vec<u8>, Bytes)>) -> Vec<io::Result<Written>> {
        let mut waits = Vec::with_capacity(records.len());
        for (head, body) in records {
            let (tx, rx) = oneshot::channel();
            waits.push(self.send(head, body, false, Reply::Async(tx)).map(|()| rx));
        }
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            out.push(match w {
                Ok(rx) => rx.await.unwrap_or_else(|_| Err(stopped())),
                Err(e) => Err(e),
            });
        }
        out
    }

    fn send(&self, head: Vec<u8>, body: Bytes, new_message: bool, reply: Reply) -> io::Result<()> {
        self.tx
            .send(Cmd::Append(Append {
                head,
                body,
                new_message,
                reply: Some(reply),
            }))
            .map_err(|_| stopped())
    }

    /// Appends a record that nobody waits for (durable with the next commit).
    pub fn append_lazy(&self, head: Vec<u8>) {
        let _ = self.tx.send(Cmd::Append(Append {
            head,
            body: Bytes::new(),
            new_message: false,
            reply: None,
        }));
    }

    /// Removes segment `seq` (never the active one).
    pub fn remove(&self, seq: u64) {
        let _ = self.tx.send(Cmd::Remove(seq));
    }

    /// The segment being written.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// `fdatasync` calls so far (for tests and the benchmark's cross-check).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }
}

struct Segment {
    seq: u64,
    file: File,
    /// Next write position.
    pos: u64,
    /// Zeros are on disk up to here.
    alloc: u64,
}

impl Segment {
    fn create(dir: &Path, seq: u64, tuning: Tuning) -> io::Result<Segment> {
        let path = dir.join(segment_name(seq));
        let result = (|| {
            let file = create_private(&path)?;
            file.write_all_at(SEGMENT_MAGIC, 0)?;
            let mut seg = Segment {
                seq,
                file,
                pos: SEGMENT_MAGIC.len() as u64,
                alloc: SEGMENT_MAGIC.len() as u64,
            };
            seg.preallocate(tuning.prealloc_bytes, tuning)?;
            seg.file.sync_data()?;
            sync_dir(dir)?;
            Ok(seg)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    /// Makes sure zeros are on disk up to at least `pos + need`.
    fn preallocate(&mut self, need: u64, tuning: Tuning) -> io::Result<()> {
        let want = self.pos + need;
        if want <= self.alloc {
            return Ok(());
        }
        let step = tuning.prealloc_bytes.max(1);
        let target = want.div_ceil(step) * step;
        let zeros = vec![0u8; (target - self.alloc).min(step) as usize];
        while self.alloc < target {
            let n = (target - self.alloc).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], self.alloc)?;
            self.alloc += n as u64;
        }
        Ok(())
    }
}

struct Thread {
    dir: PathBuf,
    tuning: Tuning,
    /// `None` while a full disk kept the segment from being created.
    seg: Option<Segment>,
    /// The sequence number of the segment to create when `seg` is `None`.
    next_seq: u64,
    active: Arc<AtomicU64>,
    fsyncs: Arc<AtomicU64>,
}

/// At most this many records per commit, so replies are not held back too long.
const MAX_BATCH: usize = 4096;

impl Thread {
    fn run(&mut self, rx: mpsc::Receiver<Cmd>) {
        let mut buf = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut appends = Vec::new();
            let mut removes = Vec::new();
            let mut next = Some(first);
            while let Some(cmd) = next.take() {
                match cmd {
                    Cmd::Append(a) => appends.push(a),
                    Cmd::Remove(s) => removes.push(s),
                }
                if appends.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                self.commit(appends, &mut buf);
            }
            if !removes.is_empty() {
                self.remove(&removes);
            }
        }
        // Every sender is gone: make lazy records durable before the thread ends.
        if let Some(seg) = &self.seg {
            let _ = seg.file.sync_data();
        }
    }

    fn remove(&self, seqs: &[u64]) {
        for &seq in seqs {
            if self.seg.as_ref().is_some_and(|s| s.seq == seq) || seq >= self.next_seq {
                continue;
            }
            match std::fs::remove_file(self.dir.join(segment_name(seq))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::error!(segment = seq, error = %e, "cannot remove spool segment"),
            }
        }
        // Removals must not come back after a crash in another order than made.
        if let Err(e) = sync_dir(&self.dir) {
            tracing::error!(error = %e, "cannot sync spool directory");
        }
    }

    /// Writes one batch and, if anyone waits, commits it.
    fn commit(&mut self, mut appends: Vec<Append>, buf: &mut Vec<u8>) {
        // A full disk refuses new messages first, while there is still room for the
        // state and completion records of the queued ones.
        if appends.iter().any(|a| a.new_message) && !self.room_for_messages() {
            let (refused, rest): (Vec<Append>, Vec<Append>) =
                appends.into_iter().partition(|a| a.new_message);
            for a in refused {
                if let Some(r) = a.reply {
                    r.send(Err(io::Error::from_raw_os_error(libc::ENOSPC)));
                }
            }
            appends = rest;
            if appends.is_empty() {
                return;
            }
        }
        let total: u64 = appends
            .iter()
            .map(|a| (a.head.len() + a.body.len()) as u64)
            .sum();
        if self.seg.is_none() {
            match Segment::create(&self.dir, self.next_seq, self.tuning) {
                Ok(seg) => {
                    self.active.store(seg.seq, Ordering::Release);
                    self.next_seq = seg.seq + 1;
                    self.seg = Some(seg);
                }
                Err(e) => return fail(appends, &e),
            }
        }
        let Some(seg) = self.seg.as_ref() else {
            return fail(appends, &io::Error::from_raw_os_error(libc::ENOSPC));
        };
        if seg.pos + total > self.tuning.segment_bytes && seg.pos > SEGMENT_MAGIC.len() as u64 {
            if let Err(e) = self.rotate() {
                return fail(appends, &e);
            }
        }
        let Some(seg) = self.seg.as_mut() else {
            return fail(appends, &io::Error::from_raw_os_error(libc::ENOSPC));
        };
        if let Err(e) = seg.preallocate(total, self.tuning) {
            return fail(appends, &e);
        }
        buf.clear();
        let start = seg.pos;
        let mut offsets = Vec::with_capacity(appends.len());
        for a in &appends {
            offsets.push(start + buf.len() as u64);
            buf.extend_from_slice(&a.head);
            buf.extend_from_slice(&a.body);
        }
        if let Err(e) = seg.file.write_all_at(buf, start) {
            // Zeros back over whatever part landed, so no half batch looks valid.
            let zeros = vec![0u8; buf.len()];
            let _ = seg.file.write_all_at(&zeros, start);
            return fail(appends, &e);
        }
        let durable = appends.iter().any(|a| a.reply.is_some());
        let synced = if durable {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            seg.file.sync_data()
        } else {
            Ok(())
        };
        seg.pos = start + buf.len() as u64;
        let seq = seg.seq;
        if let Err(e) = synced {
            // What the kernel kept is unknown: move on to a fresh segment, and tell
            // every waiter that its record is not on stable storage.
            tracing::error!(segment = seq, error = %e, "spool commit failed");
            let _ = self.rotate();
            return fail(appends, &e);
        }
        for (a, offset) in appends.into_iter().zip(offsets) {
            if let Some(r) = a.reply {
                r.send(Ok(Written { seg: seq, offset }));
            }
        }
    }

    fn room_for_messages(&self) -> bool {
        let stat = match &self.seg {
            Some(seg) => rustix::fs::fstatvfs(&seg.file),
            None => rustix::fs::statvfs(&self.dir),
        };
        match stat {
            Ok(st) => {
                let free = st.f_bavail.saturating_mul(st.f_frsize);
                free >= self.tuning.reserve_bytes
            }
            Err(_) => true,
        }
    }

    /// Closes the current segment (everything in it is already synced or lazy) and
    /// starts the next one.
    fn rotate(&mut self) -> io::Result<()> {
        let seq = match &self.seg {
            Some(seg) => {
                let _ = seg.file.sync_data();
                seg.seq + 1
            }
            None => self.next_seq,
        };
        let next = Segment::create(&self.dir, seq, self.tuning)?;
        self.seg = Some(next);
        self.next_seq = seq + 1;
        self.active.store(seq, Ordering::Release);
        Ok(())
    }
}

fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn fail(appends: Vec<Append>, e: &io::Error) {
    for a in appends {
        if let Some(r) = a.reply {
            r.send(Err(copy_error(e)));
        }
    }
}

pub(crate) fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(26), "000000000000001A.seg");
        assert_eq!(parse_segment_name("000000000000001A.seg"), Some(26));
        assert_eq!(parse_segment_name("1A.seg"), None);
        assert_eq!(parse_segment_name("000000000000001A.tmp"), None);
        assert_eq!(parse_segment_name("00000000000000ZZ.seg"), None);
    }
}
