//! `queue.delay_warning`: one RFC 3464 `Action: delayed` report per message, to the
//! recipients whose NOTIFY allows it, never for `<>` or our own DSNs, not when the
//! option is off, and not again after a restart. Paused time throughout.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use mxgate_queue::dsn::rfc5322_date;
use mxgate_queue::{DeliveryJob, Outcome, Queue, QueueSettings, RecipientStatus};
use mxgate_smtp::Notify;
use support::*;

fn with_warning(mut s: QueueSettings, secs: u64) -> QueueSettings {
    s.queue.delay_warning = Some(Duration::from_secs(secs));
    s
}

fn is_dsn(job: &DeliveryJob) -> bool {
    job.envelope.sender.is_empty()
}

fn text(job: &DeliveryJob) -> String {
    String::from_utf8(job.message.to_vec()).unwrap()
}

fn notify(success: bool, failure: bool, delay: bool) -> Option<Notify> {
    Some(Notify {
        success,
        failure,
        delay,
    })
}

const TLS_REASON: &str = "encrypt: STARTTLS not offered by mx.dest.test";

/// Deferred at dest.test (TLS policy) and other.test (451), delivered at ok.test.
fn script(job: &DeliveryJob, _: usize) -> Outcome {
    match job.domain.as_str() {
        "dest.test" => Outcome::Deferred(failure("4.7.5", TLS_REASON, false)),
        "other.test" => Outcome::Deferred(failure("4.2.0", "451 4.2.0 try later", true)),
        _ => delivered(),
    }
}

#[tokio::test(start_paused = true)]
async fn one_delayed_report_per_message_for_the_recipients_that_asked() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(with_warning(settings(dir.path(), &[60], 3600), 300))
        .await
        .unwrap();
    let (t, mut jobs) = Scripted::new(script);
    let mut events = q.subscribe();
    let (stop, _run) = start(&q, &t);
    let started = tokio::time::Instant::now();
    let mut env = envelope(
        "a@sender.test",
        &["u@dest.test", "f@dest.test", "d@other.test", "ok@ok.test"],
    );
    env.ret = full();
    env.recipients[1].notify = notify(false, true, false);
    env.recipients[2].notify = notify(false, false, true);
    let id = store(&q, env).await;
    let arrival = q.show(&id).unwrap().arrival;

    let (warning, at) = loop {
        let (job, at) = jobs.recv().await.unwrap();
        if is_dsn(&job) {
            break (job, at);
        }
    };
    let waited = at - started;
    assert!(
        waited >= Duration::from_secs(300) && waited <= Duration::from_secs(300 + 67),
        "warned after {waited:?}: at the first deferral past delay_warning"
    );
    assert_eq!(warning.envelope.recipients[0].address, "a@sender.test");
    let t = text(&warning);
    assert!(
        t.contains("Subject: Delayed Mail (still being retried)\r\n"),
        "{t}"
    );
    let parts = mime_parts(&t);
    assert_eq!(parts.len(), 3);
    let human = &parts[0];
    assert!(human.contains("could not be delivered yet"), "{human}");
    let until = rfc5322_date((arrival + 3600) * 1000);
    assert!(
        human.contains(&format!("keep trying until {until}")),
        "{human}"
    );
    assert!(
        human.contains("<u@dest.test>: delivery is delayed")
            && human.contains("TLS security level required")
            && human.contains(TLS_REASON),
        "{human}"
    );
    let status = &parts[1];
    assert_eq!(status.matches("Action: delayed\r\n").count(), 2, "{status}");
    assert!(!status.contains("Action: failed"), "{status}");
    assert!(status
        .contains("Final-Recipient: rfc822; u@dest.test\r\nAction: delayed\r\nStatus: 4.7.5\r\n"));
    assert!(status
        .contains("Final-Recipient: rfc822; d@other.test\r\nAction: delayed\r\nStatus: 4.2.0\r\n"));
    assert!(
        !status.contains("f@dest.test"),
        "NOTIFY=FAILURE: no delay report"
    );
    assert!(!status.contains("ok@ok.test"), "delivered: not delayed");
    assert_eq!(
        status
            .matches(&format!("Will-Retry-Until: {until}\r\n"))
            .count(),
        2,
        "{status}"
    );
    assert!(parts[2].contains("Content-Type: text/rfc822-headers"));
    assert!(
        !t.contains("secret body line"),
        "RET=FULL applies to failed DSNs only"
    );

    // Retries go on for an hour; the message expires; only a failure report follows.
    let ev = final_event(&mut events, &id).await;
    let states: Vec<_> = ev.summary.recipients.iter().map(|r| r.state).collect();
    use RecipientStatus::{Bounced, Delivered};
    assert_eq!(states, [Bounced, Bounced, Bounced, Delivered]);
    q.wait_empty().await;
    stop.cancel();
    let mut attempts = 0;
    let mut reports = Vec::new();
    while let Ok((job, _)) = jobs.try_recv() {
        if is_dsn(&job) {
            reports.push(text(&job));
        } else if job.domain == "dest.test" {
            attempts += 1;
        }
    }
    assert!(attempts >= 40, "kept retrying: {attempts} more attempts");
    assert_eq!(
        reports.len(),
        1,
        "no second warning, one failure report: {reports:#?}"
    );
    assert!(reports[0].contains("Action: failed"));
    assert!(!reports[0].contains("Action: delayed"));
    assert!(!reports[0].contains("Will-Retry-Until"));
}

#[tokio::test(start_paused = true)]
async fn no_warning_for_null_sender_our_own_dsns_or_notify_without_delay() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(with_warning(settings(dir.path(), &[60], 900), 120))
        .await
        .unwrap();
    let (t, mut jobs) = Scripted::new(|job, i| {
        if job.envelope.recipients[i].address.starts_with("gone@") {
            Outcome::Failed(failure("5.1.1", "550 5.1.1 no such user", true))
        } else {
            Outcome::Deferred(failure("4.4.1", "connection timed out", false))
        }
    });
    let (stop, _run) = start(&q, &t);
    // A bounce from elsewhere, deferred.
    store(&q, envelope("", &["x@dest.test"])).await;
    // Bounced at once: our DSN goes to bounce.test, which defers it past the threshold.
    store(&q, envelope("b@bounce.test", &["gone@dest.test"])).await;
    let mut env = envelope("a@sender.test", &["n@dest.test", "never@dest.test"]);
    env.recipients[0].notify = notify(false, true, false);
    env.recipients[1].notify = never();
    store(&q, env).await;
    tokio::time::timeout(Duration::from_secs(2000), q.wait_empty())
        .await
        .unwrap();
    stop.cancel();
    let mut dsns = Vec::new();
    let mut deferred_past_threshold = 0;
    while let Ok((job, _)) = jobs.try_recv() {
        if is_dsn(&job) && job.domain != "dest.test" {
            dsns.push((job.domain.clone(), text(&job)));
        }
        if job.attempt >= 4 {
            deferred_past_threshold += 1;
        }
    }
    assert!(
        deferred_past_threshold >= 3,
        "every message lived past 120 s"
    );
    assert!(
        dsns.iter().all(|(_, t)| !t.contains("Action: delayed")),
        "{dsns:?}"
    );
    // The failure reports: to bounce.test (itself retried until it expired) and the
    // expiry of n@ (NOTIFY=FAILURE) to sender.test.
    let mut domains: Vec<&str> = dsns.iter().map(|(d, _)| d.as_str()).collect();
    domains.sort();
    domains.dedup();
    assert_eq!(domains, ["bounce.test", "sender.test"]);
}

#[tokio::test(start_paused = true)]
async fn off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path(), &[60], 900);
    assert_eq!(s.queue.delay_warning, None);
    let q = Queue::open(s).await.unwrap();
    let (t, mut jobs) = Scripted::new(script);
    let (stop, _run) = start(&q, &t);
    store(&q, envelope("a@sender.test", &["u@dest.test"])).await;
    q.wait_empty().await;
    stop.cancel();
    let reports: Vec<String> = std::iter::from_fn(|| jobs.try_recv().ok())
        .filter(|(j, _)| is_dsn(j))
        .map(|(j, _)| text(&j))
        .collect();
    assert_eq!(reports.len(), 1, "the failure report only");
    assert!(reports[0].contains("Action: failed"));
}

#[tokio::test(start_paused = true)]
async fn the_warned_fact_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = || with_warning(settings(dir.path(), &[60], 86400), 300);
    let q = Queue::open(s()).await.unwrap();
    let (t, mut jobs) = Scripted::new(script);
    let (stop, run) = start(&q, &t);
    let id = store(&q, envelope("a@sender.test", &["u@dest.test"])).await;
    loop {
        let (job, _) = jobs.recv().await.unwrap();
        if is_dsn(&job) {
            assert!(text(&job).contains("Action: delayed"));
            break;
        }
    }
    // Stopping waits for running jobs, so the warned record is on disk.
    stop.cancel();
    run.await.unwrap();
    drop(q);
    let mut file = Vec::new();
    for seg in std::fs::read_dir(dir.path().join("log")).unwrap() {
        file.extend(std::fs::read(seg.unwrap().path()).unwrap());
    }
    assert!(
        String::from_utf8_lossy(&file).contains("\"w\":true"),
        "the state log records the warning"
    );

    // Reopened: the next deferrals are past the threshold, but the message was warned.
    let q = Queue::open(s()).await.unwrap();
    let (t, mut jobs) = Scripted::new(script);
    let (stop, run) = start(&q, &t);
    let mut retries = 0;
    while retries < 3 {
        let (job, _) = jobs.recv().await.unwrap();
        assert!(!is_dsn(&job), "a second warning after restart");
        retries += 1;
    }
    stop.cancel();
    run.await.unwrap();
    while let Ok((job, _)) = jobs.try_recv() {
        assert!(!is_dsn(&job), "a second warning after restart");
    }
    assert_eq!(
        q.show(&id).unwrap().recipients[0].state,
        RecipientStatus::Pending
    );
}
