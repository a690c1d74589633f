//! End-to-end: seeing before enforcing, through the real `mxgate` binary and the signed
//! test DNS world. `mxgate policy --json` explains every state (decided levels, NXDOMAIN,
//! null MX, bogus and expired zones, `dane-only`, `dnssec = "off"`) with its exit code;
//! the resolver self-test fails behind a resolver that strips signatures, and says so.
//!
//! Not here: the decision table (mxgate-policy's unit tests), the attacks on each level
//! (tests/tls_policy.rs).

// Real processes on the real clock: the clock rule of clippy.toml is for product code.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{scrape, Mxgate, Settings};
use mxgate_testkit::certs::{sha256, TestCert};
use mxgate_testkit::dns::{DnsWorld, DnsWorldBuilder, Signing};
use mxgate_testkit::postfix::submit;
use mxgate_testkit::smtp::{ReceiverConfig, SmtpReceiver};
use serde_json::Value;

fn settings(world: &DnsWorld, port: u16) -> Settings {
    let mut s = Settings::new(world.addr(), port);
    s.dnssec = "validate";
    s.trust_anchor = Some(world.trust_anchor_path().to_path_buf());
    s
}

/// `D MX 10 mx.D` and `mx.D A 127.0.0.n`.
fn mx(world: DnsWorldBuilder, d: &str, n: u8) -> DnsWorldBuilder {
    world
        .record(&format!("{d}. 300 IN MX 10 mx.{d}."))
        .record(&format!("mx.{d}. 300 IN A 127.0.0.{n}"))
}

fn tlsa(port: u16, host: &str, spki: &[u8]) -> String {
    let hex: String = sha256(spki).iter().map(|b| format!("{b:02x}")).collect();
    format!("_{port}._tcp.{host}. 300 IN TLSA 3 1 1 {hex}")
}

/// `mxgate ARGS --config PATH`: (exit code, stdout, stderr).
fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mxgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `mxgate policy D --json`: the exit code and the object.
fn policy(config: &Path, d: &str) -> (i32, Value) {
    let (code, out, err) = cli(config, &["policy", d, "--json"]);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{d}: {e}: {out} {err}"));
    (code, v)
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_json_explains_every_state() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let key = TestCert::self_signed(&["mx.dane.sec.test"]);
    let mut w = DnsWorld::builder()
        .zone("sec.test.", Signing::Secure)
        .zone("ins.test.", Signing::Insecure)
        .zone("bog.test.", Signing::BogusSignature)
        .zone("exp.test.", Signing::BogusExpired);
    w = mx(w, "dane.sec.test", 2).record(&tlsa(port, "mx.dane.sec.test", &key.spki_der));
    w = mx(w, "only.sec.test", 3);
    w = mx(w, "onlyok.sec.test", 4).record(&tlsa(port, "mx.onlyok.sec.test", &key.spki_der));
    w = mx(w, "plain.ins.test", 5);
    w = mx(w, "mail.bog.test", 6);
    w = mx(w, "mail.exp.test", 7);
    w = w.record("null.sec.test. 300 IN MX 0 .");
    let world = w.start().await.unwrap();
    let mut s = settings(&world, port);
    s.domains = "\"only.sec.test\" = { level = \"dane-only\" }\n\
                 \"onlyok.sec.test\" = { level = \"dane-only\", shadow = \"verify\" }\n"
        .into();
    let gate = Mxgate::start(dir.path(), &s);
    let config = gate.config_path.clone();

    // A resolver that validates: the self-test passes, the gauge says so.
    assert_eq!(
        gauge(&scrape(gate.metrics), "mxgate_dnssec_resolver_ok"),
        Some(1.0),
        "{}",
        gate.log()
    );
    assert!(!gate.log().contains("self-test failed"), "{}", gate.log());

    // Secure, DANE.
    let (code, v) = policy(&config, "dane.sec.test");
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["level"], "dane", "{v}");
    assert_eq!(v["configured_level"], "auto", "{v}");
    assert_eq!(v["source"], "dane", "{v}");
    assert_eq!(v["dnssec"], "secure", "{v}");
    assert_eq!(v["mx"][0]["host"], "mx.dane.sec.test", "{v}");
    assert_eq!(v["mx"][0]["dnssec"], "secure", "{v}");
    assert_eq!(v["mx"][0]["address_dnssec"], "secure", "{v}");
    assert_eq!(v["mx"][0]["tlsa_dnssec"], "secure", "{v}");
    assert!(
        v["mx"][0]["tlsa"][0]
            .as_str()
            .unwrap()
            .starts_with("3 1 1 "),
        "{v}"
    );
    assert!(
        v["verdict"]
            .as_str()
            .unwrap()
            .starts_with("deliver to mx.dane.sec.test"),
        "{v}"
    );
    assert_eq!(v["deliverable"], true, "{v}");
    assert!(v["error"].is_null(), "{v}");
    assert!(v["mta_sts"].is_null(), "{v}");

    // Insecure: the fallback.
    let (code, v) = policy(&config, "plain.ins.test");
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (v["level"].as_str(), v["source"].as_str()),
        (Some("may"), Some("fallback"))
    );
    assert_eq!(v["dnssec"], "insecure", "{v}");
    assert_eq!(v["mx"][0]["dnssec"], "insecure", "{v}");
    assert!(v["mx"][0]["tlsa_dnssec"].is_null(), "{v}");

    // dane-only keeps its name; without TLSA it would defer and says why.
    let (code, v) = policy(&config, "only.sec.test");
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["level"], "dane-only", "{v}");
    assert_eq!(v["configured_level"], "dane-only", "{v}");
    assert_eq!(v["dnssec"], "secure", "{v}");
    assert_eq!(v["mx"][0]["tlsa_dnssec"], "secure", "{v}");
    let verdict = v["verdict"].as_str().unwrap();
    assert!(
        verdict.starts_with("defer: dane-only: no secure TLSA records for mx.only.sec.test"),
        "{v}"
    );
    let (code, v) = policy(&config, "onlyok.sec.test");
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (v["level"].as_str(), v["source"].as_str()),
        (Some("dane-only"), Some("dane"))
    );
    assert_eq!(v["shadow"], "verify", "{v}");

    // Bogus and expired signatures: explained, level unknown, exit 1.
    for d in ["mail.bog.test", "mail.exp.test"] {
        let (code, v) = policy(&config, d);
        assert_eq!(code, 1, "{d}: {v}");
        assert_eq!(v["domain"], d, "{v}");
        assert_eq!(v["level"], "unknown", "{v}");
        assert!(v["source"].is_null(), "{v}");
        assert_eq!(v["dnssec"], "bogus", "{v}");
        assert_eq!(v["deliverable"], false, "{v}");
        let verdict = v["verdict"].as_str().unwrap();
        assert!(verdict.starts_with("defer: MX records of"), "{v}");
        assert!(verdict.contains("bogus"), "{v}");
        assert!(v["mx"].as_array().unwrap().is_empty(), "{v}");
    }

    // NXDOMAIN (securely denied) and null MX: bounce.
    let (code, v) = policy(&config, "nowhere.sec.test");
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["level"], "unknown", "{v}");
    assert_eq!(v["dnssec"], "secure", "{v}");
    assert_eq!(
        v["verdict"], "bounce: domain nowhere.sec.test not found (NXDOMAIN)",
        "{v}"
    );
    let (code, v) = policy(&config, "null.sec.test");
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["level"], "unknown", "{v}");
    assert_eq!(v["dnssec"], "secure", "{v}");
    assert_eq!(
        v["verdict"], "bounce: domain null.sec.test does not accept mail (null MX)",
        "{v}"
    );

    // Usage errors: exit 2.
    let (code, _, _) = cli(&config, &["policy"]);
    assert_eq!(code, 2);

    // Under dnssec = "off" nothing was checked, and the report says `off`.
    let off = dir.path().join("off.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("dnssec = \"validate\"", "dnssec = \"off\"")
        .replace("level = \"dane-only\"", "level = \"may\"")
        .replace("shadow = \"verify\"", "shadow = \"encrypt\"");
    std::fs::write(&off, text).unwrap();
    let (code, v) = policy(&off, "plain.ins.test");
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["dnssec"], "off", "{v}");
    assert_eq!(v["mx"][0]["dnssec"], "off", "{v}");
    assert_eq!(v["mx"][0]["address_dnssec"], "off", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolver_that_strips_signatures_fails_the_self_test_and_nothing_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cert = TestCert::self_signed(&["mx.dane.sec.test"]);
    let mut w = DnsWorld::builder()
        .zone("sec.test.", Signing::Secure)
        .zone("ins.test.", Signing::Insecure)
        .strip_dnssec();
    w = mx(w, "dane.sec.test", 2).record(&tlsa(port, "mx.dane.sec.test", &cert.spki_der));
    w = mx(w, "plain.ins.test", 3);
    // An MTA-STS enforce domain whose MX would accept a PKIX-valid session.
    let ca = mxgate_testkit::certs::TestCa::new("Strip CA");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    w = mx(w, "enf.ins.test", 4)
        .record("_mta-sts.enf.ins.test. 300 IN TXT \"v=STSv1; id=e1\"")
        .record("mta-sts.enf.ins.test. 300 IN A 127.0.0.1");
    let world = w.start().await.unwrap();
    let valid = mxgate_testkit::certs::Validity::current();
    let https = mxgate_testkit::https::HttpsServer::start(
        ca.issue(&["mta-sts.enf.ins.test"], valid).server_config(),
    )
    .await
    .unwrap();
    https.serve_policy(
        "enf.ins.test",
        mxgate_testkit::https::HttpResponse::policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mx.enf.ins.test\r\nmax_age: 86400\r\n",
        ),
    );
    let receiver = SmtpReceiver::start_on(
        SocketAddr::from(([127, 0, 0, 2], port)),
        ReceiverConfig::with_starttls(cert.server_config()),
    )
    .await
    .unwrap();
    let sts_receiver = SmtpReceiver::start_on(
        SocketAddr::from(([127, 0, 0, 4], port)),
        ReceiverConfig::with_starttls(ca.issue(&["mx.enf.ins.test"], valid).server_config()),
    )
    .await
    .unwrap();
    let mut s = settings(&world, port);
    s.ca_file = Some(ca_path);
    s.mta_sts_port = https.port();
    let gate = Mxgate::start(dir.path(), &s);

    // One clear startup error that names the fix; no raw dumps of the resolver library.
    let log = gate.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("self-test failed"))
        .collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("ERROR"), "{log}");
    assert!(errors[0].contains("strips DNSSEC signatures"), "{log}");
    assert!(errors[0].contains("trust-ad"), "{log}");
    assert!(errors[0].contains("dns.dnssec = \"off\""), "{log}");
    assert!(!log.contains("hickory"), "{log}");
    assert_eq!(
        gauge(&scrape(gate.metrics), "mxgate_dnssec_resolver_ok"),
        Some(0.0)
    );

    submit(
        gate.listen,
        "s@origin.test",
        &["u@dane.sec.test"],
        b"Subject: x\r\n\r\nSECRET\r\n",
    )
    .await
    .unwrap();
    let line = gate
        .wait_log(
            |l| l.contains("to=<u@dane.sec.test>") && l.contains("status="),
            Duration::from_secs(30),
        )
        .await;
    assert!(line.contains("status=deferred"), "{line}");
    assert!(line.contains("resolver does not validate DNSSEC"), "{line}");
    assert!(line.contains("policy=unknown"), "{line}");
    assert!(!line.contains("(bogus)"), "{line}");
    assert_eq!(receiver.connections(), 0, "the DANE MX was dialled");
    assert!(receiver.messages().is_empty());

    // The enforce domain: deferred too, never sent in cleartext (nor at all).
    submit(
        gate.listen,
        "s@origin.test",
        &["u@enf.ins.test"],
        b"Subject: x\r\n\r\nSECRET\r\n",
    )
    .await
    .unwrap();
    let line = gate
        .wait_log(
            |l| l.contains("to=<u@enf.ins.test>") && l.contains("status="),
            Duration::from_secs(30),
        )
        .await;
    assert!(line.contains("status=deferred"), "{line}");
    assert!(line.contains("resolver does not validate DNSSEC"), "{line}");
    assert!(sts_receiver.messages().is_empty(), "{line}");

    let (code, v) = policy(&gate.config_path, "dane.sec.test");
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["level"], "unknown", "{v}");
    assert!(
        v["verdict"]
            .as_str()
            .unwrap()
            .contains("resolver does not validate DNSSEC"),
        "{v}"
    );
    // `check` runs the same self-test first, and blames the resolver too.
    let (code, out, err) = cli(&gate.config_path, &["check", "dane.sec.test"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("resolver self-test failed"), "{err}");
    assert!(
        format!("{out}{err}").contains("resolver does not validate DNSSEC"),
        "{out}{err}"
    );
    assert!(!out.contains("bogus"), "{out}");
    assert_eq!(receiver.connections(), 0, "check dialled the DANE MX");
    let metrics = scrape(gate.metrics);
    if std::env::var_os("DUMP").is_some() {
        eprintln!("{}\n{v}", gate.log());
    }
    assert!(metrics.contains("policy=\"unknown\""), "{metrics}");
}

/// `date -u` of a Unix time in `postqueue -p`'s shape.
fn date_utc(unix: u64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{unix}"), "+%a %b %e %H:%M:%S"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_list_needs_only_the_control_socket() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the MX: the message stays deferred with a next attempt.
    let port = common::free_port();
    let world = mx(
        DnsWorld::builder().zone("ins.test.", Signing::Insecure),
        "plain.ins.test",
        9,
    )
    .start()
    .await
    .unwrap();
    let mut s = settings(&world, port);
    s.queue = "retry_intervals = [\"1h\"]\n".into();
    let gate = Mxgate::start(dir.path(), &s);
    submit(
        gate.listen,
        "s@origin.test",
        &["u@plain.ins.test"],
        b"Subject: x\r\n\r\nbody\r\n",
    )
    .await
    .unwrap();
    gate.wait_log(
        |l| l.contains("to=<u@plain.ins.test>") && l.contains("status=deferred"),
        Duration::from_secs(30),
    )
    .await;

    // The operator is mid-edit: the file no longer validates.
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&gate.config_path)
        .unwrap()
        .replace("max_age = \"1h\"", "max_age = \"soon\"");
    std::fs::write(&bad, text).unwrap();
    let (code, _, err) = cli(&bad, &["check-config"]);
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = cli(&bad, &["queue", "list"]);
    assert_eq!(code, 0, "{out} {err}");
    assert!(err.contains("warning"), "{err}");
    assert!(err.contains("max_age"), "{err}");
    assert!(out.contains("s@origin.test"), "{out}");
    assert!(
        out.contains("u@plain.ins.test (pending, 1 attempt(s), next attempt "),
        "{out}"
    );

    // Dates, not epochs: arrival and next attempt as `postqueue -p` prints them.
    let (code, json, err) = cli(&bad, &["queue", "list", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&json).unwrap();
    let arrival = v[0]["arrival"].as_u64().unwrap();
    let next = v[0]["recipients"][0]["next_attempt"].as_u64().unwrap();
    assert!(next > arrival + 3000, "{v}");
    assert!(out.contains(&date_utc(arrival)), "{out}");
    assert!(
        out.contains(&format!("next attempt {}", date_utc(next))),
        "{out}"
    );
    assert!(!out.contains(&arrival.to_string()), "{out}");

    // --socket skips the file entirely, even one that does not exist.
    let out = Command::new(env!("CARGO_BIN_EXE_mxgate"))
        .args(["queue", "list", "--socket"])
        .arg(&gate.control)
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("u@plain.ins.test"), "{stdout}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A file that is not TOML at all, and no --socket: a clear error, exit 2.
    std::fs::write(&bad, "[queue\n").unwrap();
    let (code, _, err) = cli(&bad, &["queue", "list"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_verify_on_a_may_domain_counts_and_logs_but_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cert = TestCert::self_signed(&["mx.shadow.ins.test"]);
    let world = mx(
        DnsWorld::builder().zone("ins.test.", Signing::Insecure),
        "shadow.ins.test",
        5,
    )
    .start()
    .await
    .unwrap();
    let receiver = SmtpReceiver::start_on(
        SocketAddr::from(([127, 0, 0, 5], port)),
        ReceiverConfig::with_starttls(cert.server_config()),
    )
    .await
    .unwrap();
    let mut s = settings(&world, port);
    s.domains = "\"shadow.ins.test\" = { level = \"may\", shadow = \"verify\" }\n".into();
    let gate = Mxgate::start(dir.path(), &s);

    // `policy` shows both levels, and what the shadow level asks of the MX.
    let (code, v) = policy(&gate.config_path, "shadow.ins.test");
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        (v["level"].as_str(), v["shadow"].as_str()),
        (Some("may"), Some("verify"))
    );
    assert_eq!(v["mx"][0]["requirement"], "may", "{v}");
    assert_eq!(
        v["mx"][0]["shadow_requirement"], "pkix (mx.shadow.ins.test)",
        "{v}"
    );

    submit(
        gate.listen,
        "s@origin.test",
        &["u@shadow.ins.test"],
        b"Subject: x\r\n\r\nshadowed\r\n",
    )
    .await
    .unwrap();
    let line = gate
        .wait_log(
            |l| l.contains("to=<u@shadow.ins.test>") && l.contains("status="),
            Duration::from_secs(30),
        )
        .await;
    // Delivered at `may` over TLS; `verify` would have failed on the self-signed chain.
    assert!(line.contains("status=sent"), "{line}");
    assert!(line.contains("policy=may"), "{line}");
    assert!(line.contains("tls=TLSv1."), "{line}");
    assert!(
        line.contains("shadow=verify:certificate-not-trusted"),
        "{line}"
    );
    assert_eq!(receiver.messages().len(), 1);
    let metrics = scrape(gate.metrics);
    let counted = metrics
        .lines()
        .find(|l| l.starts_with("mxgate_shadow_failures_total{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(counted.contains("level=\"verify\""), "{counted}");
    assert!(
        counted.contains("reason=\"certificate-not-trusted\""),
        "{counted}"
    );
    assert!(counted.ends_with(" 1"), "{counted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_domain_that_moved_its_mx_and_bumped_its_id_is_delivered_at_once() {
    use mxgate_testkit::certs::{TestCa, Validity};
    use mxgate_testkit::https::{HttpResponse, HttpsServer};
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let d = "moved.sts.test";
    let ca = TestCa::new("Moved CA");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    // The domain moved from mx1 to mx2 and published policy id v2 listing mx2 only.
    let world = DnsWorld::builder()
        .zone("sts.test.", Signing::Insecure)
        .record(&format!("{d}. 300 IN MX 10 mx2.{d}."))
        .record(&format!("mx2.{d}. 300 IN A 127.0.0.6"))
        .record(&format!("_mta-sts.{d}. 300 IN TXT \"v=STSv1; id=v2\""))
        .record(&format!("mta-sts.{d}. 300 IN A 127.0.0.1"))
        .start()
        .await
        .unwrap();
    let https = HttpsServer::start(
        ca.issue(&[&format!("mta-sts.{d}")], Validity::current())
            .server_config(),
    )
    .await
    .unwrap();
    https.serve_policy(
        d,
        HttpResponse::policy(&format!(
            "version: STSv1\r\nmode: enforce\r\nmx: mx2.{d}\r\nmax_age: 86400\r\n"
        )),
    );
    let receiver = SmtpReceiver::start_on(
        SocketAddr::from(([127, 0, 0, 6], port)),
        ReceiverConfig::with_starttls(
            ca.issue(&[&format!("mx2.{d}")], Validity::current())
                .server_config(),
        ),
    )
    .await
    .unwrap();
    // mxgate still holds the old policy (id v1, mx1 only), fetched a minute ago and
    // valid for another day: without a TXT id check it would never dial mx2.
    let cache = dir.path().join("policy");
    std::fs::create_dir_all(&cache).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old = serde_json::json!({
        "domain": d,
        "id": "v1",
        "policy": {"mode": "enforce", "mx": [format!("mx1.{d}")], "max_age": 86400},
        "fetched_at": now - 60,
    });
    // The very format the store reads (a file it could not read would hide the test).
    serde_json::from_value::<mxgate_policy::sts::CachedPolicy>(old.clone()).unwrap();
    std::fs::write(cache.join(format!("{d}.json")), old.to_string()).unwrap();
    let mut s = settings(&world, port);
    s.ca_file = Some(ca_path);
    s.mta_sts_port = https.port();
    let gate = Mxgate::start(dir.path(), &s);

    submit(
        gate.listen,
        "s@origin.test",
        &[&format!("u@{d}")],
        b"Subject: moved\r\n\r\nbody\r\n",
    )
    .await
    .unwrap();
    let line = gate
        .wait_log(
            |l| l.contains(&format!("to=<u@{d}>")) && l.contains("status="),
            Duration::from_secs(30),
        )
        .await;
    // The first attempt already used the new policy.
    assert!(line.contains("status=sent"), "{line}\n{}", gate.log());
    assert!(line.contains("policy=mta-sts"), "{line}");
    assert!(line.contains("auth=pkix"), "{line}");
    assert!(
        line.contains(&format!("relay=mx2.{d}[127.0.0.6]")),
        "{line}"
    );
    assert_eq!(receiver.messages().len(), 1);
    assert!(!gate.log().contains("mta-sts cache:"), "{}", gate.log());
    let stored = std::fs::read_to_string(cache.join(format!("{d}.json"))).unwrap();
    assert!(stored.contains("\"v2\""), "{stored}");
}
