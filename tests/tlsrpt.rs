//! End-to-end TLS reporting (RFC 8460, docs/tlsrpt.md) through the real `mxgate` binary.
//!
//! A private world on loopback: a DNS tree with an insecure `rpt.test.` zone and a
//! signed `dane.test.` zone, SMTP receivers with chosen certificates (one behind a MITM
//! that strips STARTTLS), an HTTPS server for MTA-STS policies, an HTTPS report collector
//! and an SMTP report collector. The test causes known sessions, has mxgate send its
//! reports, and checks every report field by field with a parser written here from
//! RFC 8460 §4.4 (not mxgate's own code); mailed reports are also checked against
//! RFC 8460 §5.3 and their DKIM signature verified by dkimpy.

#![allow(clippy::unwrap_used)]

#[path = "tlsrpt/collector.rs"]
mod collector;
mod common;
#[allow(dead_code)]
#[path = "tls_policy/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use collector::*;
use common::Mxgate;
use mxgate_testkit::certs::{sha256, TestCa, TestCert, Validity};
use mxgate_testkit::dns::{DnsWorld, Signing};
use mxgate_testkit::https::{HttpResponse, HttpsServer};
use mxgate_testkit::mitm::MitmMode;
use mxgate_testkit::postfix::submit;
use mxgate_testkit::smtp::ReceivedMessage;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);

/// The unfolded value of header `name` in `message`.
fn header(message: &str, name: &str) -> Option<String> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    let unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// RFC 8460 §5.3 checks of one mailed report; returns the domain and the report.
fn check_mail(msg: &ReceivedMessage, submitter: &str) -> (String, ParsedReport) {
    let text = String::from_utf8_lossy(&msg.data).to_string();
    let domain = header(&text, "TLS-Report-Domain").expect("TLS-Report-Domain");
    assert_eq!(
        header(&text, "TLS-Report-Submitter").as_deref(),
        Some(submitter)
    );
    assert_eq!(header(&text, "TLS-Required").as_deref(), Some("No"));
    let ctype = header(&text, "Content-Type").expect("Content-Type");
    assert!(
        ctype.starts_with("multipart/report;") && ctype.contains("report-type=\"tlsrpt\""),
        "{ctype}"
    );
    let boundary = ctype
        .split("boundary=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let part = text
        .split(&format!("--{boundary}"))
        .find(|p| p.contains("Content-Type: application/tlsrpt+gzip"))
        .expect("an application/tlsrpt+gzip part");
    assert!(part.contains("Content-Transfer-Encoding: base64"));
    let b64: String = part
        .split("\r\n\r\n")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    let gzip = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let report = parse_report(&gzip);
    let subject = header(&text, "Subject").expect("Subject");
    assert_eq!(
        subject,
        format!(
            "Report Domain: {domain} Submitter: {submitter} Report-ID: <{}>",
            report.report_id
        )
    );
    (domain, report)
}

/// dkimpy verifies the signature, with the key record handed in (no DNS).
fn dkim_verifies(message: &[u8], key_record: &str, dir: &std::path::Path) -> bool {
    let msg_path = dir.join("signed.eml");
    std::fs::write(&msg_path, message).unwrap();
    let script = r#"
import sys, dkim
msg = open(sys.argv[1], 'rb').read()
record = sys.argv[2].encode()
asked = []
def dns(name, timeout=5):
    asked.append(name)
    return record
# 'strict': a TLS report whose key record must say s=tlsrpt (RFC 8460 §3).
ok = dkim.verify(msg, dnsfunc=dns, tlsrpt='strict')
assert asked == [b'tlsrpt._domainkey.relay.mxgate.test.'], asked
print('ok' if ok else 'fail')
"#;
    let out = std::process::Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&msg_path)
        .arg(key_record)
        .output()
        .expect("python3 with dkimpy (Debian python3-dkim)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dkimpy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.trim() == "ok"
}

/// An RSA key for DKIM (PKCS#8 PEM) and its `p=` value.
fn dkim_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let key = dir.join("dkim.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .expect("openssl");
    assert!(ok.status.success());
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl");
    assert!(der.status.success());
    (
        key,
        base64::engine::general_purpose::STANDARD.encode(der.stdout),
    )
}

fn tlsrpt_txt(domain: &str, https_port: u16) -> String {
    format!(
        "_smtp._tls.{domain}. 300 IN TXT \"v=TLSRPTv1; rua=mailto:reports@collect.rpt.test,https://reports.rpt.test:{https_port}/tlsrpt/v1\""
    )
}

fn tlsrpt_list(gate: &Mxgate) -> Value {
    let (code, out, err) = gate.cli(&["tlsrpt", "list", "--json"]);
    assert_eq!(code, 0, "tlsrpt list: {err}");
    serde_json::from_str(&out).unwrap()
}

async fn submit_with(gate: &Mxgate, domain: &str, extra_header: &str) {
    let to = rcpt(domain);
    let body = format!("{extra_header}Subject: test {domain}\r\n\r\nSECRET-BODY-{domain}\r\n");
    submit(gate.listen, SENDER, &[to.as_str()], body.as_bytes())
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

/// Every kind of session the report must describe, reported by HTTPS and mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_reach_https_and_mail_collectors_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("TLSRPT Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let port = common::free_port();
    let collector = Collector::start(&ca.issue(&["reports.rpt.test"], Validity::current())).await;
    let cport = collector.addr.port();
    let mut world = DnsWorld::builder()
        .zone("rpt.test.", Signing::Insecure)
        .zone("dane.test.", Signing::Secure)
        .record("reports.rpt.test. 300 IN A 127.0.0.1");
    let mut policies: Vec<(String, String)> = Vec::new();

    // STS enforce, valid certificate: two messages, two successes.
    let good = "good.rpt.test";
    world = sts_records(mx_records(world, good, 2), good, "g1").record(&tlsrpt_txt(good, cport));
    policies.push((good.into(), sts_policy("enforce", &["mx.good.rpt.test"])));
    let good_mx = Mx::direct(
        2,
        port,
        tls_config(&ca.issue(&["mx.good.rpt.test"], Validity::current())),
    )
    .await;

    // STS enforce, self-signed certificate: deferred, certificate-not-trusted.
    let bad = "selfsigned.rpt.test";
    world = sts_records(mx_records(world, bad, 3), bad, "s1").record(&tlsrpt_txt(bad, cport));
    policies.push((
        bad.into(),
        sts_policy("enforce", &["*.selfsigned.rpt.test"]),
    ));
    let _bad_mx = Mx::direct(
        3,
        port,
        tls_config(&TestCert::self_signed(&["mx.selfsigned.rpt.test"])),
    )
    .await;

    // STS enforce, STARTTLS stripped by an attacker: starttls-not-supported.
    let strip = "strip.rpt.test";
    world = sts_records(mx_records(world, strip, 4), strip, "x1").record(&tlsrpt_txt(strip, cport));
    policies.push((strip.into(), sts_policy("enforce", &["mx.strip.rpt.test"])));
    let _strip_mx = Mx::attacked(
        4,
        port,
        tls_config(&ca.issue(&["mx.strip.rpt.test"], Validity::current())),
        MitmMode::StripStarttls,
    )
    .await;

    // DANE: the TLSA record matches another key: tlsa-invalid.
    let dane = "mm.dane.test";
    let other = TestCert::self_signed(&["unrelated.test"]);
    let tlsa_hex: String = sha256(&other.spki_der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    world = mx_records(world, dane, 5)
        .record(&tlsa(port, "mx.mm.dane.test", 3, &sha256(&other.spki_der)))
        .record(&tlsrpt_txt(dane, cport));
    let _dane_mx = Mx::direct(
        5,
        port,
        tls_config(&ca.issue(&["mx.mm.dane.test"], Validity::current())),
    )
    .await;

    // No policy: two opportunistic deliveries, no-policy-found successes.
    let plain = "plain.rpt.test";
    world = mx_records(world, plain, 6).record(&tlsrpt_txt(plain, cport));
    let plain_mx = Mx::direct(
        6,
        port,
        tls_config(&TestCert::self_signed(&["mx.plain.rpt.test"])),
    )
    .await;

    // STS testing whose mx patterns do not cover the MX: delivered, failure reported.
    let testing = "testing.rpt.test";
    world = sts_records(mx_records(world, testing, 7), testing, "t1")
        .record(&tlsrpt_txt(testing, cport));
    policies.push((
        testing.into(),
        sts_policy("testing", &["mx.elsewhere.rpt.test"]),
    ));
    let testing_mx = Mx::direct(
        7,
        port,
        tls_config(&ca.issue(&["mx.testing.rpt.test"], Validity::current())),
    )
    .await;

    // STS testing, MX listed, self-signed certificate: delivered, certificate-not-trusted.
    let testcert = "testcert.rpt.test";
    world = sts_records(mx_records(world, testcert, 10), testcert, "u1")
        .record(&tlsrpt_txt(testcert, cport));
    policies.push((
        testcert.into(),
        sts_policy("testing", &["mx.testcert.rpt.test"]),
    ));
    let testcert_mx = Mx::direct(
        10,
        port,
        tls_config(&TestCert::self_signed(&["mx.testcert.rpt.test"])),
    )
    .await;

    // The mail collector's own domain enforces MTA-STS but its MX has a self-signed
    // certificate: report mails get through only thanks to `TLS-Required: No`.
    let collect = "collect.rpt.test";
    world = sts_records(mx_records(world, collect, 8), collect, "c1");
    policies.push((
        collect.into(),
        sts_policy("enforce", &["mx.collect.rpt.test"]),
    ));
    let collect_mx = Mx::direct(
        8,
        port,
        tls_config(&TestCert::self_signed(&["mx.collect.rpt.test"])),
    )
    .await;

    // A configured `verify` domain: `TLS-Required: No` does not lower it.
    let verify = "verify.rpt.test";
    world = mx_records(world, verify, 9);
    let verify_mx = Mx::direct(
        9,
        port,
        tls_config(&TestCert::self_signed(&["mx.verify.rpt.test"])),
    )
    .await;

    // A configured `dane-only` domain whose TLSA record matches another key: DNS
    // supplies the records, but the level is the operator's, so `TLS-Required: No`
    // does not lower it either.
    let donly = "donly.dane.test";
    world = mx_records(world, donly, 11).record(&tlsa(
        port,
        "mx.donly.dane.test",
        3,
        &sha256(&other.spki_der),
    ));
    let donly_mx = Mx::direct(
        11,
        port,
        tls_config(&ca.issue(&["mx.donly.dane.test"], Validity::current())),
    )
    .await;

    let world = world.start().await.unwrap();
    let sts_names: Vec<String> = policies
        .iter()
        .map(|(d, _)| format!("mta-sts.{d}"))
        .collect();
    let refs: Vec<&str> = sts_names.iter().map(String::as_str).collect();
    let https = HttpsServer::start(ca.issue(&refs, Validity::current()).server_config())
        .await
        .unwrap();
    for (d, p) in &policies {
        https.serve_policy(d, HttpResponse::policy(p));
    }

    let (key_path, public_key) = dkim_key(dir.path());
    let mut s = settings(&world, world.addr(), port, &ca_path, "validate");
    s.mta_sts_port = https.port();
    // One attempt per deferred message, so the failure counts are exact.
    s.queue = "retry_intervals = [\"1h\"]\n".into();
    s.domains = format!(
        "\"{verify}\" = {{ level = \"verify\" }}\n\"{donly}\" = {{ level = \"dane-only\" }}\n"
    );
    s.tlsrpt = format!(
        "send_delay = \"0s\"\nflush_interval = \"1s\"\norganization_name = \"mxgate tests\"\n\
         dkim_domain = \"relay.mxgate.test\"\ndkim_selector = \"tlsrpt\"\ndkim_key = {:?}\n",
        key_path.display().to_string()
    );
    let gate = Mxgate::start(dir.path(), &s);

    for d in [
        good, good, bad, strip, dane, plain, plain, testing, testcert,
    ] {
        submit_to(&gate, d).await;
    }
    submit_with(&gate, verify, "TLS-Required: No\r\n").await;
    submit_with(&gate, donly, "TLS-Required: No\r\n").await;
    good_mx.receiver.wait_for(2).await;
    plain_mx.receiver.wait_for(2).await;
    testing_mx.receiver.wait_for(1).await;
    testcert_mx.receiver.wait_for(1).await;
    for d in [bad, strip, dane, verify, donly] {
        log_line(&gate, d, "deferred").await;
    }
    assert!(
        verify_mx.receiver.messages().is_empty(),
        "a configured verify level must not be lowered"
    );
    assert!(
        donly_mx.receiver.messages().is_empty(),
        "a configured dane-only level must not be lowered"
    );

    // What will be reported, before it is sent.
    let listed = tlsrpt_list(&gate);
    let listed_domains: Vec<&str> = listed["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["policies"][0]["policy"]["policy-domain"]
                .as_str()
                .unwrap()
        })
        .collect();
    for d in [good, bad, strip, dane, plain, testing] {
        assert!(
            listed_domains.contains(&d),
            "{d} missing from tlsrpt list: {listed}"
        );
    }

    let (code, out, err) = gate.cli(&["tlsrpt", "send"]);
    assert_eq!(code, 0, "tlsrpt send: {out}{err}\n{}", gate.log());
    let reporting = [good, bad, strip, dane, plain, testing, testcert];
    for d in reporting {
        assert!(
            out.contains(&format!("{d} sent mailto:reports@collect.rpt.test")),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "{d} sent https://reports.rpt.test:{cport}/tlsrpt/v1"
            )),
            "{out}"
        );
    }

    // HTTPS: one POST per domain.
    let posts = collector.wait_posts(reporting.len()).await;
    let mut by_https: BTreeMap<String, ParsedReport> = BTreeMap::new();
    for post in &posts {
        assert_eq!(post.path, "/tlsrpt/v1");
        assert_eq!(post.content_type, "application/tlsrpt+gzip");
        let report = parse_report(&post.body);
        let domain = report.policies[0].policy_domain.clone();
        assert!(
            by_https.insert(domain, report).is_none(),
            "one POST per domain"
        );
    }
    // Mail: one message per domain, through the collector's broken MTA-STS.
    let mails = collect_mx.receiver.wait_for(reporting.len()).await;
    let mut by_mail: BTreeMap<String, ParsedReport> = BTreeMap::new();
    for m in &mails {
        assert_eq!(m.sender, "noreply-tlsrpt@relay.mxgate.test");
        assert!(m.tls.is_some(), "opportunistic TLS is still used");
        assert!(
            dkim_verifies(
                &m.data,
                &format!("v=DKIM1; k=rsa; s=tlsrpt; p={public_key}"),
                dir.path()
            ),
            "DKIM"
        );
        let mut tampered = m.data.clone();
        let at = tampered.len() - 10;
        tampered[at] ^= 0x01;
        assert!(!dkim_verifies(
            &tampered,
            &format!("v=DKIM1; k=rsa; p={public_key}"),
            dir.path()
        ));
        let (domain, report) = check_mail(m, "relay.mxgate.test");
        assert!(
            by_mail.insert(domain, report).is_none(),
            "one mail per domain"
        );
    }
    assert_eq!(
        by_https.keys().collect::<Vec<_>>(),
        by_mail.keys().collect::<Vec<_>>()
    );

    let mut ids = std::collections::HashSet::new();
    for (domain, report) in &by_https {
        assert_eq!(
            report.report_id, by_mail[domain].report_id,
            "same report to every address"
        );
        assert!(
            ids.insert(report.report_id.clone()),
            "report-id unique per report"
        );
        assert_eq!(report.organization_name, "mxgate tests");
        assert_eq!(report.contact_info, "postmaster@relay.mxgate.test");
        assert!(report.start <= report.end);
        assert_eq!(report.policies.len(), 1, "{domain}: {report:?}");
        assert!(report.policies.iter().all(|p| p.policy_domain == *domain));
    }
    eprintln!("report of {bad}: {:?}", by_https[bad]);

    let p = &by_https[good].policies[0];
    assert_eq!(
        (p.policy_type.as_str(), p.successes, p.failures),
        ("sts", 2, 0)
    );
    assert_eq!(p.mx_host, vec!["mx.good.rpt.test"]);
    assert_eq!(
        p.policy_string,
        vec![
            "version: STSv1",
            "mode: enforce",
            "mx: mx.good.rpt.test",
            "max_age: 86400"
        ]
    );
    assert!(p.details.is_empty());

    let failure = |mx: &str, ip: &str, rt: &str| Failure {
        result_type: rt.into(),
        receiving_mx_hostname: Some(mx.into()),
        receiving_ip: Some(ip.into()),
        failed_session_count: 1,
    };
    let p = &by_https[bad].policies[0];
    assert_eq!(
        (p.policy_type.as_str(), p.successes, p.failures),
        ("sts", 0, 1)
    );
    assert_eq!(p.mx_host, vec!["*.selfsigned.rpt.test"]);
    assert_eq!(
        p.details,
        vec![failure(
            "mx.selfsigned.rpt.test",
            "127.0.0.3",
            "certificate-not-trusted"
        )]
    );

    let p = &by_https[strip].policies[0];
    assert_eq!(
        (p.policy_type.as_str(), p.successes, p.failures),
        ("sts", 0, 1)
    );
    assert_eq!(
        p.details,
        vec![failure(
            "mx.strip.rpt.test",
            "127.0.0.4",
            "starttls-not-supported"
        )]
    );

    let p = &by_https[dane].policies[0];
    assert_eq!(
        (p.policy_type.as_str(), p.successes, p.failures),
        ("tlsa", 0, 1)
    );
    assert_eq!(p.policy_string, vec![format!("3 1 1 {tlsa_hex}")]);
    assert_eq!(p.mx_host, vec!["mx.mm.dane.test"]);
    assert_eq!(
        p.details,
        vec![failure("mx.mm.dane.test", "127.0.0.5", "tlsa-invalid")]
    );

    let p = &by_https[plain].policies[0];
    assert_eq!(
        (p.policy_type.as_str(), p.successes, p.failures),
        ("no-policy-found", 2, 0)
    );
    assert!(p.policy_string.is_empty() && p.mx_host.is_empty());

    let p = &by_https[testing].policies[0];
    assert_eq!(
        (p.policy_type.as_str(), p.successes, p.failures),
        ("sts", 0, 1)
    );
    assert!(p.policy_string.contains(&"mode: testing".to_string()));
    assert_eq!(
        p.details,
        vec![failure(
            "mx.testing.rpt.test",
            "127.0.0.7",
            "validation-failure"
        )]
    );

    let p = &by_https[testcert].policies[0];
    assert_eq!(
        (p.policy_type.as_str(), p.successes, p.failures),
        ("sts", 0, 1)
    );
    assert_eq!(
        p.details,
        vec![failure(
            "mx.testcert.rpt.test",
            "127.0.0.10",
            "certificate-not-trusted"
        )]
    );

    // No report loops: the report deliveries were not counted anywhere.
    let listed = tlsrpt_list(&gate);
    assert!(
        listed["domains"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["policies"][0]["policy"]["policy-domain"] != collect),
        "report deliveries must not be counted: {listed}"
    );
    let metrics = reqwest_free_get(gate.metrics).await;
    assert!(
        metrics.contains("mxgate_tlsrpt_reports_total{via=\"https\",result=\"sent\"} 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mxgate_tlsrpt_reports_total{via=\"mailto\",result=\"sent\"} 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mxgate_tlsrpt_sessions_total{policy_type=\"sts\",result=\"success\"} 2"),
        "{metrics}"
    );
    // Testing failures count with the reason enforce would have failed on: the MX
    // outside the policy (policy_excluded), the self-signed certificate of testcert
    // (certificate_invalid, as the enforced one of selfsigned).
    for series in [
        "mxgate_tls_policy_failures_total{policy=\"mta-sts\",reason=\"policy_excluded\"} 1",
        "mxgate_tls_policy_failures_total{policy=\"mta-sts\",reason=\"certificate_invalid\"} 2",
    ] {
        assert!(metrics.contains(series), "{series}: {metrics}");
    }
    assert!(!metrics.contains("reason=\"testing\""), "{metrics}");
    // The testing failure is logged.
    assert!(gate.log().contains("mta-sts testing: policy not met"));
    if let Ok(path) = std::env::var("TLSRPT_SAMPLE_OUT") {
        let raw = &posts
            .iter()
            .find(|p| parse_report(&p.body).policies[0].policy_domain == bad)
            .unwrap()
            .body;
        let mut json = String::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_string(&mut json)
            .unwrap();
        std::fs::write(path, json).unwrap();
    }
}

/// `GET /metrics` over a plain TCP socket.
async fn reqwest_free_get(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// One domain without policy that publishes a record pointing at `collector`.
async fn plain_world(cport: u16) -> (DnsWorld, Mx, u16) {
    let port = common::free_port();
    let world = mx_records(
        DnsWorld::builder()
            .zone("rpt.test.", Signing::Insecure)
            .record("reports.rpt.test. 300 IN A 127.0.0.1"),
        "plain.rpt.test",
        2,
    )
    .record(&tlsrpt_txt("plain.rpt.test", cport))
    .start()
    .await
    .unwrap();
    let mx = Mx::direct(
        2,
        port,
        tls_config(&TestCert::self_signed(&["mx.plain.rpt.test"])),
    )
    .await;
    (world, mx, port)
}

fn successes(listed: &Value, domain: &str) -> u64 {
    listed["domains"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["policies"].as_array().unwrap().iter())
        .filter(|p| p["policy"]["policy-domain"] == domain)
        .map(|p| {
            p["summary"]["total-successful-session-count"]
                .as_u64()
                .unwrap()
        })
        .sum()
}

/// Waits until `tlsrpt list` counts `n` successful sessions for `domain`; fails if it
/// counts more, or not that many in time.
async fn wait_successes(gate: &Mxgate, domain: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = successes(&tlsrpt_list(gate), domain);
        assert!(
            got <= n as u64,
            "{got} successes, {n} delivered\n{}",
            gate.log()
        );
        if got == n as u64 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{got} of {n} successes\n{}",
            gate.log()
        );
        // The control socket is the only view of the counters from outside.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the saved state mentions `needle` (the file is the only view of what a
/// crash would keep).
async fn wait_saved(dir: &std::path::Path, needle: &str) {
    let path = dir.join("tlsrpt").join("state.json");
    tokio::time::timeout(WAIT, async {
        loop {
            if std::fs::read_to_string(&path).is_ok_and(|s| s.contains(needle)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("counters saved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_kill_9_and_sigterm() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("TLSRPT Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let collector = Collector::start(&ca.issue(&["reports.rpt.test"], Validity::current())).await;
    let (world, mx, port) = plain_world(collector.addr.port()).await;
    let mut s = common::Settings::new(world.addr(), port);
    s.ca_file = Some(ca_path);
    s.tlsrpt = "flush_interval = \"1s\"\n".into();
    let mut gate = Mxgate::start(dir.path(), &s);

    // kill -9 after a flush: the session is kept.
    submit_to(&gate, "plain.rpt.test").await;
    mx.receiver.wait_for(1).await;
    wait_saved(dir.path(), "plain.rpt.test").await;
    gate.kill9();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("tlsrpt")), 0o700);
    assert_eq!(mode(&dir.path().join("tlsrpt/state.json")), 0o600);

    // SIGTERM saves at once, long before the next flush would.
    let config = std::fs::read_to_string(&gate.config_path).unwrap();
    std::fs::write(
        &gate.config_path,
        config.replace("flush_interval = \"1s\"", "flush_interval = \"60s\""),
    )
    .unwrap();
    gate.spawn();
    // kill -9 may land after the counters were saved but before the message's
    // completion record reached the log (the at-least-once window of ARCHITECTURE.md):
    // then it is delivered, and counted, once more. Either way every delivered session
    // is counted exactly once.
    common::world::queue_is_empty(&gate).await;
    let delivered = mx.receiver.messages().len();
    wait_successes(&gate, "plain.rpt.test", delivered).await;
    submit_to(&gate, "plain.rpt.test").await;
    mx.receiver.wait_for(delivered + 1).await;
    wait_successes(&gate, "plain.rpt.test", delivered + 1).await;
    gate.signal(libc::SIGTERM);
    assert!(gate.wait_exit().success());
    gate.spawn();
    assert_eq!(
        successes(&tlsrpt_list(&gate), "plain.rpt.test"),
        delivered as u64 + 1,
        "{}",
        gate.log()
    );

    // And the restored counts are what gets reported.
    let (code, out, err) = gate.cli(&["tlsrpt", "send"]);
    assert_eq!(code, 0, "{out}{err}");
    let posts = collector.wait_posts(1).await;
    let report = parse_report(&posts[0].body);
    assert_eq!(report.policies[0].policy_type, "no-policy-found");
    assert_eq!(
        (report.policies[0].successes, report.policies[0].failures),
        (delivered as u64 + 1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_period_is_reported_without_being_asked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("TLSRPT Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let collector = Collector::start(&ca.issue(&["reports.rpt.test"], Validity::current())).await;
    let (world, mx, port) = plain_world(collector.addr.port()).await;
    let mut s = common::Settings::new(world.addr(), port);
    s.ca_file = Some(ca_path);
    s.tlsrpt = "period = \"2s\"\nsend_delay = \"0s\"\n".into();
    let gate = Mxgate::start(dir.path(), &s);
    submit_to(&gate, "plain.rpt.test").await;
    mx.receiver.wait_for(1).await;
    let posts = collector.wait_posts(1).await;
    assert_eq!(posts[0].content_type, "application/tlsrpt+gzip");
    let report = parse_report(&posts[0].body);
    assert_eq!(report.policies[0].policy_domain, "plain.rpt.test");
    assert_eq!(report.policies[0].successes, 1);
    // A 2 s period: start and end two seconds apart (end = last second inside it).
    assert_ne!(report.start, report.end);
}

/// `tlsrpt.relay`: report mails go to the relay (e.g. Postfix + OpenDKIM), unsigned,
/// even where the rua domain has no MX at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_mails_go_to_the_relay_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("TLSRPT Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let collector = Collector::start(&ca.issue(&["reports.rpt.test"], Validity::current())).await;
    let (world, mx, port) = plain_world(collector.addr.port()).await;
    let relay =
        mxgate_testkit::smtp::SmtpReceiver::start(mxgate_testkit::smtp::ReceiverConfig::default())
            .await
            .unwrap();
    let mut s = common::Settings::new(world.addr(), port);
    s.ca_file = Some(ca_path);
    s.tlsrpt = format!("relay = \"{}\"\n", relay.addr());
    let gate = Mxgate::start(dir.path(), &s);
    submit_to(&gate, "plain.rpt.test").await;
    mx.receiver.wait_for(1).await;
    let (code, out, err) = gate.cli(&["tlsrpt", "send"]);
    assert_eq!(code, 0, "{out}{err}\n{}", gate.log());
    assert!(
        out.contains("plain.rpt.test sent mailto:reports@collect.rpt.test"),
        "{out}"
    );
    let mails = relay.wait_for(1).await;
    assert_eq!(mails[0].recipients[0].address, "reports@collect.rpt.test");
    let text = String::from_utf8_lossy(&mails[0].data).to_string();
    assert!(
        header(&text, "DKIM-Signature").is_none(),
        "unsigned without dkim_*"
    );
    let (domain, report) = check_mail(&mails[0], "relay.mxgate.test");
    assert_eq!(domain, "plain.rpt.test");
    assert_eq!(report.policies[0].successes, 1);
    collector.wait_posts(1).await;
}

/// RFC 8460 §4.3.2.2: domains whose `_mta-sts` TXT record announces a policy that
/// cannot be obtained — the policy URL answers 404, the body is no valid policy, the
/// policy host's certificate is not trusted. Mail is delivered as though the domain had
/// no policy (RFC 8461 §5), and every session is reported as an `sts` failure of the
/// matching result type, under a policy block without policy-string or mx-host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unobtainable_sts_policies_are_reported_as_sts_policy_failures() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("TLSRPT Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let port = common::free_port();
    let collector = Collector::start(&ca.issue(&["reports.rpt.test"], Validity::current())).await;
    let cport = collector.addr.port();
    let mut world = DnsWorld::builder()
        .zone("rpt.test.", Signing::Insecure)
        .record("reports.rpt.test. 300 IN A 127.0.0.1");
    let missing = "missing.rpt.test";
    let malformed = "malformed.rpt.test";
    let untrusted = "untrusted.rpt.test";
    let mut mxs = Vec::new();
    for (n, d) in [(2u8, missing), (3, malformed), (4, untrusted)] {
        world = mx_records(world, d, n).record(&tlsrpt_txt(d, cport));
        mxs.push(
            Mx::direct(
                n,
                port,
                tls_config(&ca.issue(&[&format!("mx.{d}")], Validity::current())),
            )
            .await,
        );
    }
    world = sts_records(world, missing, "m1");
    world = sts_records(world, malformed, "b1");
    // The untrusted policy host lives on another loopback address (same port).
    world = world
        .record(&format!(
            "_mta-sts.{untrusted}. 300 IN TXT \"v=STSv1; id=u1\""
        ))
        .record(&format!("mta-sts.{untrusted}. 300 IN A 127.0.0.20"));
    let world = world.start().await.unwrap();
    let https = HttpsServer::start(
        ca.issue(
            &[
                &format!("mta-sts.{missing}"),
                &format!("mta-sts.{malformed}"),
            ],
            Validity::current(),
        )
        .server_config(),
    )
    .await
    .unwrap();
    https.serve_policy(missing, HttpResponse::status(404));
    // No mx and no max_age (RFC 8461 §3.2).
    https.serve_policy(
        malformed,
        HttpResponse::policy("version: STSv1\r\nmode: enforce\r\n"),
    );
    let self_signed = HttpsServer::start_on(
        SocketAddr::from(([127, 0, 0, 20], https.port())),
        TestCert::self_signed(&[&format!("mta-sts.{untrusted}")]).server_config(),
    )
    .await
    .unwrap();
    self_signed.serve_policy(
        untrusted,
        HttpResponse::policy(&sts_policy("enforce", &[&format!("mx.{untrusted}")])),
    );

    let mut s = settings(&world, world.addr(), port, &ca_path, "validate");
    s.mta_sts_port = https.port();
    s.tlsrpt = "send_delay = \"0s\"\nflush_interval = \"1s\"\n".into();
    let gate = Mxgate::start(dir.path(), &s);
    for d in [missing, missing, malformed, untrusted] {
        submit_to(&gate, d).await;
    }
    // RFC 8461 §5: delivered as though the domain had not implemented MTA-STS.
    mxs[0].receiver.wait_for(2).await;
    mxs[1].receiver.wait_for(1).await;
    mxs[2].receiver.wait_for(1).await;
    assert_eq!(
        self_signed.requests(&format!("mta-sts.{untrusted}")),
        0,
        "no request to a policy host whose certificate failed"
    );

    let (code, out, err) = gate.cli(&["tlsrpt", "send"]);
    assert_eq!(code, 0, "tlsrpt send: {out}{err}\n{}", gate.log());
    let posts = collector.wait_posts(3).await;
    let mut by_domain: BTreeMap<String, ParsedReport> = BTreeMap::new();
    let mut raw: BTreeMap<String, Value> = BTreeMap::new();
    for post in &posts {
        let report = parse_report(&post.body);
        let mut json = String::new();
        flate2::read::GzDecoder::new(&post.body[..])
            .read_to_string(&mut json)
            .unwrap();
        raw.insert(
            report.policies[0].policy_domain.clone(),
            serde_json::from_str(&json).unwrap(),
        );
        let domain = report.policies[0].policy_domain.clone();
        assert!(
            by_domain.insert(domain, report).is_none(),
            "one POST per domain"
        );
    }
    for (d, ip, sessions, result_type) in [
        (missing, "127.0.0.2", 2, "sts-policy-fetch-error"),
        (malformed, "127.0.0.3", 1, "sts-policy-invalid"),
        (untrusted, "127.0.0.4", 1, "sts-webpki-invalid"),
    ] {
        let report = &by_domain[d];
        assert_eq!(report.policies.len(), 1, "{d}: {report:?}");
        let p = &report.policies[0];
        assert_eq!(
            (p.policy_type.as_str(), p.successes, p.failures),
            ("sts", 0, sessions),
            "{d}: {p:?}"
        );
        assert!(
            p.policy_string.is_empty() && p.mx_host.is_empty(),
            "{d}: no policy was obtained to quote: {p:?}"
        );
        assert_eq!(
            p.details,
            vec![Failure {
                result_type: result_type.into(),
                receiving_mx_hostname: Some(format!("mx.{d}")),
                receiving_ip: Some(ip.into()),
                failed_session_count: sessions,
            }],
            "{d}"
        );
    }
    // failure-reason-code and additional-information say which failure it was.
    for (d, info) in [
        (
            missing,
            "mta-sts: policy fetch: HTTP status 404 (only 200 is accepted)",
        ),
        (malformed, "mta-sts: policy: no max_age"),
        (
            untrusted,
            "mta-sts: policy fetch: certificate of the policy host not valid: ",
        ),
    ] {
        let detail = &raw[d]["policies"][0]["failure-details"][0];
        assert_eq!(
            detail["failure-reason-code"], detail["result-type"],
            "{d}: {detail}"
        );
        let text = detail["additional-information"].as_str().unwrap();
        assert!(text.starts_with(info), "{d}: {text}");
    }
    let metrics = reqwest_free_get(gate.metrics).await;
    for result in ["http_status", "parse_error", "certificate"] {
        assert!(
            metrics.contains(&format!(
                "mxgate_mta_sts_fetches_total{{result=\"{result}\"}}"
            )),
            "{result}: {metrics}"
        );
    }
    assert!(
        metrics.contains("mxgate_tlsrpt_sessions_total{policy_type=\"sts\",result=\"failure\"} 4"),
        "{metrics}"
    );
}
