//! MITM modes against a trivial upstream SMTP server that offers STARTTLS.

use std::sync::Arc;

use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{Mitm, MitmMode, INJECTED_REPLY};
use crate::certs::{TestCa, Validity};

/// What the upstream received: each command line and whether it came inside TLS.
type Seen = mpsc::UnboundedSender<(String, bool)>;

/// A one-connection SMTP server: EHLO offers STARTTLS, everything else gets 250.
async fn upstream(
    config: Arc<rustls::ServerConfig>,
) -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<(String, bool)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut plain = BufReader::new(stream);
        plain
            .get_mut()
            .write_all(b"220 upstream ESMTP\r\n")
            .await
            .unwrap();
        if serve(&mut plain, &tx, false).await {
            let tls = TlsAcceptor::from(config)
                .accept(plain.into_inner())
                .await
                .unwrap();
            let mut tls = BufReader::new(tls);
            serve(&mut tls, &tx, true).await;
        }
    });
    (addr, rx)
}

/// Serves commands; returns true when STARTTLS was accepted.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    seen: &Seen,
    tls: bool,
) -> bool {
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return false;
        }
        let command = line.trim().to_ascii_uppercase();
        let _ = seen.send((line.trim().to_owned(), tls));
        let reply: &[u8] = if command.starts_with("EHLO") {
            b"250-upstream\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
        } else if command == "STARTTLS" && !tls {
            stream
                .get_mut()
                .write_all(b"220 2.0.0 go ahead\r\n")
                .await
                .unwrap();
            return true;
        } else if command == "QUIT" {
            stream.get_mut().write_all(b"221 bye\r\n").await.unwrap();
            return false;
        } else {
            b"250 ok\r\n"
        };
        stream.get_mut().write_all(reply).await.unwrap();
    }
}

async fn reply<S: AsyncRead + Unpin>(stream: &mut BufReader<S>) -> String {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        reply.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return reply;
        }
    }
}

fn connector(ca: &TestCa) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Connects through `mitm`, reads the greeting, sends EHLO and returns its reply.
async fn ehlo(mitm: &Mitm) -> (BufReader<TcpStream>, String) {
    let mut client = BufReader::new(TcpStream::connect(mitm.addr()).await.unwrap());
    assert!(reply(&mut client).await.starts_with("220 "));
    client
        .get_mut()
        .write_all(b"EHLO client.test\r\n")
        .await
        .unwrap();
    let ehlo = reply(&mut client).await;
    (client, ehlo)
}

async fn starttls(client: &mut BufReader<TcpStream>) -> String {
    client.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    reply(client).await
}

fn setup() -> (TestCa, Arc<rustls::ServerConfig>) {
    let ca = TestCa::new("MITM test CA");
    let cert = ca.issue(&["mx.example.test"], Validity::current());
    (ca, cert.server_config())
}

/// Drains what the upstream saw so far (after the client side finished).
fn drain(seen: &mut mpsc::UnboundedReceiver<(String, bool)>) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Ok(item) = seen.try_recv() {
        out.push(item);
    }
    out
}

#[tokio::test]
async fn passthrough_lets_tls_through_and_records_no_mail_in_the_clear() {
    let (ca, config) = setup();
    let (addr, mut seen) = upstream(config).await;
    let mitm = Mitm::start(addr, MitmMode::Passthrough).await.unwrap();
    let (mut client, ehlo) = ehlo(&mitm).await;
    assert!(ehlo.contains("250-STARTTLS\r\n"));
    assert!(starttls(&mut client).await.starts_with("220 "));
    let name = ServerName::try_from("mx.example.test").unwrap();
    let tls = connector(&ca)
        .connect(name, client.into_inner())
        .await
        .unwrap();
    let mut tls = BufReader::new(tls);
    tls.get_mut()
        .write_all(b"MAIL FROM:<secret@example.test>\r\n")
        .await
        .unwrap();
    assert_eq!(reply(&mut tls).await, "250 ok\r\n");
    assert!(mitm.client_handshake_completed());
    assert!(!mitm.cleartext_contains("MAIL FROM"));
    assert!(mitm.cleartext_contains("EHLO client.test"));
    let upstream = drain(&mut seen);
    assert!(upstream.contains(&("MAIL FROM:<secret@example.test>".to_owned(), true)));
}

#[tokio::test]
async fn strip_removes_starttls_and_refuses_it() {
    let (_, config) = setup();
    let (addr, mut seen) = upstream(config).await;
    let mitm = Mitm::start(addr, MitmMode::StripStarttls).await.unwrap();
    let (mut client, ehlo) = ehlo(&mitm).await;
    assert_eq!(ehlo, "250-upstream\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
    assert!(starttls(&mut client).await.starts_with("502 "));
    client.get_mut().write_all(b"QUIT\r\n").await.unwrap();
    assert!(reply(&mut client).await.starts_with("221"));
    assert_eq!(mitm.starttls_count(), 1);
    assert!(!drain(&mut seen).iter().any(|(line, _)| line == "STARTTLS"));
}

#[test]
fn strip_repairs_the_last_line_marker() {
    let stripped = super::strip_starttls(b"250-host\r\n250-SIZE 10\r\n250 STARTTLS\r\n");
    assert_eq!(stripped, b"250-host\r\n250 SIZE 10\r\n");
    let untouched = super::strip_starttls(b"250-host\r\n250 SIZE 10\r\n");
    assert_eq!(untouched, b"250-host\r\n250 SIZE 10\r\n");
}

#[tokio::test]
async fn reply_454_and_554_answer_starttls_without_upstream() {
    for (mode, code) in [(MitmMode::Reply454, "454 "), (MitmMode::Reply554, "554 ")] {
        let (_, config) = setup();
        let (addr, mut seen) = upstream(config).await;
        let mitm = Mitm::start(addr, mode).await.unwrap();
        let (mut client, ehlo) = ehlo(&mitm).await;
        assert!(ehlo.contains("STARTTLS"), "the offer stays visible");
        assert!(starttls(&mut client).await.starts_with(code));
        client.get_mut().write_all(b"QUIT\r\n").await.unwrap();
        assert!(reply(&mut client).await.starts_with("221"));
        assert!(!drain(&mut seen).iter().any(|(line, _)| line == "STARTTLS"));
        assert!(!mitm.client_handshake_completed());
    }
}

#[tokio::test]
async fn inject_sends_an_extra_reply_in_the_same_packet_as_220() {
    let (ca, config) = setup();
    let (addr, _seen) = upstream(config).await;
    let mitm = Mitm::start(addr, MitmMode::InjectAfterReady).await.unwrap();
    let (mut client, _) = ehlo(&mitm).await;
    client.get_mut().write_all(b"STARTTLS\r\n").await.unwrap();
    let first = reply(&mut client).await;
    assert!(first.starts_with("220 "));
    // The injected line is already buffered: a careful client must notice and abort.
    assert_eq!(client.buffer(), INJECTED_REPLY.as_bytes());
    // A careless client that goes on still reaches the real upstream's TLS.
    let name = ServerName::try_from("mx.example.test").unwrap();
    let mut stream = client.into_inner();
    let tls = connector(&ca).connect(name, &mut stream).await;
    assert!(tls.is_ok());
}

#[tokio::test]
async fn own_certificate_terminates_tls_and_relays_cleartext_upstream() {
    let (_, upstream_config) = setup();
    let attacker = TestCa::new("attacker CA");
    let forged = attacker.issue(&["mx.example.test"], Validity::current());
    let (addr, mut seen) = upstream(upstream_config).await;
    let mitm = Mitm::start(addr, MitmMode::OwnCertificate(forged.server_config()))
        .await
        .unwrap();

    // A client that trusts only the real CA refuses the forged certificate.
    let (real_ca, _) = setup();
    let (mut client, _) = ehlo(&mitm).await;
    assert!(starttls(&mut client).await.starts_with("220 "));
    let name = ServerName::try_from("mx.example.test").unwrap();
    assert!(connector(&real_ca)
        .connect(name.clone(), client.into_inner())
        .await
        .is_err());
    assert!(!mitm.client_handshake_completed());

    // A client that trusts the attacker talks to the attacker; upstream sees cleartext.
    let (addr, mut seen2) = {
        drop(drain(&mut seen));
        let (_, config) = setup();
        upstream(config).await
    };
    let mitm = Mitm::start(addr, MitmMode::OwnCertificate(forged.server_config()))
        .await
        .unwrap();
    let (mut client, _) = ehlo(&mitm).await;
    assert!(starttls(&mut client).await.starts_with("220 "));
    let tls = connector(&attacker)
        .connect(name, client.into_inner())
        .await
        .unwrap();
    let mut tls = BufReader::new(tls);
    tls.get_mut()
        .write_all(b"EHLO client.test\r\n")
        .await
        .unwrap();
    assert!(reply(&mut tls).await.starts_with("250-upstream"));
    tls.get_mut()
        .write_all(b"MAIL FROM:<secret@example.test>\r\n")
        .await
        .unwrap();
    assert_eq!(reply(&mut tls).await, "250 ok\r\n");
    assert!(mitm.client_handshake_completed());
    assert!(!mitm.cleartext_contains("MAIL FROM"));
    assert!(String::from_utf8_lossy(&mitm.decrypted_from_client())
        .contains("MAIL FROM:<secret@example.test>"));
    let upstream = drain(&mut seen2);
    assert!(upstream.contains(&("MAIL FROM:<secret@example.test>".to_owned(), false)));
}
