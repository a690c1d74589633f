//! Scheduler behaviour against a scripted transport: per-recipient outcomes, the retry
//! schedule and expiry on paused time, DSNs, flush, operator bounce/delete.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use mxgate_queue::{BounceReason, Outcome, Queue, RecipientStatus};
use support::*;

#[tokio::test]
async fn per_recipient_outcomes_and_state_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[3600], 86400))
        .await
        .unwrap();
    let (t, mut jobs) = Scripted::new(|job, i| match job.envelope.recipients[i].address.as_str() {
        "ok@dest.test" => delivered(),
        "gone@dest.test" => Outcome::Failed(failure("5.1.1", "550 5.1.1 no such user", true)),
        _ => Outcome::Deferred(failure("4.4.1", "connection refused", false)),
    });
    let (stop, run) = start(&q, &t);
    let id = store(
        &q,
        envelope(
            "a@sender.test",
            &["ok@dest.test", "gone@dest.test", "later@DEST.test"],
        ),
    )
    .await;
    let (job, _) = jobs.recv().await.unwrap();
    assert_eq!(job.id, id);
    assert_eq!(job.domain, "dest.test");
    assert_eq!(job.recipients, vec![0, 1, 2], "one job for one domain");
    assert_eq!(job.attempt, 1);
    assert_eq!(&job.message[..], MESSAGE);
    // The DSN for gone@ goes to the sender's domain.
    let (dsn, _) = jobs.recv().await.unwrap();
    assert_eq!(dsn.envelope.sender, "");
    assert_eq!(dsn.domain, "sender.test");
    recorded(&q, 2).await;
    let states: Vec<_> = q
        .show(&id)
        .unwrap()
        .recipients
        .iter()
        .map(|r| (r.state, r.attempts))
        .collect();
    assert_eq!(
        states,
        [
            (RecipientStatus::Delivered, 1),
            (RecipientStatus::Bounced, 1),
            (RecipientStatus::Pending, 1)
        ]
    );
    stop.cancel();
    run.await.unwrap();
    drop(q);

    let q = Queue::open(settings(dir.path(), &[3600], 86400))
        .await
        .unwrap();
    let s = q
        .show(&id)
        .expect("message with a pending recipient survives");
    let got: Vec<_> = s
        .recipients
        .iter()
        .map(|r| (r.state, r.attempts, r.bounce_reason))
        .collect();
    assert_eq!(
        got,
        [
            (RecipientStatus::Delivered, 1, None),
            (RecipientStatus::Bounced, 1, Some(BounceReason::Rejected)),
            (RecipientStatus::Pending, 1, None)
        ]
    );
    assert_eq!(
        s.recipients[2].last_error.as_ref().unwrap().diagnostic,
        "connection refused"
    );
    assert_eq!(q.list().len(), 1, "the delivered DSN is gone");
}

#[tokio::test(start_paused = true)]
async fn retry_intervals_with_last_repeating() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[60, 300], 86400))
        .await
        .unwrap();
    let (t, mut jobs) = Scripted::new(|job, _| {
        if job.attempt <= 3 {
            Outcome::Deferred(failure("4.2.0", "451 try later", true))
        } else {
            delivered()
        }
    });
    let mut events = q.subscribe();
    let (stop, _run) = start(&q, &t);
    let id = store(&q, envelope("a@sender.test", &["b@dest.test"])).await;
    let mut times = Vec::new();
    for attempt in 1..=4 {
        let (job, at) = jobs.recv().await.unwrap();
        assert_eq!(job.attempt, attempt);
        times.push(at);
    }
    let ev = final_event(&mut events, &id).await;
    assert_eq!(ev.summary.recipients[0].state, RecipientStatus::Delivered);
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    for (gap, want) in gaps.iter().zip([60.0, 300.0, 300.0]) {
        assert!(
            *gap >= want * 0.9 - 0.01 && *gap <= want * 1.1 + 0.01,
            "gap {gap}s, want ~{want}s"
        );
    }
    assert_eq!(*t.calls.lock().unwrap(), 4, "no DSN, no extra attempt");
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn expiry_bounces_with_dsn() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[600], 3600))
        .await
        .unwrap();
    let (t, mut jobs) = Scripted::new(|_, _| {
        Outcome::Deferred(failure(
            "4.7.5",
            "dane: no TLSA match for mx.dest.test",
            false,
        ))
    });
    let mut events = q.subscribe();
    let (stop, _run) = start(&q, &t);
    let start_time = tokio::time::Instant::now();
    let id = store(&q, envelope("a@sender.test", &["b@dest.test"])).await;
    let ev = final_event(&mut events, &id).await;
    let elapsed = start_time.elapsed();
    let r = &ev.summary.recipients[0];
    assert_eq!(r.state, RecipientStatus::Bounced);
    assert_eq!(r.bounce_reason, Some(BounceReason::Expired));
    assert!(
        elapsed >= Duration::from_secs(3600),
        "expired after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3600 + 700),
        "expired after {elapsed:?}"
    );
    assert!((6..=9).contains(&r.attempts), "{} attempts", r.attempts);
    // The DSN is the last job.
    let mut dsn = None;
    while let Ok((job, _)) = jobs.try_recv() {
        if job.envelope.sender.is_empty() {
            dsn = Some(job);
        }
    }
    if dsn.is_none() {
        let (job, _) = jobs.recv().await.unwrap();
        dsn = Some(job);
    }
    let dsn = dsn.unwrap();
    assert_eq!(dsn.envelope.recipients[0].address, "a@sender.test");
    let text = String::from_utf8(dsn.message.to_vec()).unwrap();
    assert!(text.contains("Status: 5.7.5\r\n"), "{text}");
    assert!(text.contains("Diagnostic-Code: x-mxgate; dane: no TLSA match for mx.dest.test\r\n"));
    assert!(text.contains("until the message expired"));
    assert!(text.contains("TLS security level required"));
    stop.cancel();
}

#[tokio::test]
async fn one_dsn_for_two_failed_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    let (t, mut jobs) = Scripted::new(|job, i| {
        if job.envelope.recipients[i].address.starts_with("tls") {
            Outcome::Failed(failure(
                "5.7.1",
                "mta-sts enforce: certificate for mx.example.com not valid: unknown issuer",
                false,
            ))
        } else {
            Outcome::Failed(failure(
                "5.1.1",
                "550 5.1.1 <x@dest.test>: no such user",
                true,
            ))
        }
    });
    let (stop, _run) = start(&q, &t);
    let mut env = envelope(
        "a@sender.test",
        &["x@dest.test", "tls@dest.test", "silent@dest.test"],
    );
    env.envid = Some("ENV-42".into());
    env.recipients[0].orcpt = Some("rfc822;X@Dest.test".into());
    env.recipients[2].notify = never();
    let id = store(&q, env).await;
    let mut dsns = Vec::new();
    for _ in 0..2 {
        let (job, _) = jobs.recv().await.unwrap();
        if job.envelope.sender.is_empty() {
            dsns.push(job);
        }
    }
    q.wait_empty().await;
    while let Ok((job, _)) = jobs.try_recv() {
        assert!(!job.envelope.sender.is_empty(), "a second DSN");
    }
    assert_eq!(dsns.len(), 1);
    let text = String::from_utf8(dsns[0].message.to_vec()).unwrap();
    assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
    let parts = mime_parts(&text);
    assert_eq!(parts.len(), 3);
    assert!(parts[0].contains("Content-Type: text/plain"));
    assert!(parts[0]
        .contains("mta-sts enforce: certificate for mx.example.com not valid: unknown issuer"));
    assert!(parts[0].contains("host mx.dest.test said: 550 5.1.1"));
    let status = &parts[1];
    assert!(status.contains("Content-Type: message/delivery-status\r\n\r\n"));
    assert!(status.contains("Reporting-MTA: dns; relay.test\r\n"));
    assert!(status.contains("Original-Envelope-Id: ENV-42\r\n"));
    assert!(status.contains("Arrival-Date: "));
    assert_eq!(
        status.matches("Final-Recipient: rfc822; ").count(),
        2,
        "{status}"
    );
    assert!(status.contains(
        "Original-Recipient: rfc822; X@Dest.test\r\nFinal-Recipient: rfc822; x@dest.test\r\n"
    ));
    assert!(status
        .contains("Final-Recipient: rfc822; tls@dest.test\r\nAction: failed\r\nStatus: 5.7.1\r\n"));
    assert!(!status.contains("silent@"), "NOTIFY=NEVER is not reported");
    assert!(status.contains("Remote-MTA: dns; mx.dest.test\r\nDiagnostic-Code: smtp; 550 5.1.1"));
    assert!(status.contains("Diagnostic-Code: x-mxgate; mta-sts enforce"));
    assert!(status.contains("Last-Attempt-Date: "));
    // RET absent: headers only.
    assert!(parts[2].contains("Content-Type: text/rfc822-headers"));
    assert!(parts[2].contains("Subject: hello"));
    assert!(!parts[2].contains("secret body line"));
    assert!(q.show(&id).is_none());
    stop.cancel();
}

#[tokio::test]
async fn no_dsn_for_notify_never_or_null_sender() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    let (t, mut jobs) = Scripted::new(|_, _| Outcome::Failed(failure("5.1.1", "550 no", true)));
    let mut events = q.subscribe();
    let (stop, _run) = start(&q, &t);
    let mut env = envelope("a@sender.test", &["x@dest.test"]);
    env.recipients[0].notify = never();
    let a = store(&q, env).await;
    // A bounce from elsewhere (sender <>) that fails: dropped, never bounced.
    let b = store(&q, envelope("", &["y@dest.test"])).await;
    // Events come in either order.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = events.recv().await.unwrap();
        assert_eq!(ev.summary.recipients[0].state, RecipientStatus::Bounced);
        seen.push(ev.summary.id);
    }
    seen.sort();
    assert_eq!(seen, [a.clone(), b.clone()]);
    q.wait_empty().await;
    let mut n = 0;
    while let Ok((job, _)) = jobs.try_recv() {
        assert_ne!(job.domain, "sender.test", "a DSN was sent");
        n += 1;
    }
    assert_eq!(n, 2, "one attempt each, nothing else");
    stop.cancel();
}

#[tokio::test]
async fn flush_makes_deferred_due() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[3600], 86400))
        .await
        .unwrap();
    let (t, mut jobs) = Scripted::new(|job, _| {
        if job.attempt == 1 {
            Outcome::Deferred(failure("4.4.1", "timeout", false))
        } else {
            delivered()
        }
    });
    let (stop, _run) = start(&q, &t);
    let id = store(&q, envelope("a@sender.test", &["b@dest.test"])).await;
    jobs.recv().await.unwrap();
    recorded(&q, 1).await;
    let next = q.show(&id).unwrap().recipients[0].next_attempt.unwrap();
    let arrival = q.show(&id).unwrap().arrival;
    assert!(next >= arrival + 3000, "deferred about an hour");
    assert_eq!(q.flush(Some(&id)).unwrap(), 1);
    let (job, _) = tokio::time::timeout(Duration::from_secs(5), jobs.recv())
        .await
        .expect("flush woke the scheduler")
        .unwrap();
    assert_eq!(job.attempt, 2);
    tokio::time::timeout(Duration::from_secs(5), q.wait_final(&id))
        .await
        .unwrap();
    assert!(q.flush(Some(&id)).is_err(), "unknown id");
    stop.cancel();
}

#[tokio::test]
async fn operator_bounce_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[3600], 86400))
        .await
        .unwrap();
    let (t, mut jobs) = Scripted::new(|_, _| Outcome::Deferred(failure("4.4.1", "timeout", false)));
    let (stop, _run) = start(&q, &t);
    let mut env = envelope("a@sender.test", &["b@dest.test"]);
    env.ret = full();
    let a = store(&q, env).await;
    let b = store(&q, envelope("a@sender.test", &["c@dest.test"])).await;
    jobs.recv().await.unwrap();
    jobs.recv().await.unwrap();
    recorded(&q, 2).await;

    assert_eq!(q.bounce(&a).await.unwrap(), 1);
    let (dsn, _) = jobs.recv().await.unwrap();
    assert_eq!(dsn.envelope.sender, "");
    let text = String::from_utf8(dsn.message.to_vec()).unwrap();
    assert!(
        text.contains("bounced by operator; last error: timeout"),
        "{text}"
    );
    assert!(text.contains("Content-Type: message/rfc822"));
    assert!(
        text.contains("secret body line"),
        "RET=FULL returns the body"
    );
    assert!(q.show(&a).is_none());

    q.delete(&b).await.unwrap();
    assert!(q.show(&b).is_none());
    assert!(!dir.path().join("msg").join(&b.0).exists());
    q.wait_empty().await;
    assert!(jobs.try_recv().is_err(), "delete sends nothing");
    assert!(q.delete(&b).await.is_err());
    stop.cancel();
}

#[tokio::test]
async fn concurrency_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), &[60], 86400);
    s.max_concurrent = 2;
    let q = Queue::open(s).await.unwrap();
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    struct Slow {
        running: Arc<std::sync::atomic::AtomicUsize>,
        peak: Arc<std::sync::atomic::AtomicUsize>,
    }
    impl mxgate_queue::Transport for Slow {
        async fn deliver(
            &self,
            job: mxgate_queue::DeliveryJob,
        ) -> Vec<mxgate_queue::RecipientOutcome> {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.running.fetch_add(1, SeqCst) + 1;
            self.peak.fetch_max(now, SeqCst);
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.running.fetch_sub(1, SeqCst);
            job.recipients
                .iter()
                .map(|&index| mxgate_queue::RecipientOutcome {
                    index,
                    outcome: delivered(),
                })
                .collect()
        }
    }
    let t = Arc::new(Slow {
        running: running.clone(),
        peak: peak.clone(),
    });
    for i in 0..10 {
        store(&q, envelope("a@sender.test", &[&format!("r{i}@d{i}.test")])).await;
    }
    let (stop, _run) = start(&q, &t);
    tokio::time::timeout(Duration::from_secs(5), q.wait_empty())
        .await
        .unwrap();
    let p = peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&p), "peak {p}");
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_transport_defers_instead_of_wedging() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(settings(dir.path(), &[60], 86400))
        .await
        .unwrap();
    let (t, mut jobs) = Scripted::new(|job, _| {
        if job.attempt == 1 {
            panic!("transport bug");
        }
        delivered()
    });
    let (stop, _run) = start(&q, &t);
    let id = store(&q, envelope("a@sender.test", &["b@dest.test"])).await;
    // The first attempt panics before reporting (so the script sends no job); the
    // second one, after the retry interval, delivers.
    let started = tokio::time::Instant::now();
    let (job, at) = jobs.recv().await.unwrap();
    assert_eq!(job.attempt, 2);
    assert!(
        at - started >= Duration::from_secs(59),
        "retried after the interval"
    );
    q.wait_final(&id).await;
    assert_eq!(*t.calls.lock().unwrap(), 2);
    stop.cancel();
}
