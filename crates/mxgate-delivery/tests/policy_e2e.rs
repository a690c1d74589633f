//! `Transport::deliver` with the real `PolicyEngine`, a real signed DNS world and real
//! receivers: DANE-EE authenticates an expired wrong-name certificate; a TLSA mismatch
//! defers without sending the envelope.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mxgate_config::{Config, DnssecMode};
use mxgate_delivery::Delivery;
use mxgate_dns::DnsClient;
use mxgate_policy::PolicyEngine;
use mxgate_queue::{DeliveryJob, Outcome, Transport};
use mxgate_testkit::certs::{sha256, TestCa, Validity};
use mxgate_testkit::dns::{DnsWorld, Signing};
use mxgate_testkit::smtp::{ReceiverConfig, SmtpReceiver};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn setup(
    tlsa_data: Vec<u8>,
    receiver: &SmtpReceiver,
) -> (DnsWorld, Delivery, tempfile::TempDir) {
    let port = receiver.port();
    let world = DnsWorld::builder()
        .zone("secure.test.", Signing::Secure)
        .record("dest.secure.test. 300 IN MX 10 mx.dest.secure.test.")
        .record("mx.dest.secure.test. 300 IN A 127.0.0.1")
        .record(&format!(
            "_{port}._tcp.mx.dest.secure.test. 300 IN TLSA 3 1 1 {}",
            hex(&tlsa_data)
        ))
        .start()
        .await
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.hostname = "relay.test".into();
    config.dns.nameservers = vec![world.addr()];
    config.dns.dnssec = DnssecMode::Validate;
    config.dns.trust_anchor = world.trust_anchor_path().to_path_buf();
    config.dns.timeout = Duration::from_secs(2);
    config.delivery.smtp_port = port;
    config.delivery.connect_timeout = Duration::from_secs(5);
    config.delivery.command_timeout = Duration::from_secs(5);
    config.policy.cache_path = cache.path().to_path_buf();
    let config = Arc::new(config);
    let dns = Arc::new(DnsClient::new(&config.dns).unwrap());
    let engine = PolicyEngine::new(config.clone(), dns).unwrap();
    let delivery = Delivery::new(
        config.delivery.clone(),
        Arc::new(engine),
        "relay.test".into(),
    );
    (world, delivery, cache)
}

fn dest_job() -> DeliveryJob {
    let mut job = job(&["r1@dest.secure.test"]);
    job.domain = "dest.secure.test".into();
    job
}

#[tokio::test]
async fn dane_ee_match_delivers_to_expired_wrong_name_certificate() {
    let ca = TestCa::new("Nobody trusts me");
    let cert = ca.issue(&["wrong.example"], Validity::expired());
    let receiver = SmtpReceiver::start(ReceiverConfig::with_starttls(cert.server_config()))
        .await
        .unwrap();
    let (_world, delivery, _cache) = setup(sha256(&cert.spki_der), &receiver).await;
    let out = delivery.deliver(dest_job()).await;
    assert!(
        matches!(&out[0].outcome, Outcome::Delivered { .. }),
        "{out:?}"
    );
    let msg = receiver.next_message().await;
    assert_eq!(msg.data, MESSAGE);
    assert_eq!(msg.tls.unwrap().sni.as_deref(), Some("mx.dest.secure.test"));
}

#[tokio::test]
async fn dane_mismatch_defers_and_sends_nothing_in_cleartext() {
    let cert = TestCa::new("CA").issue(&["mx.dest.secure.test"], Validity::current());
    let receiver = SmtpReceiver::start(ReceiverConfig::with_starttls(cert.server_config()))
        .await
        .unwrap();
    let (_world, delivery, _cache) = setup(sha256(b"some other key"), &receiver).await;
    let out = delivery.deliver(dest_job()).await;
    let Outcome::Deferred(f) = &out[0].outcome else {
        panic!("{out:?}")
    };
    assert!(f.status.to_string().starts_with("4.7."), "{f:?}");
    assert!(f.diagnostic.starts_with("dane"), "{f:?}");
    receiver.wait_sessions(1).await;
    let sent = String::from_utf8_lossy(&receiver.cleartext_transcript()).to_ascii_uppercase();
    assert!(!sent.contains("MAIL FROM"), "{sent}");
    assert!(receiver.messages().is_empty());
}

/// The queue spawns deliveries: the future must be `Send` with the real engine.
#[allow(dead_code)]
fn deliver_future_is_send(delivery: &Delivery, job: DeliveryJob) {
    fn assert_send<T: Send>(_: T) {}
    assert_send(delivery.deliver(job));
}
