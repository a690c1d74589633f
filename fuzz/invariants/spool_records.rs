//! The spool's recovery reader (`mxgate_queue::scan_segment`, the record loop that
//! `Queue::open` runs on every segment file; layout in `log/record.rs`, ARCHITECTURE.md).
//!
//! A segment is built from N valid records (message, state, done, deleted, in turn)
//! followed by the fuzzer's bytes, and read both as the last segment (body checksums
//! verified) and as an older one. Then:
//!
//! - reading never fails (it never reads outside the bytes) and never panics;
//! - the N valid records that precede the damage all come back, in order, with their
//!   offsets and lengths: damage loses nothing before it;
//! - the segment is accounted for without gaps or overlaps: records and skipped
//!   regions follow each other from the magic on, each skipped region ends where a
//!   valid record starts, and what follows the last one is the end of the bytes, the
//!   zeros of the unwritten rest, or a torn tail at `cut_at` (never all zeros);
//! - each record found, alone in a segment, is read back as exactly itself, and the
//!   records found, written one after the other into a fresh segment, read back as the
//!   same records with no damage (recovering a recovered segment changes nothing).
//!
//! Input: the first byte: bits 0–2 N, bit 3 "structured tail": the target gives the fuzzer's bytes a record magic and
//! correct checksums over the lengths the fuzzer chose, so that header fields
//! (lengths, kind) are explored past the checksum. The rest is the tail.
//!
//! Shared by the fuzz target `spool_records` and the corpus replay in mxgate-queue's
//! tests.

use mxgate_queue::{encode_record, scan_segment, RecordKind, ScannedRecord, SegmentScan};

const SEGMENT_MAGIC: &[u8] = b"MXGATE-SEGMENT2\n";
const HEADER_LEN: usize = 32;

fn valid_record(i: usize) -> (RecordKind, String, Vec<u8>) {
    let id = format!("q{i}");
    let (kind, meta, body) = match i % 4 {
        0 => (
            RecordKind::Message,
            format!(
                r#"{{"id":"{id}","at":{i},"env":{{"from":"s{i}@sender.test","body":"8bitmime","rcpt":[{{"to":"r@one.test","notify":"fd"}}]}}}}"#
            ),
            format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(i * 7)).into_bytes(),
        ),
        1 => (
            RecordKind::State,
            format!(
                r#"{{"id":"q{}","st":[{{"i":0,"st":"pending","a":{i},"n":5}}]}}"#,
                i - 1
            ),
            Vec::new(),
        ),
        2 => (RecordKind::Done, format!(r#"{{"id":"{id}"}}"#), Vec::new()),
        _ => (
            RecordKind::Deleted,
            format!(r#"{{"id":"{id}"}}"#),
            Vec::new(),
        ),
    };
    let id = if kind == RecordKind::State {
        format!("q{}", i - 1)
    } else {
        id
    };
    (kind, id, encode_record(kind, meta.as_bytes(), &body))
}

/// Gives `tail` the shape of a record: magic, metadata length within the bytes, and
/// correct checksums (CRC-32, as `log/record.rs` computes them).
fn structure(tail: &mut [u8]) {
    if tail.len() < HEADER_LEN {
        return;
    }
    tail[0..4].copy_from_slice(b"MXR2");
    let room = tail.len() - HEADER_LEN;
    let mut meta_len = u32::from_le_bytes([tail[8], tail[9], tail[10], tail[11]]) as usize;
    if meta_len > room {
        meta_len %= room + 1;
    }
    tail[8..12].copy_from_slice(&(meta_len as u32).to_le_bytes());
    let mut b8 = [0u8; 8];
    b8.copy_from_slice(&tail[12..20]);
    let body_len = u64::from_le_bytes(b8);
    let body_start = HEADER_LEN + meta_len;
    if let Some(body) = usize::try_from(body_len)
        .ok()
        .and_then(|n| tail.get(body_start..body_start.checked_add(n)?))
    {
        let crc = crc32fast::hash(body);
        tail[20..24].copy_from_slice(&crc.to_le_bytes());
    }
    let mut c = crc32fast::Hasher::new();
    c.update(&tail[..24]);
    c.update(&tail[HEADER_LEN..body_start]);
    let crc = c.finalize();
    tail[24..28].copy_from_slice(&crc.to_le_bytes());
}

fn scan(seg: &[u8], last: bool) -> SegmentScan {
    let scan = scan_segment(seg, last).expect("the reader read outside the segment");
    assert!(!scan.not_a_segment || !seg.starts_with(SEGMENT_MAGIC));
    scan
}

fn check_accounted(seg: &[u8], scan: &SegmentScan) {
    enum Part {
        Record,
        Skipped,
    }
    let mut parts: Vec<(u64, u64, Part)> = scan
        .records
        .iter()
        .map(|r| (r.offset, r.len, Part::Record))
        .chain(scan.skipped.iter().map(|&(o, l)| (o, l, Part::Skipped)))
        .collect();
    parts.sort_by_key(|p| p.0);
    let mut at = SEGMENT_MAGIC.len() as u64;
    let mut after_skip = false;
    for (offset, len, part) in &parts {
        assert_eq!(*offset, at, "gap or overlap at {at}");
        assert!(*len > 0, "empty part at {at}");
        match part {
            Part::Record => after_skip = false,
            Part::Skipped => {
                assert!(!after_skip, "two skipped regions in a row at {at}");
                after_skip = true;
            }
        }
        at += len;
    }
    assert!(!after_skip, "a skipped region not followed by a record");
    assert!(at <= seg.len() as u64);
    let rest = &seg[at as usize..];
    match scan.cut_at {
        Some(cut) => {
            assert_eq!(cut, at, "cut elsewhere than after the last part");
            assert!(rest.iter().any(|&b| b != 0), "cut a tail of zeros");
        }
        None => assert!(
            rest.iter().all(|&b| b == 0),
            "bytes after the last part neither cut nor zero"
        ),
    }
}

fn check_records_stand_alone(seg: &[u8], scan: &SegmentScan, last: bool) {
    let mut fresh = SEGMENT_MAGIC.to_vec();
    let mut want = Vec::new();
    for r in &scan.records {
        let bytes = &seg[r.offset as usize..(r.offset + r.len) as usize];
        let mut alone = SEGMENT_MAGIC.to_vec();
        alone.extend_from_slice(bytes);
        let one = ScannedRecord {
            offset: SEGMENT_MAGIC.len() as u64,
            ..r.clone()
        };
        assert_eq!(
            scan_segment(&alone, last).ok(),
            Some(SegmentScan {
                records: vec![one],
                ..SegmentScan::default()
            }),
            "record at {} alone",
            r.offset
        );
        want.push(ScannedRecord {
            offset: fresh.len() as u64,
            ..r.clone()
        });
        fresh.extend_from_slice(bytes);
    }
    assert_eq!(
        scan_segment(&fresh, last).ok(),
        Some(SegmentScan {
            records: want,
            ..SegmentScan::default()
        }),
        "the recovered records, rewritten, read differently"
    );
}

pub fn check(data: &[u8]) {
    let Some((&head, tail)) = data.split_first() else {
        return;
    };
    let n = usize::from(head & 7);
    let mut seg = SEGMENT_MAGIC.to_vec();
    let mut valid = Vec::new();
    for i in 0..n {
        let (kind, id, bytes) = valid_record(i);
        valid.push(ScannedRecord {
            kind,
            id,
            offset: seg.len() as u64,
            len: bytes.len() as u64,
        });
        seg.extend_from_slice(&bytes);
    }
    let tail_start = seg.len();
    seg.extend_from_slice(tail);
    if head & 8 != 0 {
        structure(&mut seg[tail_start..]);
    }

    for last in [true, false] {
        let scan = scan(&seg, last);
        assert!(
            scan.records.len() >= n && scan.records[..n] == valid[..],
            "lost a valid record before the damage (last: {last}): {:?}",
            scan
        );
        check_accounted(&seg, &scan);
        check_records_stand_alone(&seg, &scan, last);
    }
    // The tail alone as a whole file: never panics, never reads outside.
    let _ = scan(tail, false);
}
