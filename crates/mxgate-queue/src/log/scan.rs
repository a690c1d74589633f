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

/// A record checked at `pos`: its item and length, or `None` if it is not valid.
fn read_record(
    f: &File,
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
        || f.read_exact_at(&mut magic, 0).is_err()
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
    let mut pos = magic.len() as u64;
    let mut buf = Vec::with_capacity(READ_AHEAD);
    while pos < file_len {
        if let Some((item, len)) = read_record(&f, file_len, pos, last, &mut buf)? {
            each(item);
            pos += len;
            continue;
        }
        if is_zero_from(&f, pos, file_len)? {
            break; // the preallocated, never written rest
        }
        // Damage: find the next valid record.
        let mut rest = vec![0u8; (file_len - pos) as usize];
        f.read_exact_at(&mut rest, pos)?;
        let mut next = None;
        for hit in memchr::memmem::find_iter(&rest[1..], record::RECORD_MAGIC) {
            let at = pos + 1 + hit as u64;
            if read_record(&f, file_len, at, last, &mut buf)?.is_some() {
                next = Some(at);
                break;
            }
        }
        match next {
            Some(at) => {
                let bad = &rest[..(at - pos) as usize];
                let dest = quarantine_path(quarantine, path, Some(pos));
                write_quarantine(&dest, bad, quarantine)?;
                tracing::warn!(segment = %path.display(), offset = pos, bytes = bad.len(), quarantine = %dest.display(), "damaged spool record quarantined");
                report.quarantined.push(dest);
                pos = at;
            }
            None => {
                let end = rest.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                if !last {
                    let dest = quarantine_path(quarantine, path, Some(pos));
                    write_quarantine(&dest, &rest[..end], quarantine)?;
                    report.quarantined.push(dest);
                }
                tracing::warn!(segment = %path.display(), offset = pos, bytes = end, "torn spool tail truncated");
                f.set_len(pos)?;
                f.sync_all()?;
                report.cut_at = Some(pos);
                break;
            }
        }
    }
    Ok(report)
}

fn is_zero_from(f: &File, pos: u64, file_len: u64) -> io::Result<bool> {
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
