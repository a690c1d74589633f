//! The spool on disk: reopen gives the same index, bad files are quarantined, torn
//! state records are repaired, concurrent stores all land, bodies are not read at startup.

// Real processes on the real clock: the clock rule of clippy.toml is for product code.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod support;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mxgate_queue::{MessageStore, Queue, RecipientStatus};
use support::*;

#[tokio::test]
async fn store_then_reopen_gives_the_same_index() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    let mut env = envelope("a@sender.test", &["x@one.test", "y@two.test"]);
    env.envid = Some("E1".into());
    env.recipients[1].notify = never();
    let a = store(&q, env).await;
    let b = q
        .store(
            envelope("", &["z@three.test"]),
            Bytes::from(vec![b'x'; 100_000]),
        )
        .await
        .unwrap();
    assert!(a < b, "ids are time-ordered");
    assert!(a
        .0
        .chars()
        .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)));
    let before = q.list();
    assert_eq!(before.len(), 2);
    assert_eq!(before[1].size, 100_000);
    drop(q);

    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    assert_eq!(q.list(), before);
    assert_eq!(q.counts().borrow().messages, 2);
    // New ids after a restart still sort after the old ones.
    let c = store(&q, envelope("a@sender.test", &["x@one.test"])).await;
    assert!(c > b);
}

/// Writes a message file as the version 1 spool did (`msg/ID`: header line, metadata
/// line, body, state lines), for the upgrade tests.
fn write_v1(root: &std::path::Path, id: &str, rcpts: &[&str], body: &[u8], states: &[u8]) {
    let rcpts: Vec<String> = rcpts
        .iter()
        .map(|r| format!("{{\"address\":\"{r}\",\"notify\":null,\"orcpt\":null}}"))
        .collect();
    let meta = format!(
        "{{\"arrival_ms\":1700000000000,\"envelope\":{{\"sender\":\"a@sender.test\",\"body\":\"SevenBit\",\"smtputf8\":false,\"ret\":null,\"envid\":\"E-{id}\",\"recipients\":[{}]}},\"dsn\":false}}",
        rcpts.join(",")
    );
    let mut out = format!("MXGATE-Q1 {} {}\n", meta.len(), body.len()).into_bytes();
    out.extend_from_slice(meta.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body);
    out.extend_from_slice(states);
    std::fs::create_dir_all(root.join("msg")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::write(root.join("msg").join(id), out).unwrap();
}

#[tokio::test]
async fn bad_files_are_quarantined_and_torn_state_repaired() {
    // A version 1 spool as an older mxgate left it (the upgrade path reads it once).
    let dir = tempfile::tempdir().unwrap();
    let good = mxgate_queue::QueueId("0193A0000000001".into());
    let torn = mxgate_queue::QueueId("0193A0000000002".into());
    let truncated = mxgate_queue::QueueId("0193A0000000003".into());
    write_v1(dir.path(), &good.0, &["x@one.test"], MESSAGE, b"");
    write_v1(
        dir.path(),
        &torn.0,
        &["x@one.test", "y@one.test"],
        MESSAGE,
        b"",
    );
    write_v1(dir.path(), &truncated.0, &["x@one.test"], MESSAGE, b"");
    let msg = dir.path().join("msg");
    // A torn append after one complete state record.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(msg.join(&torn.0))
        .unwrap();
    f.write_all(b"{\"i\":0,\"st\":\"delivered\",\"a\":1,\"n\":0}\n{\"i\":1,\"st\":\"bou")
        .unwrap();
    drop(f);
    // Cut into the body.
    let path = msg.join(&truncated.0);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    std::fs::write(msg.join("0000000000000001"), b"\x00\x01garbage").unwrap();
    std::fs::write(msg.join("0000000000000002"), b"MXGATE-Q7 2 0\n{}\n").unwrap();
    std::fs::write(msg.join("not-an-id"), b"hello").unwrap();
    std::fs::write(
        dir.path().join("tmp").join("0000000000000003.tmp"),
        b"half a mess",
    )
    .unwrap();

    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    let ids: Vec<_> = q.list().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![good.clone(), torn.clone()]);
    let t = q.show(&torn).unwrap();
    assert_eq!(t.recipients[0].state, RecipientStatus::Delivered);
    assert_eq!(t.recipients[1].state, RecipientStatus::Pending);
    let mut quarantined: Vec<String> = std::fs::read_dir(dir.path().join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    quarantined.sort();
    let mut want = vec![
        "0000000000000001".to_string(),
        "0000000000000002".into(),
        "not-an-id".into(),
        truncated.0.clone(),
    ];
    want.sort();
    assert_eq!(quarantined, want);
    assert!(
        std::fs::read_dir(dir.path().join("tmp")).map_or(true, |d| d.count() == 0),
        "temp files removed"
    );
    assert!(
        !msg.exists(),
        "the version 1 directory is gone once imported"
    );
    drop(q);
    // The imported messages live in the log now: a second reopen still sees them.
    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    assert_eq!(q.list().len(), 2);
    assert_eq!(
        q.show(&torn).unwrap().recipients[0].state,
        RecipientStatus::Delivered
    );
}

/// The segment files of a spool, oldest first.
fn segments(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(root.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Offsets of the records in a segment (walking the headers; see `log/record.rs`).
fn record_offsets(seg: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 16;
    while pos + 32 <= seg.len() && &seg[pos..pos + 4] == b"MXR2" {
        let meta = u32::from_le_bytes(seg[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let body = u64::from_le_bytes(seg[pos + 12..pos + 20].try_into().unwrap()) as usize;
        let len = 32 + meta + body;
        out.push((pos, len));
        pos += len;
    }
    out
}

#[tokio::test]
async fn startup_does_not_read_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    let id = store(&q, envelope("a@sender.test", &["x@one.test"])).await;
    drop(q);
    // A second start: the first segment is now an old one (only the segment a crashed
    // run was writing gets its bodies checked).
    drop(
        Queue::open(settings(dir.path(), &[60], 86400))
            .await
            .unwrap(),
    );
    // Rewrite the record header to promise a 64 GiB body and make the segment sparse
    // that big: reading it at startup would take minutes, skipping it takes nothing.
    let path = segments(dir.path())[0].clone();
    let data = std::fs::read(&path).unwrap();
    let (pos, _) = record_offsets(&data)[0];
    let meta_len = u32::from_le_bytes(data[pos + 8..pos + 12].try_into().unwrap()) as usize;
    let big: u64 = 64 << 30;
    let mut out = data[..pos + 32 + meta_len].to_vec();
    out[pos + 12..pos + 20].copy_from_slice(&big.to_le_bytes());
    let mut c = crc32fast::Hasher::new();
    c.update(&out[pos..pos + 24]);
    c.update(&out[pos + 32..pos + 32 + meta_len]);
    out[pos + 24..pos + 28].copy_from_slice(&c.finalize().to_le_bytes());
    let head_len = out.len() as u64;
    std::fs::write(&path, &out).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(head_len + big)
        .unwrap();
    let started = Instant::now();
    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    assert_eq!(q.show(&id).unwrap().size, big);
    assert!(started.elapsed().as_secs() < 5);
}

async fn concurrent_stores(n: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let q = Arc::clone(&q);
        tasks.spawn(async move {
            q.store(
                envelope("a@sender.test", &[&format!("r{i}@d.test")]),
                Bytes::from_static(MESSAGE),
            )
            .await
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ids.push(r.unwrap().unwrap());
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(q);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "ids unique");
    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    let listed: Vec<_> = q.list().into_iter().map(|s| s.id).collect();
    assert_eq!(
        listed, ids,
        "every acknowledged message is there after reopen"
    );
    rate
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_stores_survive_reopen() {
    let rate = concurrent_stores(200).await;
    println!("stores/s with fsync (200 concurrent, debug build): {rate:.0}");
}

/// `cargo test -p mxgate-queue --test spool -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement for the notes"]
async fn store_throughput() {
    let rate = concurrent_stores(3000).await;
    println!("stores/s with fsync (3000 concurrent, group-committed directory fsync): {rate:.0}");
}

/// Re-runs this test in a child process whose shell set `umask 022` (the common
/// default, under which plain `create` gives 0644 files and 0755 directories), then
/// checks every spool directory and file there.
#[tokio::test]
async fn spool_is_private_under_umask_022() {
    use std::os::unix::fs::PermissionsExt;
    if std::env::var_os("MXGATE_UMASK_CHILD").is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("sh")
            .args(["-c", "umask 022 && exec \"$0\" \"$@\""])
            .arg(exe)
            .args(["spool_is_private_under_umask_022", "--exact"])
            .env("MXGATE_UMASK_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
        return;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(status.lines().any(|l| l == "Umask:\t0022"), "{status}");
    let root = tempfile::tempdir().unwrap();
    let spool = root.path().join("queue");
    let q = Queue::open(settings(&spool, &[60], 86400)).await.unwrap();
    store(&q, envelope("a@sender.test", &["x@one.test"])).await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut dirs = vec![spool.clone()];
    let mut files = 0;
    while let Some(d) = dirs.pop() {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                files += 1;
            }
        }
    }
    assert!(files >= 1, "the stored message is a file in the spool");
}
