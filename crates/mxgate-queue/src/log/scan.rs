//! Reading a segment at startup: record headers and metadata, never bodies (except in
//! the segment that was being written when the process stopped, where a body's
//! checksum tells a torn write from a complete record).
//!
//! A damaged record in the middle of a segment (bad magic, checksum or metadata) is
//! skipped up to the next valid record, and its bytes are copied to `quarantine/`; only
//! the message whose record that was is lost to the queue (and kept there for the
//! operator). Damage with no valid record after it is a torn tail: the segment is cut
//! there.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use super::record::Kind as RecordKind;
use super::record::{
    self, HeaderRead, IdRec, Kind, MessageRec, StatesRec, HEADER_LEN, SEGMENT_MAGIC,
};
use crate::spool::{create_private, sync_dir};

/// One valid record found by [`scan`].
#[derive(Debug)]
pub(crate) enum Item {
    Message {
        rec: MessageRec,
        /// Offset of the body in the segment.
        body_offset: u64,
        /// Length of the record's header and metadata (the body follows them).
        head_len: u64,
        body_len: u64,
        body_crc: u32,
    },
    State(StatesRec),
    Done(String),
    Deleted(String),
}

/// What [`scan`] did besides reporting records.
#[derive(Debug, Default)]
pub(crate) struct ScanReport {
    /// Damaged regions copied to `quarantine/`.
    pub quarantined: Vec<PathBuf>,
    /// The segment was cut at this offset (torn tail).
    pub cut_at: Option<u64>,
    /// The file is not a segment at all (moved to `quarantine/` whole).
    pub not_a_segment: bool,
}

/// How many bytes are read at a record position in one go (header and, usually,
/// all of the metadata).
const READ_AHEAD: usize = 512;

/// Random-access reads of a segment's bytes: the file at startup, or bytes already in
/// memory ([`scan_segment`]).
pub(crate) trait Source {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()>;
}

impl Source for File {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, pos)
    }
}

impl Source for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        let src = usize::try_from(pos)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A record checked at `pos`: its item and length, or `None` if it is not valid.
fn read_record<S: Source + ?Sized>(
    f: &S,
    file_len: u64,
    pos: u64,
    verify_body: bool,
    buf: &mut Vec<u8>,
) -> io::Result<Option<(Item, u64)>> {
    let avail = (file_len - pos).min(READ_AHEAD as u64) as usize;
    buf.resize(avail, 0);
    f.read_exact_at(buf, pos)?;
    let h = match record::parse_header(buf) {
        HeaderRead::Header(h) => h,
        HeaderRead::End | HeaderRead::Bad => return Ok(None),
    };
    if pos.saturating_add(h.record_len()) > file_len {
        return Ok(None);
    }
    let meta_end = HEADER_LEN + h.meta_len as usize;
    if buf.len() < meta_end {
        buf.resize(meta_end, 0);
        f.read_exact_at(&mut buf[avail..], pos + avail as u64)?;
    }
    let (head, meta) = buf[..meta_end].split_at(HEADER_LEN);
    if !record::head_ok(head, meta, &h) {
        return Ok(None);
    }
    let body_offset = pos + meta_end as u64;
    if verify_body && h.body_len > 0 {
        let mut body = vec![0u8; usize::try_from(h.body_len).map_err(io::Error::other)?];
        f.read_exact_at(&mut body, body_offset)?;
        if record::body_crc(&body) != h.body_crc {
            return Ok(None);
        }
    }
    let item = match h.kind {
        Kind::Message => match serde_json::from_slice::<MessageRec>(meta) {
            Ok(rec) => Item::Message {
                rec,
                body_offset,
                head_len: meta_end as u64,
                body_len: h.body_len,
                body_crc: h.body_crc,
            },
            Err(_) => return Ok(None),
        },
        Kind::State => match serde_json::from_slice::<StatesRec>(meta) {
            Ok(rec) => Item::State(rec),
            Err(_) => return Ok(None),
        },
        Kind::Done | Kind::Deleted => match serde_json::from_slice::<IdRec>(meta) {
            Ok(rec) if h.kind == Kind::Done => Item::Done(rec.id),
            Ok(rec) => Item::Deleted(rec.id),
            Err(_) => return Ok(None),
        },
    };
    Ok(Some((item, h.record_len())))
}

/// Damage [`scan_records`] met.
enum Damage<'a> {
    /// The bytes at `offset` up to the next valid record (skipped).
    Skipped { offset: u64, bytes: &'a [u8] },
    /// No valid record after `offset`: the segment ends there. `bytes`: the rest up to
    /// its last non-zero byte.
    Torn { offset: u64, bytes: &'a [u8] },
}

/// The record loop of a segment whose magic has been checked: every valid record with
/// its offset and length, in order, into `each`; damage into `damage`. `last`: bodies
/// are verified.
fn scan_records<S: Source + ?Sized>(
    f: &S,
    file_len: u64,
    last: bool,
    mut each: impl FnMut(Item, u64, u64),
    mut damage: impl FnMut(Damage<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let mut pos = SEGMENT_MAGIC.len() as u64;
    let mut buf = Vec::with_capacity(READ_AHEAD);
    while pos < file_len {
        if let Some((item, len)) = read_record(f, file_len, pos, last, &mut buf)? {
            each(item, pos, len);
            pos += len;
            continue;
        }
        if is_zero_from(f, pos, file_len)? {
            break; // the preallocated, never written rest
        }
        // Damage: find the next valid record.
        let mut rest = vec![0u8; usize::try_from(file_len - pos).map_err(io::Error::other)?];
        f.read_exact_at(&mut rest, pos)?;
        let mut next = None;
        for hit in memchr::memmem::find_iter(&rest[1..], record::RECORD_MAGIC) {
            let at = pos + 1 + hit as u64;
            if read_record(f, file_len, at, last, &mut buf)?.is_some() {
                next = Some(at);
                break;
            }
        }
        match next {
            Some(at) => {
                damage(Damage::Skipped {
                    offset: pos,
                    bytes: &rest[..(at - pos) as usize],
                })?;
                pos = at;
            }
            None => {
                let end = rest.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                damage(Damage::Torn {
                    offset: pos,
                    bytes: &rest[..end],
                })?;
                break;
            }
        }
    }
    Ok(())
}

/// Reads every valid record of the segment at `path`, in order, into `each`.
/// `last`: the segment the previous run was writing (bodies are verified, damage at
/// the end is a torn tail and cut without copying it).
pub(crate) fn scan(
    path: &Path,
    quarantine: &Path,
    last: bool,
    mut each: impl FnMut(Item),
) -> io::Result<ScanReport> {
    let mut report = ScanReport::default();
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let file_len = f.metadata()?.len();
    let mut magic = [0u8; SEGMENT_MAGIC.len()];
    if file_len < magic.len() as u64
        || FileExt::read_exact_at(&f, &mut magic, 0).is_err()
        || &magic != SEGMENT_MAGIC
    {
        drop(f);
        let dest = quarantine_path(quarantine, path, None);
        std::fs::rename(path, &dest)?;
        sync_dir(quarantine)?;
        report.not_a_segment = true;
        report.quarantined.push(dest);
        return Ok(report);
    }
    scan_records(
        &f,
        file_len,
        last,
        |item, _, _| each(item),
        |damage| match damage {
            Damage::Skipped { offset, bytes } => {
                let dest = quarantine_path(quarantine, path, Some(offset));
                write_quarantine(&dest, bytes, quarantine)?;
                tracing::warn!(segment = %path.display(), offset, bytes = bytes.len(), quarantine = %dest.display(), "damaged spool record quarantined");
                report.quarantined.push(dest);
                Ok(())
            }
            Damage::Torn { offset, bytes } => {
                if !last {
                    let dest = quarantine_path(quarantine, path, Some(offset));
                    write_quarantine(&dest, bytes, quarantine)?;
                    report.quarantined.push(dest);
                }
                tracing::warn!(segment = %path.display(), offset, bytes = bytes.len(), "torn spool tail truncated");
                f.set_len(offset)?;
                f.sync_all()?;
                report.cut_at = Some(offset);
                Ok(())
            }
        },
    )?;
    Ok(report)
}

/// One valid record found by [`scan_segment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    pub kind: RecordKind,
    /// The queue id the record is about.
    pub id: String,
    /// Offset of the record (its header) in the segment.
    pub offset: u64,
    /// Bytes of the whole record: header, metadata and body.
    pub len: u64,
}

/// What recovery makes of a segment's bytes ([`scan_segment`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// The bytes do not start with the segment magic (recovery quarantines the file
    /// whole and reads nothing from it).
    pub not_a_segment: bool,
    /// Every valid record, in order.
    pub records: Vec<ScannedRecord>,
    /// Damaged regions skipped up to the next valid record, `(offset, length)`;
    /// recovery copies each to `quarantine/`.
    pub skipped: Vec<(u64, u64)>,
    /// Damage with no valid record after it: recovery cuts the segment here.
    pub cut_at: Option<u64>,
}

/// The recovery reader on a segment's bytes, without a spool: the same record loop
/// that [`Queue::open`](crate::Queue::open) runs on every segment file, with the
/// quarantine and the cut reported instead of done. `last`: read it as the segment the
/// previous run was writing (body checksums verified). The layout is in
/// ARCHITECTURE.md and `log/record.rs`; this is for tools and the fuzz target
/// `spool_records` (docs/fuzzing.md).
///
/// An error means the reader tried to read outside `bytes`, which it must never do.
pub fn scan_segment(bytes: &[u8], last: bool) -> io::Result<SegmentScan> {
    let mut out = SegmentScan::default();
    if !bytes.starts_with(SEGMENT_MAGIC) {
        out.not_a_segment = true;
        return Ok(out);
    }
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut cut_at = None;
    scan_records(
        bytes,
        bytes.len() as u64,
        last,
        |item, offset, len| {
            let (kind, id) = match item {
                Item::Message { rec, .. } => (RecordKind::Message, rec.id),
                Item::State(rec) => (RecordKind::State, rec.id),
                Item::Done(id) => (RecordKind::Done, id),
                Item::Deleted(id) => (RecordKind::Deleted, id),
            };
            records.push(ScannedRecord {
                kind,
                id,
                offset,
                len,
            });
        },
        |damage| {
            match damage {
                Damage::Skipped { offset, bytes } => skipped.push((offset, bytes.len() as u64)),
                Damage::Torn { offset, .. } => cut_at = Some(offset),
            }
            Ok(())
        },
    )?;
    out.records = records;
    out.skipped = skipped;
    out.cut_at = cut_at;
    Ok(out)
}

/// One record as the spool writes it (header, `meta`, `body`; layout in
/// `log/record.rs`), for building segments in tests and tools. `meta` is the record's
/// JSON; a record whose JSON does not fit its kind is damage to the reader.
pub fn encode_record(kind: RecordKind, meta: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + meta.len() + body.len());
    record::encode_head(&mut out, kind, meta, body);
    out.extend_from_slice(body);
    out
}

fn is_zero_from<S: Source + ?Sized>(f: &S, pos: u64, file_len: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = pos;
    while at < file_len {
        let n = (file_len - at).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

fn quarantine_path(dir: &Path, seg: &Path, offset: Option<u64>) -> PathBuf {
    let name = seg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "segment".into());
    let base = match offset {
        Some(o) => format!("{name}.{o}"),
        None => name,
    };
    let mut dest = dir.join(&base);
    let mut n = 1;
    while dest.exists() {
        dest = dir.join(format!("{base}.{n}"));
        n += 1;
    }
    dest
}

fn write_quarantine(dest: &Path, bytes: &[u8], dir: &Path) -> io::Result<()> {
    let f = create_private(dest)?;
    f.write_all_at(bytes, 0)?;
    f.sync_all()?;
    sync_dir(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DONE_META: &[u8] = br#"{"id":"m1"}"#;
    const MESSAGE_META: &[u8] = br#"{"id":"m0","at":1,"env":{"from":"a@sender.test","body":"7bit","rcpt":[{"to":"b@one.test"}]}}"#;

    fn segment(records: &[Vec<u8>]) -> Vec<u8> {
        let mut seg = SEGMENT_MAGIC.to_vec();
        for r in records {
            seg.extend_from_slice(r);
        }
        seg
    }

    /// A header with a valid checksum whose fields are given, not computed.
    fn raw_record(kind: Kind, meta: &[u8], body_len: u64) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(record::RECORD_MAGIC);
        out.extend_from_slice(&[kind as u8, 0, 0, 0]);
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&body_len.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut c = crc32fast::Hasher::new();
        c.update(&out[..24]);
        c.update(meta);
        out.extend_from_slice(&c.finalize().to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(meta);
        out
    }

    #[test]
    fn records_damage_and_torn_tail_of_bytes() {
        let m = encode_record(Kind::Message, MESSAGE_META, b"Subject: x\r\n\r\nhi\r\n");
        let d = encode_record(Kind::Done, DONE_META, b"");
        let mut seg = segment(&[m.clone(), b"garbage MXR2 more".to_vec(), d.clone()]);
        seg.extend_from_slice(b"torn");
        seg.extend_from_slice(&[0; 100]);
        let scan = scan_segment(&seg, true).unwrap();
        let m_at = SEGMENT_MAGIC.len() as u64;
        let d_at = m_at + m.len() as u64 + 17;
        assert_eq!(
            scan.records,
            vec![
                ScannedRecord {
                    kind: Kind::Message,
                    id: "m0".into(),
                    offset: m_at,
                    len: m.len() as u64
                },
                ScannedRecord {
                    kind: Kind::Done,
                    id: "m1".into(),
                    offset: d_at,
                    len: d.len() as u64
                },
            ]
        );
        assert_eq!(scan.skipped, vec![(m_at + m.len() as u64, 17)]);
        assert_eq!(scan.cut_at, Some(d_at + d.len() as u64));
        assert!(!scan.not_a_segment);
        // A damaged body counts only where bodies are verified (the last segment).
        let mut bad_body = segment(std::slice::from_ref(&m));
        let last = bad_body.len() - 1;
        bad_body[last] ^= 1;
        assert_eq!(scan_segment(&bad_body, true).unwrap().cut_at, Some(m_at));
        assert_eq!(scan_segment(&bad_body, false).unwrap().records.len(), 1);
        assert!(
            scan_segment(b"MXGATE-SEGMENT1\n", false)
                .unwrap()
                .not_a_segment
        );
    }

    #[test]
    fn a_body_length_that_overflows_the_record_length_is_damage() {
        let d = encode_record(Kind::Done, DONE_META, b"");
        // 32 + meta + body_len wraps to 0 (or to a short length) in u64.
        let wrap = u64::MAX - (HEADER_LEN + MESSAGE_META.len()) as u64 + 1;
        for body_len in [wrap, wrap + 5, u64::MAX] {
            let huge = raw_record(Kind::Message, MESSAGE_META, body_len);
            let seg = segment(&[huge.clone(), d.clone()]);
            for last in [true, false] {
                let scan = scan_segment(&seg, last).unwrap();
                assert_eq!(scan.records.len(), 1, "{body_len} {last}");
                assert_eq!(scan.records[0].id, "m1");
                assert_eq!(scan.skipped, vec![(16, huge.len() as u64)]);
                assert_eq!(scan.cut_at, None);
            }
        }
    }
}
