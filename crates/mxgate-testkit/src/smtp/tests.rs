//! Tests of the SMTP receiver itself, with a hand-driven client.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::certs::{TestCa, Validity};

async fn send(stream: &mut TcpStream, text: &str) -> String {
    stream.write_all(text.as_bytes()).await.unwrap();
    read_reply(stream).await
}

async fn read_reply(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        stream.read_exact(&mut byte).await.unwrap();
        out.push(byte[0]);
        if out.ends_with(b"\r\n") {
            let text = String::from_utf8_lossy(&out).into_owned();
            let last = text.trim_end().lines().last().unwrap_or("").to_string();
            if last.len() < 4 || last.as_bytes()[3] == b' ' {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn records_a_cleartext_message_with_params_and_scripts() {
    let config = ReceiverConfig::default().rcpt(
        "bad@example.com",
        ReplyScript::always("550 5.1.1 no such user"),
    );
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let mut s = TcpStream::connect(receiver.addr()).await.unwrap();
    assert!(read_reply(&mut s).await.starts_with("220"));
    let ehlo = send(&mut s, "EHLO client.test\r\n").await;
    assert!(ehlo.contains("PIPELINING") && !ehlo.contains("STARTTLS"));
    assert!(send(&mut s, "MAIL FROM:<a@b.test> BODY=8BITMIME\r\n")
        .await
        .starts_with("250"));
    assert!(send(&mut s, "RCPT TO:<bad@example.com>\r\n")
        .await
        .starts_with("550"));
    assert!(send(&mut s, "RCPT TO:<ok@example.com> NOTIFY=NEVER\r\n")
        .await
        .starts_with("250"));
    assert!(send(&mut s, "DATA\r\n").await.starts_with("354"));
    assert!(send(&mut s, "Subject: x\r\n\r\n..dot\r\n.\r\n")
        .await
        .starts_with("250"));
    assert!(send(&mut s, "QUIT\r\n").await.starts_with("221"));
    let msg = receiver.next_message().await;
    assert_eq!(msg.sender, "a@b.test");
    assert_eq!(msg.mail_params, vec!["BODY=8BITMIME"]);
    assert_eq!(msg.recipients.len(), 1);
    assert_eq!(msg.recipients[0].params, vec!["NOTIFY=NEVER"]);
    assert_eq!(msg.data, b"Subject: x\r\n\r\n.dot\r\n");
    assert_eq!(msg.tls, None);
    let sessions = receiver.wait_sessions(1).await;
    assert!(!sessions[0].bare_lf && !sessions[0].pipelining_violation);
    assert!(receiver
        .cleartext_transcript()
        .starts_with(b"EHLO client.test"));
}

#[tokio::test]
async fn first_n_script_counts_across_connections() {
    let config = ReceiverConfig {
        mail_reply: Some(ReplyScript::first_n(1, "451 4.3.0 later", "250 ok")),
        ..ReceiverConfig::default()
    };
    let receiver = SmtpReceiver::start(config).await.unwrap();
    for expected in ["451", "250"] {
        let mut s = TcpStream::connect(receiver.addr()).await.unwrap();
        read_reply(&mut s).await;
        send(&mut s, "EHLO c\r\n").await;
        assert!(send(&mut s, "MAIL FROM:<>\r\n").await.starts_with(expected));
    }
}

#[tokio::test]
async fn starttls_records_version_and_sni() {
    let ca = TestCa::new("Test CA");
    let cert = ca.issue(&["mx.test"], Validity::current());
    let receiver = SmtpReceiver::start(ReceiverConfig::with_starttls(cert.server_config()))
        .await
        .unwrap();
    let mut s = TcpStream::connect(receiver.addr()).await.unwrap();
    read_reply(&mut s).await;
    assert!(send(&mut s, "EHLO c\r\n").await.contains("STARTTLS"));
    assert!(send(&mut s, "STARTTLS\r\n").await.starts_with("220"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("mx.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, s)
        .await
        .unwrap();
    tls.write_all(b"EHLO c\r\nMAIL FROM:<x@y>\r\nRCPT TO:<r@z>\r\nDATA\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("354") {
        let mut b = [0u8; 512];
        let n = tls.read(&mut b).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
    }
    tls.write_all(b"hi\r\n.\r\nQUIT\r\n").await.unwrap();
    let msg = receiver.next_message().await;
    let info = msg.tls.expect("tls");
    assert_eq!(info.version, "TLSv1.3");
    assert_eq!(info.sni.as_deref(), Some("mx.test"));
    assert_eq!(msg.data, b"hi\r\n");
    let sessions = receiver.wait_sessions(1).await;
    let clear = String::from_utf8_lossy(&sessions[0].cleartext).into_owned();
    assert!(!clear.contains("MAIL FROM"), "{clear}");
}

#[tokio::test]
async fn flags_pipelining_without_advertisement_and_bare_lf() {
    let config = ReceiverConfig {
        pipelining: false,
        ..ReceiverConfig::default()
    };
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let mut s = TcpStream::connect(receiver.addr()).await.unwrap();
    read_reply(&mut s).await;
    assert!(!send(&mut s, "EHLO c\r\n").await.contains("PIPELINING"));
    s.write_all(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        .await
        .unwrap();
    read_reply(&mut s).await;
    read_reply(&mut s).await;
    send(&mut s, "NOOP\n").await;
    send(&mut s, "QUIT\r\n").await;
    let sessions = receiver.wait_sessions(1).await;
    assert!(sessions[0].pipelined);
    assert!(sessions[0].pipelining_violation);
    assert!(sessions[0].bare_lf);
}
