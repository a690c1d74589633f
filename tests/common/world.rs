//! The plain test world shared by the end-to-end tests: every domain in the insecure
//! zone `test.` of a DnsWorld with a signed root, SMTP receivers on `127.0.0.X` sharing
//! one port (mxgate dials every MX on `delivery.smtp_port`), and waiting on the queue
//! through `mxgate queue list --json`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mxgate_testkit::dns::{DnsWorld, Signing};
use mxgate_testkit::smtp::{ReceiverConfig, SmtpReceiver};
use serde_json::Value;

use super::{Mxgate, Settings};

/// How long an end-to-end wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// A world where every domain lives in the insecure zone `test.`; `records` are
/// zone-file lines.
pub async fn world(records: &[String]) -> DnsWorld {
    let mut builder = DnsWorld::builder().zone("test.", Signing::Insecure);
    for r in records {
        builder = builder.record(r);
    }
    builder.start().await.expect("dns world")
}

/// `domain MX pref host` and `host A 127.0.0.addr`.
pub fn mx_pref(domain: &str, pref: u16, host: &str, addr: u8) -> Vec<String> {
    vec![
        format!("{domain}. 300 IN MX {pref} {host}."),
        format!("{host}. 300 IN A 127.0.0.{addr}"),
    ]
}

/// [`mx_pref`] with preference 10.
pub fn mx(domain: &str, host: &str, addr: u8) -> Vec<String> {
    mx_pref(domain, 10, host, addr)
}

/// mxgate settings for `world`, validating DNSSEC from its trust anchor.
pub fn settings(world: &DnsWorld, port: u16) -> Settings {
    let mut s = Settings::new(world.addr(), port);
    s.dnssec = "validate";
    s.trust_anchor = Some(world.trust_anchor_path().to_path_buf());
    s
}

/// A receiver on `127.0.0.last:port`.
pub async fn receiver(last: u8, port: u16, config: ReceiverConfig) -> SmtpReceiver {
    SmtpReceiver::start_on(SocketAddr::new(ip(last), port), config)
        .await
        .expect("receiver")
}

/// `mxgate queue list --json`.
pub fn queue_list(gate: &Mxgate) -> Vec<Value> {
    let (code, out, err) = gate.cli(&["queue", "list", "--json"]);
    assert_eq!(code, 0, "queue list failed: {err}");
    serde_json::from_str::<Value>(&out)
        .expect("queue list --json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until the queue listing satisfies `pred`.
pub async fn wait_queue(gate: &Mxgate, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = queue_list(gate);
        if pred(&list) {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {list:?}\n{}",
            gate.log()
        );
        // The control socket is the only view into the queue from outside.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn queue_is_empty(gate: &Mxgate) {
    wait_queue(gate, "queue not empty", |l| l.is_empty()).await;
}
