//! End-to-end tests of the outbound session through the real binary (docs/operations.md,
//! "Delivery"): a connection lost after the final dot is never followed by a second
//! copy to that MX in the same attempt (fresh or reused session), the per-attempt
//! MX address limit, bounded replies, SMTPUTF8 bounces, and words instead of Debug
//! text in what operators read.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::world::{ip, mx_pref, settings, world, WAIT};
use common::{free_port, Mxgate};
use mxgate_testkit::postfix::submit;
use mxgate_testkit::smtp::{ReceiverConfig, ReplyScript, SmtpReceiver};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Counters of a hand-written MX.
#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    /// Messages read to the final dot.
    data: AtomicUsize,
}

/// A hand-written MX on `addr`: greets with `greeting` (closing at once unless it is
/// a `220`), accepts every command, and after the final dot of the `n`-th transaction
/// of a connection closes without a reply when `close_after(n)`, else answers `250`.
async fn raw_mx(
    addr: SocketAddr,
    greeting: &'static str,
    close_after: fn(usize) -> bool,
) -> Arc<Counts> {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.connections.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let _ = serve(stream, greeting, close_after, &c).await;
            });
        }
    });
    counts
}

async fn serve(
    stream: TcpStream,
    greeting: &str,
    close_after: fn(usize) -> bool,
    counts: &Counts,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(format!("{greeting}\r\n").as_bytes()).await?;
    if !greeting.starts_with("220") {
        return Ok(());
    }
    let mut transactions = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("DATA") {
            w.write_all(b"354 go ahead\r\n").await?;
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" {
                    break;
                }
            }
            counts.data.fetch_add(1, Ordering::SeqCst);
            transactions += 1;
            if close_after(transactions) {
                return Ok(());
            }
            w.write_all(b"250 2.0.0 queued\r\n").await?;
        } else if upper.starts_with("QUIT") {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if upper.starts_with("EHLO") {
            w.write_all(b"250-raw.test\r\n250 8BITMIME\r\n").await?;
        } else {
            w.write_all(b"250 ok\r\n").await?;
        }
    }
}

fn message(id: &str) -> Vec<u8> {
    format!(
        "From: s@senders.test\r\nTo: r@x.test\r\nSubject: {id}\r\nMessage-ID: <{id}@senders.test>\r\n\r\nbody {id}\r\n"
    )
    .into_bytes()
}

/// What an operator reads must never hold Rust Debug text.
fn assert_no_debug_text(what: &str, text: &str) {
    for bad in ["Other(", "Some(", "OtherError", "None)"] {
        assert!(
            !text.contains(bad),
            "{what} holds Debug text {bad:?}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_after_the_final_dot_is_never_resent_to_that_mx_in_one_attempt() {
    let port = free_port();
    // lost.test: the first MX always closes after the dot; the second accepts.
    let lossy = raw_mx(SocketAddr::new(ip(30), port), "220 raw.test", |_| true).await;
    let backup = SmtpReceiver::start_on(SocketAddr::new(ip(31), port), ReceiverConfig::default())
        .await
        .expect("receiver");
    // reuse.test: the first MX delivers the first message of a connection and closes
    // after the dot of the second (which comes over the reused session).
    let flaky = raw_mx(SocketAddr::new(ip(32), port), "220 raw.test", |n| n >= 2).await;
    let backup2 = SmtpReceiver::start_on(SocketAddr::new(ip(33), port), ReceiverConfig::default())
        .await
        .expect("receiver");
    let mut records = mx_pref("lost.test", 10, "mx1.lost.test", 30);
    records.extend(mx_pref("lost.test", 20, "mx2.lost.test", 31));
    records.extend(mx_pref("reuse.test", 10, "mx1.reuse.test", 32));
    records.extend(mx_pref("reuse.test", 20, "mx2.reuse.test", 33));
    let world = world(&records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Mxgate::start(dir.path(), &settings(&world, port));

    submit(
        gate.listen,
        "s@senders.test",
        &["r@lost.test"],
        &message("l1"),
    )
    .await
    .expect("accepted");
    let got = backup.next_message().await;
    assert_eq!(got.recipients[0].address, "r@lost.test");
    let sent = gate
        .wait_log(
            |l| l.contains("status=sent") && l.contains("r@lost.test"),
            WAIT,
        )
        .await;
    assert!(sent.contains("mx2.lost.test"), "{sent}");
    assert_eq!(
        lossy.data.load(Ordering::SeqCst),
        1,
        "the lossy MX got it once"
    );
    assert_eq!(
        lossy.connections.load(Ordering::SeqCst),
        1,
        "and was not dialled again"
    );
    assert_eq!(backup.messages().len(), 1, "the second MX got one copy");
    let log = gate.log();
    assert!(log.contains("may be delivered more than once"), "{log}");

    // Reused session: message 1 goes to mx1 and the session is parked; message 2
    // reuses it and is lost after the dot; mx1 is not dialled afresh, mx2 gets it.
    submit(
        gate.listen,
        "s@senders.test",
        &["r@reuse.test"],
        &message("u1"),
    )
    .await
    .expect("accepted");
    gate.wait_log(
        |l| l.contains("status=sent") && l.contains("r@reuse.test") && l.contains("mx1.reuse.test"),
        WAIT,
    )
    .await;
    submit(
        gate.listen,
        "s@senders.test",
        &["r2@reuse.test"],
        &message("u2"),
    )
    .await
    .expect("accepted");
    let got = backup2.next_message().await;
    assert_eq!(got.recipients[0].address, "r2@reuse.test");
    let line = gate
        .wait_log(
            |l| l.contains("status=sent") && l.contains("r2@reuse.test"),
            WAIT,
        )
        .await;
    assert!(line.contains("mx2.reuse.test"), "{line}");
    assert_eq!(
        flaky.connections.load(Ordering::SeqCst),
        1,
        "one connection, reused"
    );
    assert_eq!(flaky.data.load(Ordering::SeqCst), 2, "each message once");
    assert_eq!(backup2.messages().len(), 1);
    let log = gate.log();
    assert!(!log.contains("status=bounced"), "{log}");
    assert_no_debug_text("log", &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_mx_hosts_that_greet_421_cost_at_most_five_addresses_per_attempt() {
    let port = free_port();
    let mut records = Vec::new();
    let mut counters = Vec::new();
    for i in 0..40u8 {
        let last = 100 + i;
        counters.push(raw_mx(SocketAddr::new(ip(last), port), "421 4.3.2 busy", |_| false).await);
        records.extend(mx_pref(
            "many.test",
            10 + u16::from(i),
            &format!("mx{i}.many.test"),
            last,
        ));
    }
    let world = world(&records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&world, port);
    s.queue = "retry_intervals = [\"1h\"]\n".into();
    let gate = Mxgate::start(dir.path(), &s);
    submit(
        gate.listen,
        "s@senders.test",
        &["r@many.test"],
        &message("m1"),
    )
    .await
    .expect("accepted");
    let line = gate
        .wait_log(
            |l| l.contains("status=deferred") && l.contains("r@many.test"),
            WAIT,
        )
        .await;
    let dialled: usize = counters
        .iter()
        .map(|c| c.connections.load(Ordering::SeqCst))
        .sum();
    assert_eq!(dialled, 5, "delivery.mx_address_limit = 5: {line}");
    assert!(line.contains("dsn=4."), "{line}");
    assert_no_debug_text("log", &gate.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_450_replies_for_fifty_recipients_stay_bounded() {
    let port = free_port();
    // 200 lines of 4000 octets, with an escape sequence and a NUL-free control byte.
    let mut reply = String::new();
    for i in 0..199 {
        reply.push_str(&format!(
            "450-4.2.0 line {i} \u{1b}[31m{}\n",
            "x".repeat(3980)
        ));
    }
    reply.push_str(&format!("450 4.2.0 last \u{7}{}", "y".repeat(3980)));
    let rcpts: Vec<String> = (0..50).map(|i| format!("r{i}@big.test")).collect();
    let mut config = ReceiverConfig::default();
    for r in &rcpts {
        config = config.rcpt(r, ReplyScript::always(&reply));
    }
    let dest = SmtpReceiver::start_on(SocketAddr::new(ip(34), port), config)
        .await
        .expect("receiver");
    let senders = SmtpReceiver::start_on(SocketAddr::new(ip(35), port), ReceiverConfig::default())
        .await
        .expect("receiver");
    let mut records = mx_pref("big.test", 10, "mx.big.test", 34);
    records.extend(mx_pref("senders.test", 10, "mx.senders.test", 35));
    let world = world(&records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = settings(&world, port);
    // One attempt, then expiry into one DSN.
    s.queue = "retry_intervals = [\"1s\"]\nmax_age = \"2s\"\n".into();
    let gate = Mxgate::start(dir.path(), &s);
    let queue_dir = dir.path().join("queue");
    let before = dir_size(&queue_dir);
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    submit(gate.listen, "s@senders.test", &rcpt_refs, &message("b1"))
        .await
        .expect("accepted");
    let line = gate
        .wait_log(
            |l| l.contains("status=deferred") && l.contains("r0@big.test"),
            WAIT,
        )
        .await;
    assert!(
        line.len() < 8 * 1024,
        "log line bounded: {} bytes",
        line.len()
    );
    assert!(!line.chars().any(|c| c.is_control()), "{line}");
    let list = gate.cli(&["queue", "list"]);
    assert!(
        !list.1.chars().any(|c| c.is_control() && c != '\n'),
        "queue list shows raw control bytes"
    );
    let grown = dir_size(&queue_dir).saturating_sub(before);
    assert!(
        grown < 50 * 4096 + 64 * 1024,
        "spool grew {grown} bytes for 50 recipients"
    );
    // The expiry DSN: every line within 998 octets, the reply bounded.
    let dsn = senders.next_message().await;
    let text = String::from_utf8_lossy(&dsn.data);
    for l in text.split("\r\n") {
        assert!(l.len() <= 998, "DSN line of {} octets", l.len());
    }
    assert!(text.contains("Status: 5.2.0"), "{text}");
    assert!(text.contains("\\x1b[31m"), "escaped, not raw: {text}");
    assert!(!text.contains('\u{1b}'));
    assert!(
        line.contains("relay=mx.big.test["),
        "the receiver answered: {line}"
    );
    drop(dest);
    assert_no_debug_text("log", &gate.log());
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Submits one message with `MAIL FROM:<..> SMTPUTF8` (the testkit's `submit` sends
/// no parameters).
async fn submit_smtputf8(addr: SocketAddr, sender: &str, rcpt: &str, message: &[u8]) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut expect = async |r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, code: char| loop {
        line.clear();
        r.read_line(&mut line).await.expect("read");
        assert!(line.starts_with(code), "wanted {code}xx, got {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    };
    expect(&mut r, '2').await;
    for (cmd, code) in [
        ("EHLO client.test\r\n".to_string(), '2'),
        (format!("MAIL FROM:<{sender}> SMTPUTF8\r\n"), '2'),
        (format!("RCPT TO:<{rcpt}>\r\n"), '2'),
        ("DATA\r\n".to_string(), '3'),
    ] {
        w.write_all(cmd.as_bytes()).await.expect("write");
        expect(&mut r, code).await;
    }
    w.write_all(message).await.expect("write");
    w.write_all(b".\r\n").await.expect("write");
    expect(&mut r, '2').await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtputf8_headers_bounce_5_6_7_at_a_server_without_smtputf8() {
    let port = free_port();
    let dest = SmtpReceiver::start_on(
        SocketAddr::new(ip(36), port),
        ReceiverConfig {
            smtputf8: false,
            ..ReceiverConfig::default()
        },
    )
    .await
    .expect("receiver");
    let senders = SmtpReceiver::start_on(SocketAddr::new(ip(37), port), ReceiverConfig::default())
        .await
        .expect("receiver");
    let mut records = mx_pref("ascii.test", 10, "mx.ascii.test", 36);
    records.extend(mx_pref("senders.test", 10, "mx.senders.test", 37));
    let world = world(&records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Mxgate::start(dir.path(), &settings(&world, port));
    let message =
        "From: s@senders.test\r\nTo: r@ascii.test\r\nSubject: caf\u{e9} cr\u{e8}me\r\n\r\nbody\r\n";
    submit_smtputf8(
        gate.listen,
        "s@senders.test",
        "r@ascii.test",
        message.as_bytes(),
    )
    .await;
    let line = gate
        .wait_log(
            |l| l.contains("status=bounced") && l.contains("r@ascii.test"),
            WAIT,
        )
        .await;
    assert!(line.contains("dsn=5.6.7"), "{line}");
    let dsn = senders.next_message().await;
    let text = String::from_utf8_lossy(&dsn.data);
    assert!(
        text.contains("Final-Recipient: rfc822; r@ascii.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.6.7"), "log and DSN agree: {text}");
    assert!(dest.messages().is_empty(), "never sent without SMTPUTF8");
    let log = gate.log();
    assert_no_debug_text("log", &log);
    assert_no_debug_text("DSN", &text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_delivery_report_the_same_tls_session() {
    let port = free_port();
    let cert = mxgate_testkit::certs::TestCert::self_signed(&["mx.agree.test"]);
    let dest = SmtpReceiver::start_on(
        SocketAddr::new(ip(38), port),
        ReceiverConfig::with_starttls(cert.server_config()),
    )
    .await
    .expect("receiver");
    let world = world(&mx_pref("agree.test", 10, "mx.agree.test", 38)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Mxgate::start(dir.path(), &settings(&world, port));

    let (code, json, err) =
        tokio::task::block_in_place(|| gate.cli(&["check", "agree.test", "--json"]));
    assert_eq!(code, 0, "{json}{err}");
    assert_no_debug_text("check --json", &json);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let addr = &v["mx"][0]["addresses"][0];
    let check_version = addr["tls"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let check_cipher = addr["tls"]["cipher"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(addr["tls"]["sni"], "mx.agree.test");
    assert_eq!(addr["verdict"], "pass");
    // RFC 3339 dates.
    let not_after = addr["tls"]["chain"][0]["not_after"]
        .as_str()
        .unwrap_or_default();
    assert!(
        not_after.len() == 20 && not_after.ends_with('Z') && not_after.as_bytes()[10] == b'T',
        "{not_after}"
    );
    let (_, text, _) = tokio::task::block_in_place(|| gate.cli(&["check", "agree.test"]));
    assert_no_debug_text("check", &text);

    submit(
        gate.listen,
        "s@senders.test",
        &["r@agree.test"],
        &message("a1"),
    )
    .await
    .expect("accepted");
    let got = dest.next_message().await;
    let line = gate
        .wait_log(
            |l| l.contains("status=sent") && l.contains("r@agree.test"),
            WAIT,
        )
        .await;
    assert!(
        line.contains(&format!("tls={check_version} ")),
        "{line} vs check {check_version}"
    );
    assert!(
        line.contains(&format!("cipher={check_cipher} ")),
        "{line} vs check {check_cipher}"
    );
    let tls = got.tls.expect("delivered over TLS");
    assert_eq!(tls.version, check_version);
    assert_eq!(tls.cipher, check_cipher);
    // Both sessions sent the same SNI.
    let snis: Vec<Option<String>> = dest
        .sessions()
        .iter()
        .filter_map(|s| s.tls.as_ref().map(|t| t.sni.clone()))
        .collect();
    assert!(snis.len() >= 2, "{snis:?}");
    assert!(
        snis.iter().all(|s| s.as_deref() == Some("mx.agree.test")),
        "{snis:?}"
    );
}
