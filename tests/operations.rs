//! Operations, through the real binary: `/metrics` after deliveries of each kind, the
//! per-attempt log line (text and `--log-format json`), `mxgate check` verdicts and exit
//! codes, SIGHUP reloads (valid and invalid; new trust roots retire cached sessions; a new
//! `delivery.smtp_port` moves the dialled port and its TLSA lookups together), and
//! SIGTERM without loss.
//!
//! One test world per test: a DNSSEC-signed zone `ops.test.` and five MX receivers on
//! 127.0.0.2..6 sharing one port (`delivery.smtp_port`):
//!
//! | host | address | serves |
//! |---|---|---|
//! | mx-plain | .2 | no STARTTLS |
//! | mx-good | .3 | certificate from the test CA (in `ca_file`) |
//! | mx-bad | .4 | self-signed certificate |
//! | mx-dane | .5 | self-signed, TLSA `3 1 1` matches |
//! | mx-danebad | .6 | self-signed, TLSA `3 1 1` of another key |

// Real processes on the real clock: the clock rule of clippy.toml is for product code.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{scrape, Mxgate, Settings};
use mxgate_testkit::certs::{sha256, TestCa, TestCert, Validity};
use mxgate_testkit::dns::{DnsWorld, Signing};
use mxgate_testkit::postfix::submit;
use mxgate_testkit::smtp::{ReceiverConfig, ReplyScript, SmtpReceiver};

const DOMAINS: &str = r#"
"clear.ops.test" = { level = "may" }
"plain.ops.test" = { level = "encrypt" }
"good.ops.test" = { level = "verify" }
"bad.ops.test" = { level = "verify" }
"flip.ops.test" = { level = "may" }
"#;

struct World {
    dns: DnsWorld,
    _dir: tempfile::TempDir,
    ca_file: std::path::PathBuf,
    port: u16,
    plain: SmtpReceiver,
    good: SmtpReceiver,
    bad: SmtpReceiver,
    dane: SmtpReceiver,
    danebad: SmtpReceiver,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl World {
    async fn start(plain_config: ReceiverConfig) -> World {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Ops Test CA");
        let ca_file = dir.path().join("ca.pem");
        ca.write_pem(&ca_file).unwrap();
        let plain = SmtpReceiver::start_on(SocketAddr::from(([127, 0, 0, 2], 0)), plain_config)
            .await
            .unwrap();
        let port = plain.port();
        let on = |last: u8| SocketAddr::from(([127, 0, 0, last], port));
        let good_cert = ca.issue(&["mx-good.ops.test"], Validity::current());
        let good = SmtpReceiver::start_on(
            on(3),
            ReceiverConfig::with_starttls(good_cert.server_config()),
        )
        .await
        .unwrap();
        let bad_cert = TestCert::self_signed(&["mx-bad.ops.test"]);
        let bad = SmtpReceiver::start_on(
            on(4),
            ReceiverConfig::with_starttls(bad_cert.server_config()),
        )
        .await
        .unwrap();
        let dane_cert = TestCert::self_signed(&["mx-dane.ops.test"]);
        let dane = SmtpReceiver::start_on(
            on(5),
            ReceiverConfig::with_starttls(dane_cert.server_config()),
        )
        .await
        .unwrap();
        let danebad_cert = TestCert::self_signed(&["mx-danebad.ops.test"]);
        let danebad = SmtpReceiver::start_on(
            on(6),
            ReceiverConfig::with_starttls(danebad_cert.server_config()),
        )
        .await
        .unwrap();
        let other_key = TestCert::self_signed(&["elsewhere.ops.test"]);
        let records = format!(
            "clear.ops.test. 300 IN MX 10 mx-plain.ops.test.
plain.ops.test. 300 IN MX 10 mx-plain.ops.test.
mx-plain.ops.test. 300 IN A 127.0.0.2
good.ops.test. 300 IN MX 10 mx-good.ops.test.
mx-good.ops.test. 300 IN A 127.0.0.3
bad.ops.test. 300 IN MX 10 mx-bad.ops.test.
flip.ops.test. 300 IN MX 10 mx-bad.ops.test.
mx-bad.ops.test. 300 IN A 127.0.0.4
dane.ops.test. 300 IN MX 10 mx-dane.ops.test.
mx-dane.ops.test. 300 IN A 127.0.0.5
_{port}._tcp.mx-dane.ops.test. 300 IN TLSA 3 1 1 {dane}
danebad.ops.test. 300 IN MX 10 mx-danebad.ops.test.
mx-danebad.ops.test. 300 IN A 127.0.0.6
_{port}._tcp.mx-danebad.ops.test. 300 IN TLSA 3 1 1 {wrong}",
            dane = hex(&sha256(&dane_cert.spki_der)),
            wrong = hex(&sha256(&other_key.spki_der)),
        );
        let dns = DnsWorld::builder()
            .zone("ops.test.", Signing::Secure)
            .record(&records)
            .start()
            .await
            .unwrap();
        World {
            dns,
            _dir: dir,
            ca_file,
            port,
            plain,
            good,
            bad,
            dane,
            danebad,
        }
    }

    fn settings(&self, domains: &str) -> Settings {
        let mut s = Settings::new(self.dns.addr(), self.port);
        s.dnssec = "validate";
        s.trust_anchor = Some(self.dns.trust_anchor_path().to_path_buf());
        s.ca_file = Some(self.ca_file.clone());
        s.domains = domains.to_string();
        s
    }
}

/// The sum of the samples of `name` whose labels include every pair of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric_name != name {
                return None;
            }
            let ok = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The `key=value` fields of a delivery log line (values may be `"quoted"`).
fn fields(line: &str) -> HashMap<String, String> {
    let start = line.find("id=").unwrap_or(0);
    let mut out = HashMap::new();
    let mut rest = &line[start..];
    while let Some((key, after)) = rest.split_once('=') {
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.insert(key.trim().to_string(), value.to_string());
        rest = next.trim_start();
    }
    out
}

/// The delivery log line for `rcpt` with `status=`.
async fn attempt_line(gate: &Mxgate, rcpt: &str, status: &str) -> HashMap<String, String> {
    let to = format!("to=<{rcpt}>");
    let st = format!("status={status}");
    let line = gate
        .wait_log(
            |l| l.contains(&to) && l.contains(&st),
            Duration::from_secs(15),
        )
        .await;
    fields(&line)
}

async fn send(gate: &Mxgate, rcpt: &str, subject: &str) {
    let message = format!("Subject: {subject}\r\nFrom: s@client.test\r\n\r\nbody\r\n");
    submit(
        gate.listen,
        "sender@client.test",
        &[rcpt],
        message.as_bytes(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_log_lines_after_deliveries_of_each_kind() {
    let world = World::start(ReceiverConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = Mxgate::start(dir.path(), &world.settings(DOMAINS));
    send(&gate, "a@clear.ops.test", "clear").await;
    send(&gate, "b@good.ops.test", "verified").await;
    send(&gate, "c@dane.ops.test", "dane").await;
    send(&gate, "d@bad.ops.test", "bad").await;
    world.plain.wait_for(1).await;
    world.good.wait_for(1).await;
    world.dane.wait_for(1).await;

    let clear = attempt_line(&gate, "a@clear.ops.test", "sent").await;
    let port = world.port;
    assert_eq!(
        clear["relay"],
        format!("mx-plain.ops.test[127.0.0.2]:{port}")
    );
    assert_eq!(
        (
            &*clear["policy"],
            &*clear["source"],
            &*clear["tls"],
            &*clear["cipher"]
        ),
        ("may", "config", "none", "none")
    );
    // docs/operations.md: `auth=none` in cleartext.
    assert_eq!(clear["auth"], "none", "{clear:?}");
    assert_eq!(clear["trust"], "none", "{clear:?}");
    assert!(clear["reply"].starts_with("250"), "{clear:?}");
    assert!(clear.contains_key("delay") && !clear["id"].is_empty());

    let verified = attempt_line(&gate, "b@good.ops.test", "sent").await;
    assert_eq!(
        verified["relay"],
        format!("mx-good.ops.test[127.0.0.3]:{port}")
    );
    assert_eq!(
        (&*verified["policy"], &*verified["tls"], &*verified["auth"]),
        ("verify", "TLSv1.3", "pkix")
    );
    assert!(verified["cipher"].starts_with("TLS13_"), "{verified:?}");
    assert_eq!(verified["trust"], "Verified", "{verified:?}");

    let dane = attempt_line(&gate, "c@dane.ops.test", "sent").await;
    assert_eq!(
        (&*dane["policy"], &*dane["source"], &*dane["auth"]),
        ("dane", "dane", "dane-ee")
    );

    let bad = attempt_line(&gate, "d@bad.ops.test", "deferred").await;
    assert_eq!(bad["policy"], "verify");
    assert!(
        bad["reply"].contains("certificate for mx-bad.ops.test not valid"),
        "{bad:?}"
    );
    assert_eq!(bad["relay"], "none", "{bad:?}");
    assert!(
        world.bad.messages().is_empty(),
        "nothing may reach a bad-cert MX at verify"
    );

    let m = scrape(gate.metrics);
    let deliveries = |outcome, policy, tls| {
        metric(
            &m,
            "mxgate_deliveries_total",
            &[("outcome", outcome), ("policy", policy), ("tls", tls)],
        )
    };
    assert!(
        metric(&m, "mxgate_messages_received_total", &[]) >= 4.0,
        "{m}"
    );
    assert_eq!(deliveries("delivered", "may", "none"), 1.0, "{m}");
    assert_eq!(deliveries("delivered", "verify", "TLSv1.3"), 1.0, "{m}");
    assert_eq!(deliveries("delivered", "dane", "TLSv1.3"), 1.0, "{m}");
    assert!(
        deliveries("deferred", "verify", "none") + deliveries("deferred", "verify", "TLSv1.3")
            >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "mxgate_tls_connections_total",
            &[("version", "TLSv1.3"), ("auth", "pkix")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "mxgate_tls_connections_total", &[("auth", "dane-ee")]) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "mxgate_tls_policy_failures_total",
            &[("policy", "verify"), ("reason", "certificate_invalid")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "mxgate_tls_handshake_failures_total",
            &[("reason", "certificate_invalid")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "mxgate_dane_lookups_total", &[("result", "ok")]) >= 1.0,
        "{m}"
    );
    assert!(m.contains("mxgate_delivery_duration_seconds_bucket"), "{m}");
    assert!(m.contains("# HELP mxgate_tls_policy_failures_total"), "{m}");
    assert!(
        m.contains("mxgate_queue_messages{state=\"deferred\"}"),
        "{m}"
    );
}

fn check(gate: &Mxgate, args: &[&str]) -> (i32, String) {
    let (code, out, err) = tokio::task::block_in_place(|| gate.cli(args));
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_probe_verdicts_and_exit_codes() {
    let world = World::start(ReceiverConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = Mxgate::start(dir.path(), &world.settings(DOMAINS));
    let rows: [(&str, i32, &str); 6] = [
        (
            "good.ops.test",
            0,
            "verdict mx-good.ops.test: PASS [tls-pkix]",
        ),
        (
            "bad.ops.test",
            1,
            "verdict mx-bad.ops.test: FAIL [pkix-invalid]",
        ),
        (
            "plain.ops.test",
            1,
            "verdict mx-plain.ops.test: FAIL [starttls-missing]",
        ),
        (
            "clear.ops.test",
            0,
            "verdict mx-plain.ops.test: PASS [cleartext]",
        ),
        (
            "dane.ops.test",
            0,
            "verdict mx-dane.ops.test: PASS [tls-dane]",
        ),
        (
            "danebad.ops.test",
            1,
            "verdict mx-danebad.ops.test: FAIL [dane-mismatch]",
        ),
    ];
    for (domain, want_code, want_line) in rows {
        let (code, out) = check(&gate, &["check", domain]);
        assert!(out.contains(want_line), "{domain}:\n{out}");
        assert_eq!(code, want_code, "{domain}:\n{out}");
    }
    let (_, good) = check(&gate, &["check", "good.ops.test"]);
    assert!(good.contains("subject=CN=mx-good.ops.test"), "{good}");
    assert!(good.contains("issuer=CN=Ops Test CA"), "{good}");
    assert!(good.contains("TLS TLSv1.3 TLS13_"), "{good}");

    let (code, json) = check(&gate, &["check", "dane.ops.test", "--json"]);
    assert_eq!(code, 0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["level"], "dane");
    assert_eq!(v["deliverable"], true);
    let addr = &v["mx"][0]["addresses"][0];
    assert_eq!(addr["code"], "tls-dane");
    assert_eq!(addr["tls"]["dane"]["detail"], "dane-ee");
    assert_eq!(
        addr["tls"]["pkix"]["ok"], false,
        "self-signed: PKIX fails, DANE passes"
    );
    assert_eq!(addr["tls"]["chain"][0]["sans"][0], "DNS:mx-dane.ops.test");

    // The probe never starts a mail transaction.
    for receiver in [
        &world.plain,
        &world.good,
        &world.bad,
        &world.dane,
        &world.danebad,
    ] {
        for session in receiver.sessions() {
            assert!(
                !session
                    .commands
                    .iter()
                    .any(|c| c.to_ascii_uppercase().starts_with("MAIL")),
                "{:?}",
                session.commands
            );
        }
        assert!(receiver.messages().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_gives_json_lines() {
    let world = World::start(ReceiverConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gate = Mxgate::start(dir.path(), &world.settings(DOMAINS));
    gate.kill9();
    let log_path = dir.path().join("json.log");
    let notify_path = dir.path().join("json-notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_mxgate"))
        .args(["run", "--log-format", "json", "--config"])
        .arg(&gate.config_path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    let mut buf = [0u8; 512];
    loop {
        let n = notify.recv(&mut buf).unwrap();
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "READY=1")
        {
            break;
        }
    }
    send(&gate, "j@clear.ops.test", "json").await;
    world.plain.wait_for(1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(l) = log.lines().find(|l| l.contains(r#""status":"sent""#)) {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery line:\n{log}"
        );
        // The log file is the event source here.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(&log_path).unwrap();
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "INFO");
    // Real fields, each its own key (not key=value text inside `message`).
    assert!(v.get("message").is_none(), "{line}");
    for (key, want) in [
        ("to", "<j@clear.ops.test>"),
        ("status", "sent"),
        ("policy", "may"),
        ("dsn", "2.0.0"),
        ("conn", "new"),
    ] {
        assert_eq!(v[key], want, "{key}: {line}");
    }
    // The reply is the server's words, without the text format's quotes.
    let reply = v["reply"].as_str().unwrap_or_default();
    assert!(reply.starts_with("250 "), "{line}");
    for key in [
        "id", "from", "relay", "tls", "cipher", "auth", "trust", "delay",
    ] {
        assert!(v[key].is_string(), "{key} missing: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_changed_level_and_keeps_the_old_on_invalid_file() {
    let world = World::start(ReceiverConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = Mxgate::start(dir.path(), &world.settings(DOMAINS));
    // `may`: the self-signed MX gets the message over TLS.
    send(&gate, "first@flip.ops.test", "before reload").await;
    world.bad.wait_for(1).await;
    attempt_line(&gate, "first@flip.ops.test", "sent").await;

    let original = std::fs::read_to_string(&gate.config_path).unwrap();
    let verify = original.replace(
        r#""flip.ops.test" = { level = "may" }"#,
        r#""flip.ops.test" = { level = "verify" }"#,
    );
    assert_ne!(verify, original);
    std::fs::write(&gate.config_path, &verify).unwrap();
    gate.signal(libc::SIGHUP);
    gate.wait_log(
        |l| l.contains("configuration reloaded"),
        Duration::from_secs(10),
    )
    .await;
    send(&gate, "second@flip.ops.test", "after reload").await;
    let second = attempt_line(&gate, "second@flip.ops.test", "deferred").await;
    assert_eq!(second["policy"], "verify", "{second:?}");
    assert_eq!(world.bad.messages().len(), 1);

    // An invalid file: logged, and `verify` stays in force.
    std::fs::write(
        &gate.config_path,
        verify.replace(r#"level = "verify" }"#, r#"level = "sometimes" }"#),
    )
    .unwrap();
    gate.signal(libc::SIGHUP);
    let failed = gate
        .wait_log(|l| l.contains("reload failed"), Duration::from_secs(10))
        .await;
    assert!(
        failed.contains("sometimes") || failed.contains("level"),
        "{failed}"
    );
    send(&gate, "third@flip.ops.test", "after bad reload").await;
    let third = attempt_line(&gate, "third@flip.ops.test", "deferred").await;
    assert_eq!(third["policy"], "verify", "{third:?}");
    assert_eq!(
        world.bad.messages().len(),
        1,
        "the old policy must stay in force"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_deliveries_loses_nothing() {
    // The plain MX defers every recipient's first RCPT, so some messages are still
    // queued (deferred) when SIGTERM arrives; others are being delivered.
    let plain = ReceiverConfig::default()
        .rcpt(
            "slow1@clear.ops.test",
            ReplyScript::first_n(1, "451 4.3.0 later", "250 2.1.5 ok"),
        )
        .rcpt(
            "slow2@clear.ops.test",
            ReplyScript::first_n(1, "451 4.3.0 later", "250 2.1.5 ok"),
        );
    let world = World::start(plain).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gate = Mxgate::start(dir.path(), &world.settings(DOMAINS));
    let rcpts = [
        "slow1@clear.ops.test",
        "fast1@clear.ops.test",
        "slow2@clear.ops.test",
        "fast2@good.ops.test",
        "fast3@dane.ops.test",
    ];
    for (i, rcpt) in rcpts.iter().enumerate() {
        send(&gate, rcpt, &format!("m{i}")).await;
    }
    gate.signal(libc::SIGTERM);
    let status = tokio::task::block_in_place(|| gate.wait_exit());
    assert!(status.success(), "{status:?}\n{}", gate.log());
    assert!(gate.log().contains("mxgate stopped"));

    tokio::task::block_in_place(|| gate.spawn());
    world.plain.wait_for(3).await;
    world.good.wait_for(1).await;
    world.dane.wait_for(1).await;
    let mut got: Vec<String> = [&world.plain, &world.good, &world.dane]
        .iter()
        .flat_map(|r| r.messages())
        .flat_map(|m| m.recipients.into_iter().map(|r| r.address))
        .collect();
    got.sort();
    let mut want: Vec<String> = rcpts.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "every message delivered exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_other_trust_roots_never_reuses_a_session_verified_under_the_old_ones() {
    let world = World::start(ReceiverConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let gate = Mxgate::start(dir.path(), &world.settings(DOMAINS));
    // `verify`: PKIX against the test CA of `delivery.ca_file`; the clean session is
    // parked for the next job to the same MX.
    send(&gate, "first@good.ops.test", "before reload").await;
    world.good.wait_for(1).await;
    let first = attempt_line(&gate, "first@good.ops.test", "sent").await;
    assert_eq!(
        (&*first["auth"], &*first["conn"]),
        ("pkix", "new"),
        "{first:?}"
    );

    // The same file now holds another CA, which did not sign mx-good's certificate.
    TestCa::new("Other Ops CA")
        .write_pem(&world.ca_file)
        .unwrap();
    gate.signal(libc::SIGHUP);
    gate.wait_log(
        |l| l.contains("configuration reloaded"),
        Duration::from_secs(10),
    )
    .await;
    send(&gate, "second@good.ops.test", "after reload").await;
    let second = attempt_line(&gate, "second@good.ops.test", "deferred").await;
    assert_eq!(second["policy"], "verify", "{second:?}");
    assert!(
        second["reply"].contains("certificate for mx-good.ops.test not valid"),
        "{second:?}\n{}",
        gate.log()
    );
    assert_eq!(
        world.good.messages().len(),
        1,
        "nothing may be sent over the session verified under the old roots"
    );
    assert!(
        !gate.log().contains("conn=reused"),
        "no session may be reused across the reload:\n{}",
        gate.log()
    );
    // The first session ends with QUIT and never carried a second transaction.
    let sessions = world.good.wait_sessions(1).await;
    let commands: Vec<String> = sessions[0]
        .commands
        .iter()
        .map(|c| c.to_ascii_uppercase())
        .collect();
    assert_eq!(
        commands.iter().filter(|c| c.starts_with("MAIL")).count(),
        1,
        "{commands:?}"
    );
    assert!(!commands.iter().any(|c| c == "RSET"), "{commands:?}");
    assert_eq!(
        commands.last().map(String::as_str),
        Some("QUIT"),
        "{commands:?}"
    );
}

/// RFC 7672 §2.2.3 / RFC 6698 §3: the TLSA records of `_PORT._tcp.HOST` are those of the
/// port dialled. The MX listens on two ports with different certificates, each port
/// with its own TLSA record; `delivery.smtp_port` moves from one to the other by SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changing_the_smtp_port_dials_the_port_whose_tlsa_records_were_looked_up() {
    let cert_a = TestCert::self_signed(&["mx-port.ops.test"]);
    let cert_b = TestCert::self_signed(&["mx-port.ops.test"]);
    let on_a = SmtpReceiver::start_on(
        SocketAddr::from(([127, 0, 0, 7], 0)),
        ReceiverConfig::with_starttls(cert_a.server_config()),
    )
    .await
    .unwrap();
    let on_b = SmtpReceiver::start_on(
        SocketAddr::from(([127, 0, 0, 7], 0)),
        ReceiverConfig::with_starttls(cert_b.server_config()),
    )
    .await
    .unwrap();
    let (a, b) = (on_a.port(), on_b.port());
    assert_ne!(a, b);
    let records = format!(
        "port.ops.test. 300 IN MX 10 mx-port.ops.test.
mx-port.ops.test. 300 IN A 127.0.0.7
_{a}._tcp.mx-port.ops.test. 300 IN TLSA 3 1 1 {tlsa_a}
_{b}._tcp.mx-port.ops.test. 300 IN TLSA 3 1 1 {tlsa_b}",
        tlsa_a = hex(&sha256(&cert_a.spki_der)),
        tlsa_b = hex(&sha256(&cert_b.spki_der)),
    );
    let dns = DnsWorld::builder()
        .zone("ops.test.", Signing::Secure)
        .record(&records)
        .start()
        .await
        .unwrap();
    let mut settings = Settings::new(dns.addr(), a);
    settings.dnssec = "validate";
    settings.trust_anchor = Some(dns.trust_anchor_path().to_path_buf());
    settings.domains = r#""port.ops.test" = { level = "dane-only" }"#.to_string();
    let dir = tempfile::tempdir().unwrap();
    let gate = Mxgate::start(dir.path(), &settings);
    send(&gate, "first@port.ops.test", "port a").await;
    on_a.wait_for(1).await;
    let first = attempt_line(&gate, "first@port.ops.test", "sent").await;
    assert_eq!(first["auth"], "dane-ee", "{first:?}");
    assert_eq!(first["relay"], format!("mx-port.ops.test[127.0.0.7]:{a}"));

    let original = std::fs::read_to_string(&gate.config_path).unwrap();
    let moved = original.replace(&format!("smtp_port = {a}\n"), &format!("smtp_port = {b}\n"));
    assert_ne!(moved, original);
    std::fs::write(&gate.config_path, &moved).unwrap();
    gate.signal(libc::SIGHUP);
    gate.wait_log(
        |l| l.contains("configuration reloaded"),
        Duration::from_secs(10),
    )
    .await;
    send(&gate, "second@port.ops.test", "port b").await;
    let second = attempt_line(&gate, "second@port.ops.test", "sent").await;
    on_b.wait_for(1).await;
    assert_eq!(second["auth"], "dane-ee", "{second:?}");
    assert_eq!(second["relay"], format!("mx-port.ops.test[127.0.0.7]:{b}"));
    assert_eq!(on_a.messages().len(), 1, "the old port gets nothing more");
    assert!(
        !gate
            .log()
            .lines()
            .any(|l| l.contains("only after a restart") && l.contains("smtp_port")),
        "{}",
        gate.log()
    );
}
