//! The test world of tests/tls_policy.rs: MX hosts (receivers, optionally behind a
//! MITM reached through a TCP forwarder), DNS record helpers, outcome checks, and the DANE
//! world shared by the `validate` and `trust-ad` tests.
//!
//! Not here: the tests themselves, or anything mxgate-specific beyond its log line format.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Mxgate, Settings};
use mxgate_testkit::certs::{sha256, TestCa, TestCert, Validity};
use mxgate_testkit::dns::{DnsWorld, DnsWorldBuilder, Signing};
use mxgate_testkit::https::{HttpResponse, HttpsServer};
use mxgate_testkit::mitm::{Mitm, MitmMode};
use mxgate_testkit::postfix::submit;
use mxgate_testkit::smtp::{ReceiverConfig, SmtpReceiver};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long a deferral may take to show up in the log (DNS timeout 2 s, connect 3 s).
pub const OUTCOME_LIMIT: Duration = Duration::from_secs(20);

pub const SENDER: &str = "sender@origin.test";

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

pub fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Relays every connection accepted on `bind` to the current target (which a test may
/// switch while running), so a MITM on an ephemeral port can sit at an MX address.
pub struct Forwarder {
    pub target: Arc<Mutex<SocketAddr>>,
    pub task: JoinHandle<()>,
}

impl Forwarder {
    pub async fn start(bind: SocketAddr, target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind(bind).await.unwrap();
        let target = Arc::new(Mutex::new(target));
        let current = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *current.lock().unwrap();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Forwarder { target, task }
    }

    pub fn set_target(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What stands at an MX address: a receiver, maybe behind an attacker.
pub struct Mx {
    pub receiver: SmtpReceiver,
    pub mitm: Option<Mitm>,
    pub _forwarder: Option<Forwarder>,
}

impl Mx {
    /// A receiver listening directly on `127.0.0.n:port`.
    pub async fn direct(n: u8, port: u16, config: ReceiverConfig) -> Mx {
        let receiver = SmtpReceiver::start_on(SocketAddr::new(loopback(n), port), config)
            .await
            .unwrap();
        Mx {
            receiver,
            mitm: None,
            _forwarder: None,
        }
    }

    /// A receiver with `config` behind a MITM in `mode`, reached at `127.0.0.n:port`.
    pub async fn attacked(n: u8, port: u16, config: ReceiverConfig, mode: MitmMode) -> Mx {
        let receiver = SmtpReceiver::start(config).await.unwrap();
        let mitm = Mitm::start(receiver.addr(), mode).await.unwrap();
        let forwarder = Forwarder::start(SocketAddr::new(loopback(n), port), mitm.addr()).await;
        Mx {
            receiver,
            mitm: Some(mitm),
            _forwarder: Some(forwarder),
        }
    }

    /// Everything the client sent in cleartext, seen by the attacker and the receiver.
    pub async fn cleartext(&self) -> String {
        let mut all = Vec::new();
        if let Some(mitm) = &self.mitm {
            all.extend(mitm.cleartext_from_client());
            all.extend(mitm.decrypted_from_client());
        }
        if self.receiver.connections() > 0 {
            self.receiver
                .wait_sessions(self.receiver.connections())
                .await;
        }
        all.extend(self.receiver.cleartext_transcript());
        String::from_utf8_lossy(&all).to_ascii_uppercase()
    }
}

/// One destination domain of a test and how its message must end.
pub struct Case {
    pub domain: String,
    pub mx: Mx,
    pub expect: Expect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Received by the receiver over TLS (optionally `auth=` in the log line).
    Tls(Option<&'static str>),
    /// Received by the receiver in cleartext; mxgate never sent STARTTLS.
    Cleartext,
    /// Received by the receiver (TLS or not, e.g. through a MITM that re-sent it).
    Delivered,
    /// Deferred, never bounced, and nothing of the transaction in cleartext.
    Deferred,
    /// Deferred without any connection to the receiver.
    DeferredUndialled,
}

pub fn rcpt(domain: &str) -> String {
    format!("user@{domain}")
}

pub fn body(domain: &str) -> Vec<u8> {
    format!("Subject: test {domain}\r\n\r\nSECRET-BODY-{domain}\r\n").into_bytes()
}

pub async fn submit_to(gate: &Mxgate, domain: &str) {
    let to = rcpt(domain);
    submit(gate.listen, SENDER, &[to.as_str()], &body(domain))
        .await
        .unwrap();
}

/// The first delivery log line for `domain`'s recipient with `status=...`.
pub async fn log_line(gate: &Mxgate, domain: &str, status: &str) -> String {
    let to = format!("to=<{}>", rcpt(domain));
    let status = format!("status={status}");
    gate.wait_log(|l| l.contains(&to) && l.contains(&status), OUTCOME_LIMIT)
        .await
}

/// Checks one case's outcome; returns a description of what went wrong, if anything.
pub async fn check(gate: &Mxgate, case: &Case) -> Result<(), String> {
    let d = &case.domain;
    let secret = format!("SECRET-BODY-{d}").to_ascii_uppercase();
    match case.expect {
        Expect::Tls(_) | Expect::Cleartext | Expect::Delivered => {
            let msgs = case.mx.receiver.wait_for(1).await;
            let msg = &msgs[0];
            if !String::from_utf8_lossy(&msg.data).contains(&format!("SECRET-BODY-{d}")) {
                return Err(format!("{d}: wrong message received"));
            }
            let line = log_line(gate, d, "sent").await;
            match case.expect {
                Expect::Tls(auth) => {
                    if msg.tls.is_none() {
                        return Err(format!("{d}: delivered in cleartext, expected TLS"));
                    }
                    if let Some(auth) = auth {
                        if !line.contains(&format!("auth={auth}")) {
                            return Err(format!("{d}: expected auth={auth}: {line}"));
                        }
                    }
                    if case.mx.cleartext().await.contains("MAIL FROM") {
                        return Err(format!("{d}: MAIL FROM crossed in cleartext"));
                    }
                }
                Expect::Cleartext => {
                    if msg.tls.is_some() {
                        return Err(format!("{d}: expected cleartext, got {:?}", msg.tls));
                    }
                    if case.mx.cleartext().await.contains("STARTTLS") {
                        return Err(format!("{d}: STARTTLS sent at a cleartext level"));
                    }
                }
                _ => {}
            }
        }
        Expect::Deferred | Expect::DeferredUndialled => {
            let line = log_line(gate, d, "deferred").await;
            if gate
                .log()
                .lines()
                .any(|l| l.contains(&format!("to=<{}>", rcpt(d))) && l.contains("status=bounced"))
            {
                return Err(format!("{d}: bounced, must only defer"));
            }
            if !case.mx.receiver.messages().is_empty() {
                return Err(format!("{d}: receiver got the message: {line}"));
            }
            let clear = case.mx.cleartext().await;
            if clear.contains("MAIL FROM") || clear.contains(&secret) {
                return Err(format!("{d}: transaction crossed in cleartext: {clear:?}"));
            }
            if case.expect == Expect::DeferredUndialled {
                let dialled = case.mx.receiver.connections()
                    + case.mx.mitm.as_ref().map_or(0, |m| m.connections());
                if dialled != 0 {
                    return Err(format!("{d}: MX was dialled {dialled} times: {line}"));
                }
            }
        }
    }
    Ok(())
}

/// Submits one message per case, then checks all outcomes (mxgate works on them
/// concurrently) and reports every failing case at once.
pub async fn run_cases(gate: &Mxgate, cases: &[Case]) {
    for case in cases {
        submit_to(gate, &case.domain).await;
    }
    let mut failures = Vec::new();
    if std::env::var_os("TLS_POLICY_DUMP_LOG").is_some() {
        eprintln!("{}", gate.log());
    }
    for case in cases {
        if let Err(e) = check(gate, case).await {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "failing cases:\n{}\n--- mxgate log ---\n{}",
        failures.join("\n"),
        gate.log()
    );
}

/// `D. MX 10 mx.D.` and `mx.D. A 127.0.0.n`.
pub fn mx_records(world: DnsWorldBuilder, domain: &str, n: u8) -> DnsWorldBuilder {
    world
        .record(&format!("{domain}. 300 IN MX 10 mx.{domain}."))
        .record(&format!("mx.{domain}. 300 IN A 127.0.0.{n}"))
}

pub fn tlsa(port: u16, host: &str, usage: u8, data: &[u8]) -> String {
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    format!("_{port}._tcp.{host}. 300 IN TLSA {usage} 1 1 {hex}")
}

pub fn sts_policy(mode: &str, mx: &[&str]) -> String {
    let mut text = format!("version: STSv1\r\nmode: {mode}\r\n");
    for m in mx {
        text.push_str(&format!("mx: {m}\r\n"));
    }
    text.push_str("max_age: 86400\r\n");
    text
}

/// TXT discovery record and `mta-sts.D` address for an MTA-STS domain.
pub fn sts_records(world: DnsWorldBuilder, domain: &str, id: &str) -> DnsWorldBuilder {
    world
        .record(&format!(
            "_mta-sts.{domain}. 300 IN TXT \"v=STSv1; id={id}\""
        ))
        .record(&format!("mta-sts.{domain}. 300 IN A 127.0.0.1"))
}

pub fn tls_config(cert: &TestCert) -> ReceiverConfig {
    ReceiverConfig::with_starttls(cert.server_config())
}

pub fn settings(
    world: &DnsWorld,
    dns: SocketAddr,
    port: u16,
    ca_path: &std::path::Path,
    dnssec: &'static str,
) -> Settings {
    let mut s = Settings::new(dns, port);
    s.trust_anchor = Some(world.trust_anchor_path().to_path_buf());
    s.ca_file = Some(ca_path.to_path_buf());
    s.dnssec = dnssec;
    s
}

pub fn policy_json(gate: &Mxgate, domain: &str) -> serde_json::Value {
    let (code, out, err) = gate.cli(&["policy", domain, "--json"]);
    assert_eq!(code, 0, "mxgate policy {domain}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("policy {domain} JSON: {e}: {out}"))
}

// ---------------------------------------------------------------------------------------
// DANE (RFC 7672) at `auto`, `dane` and `dane-only`, with `dns.dnssec = validate`
// ---------------------------------------------------------------------------------------

/// The DANE world shared by the `validate` and `trust-ad` tests: returns the cases, the
/// world builder and the `[policy.domains]` lines.
pub struct DaneWorld {
    pub cases: Vec<Case>,
    pub world: DnsWorldBuilder,
    pub domains: String,
    pub https: HttpsServer,
}

pub async fn dane_world(ca: &TestCa, port: u16, full: bool) -> DaneWorld {
    let inter = ca.intermediate("DANE Intermediate");
    let other_key = TestCert::self_signed(&["unrelated.test"]);
    let mut world = DnsWorld::builder()
        .zone("dane.test.", Signing::Secure)
        .zone("insec.test.", Signing::Insecure)
        .zone("bogus.test.", Signing::Bogus);
    let mut cases = Vec::new();
    let mut domains = String::new();
    let mut n = 2u8;
    let mut sts_names = Vec::new();

    // DANE-EE(3 1 1) on an expired certificate for another name: names and dates ignored.
    let d = "ee.dane.test";
    let cert = ca.issue(&["wrong.example"], Validity::expired());
    world =
        mx_records(world, d, n).record(&tlsa(port, &format!("mx.{d}"), 3, &sha256(&cert.spki_der)));
    cases.push(Case {
        domain: d.into(),
        mx: Mx::direct(n, port, tls_config(&cert)).await,
        expect: Expect::Tls(Some("dane-ee")),
    });
    n += 1;

    // Bogus zone: defers, never dials.
    let d = "mail.bogus.test";
    let cert = ca.issue(&[&format!("mx.{d}")], Validity::current());
    world = mx_records(world, d, n);
    cases.push(Case {
        domain: d.into(),
        mx: Mx::direct(n, port, tls_config(&cert)).await,
        expect: Expect::DeferredUndialled,
    });
    n += 1;

    // Insecure zone at `auto`, no MTA-STS: opportunistic TLS with any certificate.
    let d = "plain.insec.test";
    let cert = TestCert::self_signed(&[&format!("mx.{d}")]);
    world = mx_records(world, d, n);
    cases.push(Case {
        domain: d.into(),
        mx: Mx::direct(n, port, tls_config(&cert)).await,
        expect: Expect::Tls(Some("none")),
    });
    n += 1;

    if full {
        // DANE mismatch with a PKIX-valid certificate and a passing MTA-STS policy: defers.
        let d = "mismatch.dane.test";
        let host = format!("mx.{d}");
        let cert = ca.issue(&[&host], Validity::current());
        world = mx_records(world, d, n).record(&tlsa(port, &host, 3, &sha256(&other_key.spki_der)));
        world = sts_records(world, d, "1");
        sts_names.push((d.to_string(), sts_policy("enforce", &[&host])));
        cases.push(Case {
            domain: d.into(),
            mx: Mx::direct(n, port, tls_config(&cert)).await,
            expect: Expect::Deferred,
        });
        n += 1;

        // DANE-TA(2 1 1) with the intermediate as trust anchor: chain and name checked.
        let d = "ta.dane.test";
        let host = format!("mx.{d}");
        let cert = inter.issue(&[&host], Validity::current());
        world = mx_records(world, d, n).record(&tlsa(port, &host, 2, &sha256(&inter.spki_der())));
        cases.push(Case {
            domain: d.into(),
            mx: Mx::direct(n, port, tls_config(&cert)).await,
            expect: Expect::Tls(Some("dane-ta")),
        });
        n += 1;

        // DANE-TA with a leaf for another name: the name check fails.
        let d = "tawrong.dane.test";
        let host = format!("mx.{d}");
        let cert = inter.issue(&["other.dane.test"], Validity::current());
        world = mx_records(world, d, n).record(&tlsa(port, &host, 2, &sha256(&inter.spki_der())));
        cases.push(Case {
            domain: d.into(),
            mx: Mx::direct(n, port, tls_config(&cert)).await,
            expect: Expect::Deferred,
        });
        n += 1;

        // Forged chain: self-signed leaf with the real TA certificate appended.
        let d = "forged.dane.test";
        let host = format!("mx.{d}");
        let cert = TestCert::self_signed(&[&host]).with_chain_cert(inter.cert_der());
        world = mx_records(world, d, n).record(&tlsa(port, &host, 2, &sha256(&inter.spki_der())));
        cases.push(Case {
            domain: d.into(),
            mx: Mx::direct(n, port, tls_config(&cert)).await,
            expect: Expect::Deferred,
        });
        n += 1;

        // TLSA lookup times out, with a PKIX-valid certificate and a passing MTA-STS
        // policy: defers, never falls back to MTA-STS or cleartext, never dials.
        let d = "timeout.dane.test";
        let host = format!("mx.{d}");
        let cert = ca.issue(&[&host], Validity::current());
        world = mx_records(world, d, n)
            .record(&tlsa(port, &host, 3, &sha256(&cert.spki_der)))
            .drop_queries_for(&format!("_{port}._tcp.{host}."));
        world = sts_records(world, d, "1");
        sts_names.push((d.to_string(), sts_policy("enforce", &[&host])));
        cases.push(Case {
            domain: d.into(),
            mx: Mx::direct(n, port, tls_config(&cert)).await,
            expect: Expect::DeferredUndialled,
        });
        n += 1;

        // Half-DANE: insecure MX RRset, MX host in a secure zone with (mismatching) TLSA.
        let d = "half.insec.test";
        let host = "mx.half.dane.test";
        let cert = ca.issue(&[host], Validity::current());
        world = world
            .record(&format!("{d}. 300 IN MX 10 {host}."))
            .record(&format!("{host}. 300 IN A 127.0.0.{n}"))
            .record(&tlsa(port, host, 3, &sha256(&other_key.spki_der)));
        cases.push(Case {
            domain: d.into(),
            mx: Mx::direct(n, port, tls_config(&cert)).await,
            expect: Expect::Deferred,
        });
        n += 1;

        // Secure MX without TLSA: `auto` falls back to `may`, `dane-only` defers.
        let d = "notlsa.dane.test";
        let cert = TestCert::self_signed(&[&format!("mx.{d}")]);
        world = mx_records(world, d, n);
        cases.push(Case {
            domain: d.into(),
            mx: Mx::direct(n, port, tls_config(&cert)).await,
            expect: Expect::Tls(Some("none")),
        });
        n += 1;
        let d = "only.dane.test";
        let cert = TestCert::self_signed(&[&format!("mx.{d}")]);
        world = mx_records(world, d, n);
        domains.push_str(&format!("\"{d}\" = {{ level = \"dane-only\" }}\n"));
        cases.push(Case {
            domain: d.into(),
            mx: Mx::direct(n, port, tls_config(&cert)).await,
            expect: Expect::Deferred,
        });
        n += 1;

        // Only unusable TLSA (PKIX-EE, usage 1): TLS mandatory; a receiver without STARTTLS.
        let d = "unusable.dane.test";
        let host = format!("mx.{d}");
        world = mx_records(world, d, n).record(&tlsa(port, &host, 1, &sha256(&other_key.spki_der)));
        domains.push_str(&format!("\"{d}\" = {{ level = \"dane\" }}\n"));
        cases.push(Case {
            domain: d.into(),
            mx: Mx::direct(n, port, ReceiverConfig::default()).await,
            expect: Expect::Deferred,
        });
        n += 1;

        // Matching TLSA, but STARTTLS stripped / the attacker's own certificate.
        for (d, mode) in [
            ("strip.dane.test", MitmMode::StripStarttls),
            (
                "mitm.dane.test",
                MitmMode::OwnCertificate(
                    TestCert::self_signed(&["mx.mitm.dane.test"]).server_config(),
                ),
            ),
            ("r554.dane.test", MitmMode::Reply554),
        ] {
            let host = format!("mx.{d}");
            let cert = ca.issue(&[&host], Validity::current());
            world = mx_records(world, d, n).record(&tlsa(port, &host, 3, &sha256(&cert.spki_der)));
            cases.push(Case {
                domain: d.into(),
                mx: Mx::attacked(n, port, tls_config(&cert), mode).await,
                expect: Expect::Deferred,
            });
            n += 1;
        }
    }
    let https_names: Vec<String> = sts_names
        .iter()
        .map(|(d, _)| format!("mta-sts.{d}"))
        .collect();
    let refs: Vec<&str> = https_names.iter().map(String::as_str).collect();
    let https_cert = ca.issue(
        if refs.is_empty() {
            &["mta-sts.none.test"]
        } else {
            &refs
        },
        Validity::current(),
    );
    let https = HttpsServer::start(https_cert.server_config())
        .await
        .unwrap();
    for (d, policy) in &sts_names {
        https.serve_policy(d, HttpResponse::policy(policy));
    }
    DaneWorld {
        cases,
        world,
        domains,
        https,
    }
}
