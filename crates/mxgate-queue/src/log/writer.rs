//! The log writer: one dedicated thread owns the current segment and appends every
//! record to it with group commit.
//!
//! The thread takes everything queued since its last commit, writes it with one
//! `pwrite`, and covers it with one `fdatasync`; the next commit starts as soon as that
//! one returns. A caller that needs durability (a new message before its `250`, a
//! deferral, a bounce) waits for the reply of the commit that covered its record; a
//! lazy record (the completion of a delivered message) does not even wake the thread:
//! it goes out with the next commit (or, when none comes, after [`LAZY_FLUSH`], written
//! but not synced) and costs no `fdatasync` of its own. It becomes durable with the
//! next commit, or is lost in a crash, which delivers that message again (the
//! at-least-once window of ARCHITECTURE.md).
//!
//! **Commit delay.** When the previous commit covered the records of two or more
//! waiting callers (so stores are arriving concurrently), the thread waits a little
//! before the next one — until one caller more than last time waits, or at most the
//! previous `fdatasync`'s duration (never more than [`MAX_COMMIT_DELAY`]) — so one
//! `fdatasync` covers more messages. A lone store (one session) is never delayed.
//!
//! **A failed `fdatasync`** (`EIO`) leaves the page cache in an unknown state: the
//! kernel may have dropped the dirty pages and will not report the error again, so a
//! second `fdatasync` of the same file could return success for data that never
//! reached the disk. Every waiter of that commit gets the error (the listener answers
//! `451`), the segment is abandoned — never synced or written again — and the next
//! commit starts a new segment.
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
#[cfg(feature = "test-util")]
use std::sync::atomic::AtomicU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

/// Lazy records wait at most this long for a commit to take them along.
pub(crate) const LAZY_FLUSH: Duration = Duration::from_millis(20);
/// So many lazy records wake the thread without a commit to wait for.
const LAZY_BACKLOG: usize = 256;
/// The longest commit delay, whatever the disk's `fdatasync` takes.
pub(crate) const MAX_COMMIT_DELAY: Duration = Duration::from_micros(500);

/// Commands on their way to the thread, in the order they were made (the log's order).
struct Inbox {
    state: Mutex<InboxState>,
    ready: Condvar,
}

#[derive(Default)]
struct InboxState {
    cmds: Vec<Cmd>,
    /// Appends in `cmds` that a caller waits for.
    waiters: usize,
    /// `cmds` holds something to act on now (a waited-for append or a removal).
    urgent: bool,
    /// The thread waits on `ready`: a push that needs it must notify.
    sleeping: bool,
    /// The handle is gone: write what is left, then stop.
    closed: bool,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, cmd: Cmd) -> io::Result<()> {
        let urgent = match &cmd {
            Cmd::Append(a) => a.reply.is_some(),
            Cmd::Remove(_) => true,
        };
        let mut st = self.lock();
        if st.closed {
            return Err(stopped());
        }
        st.cmds.push(cmd);
        if urgent {
            st.urgent = true;
            if matches!(st.cmds.last(), Some(Cmd::Append(_))) {
                st.waiters += 1;
            }
        }
        let wake = st.sleeping && (urgent || st.cmds.len() >= LAZY_BACKLOG);
        if wake {
            st.sleeping = false;
        }
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Sleeps until notified or `deadline` (`None`: no timeout).
    fn sleep<'a>(
        &self,
        mut st: MutexGuard<'a, InboxState>,
        deadline: Option<Instant>,
    ) -> MutexGuard<'a, InboxState> {
        st.sleeping = true;
        let mut st = match deadline {
            None => self.ready.wait(st).unwrap_or_else(|e| e.into_inner()),
            Some(at) => {
                let left = at.saturating_duration_since(crate::clock::instant());
                self.ready
                    .wait_timeout(st, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
        st.sleeping = false;
        st
    }

    /// Waits for the next batch: something urgent, a backlog of lazy records, or lazy
    /// records that waited [`LAZY_FLUSH`]; then, if `delay` says so, a little longer
    /// for more waiters. Swaps the batch into `into` (empty on entry); `false` once
    /// closed and drained.
    fn next_batch(&self, delay: Option<(usize, Duration)>, into: &mut Vec<Cmd>) -> bool {
        let mut st = self.lock();
        let mut lazy_deadline = None;
        while !st.urgent && !st.closed && st.cmds.len() < LAZY_BACKLOG {
            if st.cmds.is_empty() {
                lazy_deadline = None;
                st = self.sleep(st, None);
                continue;
            }
            let at = *lazy_deadline.get_or_insert_with(|| crate::clock::instant() + LAZY_FLUSH);
            if crate::clock::instant() >= at {
                break;
            }
            st = self.sleep(st, Some(at));
        }
        if st.cmds.is_empty() {
            return false; // closed
        }
        if let Some((target, longest)) = delay {
            let until = crate::clock::instant() + longest;
            while st.waiters > 0
                && st.waiters < target
                && !st.closed
                && st.cmds.len() < MAX_BATCH
                && crate::clock::instant() < until
            {
                st = self.sleep(st, Some(until));
            }
        }
        if st.cmds.len() <= MAX_BATCH {
            std::mem::swap(&mut st.cmds, into);
            st.waiters = 0;
            st.urgent = false;
        } else {
            into.extend(st.cmds.drain(..MAX_BATCH));
            let waiters = st.cmds.iter().filter(|c| c.waits()).count();
            st.waiters = waiters;
            st.urgent = st
                .cmds
                .iter()
                .any(|c| c.waits() || matches!(c, Cmd::Remove(_)));
        }
        true
    }
}

impl Cmd {
    fn waits(&self) -> bool {
        matches!(self, Cmd::Append(a) if a.reply.is_some())
    }
}

/// Handle to the writer thread. Dropping it lets the thread write (and sync) what is
/// queued, and waits for that.
pub(crate) struct LogWriter {
    inbox: Arc<Inbox>,
    thread: Option<std::thread::JoinHandle<()>>,
    active: Arc<AtomicU64>,
    fsyncs: Arc<AtomicU64>,
    /// Test hook: so many of the next `fdatasync` calls report `EIO`.
    #[cfg(feature = "test-util")]
    fail_syncs: Arc<AtomicU32>,
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.inbox.close();
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
        let inbox = Arc::new(Inbox {
            state: Mutex::new(InboxState::default()),
            ready: Condvar::new(),
        });
        let active = Arc::new(AtomicU64::new(first_seq));
        let fsyncs = Arc::new(AtomicU64::new(0));
        #[cfg(feature = "test-util")]
        let fail_syncs = Arc::new(AtomicU32::new(0));
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
            pacing: Pacing::default(),
            #[cfg(feature = "test-util")]
            fail_syncs: Arc::clone(&fail_syncs),
        };
        let rx = Arc::clone(&inbox);
        let handle = std::thread::Builder::new()
            .name("mxgate-spool".into())
            .spawn(move || thread.run(&rx))?;
        Ok(LogWriter {
            inbox,
            thread: Some(handle),
            active,
            fsyncs,
            #[cfg(feature = "test-util")]
            fail_syncs,
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
        self.inbox.push(Cmd::Append(Append {
            head,
            body,
            new_message,
            reply: Some(reply),
        }))
    }

    /// Appends a record that nobody waits for (durable with the next commit).
    pub fn append_lazy(&self, head: Vec<u8>) {
        let _ = self.inbox.push(Cmd::Append(Append {
            head,
            body: Bytes::new(),
            new_message: false,
            reply: None,
        }));
    }

    /// Removes segment `seq` (never the active one).
    pub fn remove(&self, seq: u64) {
        let _ = self.inbox.push(Cmd::Remove(seq));
    }

    /// The segment being written.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// `fdatasync` calls so far (for tests and the benchmark's cross-check).
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Test hook: the next `n` commits' `fdatasync` report `EIO` (after really syncing,
    /// so the records are on disk although nobody was told so: the harder case).
    #[cfg(feature = "test-util")]
    pub fn fail_next_syncs(&self, n: u32) {
        self.fail_syncs.store(n, Ordering::SeqCst);
    }
}

/// What the previous commit tells about the next one (the commit delay).
#[derive(Debug, Default)]
struct Pacing {
    /// Waiting callers the previous commit covered.
    last_waiters: usize,
    /// How long its `fdatasync` took.
    last_sync: Duration,
}

impl Pacing {
    /// `(waiters to wait for, longest wait)`, or `None`: commit at once. Only when
    /// stores arrived concurrently last time: a lone store is never delayed.
    fn delay(&self) -> Option<(usize, Duration)> {
        (self.last_waiters >= 2)
            .then(|| (self.last_waiters + 1, self.last_sync.min(MAX_COMMIT_DELAY)))
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
    pacing: Pacing,
    #[cfg(feature = "test-util")]
    fail_syncs: Arc<AtomicU32>,
}

/// At most this many records per commit, so replies are not held back too long.
const MAX_BATCH: usize = 4096;

impl Thread {
    fn run(&mut self, inbox: &Inbox) {
        let mut buf = Vec::new();
        let mut cmds = Vec::new();
        while inbox.next_batch(self.pacing.delay(), &mut cmds) {
            let mut appends = Vec::with_capacity(cmds.len());
            let mut removes = Vec::new();
            for cmd in cmds.drain(..) {
                match cmd {
                    Cmd::Append(a) => appends.push(a),
                    Cmd::Remove(s) => removes.push(s),
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
            if !is_full(&e) {
                // An I/O error: what this file holds is unknown from here on.
                self.abandon(&e);
            }
            return fail(appends, &e);
        }
        let waiters = appends.iter().filter(|a| a.reply.is_some()).count();
        let synced = if waiters > 0 {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            let began = crate::clock::instant();
            let r = seg.file.sync_data();
            self.pacing = Pacing {
                last_waiters: waiters,
                last_sync: began.elapsed(),
            };
            r
        } else {
            Ok(())
        };
        #[cfg(feature = "test-util")]
        let synced = match synced {
            Ok(()) if waiters > 0 && take_one(&self.fail_syncs) => {
                Err(io::Error::from_raw_os_error(libc::EIO))
            }
            other => other,
        };
        seg.pos = start + buf.len() as u64;
        let seq = seg.seq;
        if let Err(e) = synced {
            // Not one waiter's record is known to be on stable storage, and syncing
            // this file again proves nothing: abandon it.
            self.abandon(&e);
            return fail(appends, &e);
        }
        for (a, offset) in appends.into_iter().zip(offsets) {
            if let Some(r) = a.reply {
                r.send(Ok(Written { seg: seq, offset }));
            }
        }
    }

    /// Stops using the current segment after an I/O error on it: it is never written
    /// or synced again (records already committed in it stay valid); the next commit
    /// creates a new segment.
    fn abandon(&mut self, e: &io::Error) {
        if let Some(seg) = self.seg.take() {
            tracing::error!(segment = seg.seq, error = %e, "spool commit failed; the segment is abandoned, the next commit starts a new one");
            self.next_seq = seg.seq + 1;
        }
        self.pacing = Pacing::default();
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

/// Takes one from a test hook's count, if any is left.
#[cfg(feature = "test-util")]
fn take_one(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
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

    #[test]
    fn commit_delay_only_after_concurrent_stores_and_bounded() {
        let pacing = |last_waiters, micros| Pacing {
            last_waiters,
            last_sync: Duration::from_micros(micros),
        };
        // Nothing committed yet, nobody waited, a lone store: commit at once.
        assert_eq!(Pacing::default().delay(), None);
        assert_eq!(pacing(0, 300).delay(), None);
        assert_eq!(pacing(1, 300).delay(), None);
        // Concurrent stores: wait for one more than last time, at most one fdatasync.
        assert_eq!(
            pacing(2, 300).delay(),
            Some((3, Duration::from_micros(300)))
        );
        assert_eq!(pacing(9, 40).delay(), Some((10, Duration::from_micros(40))));
        // A slow disk does not make the wait longer than the bound.
        assert_eq!(pacing(5, 4000).delay(), Some((6, MAX_COMMIT_DELAY)));
    }

    #[test]
    fn inbox_keeps_order_and_wakes_only_for_waiters() {
        let inbox = Inbox {
            state: Mutex::new(InboxState::default()),
            ready: Condvar::new(),
        };
        let lazy = |n: u8| {
            Cmd::Append(Append {
                head: vec![n],
                body: Bytes::new(),
                new_message: false,
                reply: None,
            })
        };
        inbox.push(lazy(1)).unwrap();
        inbox.push(Cmd::Remove(7)).unwrap();
        {
            let st = inbox.lock();
            assert!(st.urgent, "a removal is acted on at once");
            assert_eq!(st.waiters, 0);
        }
        let (tx, _rx) = oneshot::channel();
        inbox
            .push(Cmd::Append(Append {
                head: vec![2],
                body: Bytes::new(),
                new_message: true,
                reply: Some(Reply::Async(tx)),
            }))
            .unwrap();
        assert_eq!(inbox.lock().waiters, 1);
        let mut batch = Vec::new();
        assert!(inbox.next_batch(None, &mut batch));
        let order: Vec<String> = batch
            .iter()
            .map(|c| match c {
                Cmd::Append(a) => format!("a{}", a.head[0]),
                Cmd::Remove(s) => format!("r{s}"),
            })
            .collect();
        assert_eq!(
            order,
            ["a1", "r7", "a2"],
            "the log's order is the push order"
        );
        let st = inbox.lock();
        assert!(st.cmds.is_empty() && st.waiters == 0 && !st.urgent);
        drop(st);
        // Only lazy records: nothing urgent, they wait for a commit (or LAZY_FLUSH).
        inbox.push(lazy(3)).unwrap();
        assert!(!inbox.lock().urgent);
        inbox.close();
        assert!(inbox.push(lazy(4)).is_err(), "closed");
        batch.clear();
        assert!(
            inbox.next_batch(None, &mut batch),
            "what is left is written"
        );
        assert_eq!(batch.len(), 1);
        batch.clear();
        assert!(!inbox.next_batch(None, &mut batch), "then the thread stops");
    }
}
