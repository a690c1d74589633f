//! Shared helpers for the queue's integration tests: settings over a temp dir, and a
//! scripted [`Transport`] that records every job it is given.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use mxgate_config::QueueConfig;
use mxgate_queue::{
    DeliveryFailure, DeliveryJob, FinalEvent, MessageStore, Outcome, Queue, QueueId, QueueSettings,
    RecipientOutcome, Transport,
};
use mxgate_smtp::{BodyType, Envelope, Notify, Recipient, Ret};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub fn settings(dir: &Path, intervals: &[u64], max_age: u64) -> QueueSettings {
    QueueSettings {
        queue: QueueConfig {
            path: dir.to_path_buf(),
            retry_intervals: intervals.iter().map(|s| Duration::from_secs(*s)).collect(),
            max_age: Duration::from_secs(max_age),
            ..QueueConfig::default()
        },
        hostname: "relay.test".into(),
        max_concurrent: 4,
    }
}

pub fn rcpt(address: &str) -> Recipient {
    Recipient {
        address: address.into(),
        notify: None,
        orcpt: None,
    }
}

pub fn envelope(sender: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: sender.into(),
        body: BodyType::SevenBit,
        smtputf8: false,
        ret: None,
        envid: None,
        recipients: rcpts.iter().map(|r| rcpt(r)).collect(),
    }
}

pub fn never() -> Option<Notify> {
    Some(Notify::NEVER)
}

pub fn full() -> Option<Ret> {
    Some(Ret::Full)
}

pub const MESSAGE: &[u8] = b"Subject: hello\r\nFrom: a@sender.test\r\n\r\nsecret body line\r\n";

pub fn failure(status: &str, diagnostic: &str, remote: bool) -> DeliveryFailure {
    DeliveryFailure {
        kind: mxgate_queue::FailureKind::Other,
        status: status.parse().expect("a valid status"),
        remote_mta: remote.then(|| "mx.dest.test".to_string()),
        diagnostic: diagnostic.into(),
        remote,
    }
}

pub fn delivered() -> Outcome {
    Outcome::Delivered {
        relay: "mx.dest.test[127.0.0.1]:25".into(),
        reply: "250 ok".into(),
    }
}

type Script = dyn Fn(&DeliveryJob, usize) -> Outcome + Send + Sync;

/// A transport whose outcome per recipient comes from a closure `(job, index)`; our
/// DSNs (sender `<>`, to `sender.test`) are delivered. Every job is sent on a channel with the time it came.
pub struct Scripted {
    script: Box<Script>,
    jobs: mpsc::UnboundedSender<(DeliveryJob, tokio::time::Instant)>,
    pub calls: Mutex<usize>,
}

impl Scripted {
    pub fn new(
        script: impl Fn(&DeliveryJob, usize) -> Outcome + Send + Sync + 'static,
    ) -> (
        Arc<Self>,
        mpsc::UnboundedReceiver<(DeliveryJob, tokio::time::Instant)>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Scripted {
                script: Box::new(script),
                jobs: tx,
                calls: Mutex::new(0),
            }),
            rx,
        )
    }
}

impl Transport for Scripted {
    async fn deliver(&self, job: DeliveryJob) -> Vec<RecipientOutcome> {
        *self.calls.lock().unwrap() += 1;
        let outcomes = job
            .recipients
            .iter()
            .map(|&index| RecipientOutcome {
                index,
                outcome: if job.envelope.sender.is_empty() && job.domain == "sender.test" {
                    delivered()
                } else {
                    (self.script)(&job, index)
                },
            })
            .collect();
        let _ = self.jobs.send((job, tokio::time::Instant::now()));
        outcomes
    }
}

/// Starts the scheduler; returns the token that stops it and its handle.
pub fn start<T: Transport>(
    q: &Arc<Queue>,
    t: &Arc<T>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let handle = tokio::spawn(Arc::clone(q).run(Arc::clone(t), token.clone()));
    (token, handle)
}

pub async fn store(q: &Arc<Queue>, env: Envelope) -> QueueId {
    q.store(env, Bytes::from_static(MESSAGE)).await.unwrap()
}

/// Waits for the final event of `id` (discarding other messages' events).
pub async fn final_event(
    rx: &mut tokio::sync::broadcast::Receiver<FinalEvent>,
    id: &QueueId,
) -> FinalEvent {
    loop {
        let ev = rx.recv().await.unwrap();
        if &ev.summary.id == id {
            return ev;
        }
    }
}

/// Waits until `n` outcomes have been recorded durably.
pub async fn recorded(q: &Queue, n: u64) {
    let mut rx = q.counts();
    rx.wait_for(|c| c.recorded >= n).await.unwrap();
}

/// Splits a multipart body on its boundary; returns the parts (headers + body each).
pub fn mime_parts(message: &str) -> Vec<String> {
    let start = message.find("boundary=\"").unwrap() + "boundary=\"".len();
    let end = start + message[start..].find('"').unwrap();
    let boundary = &message[start..end];
    let delim = format!("\r\n--{boundary}");
    let mut parts: Vec<String> = message
        .split(&delim)
        .skip(1)
        .map(|s| s.to_string())
        .collect();
    assert!(
        parts.last().unwrap().starts_with("--"),
        "closing delimiter missing"
    );
    parts.pop();
    parts
}
