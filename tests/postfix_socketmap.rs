//! A real private Postfix 3.7 (Debian's package) delivering with its own smtp client,
//! its TLS policy from mxgate's socketmap server
//! (`smtp_tls_policy_maps = socketmap:inet:127.0.0.1:PORT:postfix`), through the signed
//! test DNS world, real receivers and the MITM proxy (docs/postfix.md, "Socketmap
//! policy server").
//!
//! How Postfix is pointed at the test world, as simply as stays real:
//! - DNS: glibc's resolver (which Postfix uses) reads `/etc/resolv.conf` and takes no
//!   port, and DANE needs a validating resolver whose AD bit Postfix trusts. So a private
//!   unbound validates the world from its trust anchor on port 53 of an address in
//!   127.53.0.0/16, and Postfix runs in a private mount namespace (`unshare -m`) where a
//!   `resolv.conf` naming that unbound (`options trust-ad`) is bind-mounted over
//!   `/etc/resolv.conf`. Nothing changes for the rest of the machine.
//! - Port: every MX of the world listens on one ephemeral port on its own 127.0.0.N
//!   address, and Postfix dials it through `smtp_tcp_port` (TLSA records are published
//!   for that port, as Postfix looks them up at `_PORT._tcp.HOST`).
//!
//! Needs root (Postfix's master, port 53, `unshare`), as tests/relay.rs's Postfix does.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "tls_policy/support.rs"]
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use common::{free_port, Mxgate, Settings};
use mxgate_testkit::certs::{sha256, TestCa, TestCert, Validity};
use mxgate_testkit::dns::unbound::Unbound;
use mxgate_testkit::dns::{DnsWorld, Signing};
use mxgate_testkit::https::{HttpResponse, HttpsServer};
use mxgate_testkit::mitm::MitmMode;
use mxgate_testkit::postfix::{submit, Postfix, PostfixOptions};
#[allow(unused_imports)]
use support::{body, mx_records, rcpt, sts_policy, sts_records, tls_config, tlsa, Mx, SENDER};

/// How long Postfix may take to deliver or defer one message.
const POSTFIX_LIMIT: Duration = Duration::from_secs(60);

/// The first `postfix/smtp` log line about `to=<user@domain>` with `status=...`.
async fn postfix_status(postfix: &Postfix, domain: &str, status: &str) -> String {
    let to = format!("to=<{}>", rcpt(domain));
    let status = format!("status={status}");
    let deadline = tokio::time::Instant::now() + POSTFIX_LIMIT;
    loop {
        let log = postfix.maillog();
        if let Some(line) = log.lines().find(|l| l.contains(&to) && l.contains(&status)) {
            return line.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {status} for {to} within {POSTFIX_LIMIT:?}:\n{log}"
        );
        // Postfix reports only through its log file.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn never_sent(postfix: &Postfix, domain: &str) {
    let to = format!("to=<{}>", rcpt(domain));
    let log = postfix.maillog();
    assert!(
        !log.lines()
            .any(|l| l.contains(&to) && l.contains("status=sent")),
        "{domain} was sent:\n{log}"
    );
}

/// No `MAIL FROM` and no message bytes in cleartext at this MX, and no message.
async fn nothing_leaked(mx: &Mx, domain: &str) {
    assert!(
        mx.receiver.messages().is_empty(),
        "{domain}: receiver got the message"
    );
    let clear = mx.cleartext().await;
    let secret = format!("SECRET-BODY-{domain}").to_ascii_uppercase();
    assert!(
        !clear.contains("MAIL FROM") && !clear.contains(&secret),
        "{domain}: transaction crossed in cleartext: {clear:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_delivers_with_mxgate_as_its_tls_policy_map() {
    if !Postfix::available() || !Unbound::available() {
        eprintln!("postfix or unbound not installed: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Postfix Socketmap Root");
    // Postfix's smtp client reads the CA file as the `postfix` user.
    let shared = tempfile::Builder::new()
        .prefix("mxgate-pf-ca")
        .tempdir()
        .unwrap();
    set_mode(shared.path(), 0o755);
    let ca_path = shared.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    set_mode(&ca_path, 0o644);
    let port = free_port();

    let sts_domains = ["mismatch.dane.test", "strip.sm.test", "rogue.sm.test"];
    let names: Vec<String> = sts_domains.iter().map(|d| format!("mta-sts.{d}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let https = HttpsServer::start(ca.issue(&refs, Validity::current()).server_config())
        .await
        .unwrap();
    let mut world = DnsWorld::builder()
        .zone("dane.test.", Signing::Secure)
        .zone("sm.test.", Signing::Insecure);

    // DANE-EE(3 1 1) that matches: delivered, Postfix verifies.
    let d = "ee.dane.test";
    let host = format!("mx.{d}");
    let cert = ca.issue(&[&host], Validity::current());
    world = mx_records(world, d, 2).record(&tlsa(port, &host, 3, &sha256(&cert.spki_der)));
    let ee = Mx::direct(2, port, tls_config(&cert)).await;

    // DANE mismatch, with a PKIX-valid certificate and an MTA-STS policy that would pass:
    // deferred (answering `secure` here would deliver: RFC 8461 §2).
    let d = "mismatch.dane.test";
    let host = format!("mx.{d}");
    let cert = ca.issue(&[&host], Validity::current());
    let other = TestCert::self_signed(&["unrelated.test"]);
    world = mx_records(world, d, 3).record(&tlsa(port, &host, 3, &sha256(&other.spki_der)));
    world = sts_records(world, d, "1");
    https.serve_policy(d, HttpResponse::policy(&sts_policy("enforce", &[&host])));
    let mismatch = Mx::direct(3, port, tls_config(&cert)).await;

    // MTA-STS enforce, the attacker strips STARTTLS: deferred.
    let d = "strip.sm.test";
    let host = format!("mx.{d}");
    let cert = ca.issue(&[&host], Validity::current());
    world = mx_records(world, d, 4);
    world = sts_records(world, d, "1");
    https.serve_policy(d, HttpResponse::policy(&sts_policy("enforce", &[&host])));
    let strip = Mx::attacked(4, port, tls_config(&cert), MitmMode::StripStarttls).await;

    // MTA-STS enforce; the preferred MX is not in the policy (with a valid certificate
    // for its own name): the message goes to the MX in the policy only. Postfix's
    // policy table is per next-hop domain, so unlike relay mode Postfix still connects
    // to that MX and refuses it at the certificate check (`match=` lists only the MX
    // hosts in the policy): no transaction, no message (docs/postfix.md).
    let d = "rogue.sm.test";
    let evil_host = "mx.evil.sm.test";
    let good_host = format!("mx1.{d}");
    world = world
        .record(&format!("{d}. 300 IN MX 10 {evil_host}."))
        .record(&format!("{evil_host}. 300 IN A 127.0.0.5"))
        .record(&format!("{d}. 300 IN MX 20 {good_host}."))
        .record(&format!("{good_host}. 300 IN A 127.0.0.6"));
    world = sts_records(world, d, "1");
    https.serve_policy(
        d,
        HttpResponse::policy(&sts_policy("enforce", &[&good_host])),
    );
    let evil = Mx::direct(
        5,
        port,
        tls_config(&ca.issue(&[evil_host], Validity::current())),
    )
    .await;
    let good = Mx::direct(
        6,
        port,
        tls_config(&ca.issue(&[&good_host], Validity::current())),
    )
    .await;

    // A `[policy.domains]` override (`encrypt`) against a STARTTLS strip: deferred.
    let d = "enc.sm.test";
    let cert = ca.issue(&[&format!("mx.{d}")], Validity::current());
    world = mx_records(world, d, 7);
    let enc = Mx::attacked(7, port, tls_config(&cert), MitmMode::StripStarttls).await;

    // Control: nothing of mxgate's applies (`NOTFOUND `), so Postfix's own `may` does,
    // and the same strip gets the message through in cleartext.
    let d = "plain.sm.test";
    let cert = ca.issue(&[&format!("mx.{d}")], Validity::current());
    world = mx_records(world, d, 8);
    let plain = Mx::attacked(8, port, tls_config(&cert), MitmMode::StripStarttls).await;

    let world = world.start().await.unwrap();
    let unbound = Unbound::start_on_port_53(&world).await.unwrap();

    let mut s = Settings::new(world.addr(), port);
    s.dnssec = "validate";
    s.trust_anchor = Some(world.trust_anchor_path().to_path_buf());
    s.ca_file = Some(ca_path.clone());
    s.mta_sts_port = https.port();
    s.domains = "\"enc.sm.test\" = { level = \"encrypt\" }\n".into();
    let socketmap = SocketAddr::from(([127, 0, 0, 1], free_port()));
    s.extra = format!("[socketmap]\nlisten = \"{socketmap}\"\n");
    let gate = Mxgate::start(dir.path(), &s);

    let postfix = Postfix::start_with(PostfixOptions {
        relayhost: None,
        nameserver: Some(unbound.addr().ip()),
        main_cf: format!(
            "smtp_tcp_port = {port}
smtp_dns_support_level = dnssec
smtp_host_lookup = dns
smtp_tls_security_level = may
smtp_tls_policy_maps = socketmap:inet:{socketmap}:postfix
smtp_tls_CAfile = {ca}
smtp_tls_loglevel = 1
",
            ca = ca_path.display()
        ),
    })
    .await
    .unwrap();

    for d in [
        "ee.dane.test",
        "mismatch.dane.test",
        "strip.sm.test",
        "rogue.sm.test",
        "enc.sm.test",
        "plain.sm.test",
    ] {
        let to = rcpt(d);
        submit(postfix.smtpd_addr(), SENDER, &[to.as_str()], &body(d))
            .await
            .unwrap();
    }

    // DANE-EE: delivered over TLS, and Postfix did the DANE check itself.
    let line = postfix_status(&postfix, "ee.dane.test", "sent").await;
    let msgs = ee.receiver.wait_for(1).await;
    assert!(msgs[0].tls.is_some(), "ee.dane.test in cleartext: {line}");
    let log = postfix.maillog();
    assert!(
        log.lines().any(
            |l| l.contains("Verified TLS connection established to mx.ee.dane.test")
                || l.contains("Trusted TLS connection established to mx.ee.dane.test")
        ),
        "no Verified/Trusted TLS line for mx.ee.dane.test:\n{log}"
    );

    // Delivered to the MX in the policy only; the other one never got a transaction.
    let line = postfix_status(&postfix, "rogue.sm.test", "sent").await;
    assert!(line.contains("mx1.rogue.sm.test"), "{line}");
    assert!(good.receiver.wait_for(1).await[0].tls.is_some());
    nothing_leaked(&evil, "rogue.sm.test").await;

    // The control case: Postfix's own `may` delivers through the strip in cleartext.
    postfix_status(&postfix, "plain.sm.test", "sent").await;
    assert!(plain.receiver.wait_for(1).await[0].tls.is_none());

    // Postfix was told `dane`, not `secure`: it checked the TLSA records itself.
    let log = postfix.maillog();
    assert!(
        log.lines()
            .any(|l| l.contains("mx.mismatch.dane.test")
                && l.contains("no matching DANE TLSA records")),
        "mismatch.dane.test not refused by Postfix's DANE check:\n{log}"
    );

    // Deferred, never bounced, nothing in cleartext.
    for (d, mx) in [
        ("mismatch.dane.test", &mismatch),
        ("strip.sm.test", &strip),
        ("enc.sm.test", &enc),
    ] {
        let line = postfix_status(&postfix, d, "deferred").await;
        never_sent(&postfix, d);
        assert!(line.contains("dsn=4."), "{line}");
        nothing_leaked(mx, d).await;
    }
    let log = postfix.maillog();
    if std::env::var_os("POSTFIX_SOCKETMAP_DUMP_LOG").is_some() {
        eprintln!("{log}\n--- mxgate ---\n{}", gate.log());
    }
    assert!(!log.contains("status=bounced"), "something bounced:\n{log}");
    drop(gate);
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
