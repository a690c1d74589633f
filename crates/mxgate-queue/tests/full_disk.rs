//! A full disk under the log-structured spool (a small tmpfs; needs root, like the
//! end-to-end full-disk test): a DSN that cannot be queued is retried, and the bounce is
//! not on disk before its DSN is; deferrals and compaction on a full disk lose nothing;
//! everything recovers without operator action once space returns.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mxgate_queue::{MessageStore, Outcome, Queue, RecipientStatus, StoreError, Tuning};
use support::*;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs (needs root)");
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_on_a_full_disk_is_retried_and_the_bounce_recorded_only_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("q");
    let _tmpfs = Tmpfs::mount(&spool, "1m");
    let tuning = Tuning {
        segment_bytes: 16 * 1024,
        prealloc_bytes: 4 * 1024,
        reserve_bytes: 64 * 1024,
    };
    let s = || {
        let mut s = settings(&spool, &[1], 86400);
        s.queue.retry_intervals = vec![Duration::from_millis(100)];
        s
    };
    let up = Arc::new(AtomicBool::new(false));
    let script = {
        let up = Arc::clone(&up);
        move |job: &mxgate_queue::DeliveryJob, i: usize| {
            if job.envelope.recipients[i].address.starts_with("gone") {
                Outcome::Failed(failure("5.1.1", "550 5.1.1 no such user", true))
            } else if up.load(Ordering::SeqCst) {
                delivered()
            } else {
                Outcome::Deferred(failure("4.4.1", "connection refused", false))
            }
        }
    };
    let q = Queue::open_tuned(s(), tuning).await.unwrap();
    let gone1 = store(&q, envelope("a@sender.test", &["gone1@dest.test"])).await;
    let gone2 = store(&q, envelope("b@sender.test", &["gone2@dest.test"])).await;
    let mut later = Vec::new();
    for n in 0..20 {
        later.push(
            store(
                &q,
                envelope("c@sender.test", &[&format!("later{n}@dest.test")]),
            )
            .await,
        );
    }
    let filler = spool.join("filler");
    fill(&filler);
    let refused = q
        .store(
            envelope("d@sender.test", &["x@dest.test"]),
            bytes::Bytes::from_static(MESSAGE),
        )
        .await
        .unwrap_err();
    assert!(matches!(refused, StoreError::NoSpace(_)), "{refused:?}");

    // Both bounce at once; their DSNs cannot be queued. Deferrals (and the segment
    // changes and compaction they cause) go on meanwhile on the full disk.
    let (t, _jobs) = Scripted::new(script.clone());
    let (stop, run) = start(&q, &t);
    eprintln!("phase: full disk, first run");
    tokio::time::timeout(Duration::from_secs(20), recorded(&q, 2 + 20 * 3))
        .await
        .expect("attempts recorded on a full disk");
    for id in [&gone1, &gone2] {
        assert!(q.show(id).is_some(), "{id} stays until its DSN is queued");
    }
    stop.cancel();
    run.await.unwrap();
    drop(q);

    eprintln!("phase: restart");
    // A restart: the bounces were never recorded, so the recipients are pending again.
    let q = Queue::open_tuned(s(), tuning).await.unwrap();
    for id in [&gone1, &gone2] {
        let m = q.show(id).unwrap();
        assert_eq!(m.recipients[0].state, RecipientStatus::Pending, "{id}");
    }
    for id in &later {
        assert!(q.show(id).is_some(), "deferred {id} kept on a full disk");
    }
    let (t, mut jobs) = Scripted::new(script);
    let mut events = q.subscribe();
    let (stop, run) = start(&q, &t);
    // Both bounced again and parked (in memory only) while the disk is still full.
    let mut counts = q.counts();
    tokio::time::timeout(Duration::from_secs(20), async {
        while [&gone1, &gone2]
            .iter()
            .any(|id| q.show(id).unwrap().recipients[0].state != RecipientStatus::Bounced)
        {
            counts.changed().await.unwrap();
        }
    })
    .await
    .expect("bounced again, DSNs parked");
    eprintln!("phase: space returns");
    // Space returns and the destination comes back: no operator action needed.
    std::fs::remove_file(&filler).unwrap();
    up.store(true, Ordering::SeqCst);
    let mut left = vec![gone1.clone(), gone2.clone()];
    tokio::time::timeout(Duration::from_secs(20), async {
        while !left.is_empty() {
            let ev = events.recv().await.unwrap();
            if let Some(p) = left.iter().position(|id| *id == ev.summary.id) {
                assert_eq!(ev.summary.recipients[0].state, RecipientStatus::Bounced);
                left.remove(p);
            }
        }
    })
    .await
    .expect("bounced messages leave once their DSNs are queued");
    tokio::time::timeout(Duration::from_secs(30), q.wait_empty())
        .await
        .unwrap();
    stop.cancel();
    run.await.unwrap();
    let mut dsns = Vec::new();
    let mut delivered_later = 0;
    while let Ok((job, _)) = jobs.try_recv() {
        if job.envelope.sender.is_empty() {
            dsns.push(job.envelope.recipients[0].address.clone());
        } else if job.envelope.recipients[0].address.starts_with("later") {
            delivered_later += 1;
        }
    }
    dsns.sort();
    assert_eq!(dsns, ["a@sender.test", "b@sender.test"], "one DSN each");
    assert!(delivered_later >= 20);
    drop(q);
    let q = Queue::open_tuned(s(), tuning).await.unwrap();
    assert!(q.list().is_empty(), "nothing comes back: {:?}", q.list());
}

fn full_disk_tuning() -> Tuning {
    Tuning {
        segment_bytes: 16 * 1024,
        prealloc_bytes: 4 * 1024,
        reserve_bytes: 64 * 1024,
    }
}

/// Waits (with a deadline) until `cond` holds for the queue, re-checking on every
/// change of its counts.
async fn until(q: &Queue, what: &str, cond: impl Fn(&Queue) -> bool) {
    let mut counts = q.counts();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !cond(q) {
            let _ = tokio::time::timeout(Duration::from_millis(100), counts.changed()).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting: {what}"));
}

/// How often `Final-Recipient: rfc822; ADDRESS` appears in the DSNs given so far.
fn reported(dsns: &[String], address: &str) -> usize {
    let line = format!("Final-Recipient: rfc822; {address}\r\n");
    dsns.iter().map(|d| d.matches(&line).count()).sum()
}

/// Collects the DSNs (sender `<>`) among the jobs given so far.
fn take_dsns(
    jobs: &mut tokio::sync::mpsc::UnboundedReceiver<(
        mxgate_queue::DeliveryJob,
        tokio::time::Instant,
    )>,
    into: &mut Vec<String>,
) {
    while let Ok((job, _)) = jobs.try_recv() {
        if job.envelope.sender.is_empty() {
            into.push(String::from_utf8_lossy(&job.message).into_owned());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_bounce_while_a_dsn_is_parked_takes_effect_without_a_busy_loop() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("q");
    let _tmpfs = Tmpfs::mount(&spool, "1m");
    let s = || {
        let mut s = settings(&spool, &[1], 86400);
        s.queue.retry_intervals = vec![Duration::from_secs(1)];
        s
    };
    let q = Queue::open_tuned(s(), full_disk_tuning()).await.unwrap();
    let id = store(
        &q,
        envelope("a@sender.test", &["gone@dest.test", "later@other.test"]),
    )
    .await;
    let filler = spool.join("filler");
    fill(&filler);
    let (t, mut jobs) = Scripted::new(|job, i| {
        if job.envelope.recipients[i].address.starts_with("gone") {
            Outcome::Failed(failure("5.1.1", "550 5.1.1 no such user", true))
        } else {
            Outcome::Deferred(failure("4.4.1", "connection refused", false))
        }
    });
    let mut events = q.subscribe();
    let (stop, run) = start(&q, &t);
    // gone@ bounced, its DSN parked (disk full); later@ deferred.
    until(&q, "bounce parked, deferral made", |q| {
        let m = q.show(&id).unwrap();
        m.recipients[0].state == RecipientStatus::Bounced && m.recipients[1].attempts >= 1
    })
    .await;

    // The operator bounces the message (and flushes it, for good measure).
    assert_eq!(q.bounce(&id).await.unwrap(), 1, "later@ was pending");
    let _ = q.flush(Some(&id));
    until(&q, "the operator's bounce in effect", |q| {
        q.show(&id).unwrap().recipients[1].state == RecipientStatus::Bounced
    })
    .await;
    // The disk is still full: the DSN is retried now and then, nothing else happens.
    // (A window to count wake-ups in, not a synchronisation.)
    let attempts_at_bounce = q.show(&id).unwrap().recipients[1].attempts;
    let before = q.scheduler_wakeups();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let woke = q.scheduler_wakeups() - before;
    eprintln!("scheduler wake-ups in 3 s after the bounce: {woke}");
    assert!(woke <= 30, "the scheduler woke {woke} times in 3 s");
    let attempts = q.show(&id).unwrap().recipients[1].attempts;
    assert_eq!(
        attempts, attempts_at_bounce,
        "no attempts once the bounce is in effect"
    );

    // Space returns: one DSN reports both, and the message leaves.
    std::fs::remove_file(&filler).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(20), final_event(&mut events, &id))
        .await
        .expect("the message leaves once its DSN is queued");
    let states: Vec<_> = ev.summary.recipients.iter().map(|r| r.state).collect();
    assert_eq!(states, [RecipientStatus::Bounced, RecipientStatus::Bounced]);
    tokio::time::timeout(Duration::from_secs(20), q.wait_empty())
        .await
        .expect("the DSN is delivered");
    stop.cancel();
    run.await.unwrap();
    let mut dsns = Vec::new();
    take_dsns(&mut jobs, &mut dsns);
    assert_eq!(reported(&dsns, "gone@dest.test"), 1, "{dsns:?}");
    assert_eq!(reported(&dsns, "later@other.test"), 1, "{dsns:?}");
    assert!(
        dsns.iter().any(|d| d.contains("bounced by operator")),
        "{dsns:?}"
    );
    drop(q);
    let q = Queue::open_tuned(s(), full_disk_tuning()).await.unwrap();
    assert!(q.list().is_empty(), "nothing comes back: {:?}", q.list());
}

/// Delivers `ok@` only once a permit is added; bounces `gone@`; delivers DSNs.
struct Gated {
    gate: tokio::sync::Semaphore,
    jobs: tokio::sync::mpsc::UnboundedSender<(mxgate_queue::DeliveryJob, tokio::time::Instant)>,
}

impl mxgate_queue::Transport for Gated {
    async fn deliver(&self, job: mxgate_queue::DeliveryJob) -> Vec<mxgate_queue::RecipientOutcome> {
        let dsn = job.envelope.sender.is_empty();
        if !dsn && job.domain == "other.test" {
            let _permit = self.gate.acquire().await.unwrap();
        }
        let outcomes = job
            .recipients
            .iter()
            .map(|&index| mxgate_queue::RecipientOutcome {
                index,
                outcome: if !dsn && job.envelope.recipients[index].address.starts_with("gone") {
                    Outcome::Failed(failure("5.1.1", "550 5.1.1 no such user", true))
                } else {
                    delivered()
                },
            })
            .collect();
        let _ = self.jobs.send((job, tokio::time::Instant::now()));
        outcomes
    }
}

/// The other job of the message ends while its bounce's DSN is being stored or
/// already parked (both orders happen): the message must not leave before the DSN is
/// queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_finished_while_its_dsn_is_parked_keeps_the_dsn() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("q");
    let _tmpfs = Tmpfs::mount(&spool, "1m");
    let s = || {
        let mut s = settings(&spool, &[1], 86400);
        s.queue.retry_intervals = vec![Duration::from_secs(1)];
        s
    };
    let q = Queue::open_tuned(s(), full_disk_tuning()).await.unwrap();
    let id = store(
        &q,
        envelope("a@sender.test", &["gone@dest.test", "ok@other.test"]),
    )
    .await;
    let filler = spool.join("filler");
    fill(&filler);
    let (tx, mut jobs) = tokio::sync::mpsc::unbounded_channel();
    let t = Arc::new(Gated {
        gate: tokio::sync::Semaphore::new(0),
        jobs: tx,
    });
    let mut events = q.subscribe();
    let (stop, run) = start(&q, &t);
    until(&q, "bounce parked", |q| {
        q.show(&id).unwrap().recipients[0].state == RecipientStatus::Bounced
    })
    .await;
    // The other job ends now, delivering the last pending recipient.
    t.gate.add_permits(1);
    until(&q, "ok@ delivered", |q| {
        q.show(&id)
            .is_none_or(|m| m.recipients[1].state == RecipientStatus::Delivered)
    })
    .await;
    assert!(
        q.show(&id).is_some(),
        "the message stays while the DSN of its bounce is not queued"
    );
    std::fs::remove_file(&filler).unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(20), final_event(&mut events, &id))
        .await
        .expect("the message leaves once its DSN is queued");
    let states: Vec<_> = ev.summary.recipients.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [RecipientStatus::Bounced, RecipientStatus::Delivered]
    );
    tokio::time::timeout(Duration::from_secs(20), q.wait_empty())
        .await
        .expect("the DSN is delivered");
    stop.cancel();
    run.await.unwrap();
    let mut dsns = Vec::new();
    take_dsns(&mut jobs, &mut dsns);
    assert_eq!(reported(&dsns, "gone@dest.test"), 1, "{dsns:?}");
    assert_eq!(reported(&dsns, "ok@other.test"), 0, "{dsns:?}");
    drop(q);
    let q = Queue::open_tuned(s(), full_disk_tuning()).await.unwrap();
    assert!(q.list().is_empty(), "nothing comes back: {:?}", q.list());
}
