//! A failing `fdatasync` (`EIO`): after it the page cache's state is unknown, so no
//! record it covered is acknowledged, the segment is never synced or written again, the
//! next commit starts a new segment, and a message answered with an error does not come
//! back after a restart. The fault comes from a test hook in the writer (feature
//! `test-util`) that reports `EIO` after a real `fdatasync`, so the refused record *is*
//! on disk: the harder case for recovery.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use mxgate_queue::{MessageStore, Outcome, Queue, QueueId, RecipientStatus, StoreError};
use support::*;

fn segments(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(root.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Kinds of the records of a segment, in order (layout in `log/record.rs`).
fn kinds(seg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 16;
    while pos + 32 <= seg.len() && &seg[pos..pos + 4] == b"MXR2" {
        let meta = u32::from_le_bytes(seg[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let body = u64::from_le_bytes(seg[pos + 12..pos + 20].try_into().unwrap()) as usize;
        out.push(seg[pos + 4]);
        pos += 32 + meta + body;
    }
    out
}

fn ids(q: &Queue) -> Vec<QueueId> {
    q.list().into_iter().map(|m| m.id).collect()
}

const MESSAGE_RECORD: u8 = 1;
const DELETED_RECORD: u8 = 4;

#[tokio::test]
async fn failed_fdatasync_refuses_the_store_and_abandons_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    let a = store(&q, envelope("a@sender.test", &["r@one.test"])).await;
    assert_eq!(segments(dir.path()).len(), 1);

    q.fail_next_syncs(1);
    let err = q
        .store(
            envelope("b@sender.test", &["r@one.test"]),
            Bytes::from_static(MESSAGE),
        )
        .await
        .unwrap_err();
    match &err {
        // The listener answers `451 4.3.0` to this (never `250`).
        StoreError::Io(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert_eq!(
        ids(&q),
        vec![a.clone()],
        "the refused message is not queued"
    );

    // The failed segment holds both message records (the hook really synced), and it
    // is never written again: the next commits go to a new segment.
    let first = segments(dir.path())[0].clone();
    let before = std::fs::read(&first).unwrap();
    assert_eq!(kinds(&before), vec![MESSAGE_RECORD, MESSAGE_RECORD]);
    let c = store(&q, envelope("c@sender.test", &["r@one.test"])).await;
    let d = store(&q, envelope("d@sender.test", &["r@two.test"])).await;
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 2, "a new segment after the failed commit");
    assert_eq!(
        std::fs::read(&first).unwrap(),
        before,
        "abandoned segment untouched"
    );
    // The new segment starts with the refused message's deleted record.
    assert_eq!(
        kinds(&std::fs::read(&segs[1]).unwrap()),
        vec![DELETED_RECORD, MESSAGE_RECORD, MESSAGE_RECORD]
    );
    drop(q);

    // After a restart the refused message stays refused (its sender retries it), and
    // every acknowledged one is there.
    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    assert_eq!(ids(&q), vec![a, c, d]);
}

#[tokio::test]
async fn failed_fdatasync_of_a_deferral_loses_no_message() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[1], 86400))
        .await
        .unwrap();
    let (t, mut jobs) =
        Scripted::new(|_, _| Outcome::Deferred(failure("4.4.1", "connection refused", false)));
    let m = store(&q, envelope("a@sender.test", &["r@one.test"])).await;
    // The deferral's state record is the next commit, and it fails.
    q.fail_next_syncs(1);
    let (stop, run) = start(&q, &t);
    jobs.recv().await.unwrap();
    recorded(&q, 1).await;
    stop.cancel();
    run.await.unwrap();
    let shown = q.show(&m).unwrap();
    assert_eq!(shown.recipients[0].state, RecipientStatus::Pending);
    assert_eq!(
        shown.recipients[0].attempts, 1,
        "the outcome is kept in memory"
    );
    drop(q);

    // After a restart the message is still queued (whether or not the deferral's
    // record made it), and is delivered.
    let q = Queue::open(settings(dir.path(), &[1], 86400))
        .await
        .unwrap();
    assert_eq!(ids(&q), vec![m.clone()]);
    let (t, _jobs) = Scripted::new(|_, _| delivered());
    let mut events = q.subscribe();
    let (stop, run) = start(&q, &t);
    q.flush(None).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(30), final_event(&mut events, &m))
        .await
        .unwrap();
    assert!(!ev.deleted);
    assert_eq!(ev.summary.recipients[0].state, RecipientStatus::Delivered);
    stop.cancel();
    run.await.unwrap();
}
