//! End-to-end tests of the queue's lifecycle through the real `mxgate`
//! binary: retry after `4xx`, expiry and the RFC 3464 DSN with the TLS reason, DSN
//! parameters (RFC 3461 `NOTIFY`, `RET`, `ENVID`, `ORCPT`), the null sender,
//! `kill -9` under load, a full disk, a corrupted spool file, and every
//! `mxgate queue` command against a running daemon.
//!
//! Every destination is a real SMTP receiver on `127.0.0.X` (one shared port per
//! test), found through a real DNS server. Not here: TLS policy decisions themselves
//! (tests/tls_policy.rs) and the plain relay path (tests/relay.rs).

// Real processes on the real clock: the clock rule of clippy.toml is for product code.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::world::{mx, queue_is_empty, queue_list, receiver, settings, wait_queue, world, WAIT};
use common::{free_port, Mxgate};
use mxgate_testkit::postfix::{submit, SubmitError};
use mxgate_testkit::smtp::{ReceivedMessage, ReceiverConfig, ReplyScript};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn message(id: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@senders.test>\r\nTo: rcpt@dest.test\r\nSubject: test {id}\r\n\
         Message-ID: <{id}@senders.test>\r\nDate: Sun, 22 Nov 2026 12:00:00 +0000\r\n\r\n\
         Body of {id}.\r\n"
    )
    .into_bytes()
}

/// The `Message-ID` local part of a received message (our test ids).
fn message_id(m: &ReceivedMessage) -> String {
    let text = String::from_utf8_lossy(&m.data);
    text.split("Message-ID: <")
        .nth(1)
        .and_then(|s| s.split('@').next())
        .unwrap_or("?")
        .to_string()
}

fn text(m: &ReceivedMessage) -> String {
    String::from_utf8_lossy(&m.data).into_owned()
}

/// The body of the MIME part whose `Content-Type` starts with `content_type`.
fn mime_part<'a>(dsn: &'a str, content_type: &str) -> Option<&'a str> {
    let needle = format!("Content-Type: {content_type}");
    let start = dsn.find(&needle)?;
    let body = start + dsn[start..].find("\r\n\r\n")? + 4;
    let end = body + dsn[body..].find("\r\n--")?;
    Some(&dsn[body..end])
}

/// A raw SMTP client for what `postfix::submit` cannot say: DSN parameters.
/// `mail` is the whole `MAIL FROM:` argument, `rcpts` whole `RCPT TO:` arguments.
async fn send_raw(addr: SocketAddr, mail: &str, rcpts: &[&str], body: &[u8]) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut conn = BufReader::new(stream);
    async fn reply(conn: &mut BufReader<TcpStream>) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            assert!(
                conn.read_line(&mut line).await.expect("read") > 0,
                "closed: {all}"
            );
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
    async fn cmd(conn: &mut BufReader<TcpStream>, line: &str, want: char) -> String {
        conn.get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
        let r = reply(conn).await;
        assert!(r.starts_with(want), "{line} -> {r}");
        r
    }
    assert!(reply(&mut conn).await.starts_with("220"));
    let ehlo = cmd(&mut conn, "EHLO client.test", '2').await;
    assert!(ehlo.contains("DSN"), "{ehlo}");
    cmd(&mut conn, &format!("MAIL FROM:{mail}"), '2').await;
    for r in rcpts {
        cmd(&mut conn, &format!("RCPT TO:{r}"), '2').await;
    }
    cmd(&mut conn, "DATA", '3').await;
    let mut data = body.to_vec();
    data.extend_from_slice(b".\r\n");
    conn.get_mut().write_all(&data).await.expect("write");
    let r = reply(&mut conn).await;
    let _ = conn.get_mut().write_all(b"QUIT\r\n").await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_451_is_retried_and_the_message_delivered() {
    let port = free_port();
    let dest = receiver(
        20,
        port,
        ReceiverConfig::default().rcpt(
            "r@retry.test",
            ReplyScript::first_n(1, "451 4.3.0 try again later", "250 2.1.5 ok"),
        ),
    )
    .await;
    let world = world(&mx("retry.test", "mx.retry.test", 20)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Mxgate::start(dir.path(), &settings(&world, port));

    submit(
        gate.listen,
        "s@senders.test",
        &["r@retry.test"],
        &message("r1"),
    )
    .await
    .expect("accepted");
    let deferred = gate
        .wait_log(
            |l| l.contains("status=deferred") && l.contains("r@retry.test"),
            WAIT,
        )
        .await;
    assert!(deferred.contains("451"), "{deferred}");
    let got = dest.next_message().await;
    assert_eq!(message_id(&got), "r1");
    gate.wait_log(
        |l| l.contains("status=sent") && l.contains("r@retry.test"),
        WAIT,
    )
    .await;
    queue_is_empty(&gate).await;
    assert_eq!(dest.messages().len(), 1, "delivered exactly once");
    // The retry is a second transaction. With session reuse it may run on the same
    // connection (after RSET) while that is idle, so end mxgate to close its sessions,
    // then count transactions rather than sessions.
    drop(gate);
    let sessions = dest.wait_sessions(dest.connections()).await;
    let mails = sessions
        .iter()
        .flat_map(|s| &s.commands)
        .filter(|c| c.to_ascii_uppercase().starts_with("MAIL FROM"))
        .count();
    assert!(mails >= 2, "the retry is a new transaction");
}

/// `queue.bounce_relay`: DSNs go to the configured relay (e.g. the local Postfix),
/// not to the sender's MX, which the test world does not even publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsns_go_to_the_bounce_relay_when_one_is_set() {
    let port = free_port();
    let dest = receiver(
        40,
        port,
        ReceiverConfig::default().rcpt(
            "bad@dest.test",
            ReplyScript::always("550 5.1.1 no such user"),
        ),
    )
    .await;
    let relay = receiver(41, free_port(), ReceiverConfig::default()).await;
    let world = world(&mx("dest.test", "mx.dest.test", 40)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&world, port);
    s.queue = format!("bounce_relay = \"{}\"", relay.addr());
    let gate = Mxgate::start(dir.path(), &s);

    submit(
        gate.listen,
        "s@nomx.test",
        &["bad@dest.test"],
        &message("br1"),
    )
    .await
    .expect("accepted");
    let dsn = relay.next_message().await;
    assert_eq!(dsn.sender, "");
    assert_eq!(dsn.recipients[0].address, "s@nomx.test");
    let t = text(&dsn);
    assert!(t.contains("Final-Recipient: rfc822; bad@dest.test"), "{t}");
    assert!(dest.messages().is_empty(), "the 550 recipient got nothing");
    let line = gate
        .wait_log(
            |l| l.contains("status=sent") && l.contains("s@nomx.test"),
            WAIT,
        )
        .await;
    assert!(line.contains(&relay.addr().ip().to_string()), "{line}");
    queue_is_empty(&gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_policy_failure_defers_until_max_age_then_the_sender_gets_a_dsn() {
    let port = free_port();
    // No STARTTLS offered, but the domain requires `encrypt`.
    let dest = receiver(21, port, ReceiverConfig::default()).await;
    let senders = receiver(22, port, ReceiverConfig::default()).await;
    let mut records = mx("x.test", "mx.x.test", 21);
    records.extend(mx("senders.test", "mx.senders.test", 22));
    let world = world(&records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&world, port);
    s.domains = "\"x.test\" = { level = \"encrypt\" }".into();
    s.queue = "max_age = \"3s\"".into();
    let gate = Mxgate::start(dir.path(), &s);

    let accepted = Instant::now();
    let reply = send_raw(
        gate.listen,
        "<sender@senders.test> RET=HDRS ENVID=tls-env-1",
        &["<u@x.test> NOTIFY=FAILURE ORCPT=rfc822;orig-u@x.test"],
        &message("tls1"),
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let line = gate
        .wait_log(
            |l| l.contains("status=deferred") && l.contains("u@x.test"),
            WAIT,
        )
        .await;
    assert!(line.contains("policy=encrypt"), "{line}");

    // Expiry takes max_age plus up to one retry interval: wait for the event in the
    // log rather than on the receiver's shorter limit.
    gate.wait_log(|l| l.contains("sender non-delivery notification"), WAIT)
        .await;
    let dsn = senders.next_message().await;
    assert!(
        accepted.elapsed() >= Duration::from_secs(3),
        "bounced before max_age"
    );
    assert!(dest.messages().is_empty(), "never delivered without TLS");
    assert!(
        dest.sessions()
            .iter()
            .all(|s| !s.commands.iter().any(|c| c.starts_with("MAIL"))),
        "no MAIL FROM in cleartext at level encrypt"
    );
    assert_eq!(dsn.sender, "");
    assert_eq!(dsn.recipients[0].address, "sender@senders.test");
    let t = text(&dsn);
    assert!(
        t.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{t}"
    );
    let human = mime_part(&t, "text/plain").expect("human-readable part");
    assert!(human.contains("<u@x.test>"), "{human}");
    assert!(human.contains("expired"), "{human}");
    assert!(
        human.contains("encrypt") && human.to_ascii_lowercase().contains("starttls"),
        "the human part must say which level was required and what failed: {human}"
    );
    let status = mime_part(&t, "message/delivery-status").expect("delivery-status part");
    assert!(
        status.contains("Reporting-MTA: dns; relay.mxgate.test"),
        "{status}"
    );
    assert!(
        status.contains("Original-Envelope-Id: tls-env-1"),
        "{status}"
    );
    assert!(
        status.contains("Original-Recipient: rfc822; orig-u@x.test"),
        "{status}"
    );
    assert!(
        status.contains("Final-Recipient: rfc822; u@x.test"),
        "{status}"
    );
    assert!(status.contains("Action: failed"), "{status}");
    assert!(
        status.contains("Status: 5.7."),
        "a security status: {status}"
    );
    assert!(status.contains("Diagnostic-Code: "), "{status}");
    // The MX never replied to anything about this message (mxgate itself refused to go
    // on without STARTTLS), so RFC 3464 §2.3.5's Remote-MTA ("the MTA which reported
    // the delivery status") may be absent; if present it names the MX, and the
    // diagnostic always does.
    if let Some(mta) = status.lines().find(|l| l.starts_with("Remote-MTA:")) {
        assert_eq!(mta, "Remote-MTA: dns; mx.x.test");
    }
    assert!(
        status.contains("Diagnostic-Code: x-mxgate; encrypt: STARTTLS not offered by mx.x.test"),
        "{status}"
    );
    let headers = mime_part(&t, "text/rfc822-headers").expect("RET=HDRS: headers only");
    assert!(
        headers.contains("Message-ID: <tls1@senders.test>"),
        "{headers}"
    );
    assert!(
        !t.contains("Body of tls1."),
        "RET=HDRS must not return the body"
    );
    queue_is_empty(&gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_carries_envid_orcpt_and_honours_ret_notify_and_the_null_sender() {
    let port = free_port();
    let dest = receiver(
        23,
        port,
        ReceiverConfig::default()
            .rcpt(
                "bad@dest.test",
                ReplyScript::always("550 5.1.1 no such user"),
            )
            .rcpt(
                "never@dest.test",
                ReplyScript::always("550 5.1.1 no such user"),
            ),
    )
    .await;
    let senders = receiver(24, port, ReceiverConfig::default()).await;
    let mut records = mx("dest.test", "mx.dest.test", 23);
    records.extend(mx("senders.test", "mx.senders.test", 24));
    let world = world(&records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Mxgate::start(dir.path(), &settings(&world, port));

    // RET=FULL with ENVID and ORCPT.
    let r = send_raw(
        gate.listen,
        "<sender@senders.test> RET=FULL ENVID=env-full",
        &[
            "<good@dest.test>",
            "<bad@dest.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;alias-bad@dest.test",
        ],
        &message("full1"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let dsn = senders.next_message().await;
    let t = text(&dsn);
    let status = mime_part(&t, "message/delivery-status").expect("status part");
    assert!(
        status.contains("Original-Envelope-Id: env-full"),
        "{status}"
    );
    assert!(
        status.contains("Original-Recipient: rfc822; alias-bad@dest.test"),
        "{status}"
    );
    assert!(
        status.contains("Final-Recipient: rfc822; bad@dest.test"),
        "{status}"
    );
    assert!(
        !status.contains("good@dest.test"),
        "only the failed recipient: {status}"
    );
    assert_eq!(status.matches("Final-Recipient:").count(), 1, "{status}");
    assert!(status.contains("Status: 5.1.1"), "{status}");
    assert!(status.contains("Remote-MTA: dns; mx.dest.test"), "{status}");
    assert!(status.contains("Diagnostic-Code: smtp; 550"), "{status}");
    let original = mime_part(&t, "message/rfc822").expect("RET=FULL: the whole message");
    assert!(
        original.contains("Message-ID: <full1@senders.test>"),
        "{original}"
    );
    assert!(
        t.contains("Body of full1."),
        "RET=FULL returns the body: {t}"
    );

    // RET=HDRS.
    let r = send_raw(
        gate.listen,
        "<sender@senders.test> RET=HDRS",
        &["<bad@dest.test>"],
        &message("hdrs1"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let dsn = senders.next_message().await;
    let t = text(&dsn);
    assert!(mime_part(&t, "message/rfc822").is_none(), "{t}");
    let headers = mime_part(&t, "text/rfc822-headers").expect("headers part");
    assert!(
        headers.contains("Message-ID: <hdrs1@senders.test>"),
        "{headers}"
    );
    assert!(!t.contains("Body of hdrs1."), "{t}");
    assert!(!t.contains("Original-Envelope-Id"), "no ENVID given: {t}");

    // NOTIFY=NEVER: bounced, but no DSN. The null sender: bounced, never reported.
    let r = send_raw(
        gate.listen,
        "<sender@senders.test>",
        &["<never@dest.test> NOTIFY=NEVER"],
        &message("never1"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    let r = send_raw(gate.listen, "<>", &["<bad@dest.test>"], &message("null1")).await;
    assert!(r.starts_with("250"), "{r}");
    gate.wait_log(
        |l| l.contains("status=bounced") && l.contains("never@dest.test"),
        WAIT,
    )
    .await;
    gate.wait_log(|l| l.contains("undeliverable bounce message dropped"), WAIT)
        .await;
    // A DSN would be queued before the original leaves the queue: once the queue is
    // empty, any DSN would already be at the sender's MX.
    queue_is_empty(&gate).await;
    assert_eq!(senders.messages().len(), 2, "no DSN for NOTIFY=NEVER or <>");
    assert!(dest.messages().iter().all(|m| message_id(m) == "full1"));
}

/// Submits `message(prefix-n)` in a loop, sending every acknowledged id on `acked`;
/// a refused connection (mxgate down) is retried.
async fn submit_loop(
    listen: SocketAddr,
    prefix: String,
    count: usize,
    acked: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut n = 0;
    while n < count {
        let id = format!("{prefix}-{n}");
        match submit(listen, "s@senders.test", &["r@load.test"], &message(&id)).await {
            Ok(_) => {
                let _ = acked.send(id);
                n += 1;
            }
            // Killed mid-transaction or not up yet: back off and send a new message
            // (the old one may or may not have been stored, it was not acknowledged).
            Err(SubmitError::Io(_)) | Err(SubmitError::Rejected { .. }) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                n += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_loop_under_load_loses_no_acknowledged_message() {
    let port = free_port();
    let dest = receiver(25, port, ReceiverConfig::default()).await;
    let world = world(&mx("load.test", "mx.load.test", 25)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gate = Mxgate::start(dir.path(), &settings(&world, port));
    let listen = gate.listen;

    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..6 {
        clients.spawn(submit_loop(listen, format!("k{c}"), 60, acked_tx.clone()));
    }
    drop(acked_tx);
    let mut acked = Vec::new();
    for round in 1..=3 {
        while acked.len() < round * 40 {
            match acked_rx.recv().await {
                Some(id) => acked.push(id),
                None => break,
            }
        }
        gate.kill9();
        tokio::task::block_in_place(|| gate.spawn());
    }
    while let Some(id) = acked_rx.recv().await {
        acked.push(id);
    }
    while clients.join_next().await.is_some() {}
    assert!(acked.len() >= 120, "only {} acknowledged", acked.len());
    let (code, _, err) = gate.cli(&["queue", "flush"]);
    assert_eq!(code, 0, "{err}");
    queue_is_empty(&gate).await;

    let delivered: Vec<String> = dest.messages().iter().map(message_id).collect();
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    let lost: Vec<&String> = acked.iter().filter(|id| !unique.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    println!(
        "kill -9 x3: {} acknowledged, {} delivered, {} duplicate deliveries",
        acked.len(),
        delivered.len(),
        delivered.len() - unique.len()
    );
}

/// A tmpfs mounted for the test; unmounted (lazily, files may still be open) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mountpoint");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount");
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

/// Fills the file system holding `path` with a filler file until a write fails.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_4xx_loses_nothing_and_recovers_by_itself() {
    let port = free_port();
    let world = world(&mx("full.test", "mx.full.test", 26)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let _tmpfs = Tmpfs::mount(&dir.path().join("queue"), "4m");
    let gate = Mxgate::start(dir.path(), &settings(&world, port));
    let listen = gate.listen;
    let send = |id: String| async move {
        submit(listen, "s@senders.test", &["r@full.test"], &message(&id)).await
    };

    // The destination is down: "before" stays queued, deferred, across the full period.
    assert!(send("before".into()).await.is_ok());
    gate.wait_log(
        |l| l.contains("status=deferred") && l.contains("r@full.test"),
        WAIT,
    )
    .await;
    let filler = dir.path().join("queue").join("filler");
    fill(&filler);

    let mut acked = vec!["before".to_string()];
    let mut refused = Vec::new();
    for n in 0..5 {
        let id = format!("full{n}");
        match send(id.clone()).await {
            Ok(reply) => {
                assert!(reply.starts_with("250"), "{reply}");
                acked.push(id);
            }
            Err(SubmitError::Rejected { command, reply }) => {
                assert_eq!(command, ".", "refused at end of data: {reply}");
                assert!(
                    reply.starts_with("452") || reply.starts_with("451"),
                    "{reply}"
                );
                refused.push(id);
            }
            Err(e) => panic!("the session must survive a full disk: {e}"),
        }
    }
    assert!(!refused.is_empty(), "a full spool must refuse mail");

    std::fs::remove_file(&filler).expect("free space");
    let r = send("after".into())
        .await
        .expect("accepted again once space returns");
    assert!(r.starts_with("250"), "{r}");
    acked.push("after".into());
    // The destination comes back; no flush: the retry schedule ("1s") resumes by itself.
    let dest = receiver(26, port, ReceiverConfig::default()).await;
    queue_is_empty(&gate).await;

    let delivered: Vec<String> = dest.messages().iter().map(message_id).collect();
    for id in &acked {
        assert!(
            delivered.contains(id),
            "acknowledged {id} lost: {delivered:?}"
        );
    }
    for id in &refused {
        assert!(!delivered.contains(id), "refused {id} was delivered");
    }
}

/// The message records of a spool segment as `(offset, length)` (record layout in
/// crates/mxgate-queue/src/log/record.rs: 32-byte header, metadata, body).
fn message_records(seg: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 16; // the segment magic
    while pos + 32 <= seg.len() && &seg[pos..pos + 4] == b"MXR2" {
        let meta = u32::from_le_bytes(seg[pos + 8..pos + 12].try_into().expect("4")) as usize;
        let body = u64::from_le_bytes(seg[pos + 12..pos + 20].try_into().expect("8")) as usize;
        if seg[pos + 4] == 1 {
            out.push((pos, 32 + meta + body));
        }
        pos += 32 + meta + body;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_spool_file_is_quarantined_and_the_rest_delivered() {
    let port = free_port();
    let world = world(&mx("spool.test", "mx.spool.test", 27)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The destination is down: the messages stay in the spool.
    let mut gate = Mxgate::start(dir.path(), &settings(&world, port));
    for id in ["c1", "c2", "c3"] {
        submit(
            gate.listen,
            "s@senders.test",
            &["r@spool.test"],
            &message(id),
        )
        .await
        .expect("accepted");
    }
    gate.kill9();

    let log_dir = dir.path().join("queue").join("log");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&log_dir)
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut seg = std::fs::read(&files[0]).expect("read");
    let records = message_records(&seg);
    assert_eq!(records.len(), 3, "three message records");
    // Garbage over the middle of the second message's record (metadata and body).
    let (pos, len) = records[1];
    for b in &mut seg[pos + 8..pos + len - 8] {
        *b = 0xA5;
    }
    std::fs::write(&files[0], &seg).expect("corrupt");
    // Plain garbage under a valid-looking segment name.
    std::fs::write(
        log_dir.join("0000000000000000.seg"),
        b"\x00\xffnot a spool segment\n",
    )
    .expect("garbage");

    let dest = receiver(27, port, ReceiverConfig::default()).await;
    tokio::task::block_in_place(|| gate.spawn());
    let line = gate
        .wait_log(|l| l.contains("damaged spool record quarantined"), WAIT)
        .await;
    assert!(
        line.contains(&*files[0].file_name().expect("name").to_string_lossy()),
        "{line}"
    );
    queue_is_empty(&gate).await;
    let mut delivered: Vec<String> = dest.messages().iter().map(message_id).collect();
    delivered.sort();
    assert_eq!(
        delivered,
        ["c1", "c3"],
        "only the damaged message is missing"
    );
    let quarantine: Vec<_> = std::fs::read_dir(dir.path().join("queue").join("quarantine"))
        .expect("quarantine dir")
        .collect();
    assert_eq!(
        quarantine.len(),
        2,
        "the damaged record and the garbage file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_list_show_flush_delete_bounce() {
    let port = free_port();
    let senders = receiver(29, port, ReceiverConfig::default()).await;
    let mut records = mx("cmd.test", "mx.cmd.test", 28);
    records.extend(mx("senders.test", "mx.senders.test", 29));
    let world = world(&records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&world, port);
    // Only `flush` can explain a delivery within the test.
    s.queue = "retry_intervals = [\"1h\"]".into();
    let gate = Mxgate::start(dir.path(), &s);

    // The destination is down: every message is deferred once.
    for id in ["m1", "m2", "m3"] {
        submit(
            gate.listen,
            "sender@senders.test",
            &["r@cmd.test"],
            &message(id),
        )
        .await
        .expect("accepted");
    }
    let list = wait_queue(&gate, "three deferred messages", |l| {
        l.len() == 3
            && l.iter().all(|m| {
                m["recipients"][0]["attempts"].as_u64() == Some(1)
                    && !m["recipients"][0]["last_error"].is_null()
            })
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    for m in &list {
        assert_eq!(m["sender"], "sender@senders.test", "{m}");
        assert!(
            m["size"].as_u64().expect("size") >= message("m1").len() as u64,
            "{m}"
        );
        assert!(
            m["arrival"].as_u64().expect("arrival").abs_diff(now) < 60,
            "{m}"
        );
        let r = &m["recipients"][0];
        assert_eq!(r["address"], "r@cmd.test", "{m}");
        assert_eq!(r["domain"], "cmd.test", "{m}");
        assert_eq!(r["state"], "pending", "{m}");
        assert!(
            r["next_attempt"].as_u64().expect("next_attempt") > now + 1800,
            "retry in 1h: {m}"
        );
        assert!(
            !r["last_error"]["diagnostic"]
                .as_str()
                .expect("diagnostic")
                .is_empty(),
            "{m}"
        );
    }
    let ids: Vec<String> = list
        .iter()
        .map(|m| m["id"].as_str().expect("id").to_string())
        .collect();
    let (m1, m2, m3) = (&ids[0], &ids[1], &ids[2]);

    let (code, out, err) = gate.cli(&["queue", "list"]);
    assert_eq!(code, 0, "{err}");
    for id in &ids {
        assert!(out.contains(id.as_str()), "{out}");
    }
    assert!(
        out.contains("sender@senders.test") && out.contains("r@cmd.test"),
        "{out}"
    );

    let (code, out, err) = gate.cli(&["queue", "show", m2]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["id"], m2.as_str());
    assert_eq!(shown["recipients"][0]["address"], "r@cmd.test");
    let (code, _, err) = gate.cli(&["queue", "show", "0123456789ABCDEF"]);
    assert_ne!(code, 0, "unknown id must fail");
    assert!(err.contains("0123456789ABCDEF"), "{err}");

    // The destination comes back; only `flush` makes m1 go out before an hour passes.
    let dest = receiver(28, port, ReceiverConfig::default()).await;
    let (code, _, err) = gate.cli(&["queue", "flush", m1]);
    assert_eq!(code, 0, "{err}");
    let got = dest.next_message().await;
    assert_eq!(message_id(&got), "m1");
    wait_queue(&gate, "m1 delivered", |l| l.len() == 2).await;

    let (code, _, err) = gate.cli(&["queue", "delete", m2]);
    assert_eq!(code, 0, "{err}");
    let list = queue_list(&gate);
    assert!(list.iter().all(|m| m["id"] != m2.as_str()), "{list:?}");

    let (code, out, err) = gate.cli(&["queue", "bounce", m3]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": 1 recipient"), "{out}");
    let dsn = senders.next_message().await;
    let t = text(&dsn);
    assert!(t.contains("Final-Recipient: rfc822; r@cmd.test"), "{t}");
    assert!(t.contains("Action: failed"), "{t}");
    assert!(t.contains("Message-ID: <m3@senders.test>"), "{t}");
    queue_is_empty(&gate).await;

    // Nothing else was waiting: a full flush delivers nothing more.
    let (code, _, err) = gate.cli(&["queue", "flush"]);
    assert_eq!(code, 0, "{err}");
    let delivered: Vec<String> = dest.messages().iter().map(message_id).collect();
    assert_eq!(
        delivered,
        ["m1"],
        "deleted and bounced messages are never delivered"
    );
}

/// Accept rate with fsync: `cargo test -p mxgate --test queue_lifecycle -- --ignored
/// --nocapture accept_rate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn accept_rate() {
    let port = free_port();
    let world = world(&mx("rate.test", "mx.rate.test", 30)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&world, port);
    s.queue = "retry_intervals = [\"1h\"]".into();
    let gate = Mxgate::start(dir.path(), &s);
    for clients in [1usize, 16] {
        let per = 400 / clients;
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for c in 0..clients {
            let listen = gate.listen;
            set.spawn(async move {
                for n in 0..per {
                    submit(
                        listen,
                        "s@senders.test",
                        &["r@rate.test"],
                        &message(&format!("a{c}-{n}")),
                    )
                    .await
                    .expect("accepted");
                }
            });
        }
        while set.join_next().await.is_some() {}
        let total = clients * per;
        println!(
            "accept rate: {clients} client(s): {total} messages in {:?} = {:.0} msg/s",
            start.elapsed(),
            total as f64 / start.elapsed().as_secs_f64()
        );
    }
}

/// Startup with 100,000 queued messages in a version 1 spool (one file per message,
/// as mxgate before the log-structured spool wrote them): times `mxgate run` until
/// READY, which includes importing all of them into the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn startup_with_100k_queued_messages() {
    let port = free_port();
    let world = world(&mx("big.test", "mx.big.test", 31)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&world, port);
    s.queue = "retry_intervals = [\"1h\"]".into();
    let msg_dir = dir.path().join("queue").join("msg");
    std::fs::create_dir_all(&msg_dir).expect("msg");
    let body = message("big");
    let meta = r#"{"arrival_ms":1700000000000,"envelope":{"sender":"s@senders.test","body":"SevenBit","smtputf8":false,"ret":null,"envid":null,"recipients":[{"address":"r@big.test","notify":null,"orcpt":null}]},"dsn":false}"#;
    let mut bytes = format!("MXGATE-Q1 {} {}\n{meta}\n", meta.len(), body.len()).into_bytes();
    bytes.extend_from_slice(&body);
    let base = 0x100_0000_0000u64;
    for n in 0..100_000u64 {
        std::fs::write(msg_dir.join(format!("{:011X}{:05X}", base, n)), &bytes).expect("write");
    }
    let start = Instant::now();
    let gate = Mxgate::start(dir.path(), &s);
    println!(
        "startup with 100,000 queued messages (version 1 import): {:?}",
        start.elapsed()
    );
    let list = queue_list(&gate);
    assert_eq!(list.len(), 100_000);
}

/// `queue.delay_warning`: a recipient held back by TLS policy past the threshold gets
/// one RFC 3464 `Action: delayed` report through the sender's real MX, with the TLS
/// reason, and no second one however many retries follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_warning_is_sent_once_with_the_tls_reason() {
    let port = free_port();
    // No STARTTLS offered, but the domain requires `encrypt`.
    let dest = receiver(44, port, ReceiverConfig::default()).await;
    let senders = receiver(45, port, ReceiverConfig::default()).await;
    let mut records = mx("slow.test", "mx.slow.test", 44);
    records.extend(mx("senders.test", "mx.senders.test", 45));
    let world = world(&records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&world, port);
    s.domains = "\"slow.test\" = { level = \"encrypt\" }".into();
    // retry_intervals = ["1s"] and max_age = "1h" from the harness.
    s.queue = "delay_warning = \"1s\"".into();
    let gate = Mxgate::start(dir.path(), &s);

    // No NOTIFY: mxgate reads that as NOTIFY=FAILURE,DELAY (RFC 3461 §4.1).
    let reply = send_raw(
        gate.listen,
        "<sender@senders.test> RET=FULL ENVID=delay-env-1",
        &["<w@slow.test>"],
        &message("delay1"),
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    gate.wait_log(|l| l.contains("sender delay notification"), WAIT)
        .await;
    let warning = senders.next_message().await;
    assert_eq!(warning.sender, "");
    assert_eq!(warning.recipients[0].address, "sender@senders.test");
    let t = text(&warning);
    let human = mime_part(&t, "text/plain").expect("human-readable part");
    assert!(human.contains("<w@slow.test>"), "{human}");
    assert!(human.contains("delayed"), "{human}");
    assert!(human.contains("keep trying until"), "{human}");
    assert!(
        human.contains("encrypt") && human.to_ascii_lowercase().contains("starttls"),
        "the human part must say why: {human}"
    );
    let status = mime_part(&t, "message/delivery-status").expect("delivery-status part");
    assert!(
        status.contains("Original-Envelope-Id: delay-env-1"),
        "{status}"
    );
    assert!(
        status.contains("Final-Recipient: rfc822; w@slow.test\r\nAction: delayed\r\nStatus: 4.7."),
        "{status}"
    );
    assert!(
        status.contains("Diagnostic-Code: x-mxgate; encrypt: STARTTLS not offered by mx.slow.test"),
        "{status}"
    );
    assert!(status.contains("Will-Retry-Until: "), "{status}");
    assert!(
        mime_part(&t, "text/rfc822-headers").is_some() && !t.contains("Body of delay1."),
        "a delay warning carries the headers only, whatever RET says"
    );

    // Three more deferrals, each past the threshold: still one warning.
    let deferrals = |log: &str| {
        log.lines()
            .filter(|l| l.contains("status=deferred") && l.contains("w@slow.test"))
            .count()
    };
    let seen = deferrals(&gate.log());
    gate.wait_log(|_| deferrals(&gate.log()) >= seen + 3, WAIT)
        .await;
    assert_eq!(
        gate.log().matches("sender delay notification").count(),
        1,
        "a second warning was queued"
    );
    assert_eq!(senders.messages().len(), 1, "a second warning arrived");
    assert!(dest.messages().is_empty(), "never delivered without TLS");
    let list = queue_list(&gate);
    assert_eq!(list.len(), 1, "still queued, being retried: {list:?}");
}
