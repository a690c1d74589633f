//! End-to-end TLS policy tests through the real `mxgate` binary (docs/policy.md).
//!
//! Every test builds a private world on loopback: a signed DNS tree (`DnsWorld`), SMTP
//! receivers with chosen certificates on `127.0.0.N` and one shared port (mxgate dials
//! every MX on `delivery.smtp_port`), man-in-the-middle proxies reached through small
//! TCP forwarders on that port, and an HTTPS server for MTA-STS policies. Each test
//! function runs one mxgate with many destination domains at once, submits one message
//! per domain, and then checks every outcome: what the receiver got, whether it came over
//! TLS, and — where the level requires TLS — that no `MAIL FROM` and no message bytes ever
//! crossed in cleartext.
//!
//! Not here: the decision table itself (mxgate-policy's unit tests), queue retry and DSN
//! details (tests/queue_lifecycle.rs), the relay path without TLS policy (tests/relay.rs).

#![allow(clippy::unwrap_used)]

mod common;
#[path = "tls_policy/support.rs"]
mod support;

use std::net::SocketAddr;

use common::Mxgate;
use mxgate_testkit::certs::{TestCa, TestCert, Validity};
use mxgate_testkit::dns::{DnsWorld, Signing};
use mxgate_testkit::https::{HttpResponse, HttpsServer};
use mxgate_testkit::mitm::{Mitm, MitmMode};
use mxgate_testkit::postfix::submit;
use mxgate_testkit::smtp::{ReceiverConfig, SmtpReceiver};
use support::*;

// ---------------------------------------------------------------------------------------
// Configured levels × attacks
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Attack {
    Good,
    SelfSigned,
    WrongName,
    Strip,
    Reply454,
    Reply554,
    Inject,
    OwnCert,
}

/// What each configured level must do against each attack (docs/policy.md).
fn level_expectation(level: &str, attack: Attack) -> Expect {
    use Attack::*;
    match (level, attack) {
        ("none", _) => Expect::Cleartext,
        ("may", Good | SelfSigned | WrongName) => Expect::Tls(Some("none")),
        ("may", Strip | Reply454 | Reply554) => Expect::Delivered,
        ("may", Inject | OwnCert) => Expect::Delivered,
        ("encrypt", Good | SelfSigned | WrongName) => Expect::Tls(None),
        // Any certificate is accepted at `encrypt`: the attacker's own too.
        ("encrypt", OwnCert) => Expect::Delivered,
        ("encrypt", Strip | Reply454 | Reply554 | Inject) => Expect::Deferred,
        ("verify", Good) => Expect::Tls(Some("pkix")),
        ("verify", _) => Expect::Deferred,
        _ => unreachable!("no such level"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_levels_against_every_attack() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Levels Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let port = common::free_port();

    let levels = ["none", "may", "encrypt", "verify"];
    let attacks = [
        Attack::Good,
        Attack::SelfSigned,
        Attack::WrongName,
        Attack::Strip,
        Attack::Reply454,
        Attack::Reply554,
        Attack::Inject,
        Attack::OwnCert,
    ];
    let mut world = DnsWorld::builder().zone("lv.test.", Signing::Insecure);
    let mut domains_toml = String::new();
    let mut cases = Vec::new();
    let mut n = 2u8;
    for level in levels {
        for attack in attacks {
            let domain = format!("{}-{}.lv.test", level, format!("{attack:?}").to_lowercase());
            let host = format!("mx.{domain}");
            let good = ca.issue(&[&host], Validity::current());
            let config = match attack {
                Attack::SelfSigned => tls_config(&TestCert::self_signed(&[&host])),
                Attack::WrongName => tls_config(&ca.issue(&["other.lv.test"], Validity::current())),
                _ => tls_config(&good),
            };
            let mode = match attack {
                Attack::Strip => Some(MitmMode::StripStarttls),
                Attack::Reply454 => Some(MitmMode::Reply454),
                Attack::Reply554 => Some(MitmMode::Reply554),
                Attack::Inject => Some(MitmMode::InjectAfterReady),
                Attack::OwnCert => Some(MitmMode::OwnCertificate(
                    TestCert::self_signed(&[&host]).server_config(),
                )),
                _ => None,
            };
            let mx = match mode {
                Some(mode) => Mx::attacked(n, port, config, mode).await,
                None => Mx::direct(n, port, config).await,
            };
            world = mx_records(world, &domain, n);
            domains_toml.push_str(&format!("\"{domain}\" = {{ level = \"{level}\" }}\n"));
            cases.push(Case {
                domain,
                mx,
                expect: level_expectation(level, attack),
            });
            n += 1;
        }
    }
    // `verify` with a `match` list: the certificate names the list's host, not the MX.
    for (domain, cert_name, expect) in [
        (
            "match-ok.lv.test",
            "gateway.partner.test",
            Expect::Tls(Some("pkix")),
        ),
        (
            "match-miss.lv.test",
            "mx.match-miss.lv.test",
            Expect::Deferred,
        ),
    ] {
        let cert = ca.issue(&[cert_name], Validity::current());
        let mx = Mx::direct(n, port, tls_config(&cert)).await;
        world = mx_records(world, domain, n);
        domains_toml.push_str(&format!(
            "\"{domain}\" = {{ level = \"verify\", match = [\"gateway.partner.test\"] }}\n"
        ));
        cases.push(Case {
            domain: domain.to_string(),
            mx,
            expect,
        });
        n += 1;
    }
    let world = world.start().await.unwrap();
    let mut s = settings(&world, world.addr(), port, &ca_path, "validate");
    s.domains = domains_toml;
    let gate = Mxgate::start(dir.path(), &s);
    run_cases(&gate, &cases).await;

    // `none` never even offers STARTTLS to the attacker; a 554 to STARTTLS never bounces.
    for case in &cases {
        if case.domain.starts_with("none-") {
            if let Some(mitm) = &case.mx.mitm {
                assert_eq!(mitm.starttls_count(), 0, "{}", case.domain);
            }
        }
    }
    // The deferral reason names the level that was not met.
    let line = log_line(&gate, "encrypt-strip.lv.test", "deferred").await;
    assert!(line.contains("encrypt"), "{line}");
    let line = log_line(&gate, "verify-selfsigned.lv.test", "deferred").await;
    assert!(line.contains("verify"), "{line}");
}

// ---------------------------------------------------------------------------------------
// DANE (RFC 7672) at `auto`, `dane` and `dane-only`, with `dns.dnssec = validate`
// ---------------------------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_with_in_process_validation() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("DANE Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let port = common::free_port();
    let dw = dane_world(&ca, port, true).await;
    let world = dw.world.start().await.unwrap();
    let mut s = settings(&world, world.addr(), port, &ca_path, "validate");
    s.mta_sts_port = dw.https.port();
    s.domains = dw.domains;
    let gate = Mxgate::start(dir.path(), &s);
    run_cases(&gate, &dw.cases).await;

    // The reasons name DANE, and the DANE mismatch never consulted MTA-STS's verdict.
    let line = log_line(&gate, "mismatch.dane.test", "deferred").await;
    assert!(line.to_ascii_lowercase().contains("dane"), "{line}");
    let line = log_line(&gate, "ee.dane.test", "sent").await;
    assert!(line.contains("source=dane"), "{line}");
    let line = log_line(&gate, "plain.insec.test", "sent").await;
    assert!(line.contains("source=fallback"), "{line}");

    // `mxgate policy --json` explains each decision.
    let ee = policy_json(&gate, "ee.dane.test");
    assert_eq!(ee["domain"], "ee.dane.test");
    assert_eq!(ee["source"], "dane", "{ee}");
    assert_eq!(ee["mx"][0]["host"], "mx.ee.dane.test", "{ee}");
    assert_eq!(ee["mx"][0]["dnssec"], "secure", "{ee}");
    let tlsa0 = ee["mx"][0]["tlsa"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(tlsa0.starts_with("3 1 1 "), "{ee}");
    let plain = policy_json(&gate, "plain.insec.test");
    assert_eq!(plain["source"], "fallback", "{plain}");
    assert_eq!(plain["mx"][0]["dnssec"], "insecure", "{plain}");
    assert!(plain["mta_sts"].is_null(), "{plain}");
    let half = policy_json(&gate, "half.insec.test");
    assert_eq!(half["source"], "dane", "{half}");
    let (code, out, err) = gate.cli(&["policy", "mail.bogus.test", "--json"]);
    assert!(
        code != 0 || out.contains("bogus"),
        "bogus zone explained as usable: {out} {err}"
    );
}

// ---------------------------------------------------------------------------------------
// `trust-ad` through a real validating resolver (unbound)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_with_trust_ad_through_unbound() {
    use mxgate_testkit::dns::unbound::Unbound;
    if !Unbound::available() {
        eprintln!("unbound not installed: skipping the trust-ad test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("AD Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let port = common::free_port();
    let dw = dane_world(&ca, port, false).await;
    let world = dw.world.start().await.unwrap();
    let unbound = Unbound::start(&world).await.unwrap();
    let s = settings(&world, unbound.addr(), port, &ca_path, "trust-ad");
    let gate = Mxgate::start(dir.path(), &s);
    // Secure DANE-EE delivers with DANE, the bogus zone defers, the insecure one is `may`.
    run_cases(&gate, &dw.cases).await;
    let line = log_line(&gate, "ee.dane.test", "sent").await;
    assert!(line.contains("source=dane"), "{line}");
    let ee = policy_json(&gate, "ee.dane.test");
    assert_eq!(ee["mx"][0]["dnssec"], "secure", "{ee}");
}

// ---------------------------------------------------------------------------------------
// MTA-STS (RFC 8461)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mta_sts_enforce_testing_and_broken_policies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("STS Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let port = common::free_port();
    let mut world = DnsWorld::builder().zone("sts.test.", Signing::Insecure);
    let mut cases = Vec::new();
    let mut responses: Vec<(String, HttpResponse)> = Vec::new();
    let mut n = 2u8;

    // enforce: the preferred MX is not in the policy and is never dialled; the listed
    // one (PKIX-valid) gets the message.
    let d = "enf.sts.test";
    let (mx1, mx2) = (format!("mx1.{d}"), format!("mx2.{d}"));
    world = world
        .record(&format!("{d}. 300 IN MX 10 {mx2}."))
        .record(&format!("{d}. 300 IN MX 20 {mx1}."))
        .record(&format!("{mx2}. 300 IN A 127.0.0.{n}"))
        .record(&format!("{mx1}. 300 IN A 127.0.0.{}", n + 1));
    world = sts_records(world, d, "e1");
    responses.push((
        d.into(),
        HttpResponse::policy(&sts_policy("enforce", &[&mx1])),
    ));
    let unlisted = Mx::direct(n, port, tls_config(&ca.issue(&[&mx2], Validity::current()))).await;
    let listed = Mx::direct(
        n + 1,
        port,
        tls_config(&ca.issue(&[&mx1], Validity::current())),
    )
    .await;
    n += 2;
    cases.push(Case {
        domain: d.into(),
        mx: listed,
        expect: Expect::Tls(Some("pkix")),
    });

    // enforce with a self-signed MX certificate: defers.
    let d = "enfbad.sts.test";
    let host = format!("mx.{d}");
    world = sts_records(mx_records(world, d, n), d, "b1");
    responses.push((
        d.into(),
        HttpResponse::policy(&sts_policy("enforce", &["*.enfbad.sts.test"])),
    ));
    cases.push(Case {
        domain: d.into(),
        mx: Mx::direct(n, port, tls_config(&TestCert::self_signed(&[&host]))).await,
        expect: Expect::Deferred,
    });
    n += 1;

    // testing: delivers as `may` despite the bad certificate.
    let d = "testing.sts.test";
    let host = format!("mx.{d}");
    world = sts_records(mx_records(world, d, n), d, "t1");
    responses.push((
        d.into(),
        HttpResponse::policy(&sts_policy("testing", &[&host])),
    ));
    cases.push(Case {
        domain: d.into(),
        mx: Mx::direct(n, port, tls_config(&TestCert::self_signed(&[&host]))).await,
        expect: Expect::Tls(None),
    });
    n += 1;

    // Broken policies (an enforce policy that would defer if it were honoured) are no
    // policy (RFC 8461 §3.3): fall back to `may` and deliver.
    let oversized = format!(
        "{}{}",
        sts_policy("enforce", &["mx.big.sts.test"]),
        "# padding\r\n".repeat(7000)
    );
    for (label, response) in [
        ("malformed", HttpResponse::policy("mode: enforce\r\nversion: STSv1\r\nmx: mx.malformed.sts.test\r\nmax_age: 86400\r\n")),
        ("big", HttpResponse::policy(&oversized)),
        ("redirect", HttpResponse::redirect(302, "https://mta-sts.enfbad.sts.test/.well-known/mta-sts.txt")),
        ("ctype", HttpResponse::status(200).header("Content-Type", "text/html").body(sts_policy("enforce", &["mx.ctype.sts.test"]).as_bytes())),
        ("status", HttpResponse::status(404)),
    ] {
        let d = format!("{label}.sts.test");
        let host = format!("mx.{d}");
        world = sts_records(mx_records(world, &d, n), &d, "x1");
        responses.push((d.clone(), response));
        cases.push(Case { domain: d, mx: Mx::direct(n, port, tls_config(&TestCert::self_signed(&[&host]))).await, expect: Expect::Tls(Some("none")) });
        n += 1;
    }

    let names: Vec<String> = responses
        .iter()
        .map(|(d, _)| format!("mta-sts.{d}"))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let https = HttpsServer::start(ca.issue(&refs, Validity::current()).server_config())
        .await
        .unwrap();
    for (d, response) in responses {
        https.serve_policy(&d, response);
    }
    let world = world.start().await.unwrap();
    let mut s = settings(&world, world.addr(), port, &ca_path, "validate");
    s.mta_sts_port = https.port();
    let gate = Mxgate::start(dir.path(), &s);
    run_cases(&gate, &cases).await;

    assert_eq!(
        unlisted.receiver.connections(),
        0,
        "MX outside the policy was dialled"
    );
    let line = log_line(&gate, "enf.sts.test", "sent").await;
    assert!(
        line.contains("source=mta-sts") && line.contains("mx1.enf.sts.test"),
        "{line}"
    );
    let line = log_line(&gate, "enfbad.sts.test", "deferred").await;
    assert!(line.contains("mta-sts"), "{line}");
    for label in ["malformed", "big", "redirect", "ctype", "status"] {
        // The policy was really fetched (and rejected), not merely never looked for.
        assert!(
            https.requests(&format!("mta-sts.{label}.sts.test")) >= 1,
            "{label}"
        );
        let line = log_line(&gate, &format!("{label}.sts.test"), "sent").await;
        assert!(line.contains("source=fallback"), "{label}: {line}");
    }
    let enf = policy_json(&gate, "enf.sts.test");
    assert_eq!(enf["source"], "mta-sts", "{enf}");
    assert_eq!(enf["mta_sts"]["mode"], "enforce", "{enf}");
    assert_eq!(enf["mta_sts"]["id"], "e1", "{enf}");
    assert_eq!(enf["mta_sts"]["max_age"], 86400, "{enf}");
    assert!(
        enf["mta_sts"]["fetched_at"].as_u64().unwrap_or(0) > 0,
        "{enf}"
    );
    assert!(
        enf["mx"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["host"] == "mx2.enf.sts.test"
                && m["requirement"].as_str().unwrap_or("").starts_with("skip")),
        "{enf}"
    );
}

/// An MTA-STS enforce policy fetched once keeps protecting the domain when the policy
/// server is down and the MX is attacked, also after a `kill -9` and restart of mxgate
/// (RFC 8461 §5: the cached policy is used until it expires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mta_sts_cached_policy_survives_outage_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("STS Cache Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let port = common::free_port();
    let d = "cached.sts.test";
    let host = format!("mx.{d}");
    let world = sts_records(
        mx_records(
            DnsWorld::builder().zone("sts.test.", Signing::Insecure),
            d,
            2,
        ),
        d,
        "c1",
    );
    let world = world.start().await.unwrap();
    let mut https = HttpsServer::start(
        ca.issue(&[&format!("mta-sts.{d}")], Validity::current())
            .server_config(),
    )
    .await
    .unwrap();
    https.serve_policy(d, HttpResponse::policy(&sts_policy("enforce", &[&host])));

    let good = SmtpReceiver::start(tls_config(&ca.issue(&[&host], Validity::current())))
        .await
        .unwrap();
    let forwarder = Forwarder::start(SocketAddr::new(loopback(2), port), good.addr()).await;
    let mut s = settings(&world, world.addr(), port, &ca_path, "validate");
    s.mta_sts_port = https.port();
    let mut gate = Mxgate::start(dir.path(), &s);

    // 1. Policy fetched, message delivered with PKIX.
    submit(
        gate.listen,
        SENDER,
        &[&format!("first@{d}")],
        b"Subject: 1\r\n\r\nfirst\r\n",
    )
    .await
    .unwrap();
    let msg = good.wait_for(1).await;
    assert!(msg[0].tls.is_some());
    assert_eq!(https.requests(&format!("mta-sts.{d}")), 1);
    // mxgate keeps the session it authenticated with the genuine MX for reuse (at most
    // 5 s idle); the attack below only meets new connections, so let that one end.
    good.wait_sessions(1).await;

    // 2. Policy server down, MX attacked with the attacker's certificate: defers.
    https.stop();
    let mitm = Mitm::start(
        good.addr(),
        MitmMode::OwnCertificate(TestCert::self_signed(&[&host]).server_config()),
    )
    .await
    .unwrap();
    forwarder.set_target(mitm.addr());
    submit(
        gate.listen,
        SENDER,
        &[&format!("second@{d}")],
        b"Subject: 2\r\n\r\nSECRET-2\r\n",
    )
    .await
    .unwrap();
    let line = gate
        .wait_log(
            |l| l.contains(&format!("to=<second@{d}>")) && l.contains("status=deferred"),
            OUTCOME_LIMIT,
        )
        .await;
    assert!(line.contains("mta-sts"), "{line}");

    // 3. After kill -9 and restart, the persisted policy still applies.
    gate.kill9();
    gate.spawn();
    submit(
        gate.listen,
        SENDER,
        &[&format!("third@{d}")],
        b"Subject: 3\r\n\r\nSECRET-3\r\n",
    )
    .await
    .unwrap();
    let line = gate
        .wait_log(
            |l| l.contains(&format!("to=<third@{d}>")) && l.contains("status=deferred"),
            OUTCOME_LIMIT,
        )
        .await;
    assert!(line.contains("mta-sts"), "{line}\n{}", gate.log());
    assert!(!gate.log().contains("status=bounced"), "{}", gate.log());
    assert_eq!(
        good.messages().len(),
        1,
        "the attacked MX relayed a message"
    );
    let seen = String::from_utf8_lossy(&mitm.decrypted_from_client()).to_ascii_uppercase()
        + &String::from_utf8_lossy(&mitm.cleartext_from_client()).to_ascii_uppercase();
    assert!(
        !seen.contains("MAIL FROM") && !seen.contains("SECRET"),
        "{seen}"
    );
    assert!(
        mitm.connections() >= 2,
        "the attacked MX was not tried after the restart"
    );
}

// ---------------------------------------------------------------------------------------
// The per-attempt log line (docs/operations.md)
// ---------------------------------------------------------------------------------------

/// A cleartext delivery logs `tls=none auth=none`: `auth=` is one of
/// `none|pkix|dane-ee|dane-ta`, never empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_delivery_logs_auth_none() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Log Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let port = common::free_port();
    let d = "clear.log.test";
    let world = mx_records(
        DnsWorld::builder().zone("log.test.", Signing::Insecure),
        d,
        2,
    )
    .start()
    .await
    .unwrap();
    let mx = Mx::direct(2, port, ReceiverConfig::default()).await;
    let s = settings(&world, world.addr(), port, &ca_path, "validate");
    let gate = Mxgate::start(dir.path(), &s);
    submit_to(&gate, d).await;
    let msgs = mx.receiver.wait_for(1).await;
    assert!(msgs[0].tls.is_none());
    let line = log_line(&gate, d, "sent").await;
    assert!(line.contains("tls=none"), "{line}");
    assert!(line.contains("source=fallback"), "{line}");
    assert!(line.contains(" auth=none "), "{line}");
}
