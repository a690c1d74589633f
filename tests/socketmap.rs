//! The socketmap policy server through the real `mxgate` binary, spoken to in raw
//! netstrings over real sockets (socketmap_table(5)): the answers for each kind of
//! destination of a signed test DNS world with MTA-STS policies, the framing limits,
//! malformed input, idle close, reconnects and concurrent clients, and the metrics.
//!
//! What Postfix itself does with these answers is tests/postfix_socketmap.rs.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{free_port, scrape, Mxgate, Settings};
use mxgate_testkit::certs::{TestCa, Validity};
use mxgate_testkit::dns::{DnsWorld, DnsWorldBuilder, Signing};
use mxgate_testkit::https::{HttpResponse, HttpsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// TLSA records name this port (`delivery.smtp_port`); nothing is dialled.
const SMTP_PORT: u16 = 2525;

fn netstring(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{}:", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.push(b',');
    out
}

/// Reads one netstring reply; `None` when the server closed the connection first.
async fn read_reply(stream: &mut TcpStream) -> Option<String> {
    let mut len = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if stream.read(&mut b).await.ok()? == 0 {
            return None;
        }
        if b[0] == b':' {
            break;
        }
        len.push(b[0]);
    }
    let len: usize = std::str::from_utf8(&len).unwrap().parse().unwrap();
    let mut body = vec![0u8; len + 1];
    stream.read_exact(&mut body).await.ok()?;
    assert_eq!(body.pop(), Some(b','), "reply not terminated by ','");
    Some(String::from_utf8(body).unwrap())
}

async fn ask(stream: &mut TcpStream, key: &str) -> String {
    stream
        .write_all(&netstring(format!("postfix {key}").as_bytes()))
        .await
        .unwrap();
    read_reply(stream)
        .await
        .expect("server closed the connection")
}

/// True when the server closes the connection (EOF) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn tlsa(host: &str) -> String {
    format!(
        "_{SMTP_PORT}._tcp.{host}. 300 IN TLSA 3 1 1 {}",
        "ab".repeat(32)
    )
}

fn mx(world: DnsWorldBuilder, domain: &str, host: &str, n: u8) -> DnsWorldBuilder {
    world
        .record(&format!("{domain}. 300 IN MX 10 {host}."))
        .record(&format!("{host}. 300 IN A 127.0.0.{n}"))
}

fn sts(
    world: DnsWorldBuilder,
    https: &HttpsServer,
    domain: &str,
    mode: &str,
    mx: &[&str],
) -> DnsWorldBuilder {
    let mut policy = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        policy.push_str(&format!("mx: {m}\r\n"));
    }
    policy.push_str("max_age: 86400\r\n");
    https.serve_policy(domain, HttpResponse::policy(&policy));
    world
        .record(&format!("_mta-sts.{domain}. 300 IN TXT \"v=STSv1; id=1\""))
        .record(&format!("mta-sts.{domain}. 300 IN A 127.0.0.1"))
}

struct World {
    _dir: tempfile::TempDir,
    _dns: DnsWorld,
    _https: HttpsServer,
    gate: Mxgate,
    socketmap: SocketAddr,
}

async fn world(extra_socketmap: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Socketmap Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let sts_domains = ["mismatch.dane.test", "enf.sm.test", "testing.sm.test"];
    let names: Vec<String> = sts_domains.iter().map(|d| format!("mta-sts.{d}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let https = HttpsServer::start(ca.issue(&refs, Validity::current()).server_config())
        .await
        .unwrap();

    let mut w = DnsWorld::builder()
        .zone("dane.test.", Signing::Secure)
        .zone("sm.test.", Signing::Insecure)
        .servfail_for("broken.sm.test.");
    // DANE-EE on a secure MX.
    w = mx(w, "ee.dane.test", "mx.ee.dane.test", 2).record(&tlsa("mx.ee.dane.test"));
    // DANE and a passing MTA-STS policy: DANE wins (RFC 8461 §2).
    w = mx(w, "mismatch.dane.test", "mx.mismatch.dane.test", 3)
        .record(&tlsa("mx.mismatch.dane.test"));
    w = sts(
        w,
        &https,
        "mismatch.dane.test",
        "enforce",
        &["mx.mismatch.dane.test"],
    );
    // `dane-only` configured, no TLSA.
    w = mx(w, "only.dane.test", "mx.only.dane.test", 4);
    // MTA-STS enforce; the second MX is not in the policy.
    w = mx(w, "enf.sm.test", "mx1.enf.sm.test", 5);
    w = w
        .record("enf.sm.test. 300 IN MX 20 mx.evil.sm.test.")
        .record("mx.evil.sm.test. 300 IN A 127.0.0.6");
    w = sts(w, &https, "enf.sm.test", "enforce", &["mx1.enf.sm.test"]);
    // MTA-STS testing.
    w = mx(w, "testing.sm.test", "mx.testing.sm.test", 7);
    w = sts(
        w,
        &https,
        "testing.sm.test",
        "testing",
        &["mx.testing.sm.test"],
    );
    // Nothing published: only the fallback would apply.
    w = mx(w, "plain.sm.test", "mx.plain.sm.test", 8);
    // A configured level.
    w = mx(w, "enc.sm.test", "mx.enc.sm.test", 9);
    w = mx(w, "a.sub.sm.test", "mx.a.sub.sm.test", 10);
    w = w.record("null.sm.test. 300 IN MX 0 .");
    let dns = w.start().await.unwrap();

    let mut s = Settings::new(dns.addr(), SMTP_PORT);
    s.dnssec = "validate";
    s.trust_anchor = Some(dns.trust_anchor_path().to_path_buf());
    s.ca_file = Some(ca_path);
    s.mta_sts_port = https.port();
    s.domains = [
        "\"only.dane.test\" = { level = \"dane-only\" }",
        "\"enc.sm.test\" = { level = \"encrypt\" }",
        "\".sub.sm.test\" = { level = \"encrypt\", min_tls_version = \"1.3\" }",
        "\".auto.sm.test\" = { level = \"auto\" }",
    ]
    .join("\n");
    let socketmap = SocketAddr::from(([127, 0, 0, 1], free_port()));
    s.extra = format!("[socketmap]\nlisten = \"{socketmap}\"\n{extra_socketmap}\n");
    let gate = Mxgate::start(dir.path(), &s);
    World {
        _dir: dir,
        _dns: dns,
        _https: https,
        gate,
        socketmap,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_postfix_policy_table_syntax() {
    let w = world("").await;
    let mut c = TcpStream::connect(w.socketmap).await.unwrap();
    let cases = [
        ("ee.dane.test", "OK dane protocols=>=TLSv1.2"),
        // Never `secure` where DANE applies, whatever MTA-STS says.
        ("mismatch.dane.test", "OK dane protocols=>=TLSv1.2"),
        ("only.dane.test", "OK dane-only protocols=>=TLSv1.2"),
        (
            "enf.sm.test",
            "OK secure match=mx1.enf.sm.test servername=hostname protocols=>=TLSv1.2",
        ),
        ("testing.sm.test", "NOTFOUND "),
        ("plain.sm.test", "NOTFOUND "),
        ("enc.sm.test", "OK encrypt protocols=>=TLSv1.2"),
        // Case and a trailing dot do not matter.
        ("ENC.sm.test.", "OK encrypt protocols=>=TLSv1.2"),
        // A subdomain of a leading-dot entry, through the engine.
        ("a.sub.sm.test", "OK encrypt protocols=>=TLSv1.3"),
        // Parent-domain lookups: only a leading-dot entry of that very name.
        (".sub.sm.test", "OK encrypt protocols=>=TLSv1.3"),
        (".sm.test", "NOTFOUND "),
        (".auto.sm.test", "NOTFOUND "),
        // Next hops that are not domains.
        ("[mx.enc.sm.test]:587", "NOTFOUND "),
        ("[127.0.0.9]", "NOTFOUND "),
        ("null.sm.test", "NOTFOUND "),
        ("nowhere.sm.test", "NOTFOUND "),
    ];
    let mut wrong = Vec::new();
    for (key, want) in cases {
        let got = ask(&mut c, key).await;
        if got != want {
            wrong.push(format!("{key}: got {got:?}, want {want:?}"));
        }
    }
    let temp = ask(&mut c, "broken.sm.test").await;
    if !temp.starts_with("TEMP ") {
        wrong.push(format!("broken.sm.test: got {temp:?}, want TEMP"));
    }
    assert!(wrong.is_empty(), "{}\n{}", wrong.join("\n"), w.gate.log());

    // Not "name key": PERM, and the connection stays usable.
    c.write_all(&netstring(b"postfix")).await.unwrap();
    assert_eq!(
        read_reply(&mut c).await.unwrap(),
        "PERM request is not \"name key\""
    );
    assert_eq!(
        ask(&mut c, "enc.sm.test").await,
        "OK encrypt protocols=>=TLSv1.2"
    );

    // Answer types are counted.
    let metrics = scrape(w.gate.metrics);
    for answer in [
        "dane",
        "dane-only",
        "secure",
        "encrypt",
        "notfound",
        "temp",
        "perm",
    ] {
        let line = format!("mxgate_socketmap_answers_total{{answer=\"{answer}\"}}");
        assert!(metrics.contains(&line), "{line} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_limits_malformed_input_idle_and_concurrency() {
    let w = world("idle_timeout = \"1s\"").await;
    let addr = w.socketmap;

    // Pipelined requests in one write are answered in order; a request cut into
    // single bytes is answered once complete.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut both = netstring(b"postfix enc.sm.test");
    both.extend(netstring(b"postfix plain.sm.test"));
    c.write_all(&both).await.unwrap();
    assert_eq!(
        read_reply(&mut c).await.unwrap(),
        "OK encrypt protocols=>=TLSv1.2"
    );
    assert_eq!(read_reply(&mut c).await.unwrap(), "NOTFOUND ");
    for b in netstring(b"postfix enc.sm.test") {
        c.write_all(&[b]).await.unwrap();
        c.flush().await.unwrap();
    }
    assert_eq!(
        read_reply(&mut c).await.unwrap(),
        "OK encrypt protocols=>=TLSv1.2"
    );

    // A request of exactly 10,000 bytes is answered (not a domain: NOTFOUND).
    let key = "x".repeat(10_000 - "postfix ".len());
    assert_eq!(ask(&mut c, &key).await, "NOTFOUND ");

    // Over the limit, a bad length, a missing comma: that connection is closed.
    for bad in [
        b"10001:".to_vec(),
        b"abc:postfix enc.sm.test,".to_vec(),
        b"07:postfix,".to_vec(),
        b"19:postfix enc.sm.test;".to_vec(),
    ] {
        let mut m = TcpStream::connect(addr).await.unwrap();
        m.write_all(&bad).await.unwrap();
        assert!(
            closed_within(&mut m, Duration::from_secs(5)).await,
            "not closed after {:?}",
            String::from_utf8_lossy(&bad)
        );
    }
    // ... and the server goes on, also on the connection opened before.
    assert_eq!(
        ask(&mut c, "enc.sm.test").await,
        "OK encrypt protocols=>=TLSv1.2"
    );

    // The client closes (Postfix after 10 s idle) and reconnects: clean.
    drop(c);
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        ask(&mut c, "enc.sm.test").await,
        "OK encrypt protocols=>=TLSv1.2"
    );
    // A client that goes quiet is closed by the server after socketmap.idle_timeout.
    assert!(closed_within(&mut c, Duration::from_secs(10)).await);
    let mut c = TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        ask(&mut c, "enc.sm.test").await,
        "OK encrypt protocols=>=TLSv1.2"
    );

    // Concurrent clients, each with its own sequence of lookups.
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..16 {
        clients.spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for j in 0..10 {
                let (key, want) = if (i + j) % 2 == 0 {
                    ("enc.sm.test", "OK encrypt protocols=>=TLSv1.2")
                } else {
                    ("ee.dane.test", "OK dane protocols=>=TLSv1.2")
                };
                assert_eq!(ask(&mut c, key).await, want);
            }
        });
    }
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }

    let metrics = scrape(w.gate.metrics);
    assert!(
        metrics.contains("mxgate_socketmap_closed_total{reason=\"malformed\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mxgate_socketmap_closed_total{reason=\"idle\"}"),
        "{metrics}"
    );
}
