//! End-to-end tests of the relay path: real Postfix → mxgate (the real
//! binary) → DNS (a real authoritative server with a signed root) → real SMTP
//! receivers with STARTTLS, all on loopback.

mod common;

use std::net::SocketAddr;

use common::world::{ip, mx_pref as mx, queue_is_empty, settings, world, WAIT};
use common::{free_port, Mxgate};
use mxgate_testkit::certs::TestCert;
use mxgate_testkit::postfix::{submit, Postfix, SubmitError};
use mxgate_testkit::smtp::{ReceiverConfig, ReplyScript, SmtpReceiver};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

fn starttls_receiver() -> ReceiverConfig {
    ReceiverConfig::with_starttls(TestCert::self_signed(&["mx.dest.test"]).server_config())
}

fn message(id: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@senders.test>\r\nTo: rcpt@dest.test\r\nSubject: test {id}\r\n\
         Message-ID: <{id}@senders.test>\r\nDate: Sun, 22 Nov 2026 12:00:00 +0000\r\n\r\n\
         Hello {id}.\r\n.leading dot line\r\n\r\n-- \r\nbye\r\n"
    )
    .into_bytes()
}

/// Splits a received message into (Received: header values, the rest from the first
/// non-Received header on).
fn split_received(data: &[u8]) -> (Vec<String>, Vec<u8>) {
    let mut received = Vec::new();
    let mut rest = data;
    while rest.starts_with(b"Received:") {
        // A header ends at a CRLF not followed by folding white space.
        let mut end = 0;
        loop {
            let pos = rest[end..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("header line end")
                + end
                + 2;
            end = pos;
            if !matches!(rest.get(end), Some(b' ') | Some(b'\t')) {
                break;
            }
        }
        received.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        rest = &rest[end..];
    }
    (received, rest.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_relays_through_mxgate_to_the_mx_over_tls13() {
    if !Postfix::available() {
        panic!("postfix is not installed: run ./scripts/test.sh, which installs it");
    }
    let port = free_port();
    let receiver = SmtpReceiver::start_on(SocketAddr::new(ip(2), port), starttls_receiver())
        .await
        .expect("receiver");
    let world = world(&mx("dest.test", 10, "mx.dest.test", 2)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Mxgate::start(dir.path(), &settings(&world, port));
    let postfix = Postfix::start(gate.listen).await.expect("postfix");

    let original = message("e2e-1");
    let reply = submit(
        postfix.smtpd_addr(),
        "sender@senders.test",
        &["rcpt@dest.test"],
        &original,
    )
    .await
    .expect("postfix accepts");
    assert!(reply.starts_with("250"), "{reply}");

    let got = receiver.next_message().await;
    assert_eq!(got.sender, "sender@senders.test");
    assert_eq!(got.recipients.len(), 1);
    assert_eq!(got.recipients[0].address, "rcpt@dest.test");
    let tls = got.tls.as_ref().expect("delivered over TLS");
    assert_eq!(tls.version, "TLSv1.3");
    assert_eq!(tls.sni.as_deref(), Some("mx.dest.test"));

    // mxgate adds exactly one Received: header on top of Postfix's, and the rest is
    // what Postfix handed over.
    let (received, rest) = split_received(&got.data);
    assert_eq!(received.len(), 2, "{received:?}");
    assert!(
        received[0].contains("by relay.mxgate.test"),
        "{}",
        received[0]
    );
    assert!(received[1].contains("(Postfix)"), "{}", received[1]);
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(&original),
        "body must be byte-exact"
    );
    assert!(postfix.maillog().contains("status=sent"));
    let line = gate
        .wait_log(
            |l| l.contains("status=sent") && l.contains("rcpt@dest.test"),
            WAIT,
        )
        .await;
    assert!(line.contains("tls=TLSv1.3"), "{line}");
    assert!(line.contains("policy=may"), "{line}");
    // The Received: header names the queue id the delivery line logs (RFC 5321 §4.4).
    let id = line
        .split_once("id=")
        .and_then(|(_, rest)| rest.split(' ').next())
        .expect("id= in the log line");
    assert!(
        received[0].contains(&format!(" id {id}")),
        "{id}: {}",
        received[0]
    );
    queue_is_empty(&gate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn may_without_starttls_and_level_none_deliver_in_cleartext() {
    let port = free_port();
    let plain = SmtpReceiver::start_on(SocketAddr::new(ip(3), port), ReceiverConfig::default())
        .await
        .expect("receiver");
    let offered = SmtpReceiver::start_on(SocketAddr::new(ip(4), port), starttls_receiver())
        .await
        .expect("receiver");
    let mut records = mx("plain.test", 10, "mx.plain.test", 3);
    records.extend(mx("none.test", 10, "mx.none.test", 4));
    let world = world(&records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&world, port);
    s.domains = "\"none.test\" = { level = \"none\" }".into();
    let gate = Mxgate::start(dir.path(), &s);

    submit(
        gate.listen,
        "a@senders.test",
        &["x@plain.test"],
        &message("p1"),
    )
    .await
    .expect("accepted");
    submit(
        gate.listen,
        "a@senders.test",
        &["y@none.test"],
        &message("n1"),
    )
    .await
    .expect("accepted");

    let got = plain.next_message().await;
    assert!(got.tls.is_none(), "no STARTTLS offered: cleartext at may");
    let got = offered.next_message().await;
    assert!(got.tls.is_none(), "level none never uses STARTTLS");
    let sessions = offered.sessions();
    assert!(
        sessions.iter().all(|s| !s
            .commands
            .iter()
            .any(|c| c.eq_ignore_ascii_case("STARTTLS"))),
        "level none sent STARTTLS"
    );
    let line = gate
        .wait_log(
            |l| l.contains("status=sent") && l.contains("y@none.test"),
            WAIT,
        )
        .await;
    assert!(
        line.contains("policy=none") && line.contains("tls=none"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_mx_is_used_when_the_first_refuses_connections() {
    let port = free_port();
    // 127.0.0.5 has nothing listening on `port`: connection refused.
    let second = SmtpReceiver::start_on(SocketAddr::new(ip(6), port), starttls_receiver())
        .await
        .expect("receiver");
    let mut records = mx("two.test", 10, "mx1.two.test", 5);
    records.extend(mx("two.test", 20, "mx2.two.test", 6));
    let world = world(&records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Mxgate::start(dir.path(), &settings(&world, port));

    submit(
        gate.listen,
        "a@senders.test",
        &["r@two.test"],
        &message("t1"),
    )
    .await
    .expect("accepted");
    let got = second.next_message().await;
    assert_eq!(got.recipients[0].address, "r@two.test");
    let line = gate
        .wait_log(
            |l| l.contains("status=sent") && l.contains("r@two.test"),
            WAIT,
        )
        .await;
    assert!(line.contains("mx2.two.test"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_and_550_fail_permanently_and_the_sender_gets_one_dsn() {
    let port = free_port();
    let dest = SmtpReceiver::start_on(
        SocketAddr::new(ip(7), port),
        starttls_receiver().rcpt(
            "bad@dest.test",
            ReplyScript::always("550 5.1.1 no such user"),
        ),
    )
    .await
    .expect("receiver");
    // The sender's own MX receives the DSNs.
    let senders = SmtpReceiver::start_on(SocketAddr::new(ip(8), port), ReceiverConfig::default())
        .await
        .expect("receiver");
    let mut records = mx("dest.test", 10, "mx.dest.test", 7);
    records.extend(mx("senders.test", 10, "mx.senders.test", 8));
    records.push("nullmx.test. 300 IN MX 0 .".into());
    let world = world(&records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Mxgate::start(dir.path(), &settings(&world, port));

    submit(
        gate.listen,
        "sender@senders.test",
        &["good@dest.test", "bad@dest.test"],
        &message("f1"),
    )
    .await
    .expect("accepted");
    let got = dest.next_message().await;
    let rcpts: Vec<_> = got.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(
        rcpts,
        ["good@dest.test"],
        "only the accepted recipient gets DATA"
    );

    let dsn = senders.next_message().await;
    assert_eq!(dsn.sender, "", "DSNs come from <>");
    assert_eq!(dsn.recipients[0].address, "sender@senders.test");
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; bad@dest.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(
        !text.contains("Final-Recipient: rfc822; good@dest.test"),
        "{text}"
    );

    submit(
        gate.listen,
        "sender@senders.test",
        &["x@nullmx.test"],
        &message("f2"),
    )
    .await
    .expect("accepted");
    let dsn = senders.next_message().await;
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Final-Recipient: rfc822; x@nullmx.test"),
        "{text}"
    );
    assert!(
        text.contains("Status: 5.1.10"),
        "null MX is RFC 7505 §4.2's 5.1.10: {text}"
    );
    let line = gate
        .wait_log(
            |l| l.contains("status=bounced") && l.contains("x@nullmx.test"),
            WAIT,
        )
        .await;
    assert!(
        line.contains("null MX") || line.contains("does not accept mail"),
        "{line}"
    );
    queue_is_empty(&gate).await;
}

/// `kill -9` while clients submit concurrently: every message that got `250` is
/// delivered after the restart, and none twice. The destination is down while the
/// messages are submitted, so that the kill can only hit the accept path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_submission_loses_nothing() {
    let port = free_port();
    let world = world(&mx("dest.test", 10, "mx.dest.test", 9)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut gate = Mxgate::start(dir.path(), &settings(&world, port));
    let listen = gate.listen;

    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..8 {
        let acked_tx = acked_tx.clone();
        clients.spawn(async move {
            for n in 0..40 {
                let id = format!("k{client}-{n}");
                match submit(listen, "s@senders.test", &["r@dest.test"], &message(&id)).await {
                    Ok(_) => {
                        let _ = acked_tx.send(id);
                    }
                    Err(SubmitError::Io(_)) | Err(SubmitError::Rejected { .. }) => return,
                }
            }
        });
    }
    drop(acked_tx);
    // Kill once a good number of messages are acknowledged, while the clients are
    // still sending.
    let mut acked = Vec::new();
    while acked.len() < 60 {
        match acked_rx.recv().await {
            Some(id) => acked.push(id),
            None => break,
        }
    }
    gate.kill9();
    while let Some(id) = acked_rx.recv().await {
        acked.push(id);
    }
    while clients.join_next().await.is_some() {}
    assert!(acked.len() >= 60, "only {} acknowledged", acked.len());

    let receiver = SmtpReceiver::start_on(SocketAddr::new(ip(9), port), ReceiverConfig::default())
        .await
        .expect("receiver");
    gate.spawn();
    let (code, _, err) = gate.cli(&["queue", "flush"]);
    assert_eq!(code, 0, "{err}");
    queue_is_empty(&gate).await;

    let delivered: Vec<String> = receiver
        .messages()
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data);
            text.split("Message-ID: <")
                .nth(1)
                .and_then(|s| s.split('@').next())
                .expect("message id")
                .to_string()
        })
        .collect();
    let mut unique = delivered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        delivered.len(),
        "a message was delivered twice"
    );
    for id in &acked {
        assert!(delivered.contains(id), "acknowledged {id} was lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_rejects_smuggling_strangers_and_oversized_mail() {
    let port = free_port();
    let receiver = SmtpReceiver::start_on(SocketAddr::new(ip(10), port), ReceiverConfig::default())
        .await
        .expect("receiver");
    let world = world(&mx("dest.test", 10, "mx.dest.test", 10)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&world, port);
    s.listener = "allowed_clients = [\"127.0.0.1/32\"]\nmax_message_size = 4096".into();
    let gate = Mxgate::start(dir.path(), &s);

    // A client outside allowed_clients: 554, then the connection is closed.
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(ip(11), 0))
        .expect("bind 127.0.0.11");
    let stream = socket.connect(gate.listen).await.expect("connect");
    let mut stranger = BufReader::new(stream);
    let mut line = String::new();
    stranger.read_line(&mut line).await.expect("banner");
    assert!(line.starts_with("554"), "{line}");
    line.clear();
    assert_eq!(
        stranger.read_line(&mut line).await.expect("eof"),
        0,
        "not closed"
    );

    // Bare LF inside DATA (an SMTP smuggling attempt): rejected, nothing queued.
    let stream = TcpStream::connect(gate.listen).await.expect("connect");
    let mut conn = BufReader::new(stream);
    let mut replies = Vec::new();
    conn.get_mut()
        .write_all(
            b"EHLO client.test\r\nMAIL FROM:<a@senders.test>\r\nRCPT TO:<r@dest.test>\r\nDATA\r\n",
        )
        .await
        .expect("write");
    // Banner, EHLO, MAIL, RCPT, DATA: five final reply lines.
    while replies.len() < 5 {
        let mut l = String::new();
        conn.read_line(&mut l).await.expect("read");
        if l.as_bytes().get(3) == Some(&b' ') {
            replies.push(l);
        }
    }
    assert!(replies[4].starts_with("354"), "{replies:?}");
    conn.get_mut()
        .write_all(b"Subject: x\r\n\r\nline\n.\nMAIL FROM:<evil@x>\r\nmore\r\n.\r\n")
        .await
        .expect("write");
    let mut l = String::new();
    conn.read_line(&mut l).await.expect("read");
    assert!(l.starts_with('5'), "bare LF must be rejected: {l}");

    // Oversized message: 552, and the session goes on with the next message.
    conn.get_mut()
        .write_all(b"RSET\r\nMAIL FROM:<a@senders.test>\r\nRCPT TO:<r@dest.test>\r\nDATA\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let mut l = String::new();
        conn.read_line(&mut l).await.expect("read");
        seen.push(l);
    }
    assert!(seen[3].starts_with("354"), "{seen:?}");
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..100 {
        big.extend_from_slice(&[b'x'; 78]);
        big.extend_from_slice(b"\r\n");
    }
    big.extend_from_slice(b".\r\n");
    conn.get_mut().write_all(&big).await.expect("write");
    let mut l = String::new();
    conn.read_line(&mut l).await.expect("read");
    assert!(l.starts_with("552"), "{l}");
    drop(conn);

    let reply = submit(
        gate.listen,
        "a@senders.test",
        &["r@dest.test"],
        &message("ok"),
    )
    .await
    .expect("a normal message is still accepted");
    assert!(reply.starts_with("250"));
    let got = receiver.next_message().await;
    let text = String::from_utf8_lossy(&got.data);
    assert!(text.contains("Message-ID: <ok@senders.test>"));
    assert!(!text.contains("evil"), "smuggled content was forwarded");
    queue_is_empty(&gate).await;
    assert_eq!(
        receiver.messages().len(),
        1,
        "only the good message was delivered"
    );
}
