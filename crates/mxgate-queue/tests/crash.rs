//! `kill -9` at random points, in a loop, while messages are stored, delivered (the
//! destination up, down, or flapping) and compacted (tiny segments, so compaction runs
//! all the time): every acknowledged message is delivered in the end.
//!
//! The test re-runs its own binary as the queue process (`crash_child`), so that it can
//! be killed for real. The child records each `250` (store returned) in `acked.log` and
//! each delivery in `delivered.log`, both appended and fsynced, like a client and a
//! destination that keep their own records.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mxgate_queue::{
    DeliveryJob, MessageStore, Outcome, Queue, RecipientOutcome, Transport, Tuning,
};
use rand::Rng;
use support::*;

const CHILD: &str = "MXGATE_CRASH_CHILD";

fn append(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(line.as_bytes()).unwrap();
    f.sync_data().unwrap();
}

/// The destination: records every delivered tag; down with probability `down`.
struct Destination {
    log: PathBuf,
    down: f64,
}

impl Transport for Destination {
    async fn deliver(&self, job: DeliveryJob) -> Vec<RecipientOutcome> {
        let up = rand::rng().random::<f64>() >= self.down;
        if up {
            let text = String::from_utf8_lossy(&job.message);
            if let Some(tag) = text
                .strip_prefix("X-Tag: ")
                .and_then(|t| t.split("\r\n").next())
            {
                append(&self.log, &format!("{tag}-{}\n", job.domain));
            }
        }
        job.recipients
            .iter()
            .map(|&index| RecipientOutcome {
                index,
                outcome: if up {
                    delivered()
                } else {
                    Outcome::Deferred(failure("4.4.1", "connection refused", false))
                },
            })
            .collect()
    }
}

fn tuning() -> Tuning {
    Tuning {
        segment_bytes: 16 * 1024,
        prealloc_bytes: 4 * 1024,
        reserve_bytes: 0,
    }
}

/// The queue process: `MXGATE_CRASH_CHILD=dir:round:down:ingest`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(arg) = std::env::var(CHILD) else {
        return; // only a child does something
    };
    let mut parts = arg.split(':');
    let dir = PathBuf::from(parts.next().unwrap());
    let round: u32 = parts.next().unwrap().parse().unwrap();
    let down: f64 = parts.next().unwrap().parse().unwrap();
    let ingest = parts.next().unwrap() == "1";
    let mut s = settings(&dir.join("queue"), &[1], 86400);
    s.queue.retry_intervals = vec![Duration::from_millis(30)];
    let q = Queue::open_tuned(s, tuning()).await.unwrap();
    let t = Arc::new(Destination {
        log: dir.join("delivered.log"),
        down,
    });
    let (_stop, run) = start(&q, &t);
    if !ingest {
        if tokio::time::timeout(Duration::from_secs(60), q.wait_empty())
            .await
            .is_ok()
        {
            println!("CHILD-EMPTY");
        }
        for m in q.list() {
            let st: Vec<_> = m
                .recipients
                .iter()
                .map(|r| (r.state, r.attempts, r.next_attempt))
                .collect();
            println!("left: {} {st:?}", m.id);
        }
        drop(run);
        return;
    }
    let mut tasks = Vec::new();
    for w in 0..4 {
        let q = Arc::clone(&q);
        let acked = dir.join("acked.log");
        tasks.push(tokio::spawn(async move {
            for n in 0u32.. {
                let tag = format!("r{round}-w{w}-{n}");
                let body = format!("X-Tag: {tag}\r\nSubject: x\r\n\r\n{}\r\n", "y".repeat(600));
                // Every third message has a second domain: two jobs of one message
                // record their states concurrently.
                let rcpts: &[&str] = if n % 3 == 0 {
                    &["r@dest.test", "s@other.test"]
                } else {
                    &["r@dest.test"]
                };
                let env = envelope("a@sender.test", rcpts);
                if q.store(env, Bytes::from(body)).await.is_ok() {
                    let mut line = String::new();
                    for r in rcpts {
                        let domain = r.split('@').nth(1).unwrap_or_default();
                        line.push_str(&format!("{tag}-{domain}\n"));
                    }
                    append(&acked, &line);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        // A line torn by the kill is not a record of either side.
        .filter(|l| l.matches('-').count() == 3 && l.ends_with(".test"))
        .map(String::from)
        .collect()
}

fn child(dir: &Path, round: u32, down: f64, ingest: bool) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture"])
        .env(
            CHILD,
            format!("{}:{round}:{down}:{}", dir.display(), u8::from(ingest)),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_at_random_points_loses_no_acknowledged_message() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = &tmp;
    let mut rng = rand::rng();
    for round in 0..12 {
        // Destination down, flapping, or up.
        let down = [1.0, 0.5, 0.0][round as usize % 3];
        let mut c = child(dir.path(), round, down, true);
        std::thread::sleep(Duration::from_millis(rng.random_range(150..450)));
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }
    // Last start: the destination is up and nothing new comes in.
    let c = child(dir.path(), 99, 0.0, false);
    let out = c.wait_with_output().unwrap();
    if !String::from_utf8_lossy(&out.stdout).contains("CHILD-EMPTY") {
        let kept = tmp.keep();
        panic!(
            "the queue did not drain (spool kept in {}): {}",
            kept.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let acked = lines(&dir.path().join("acked.log"));
    let delivered = lines(&dir.path().join("delivered.log"));
    let mut times: HashMap<&str, usize> = HashMap::new();
    for d in &delivered {
        *times.entry(d.as_str()).or_default() += 1;
    }
    assert!(acked.len() > 100, "the loop stored mail: {}", acked.len());
    let lost: Vec<_> = acked
        .iter()
        .filter(|a| !times.contains_key(a.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged and lost: {lost:?}");
    // Duplicates: a delivery whose outcome (or lazy completion) had not reached the
    // disk when the process was killed is made again — SMTP's at-least-once window.
    let duplicates: usize = times.values().map(|n| n - 1).sum();
    println!(
        "{} acknowledged, {} deliveries, {} duplicates",
        acked.len(),
        delivered.len(),
        duplicates
    );
    assert!(
        duplicates <= 12 * 64,
        "duplicates only around each kill: {duplicates}"
    );
    let segs = std::fs::read_dir(dir.path().join("queue").join("log"))
        .unwrap()
        .count();
    assert!(segs <= 2, "an empty queue keeps no old segments: {segs}");
}
