//! Several mxgate instances sharing their MTA-STS policies through a real
//! `redis-server` on loopback (`[cluster] redis`, docs/scaling.md).
//!
//! The story: instance A fetches a domain's `enforce` policy and delivers over TLS. Then
//! the policy host goes down and an attacker strips STARTTLS in front of the MX.
//! Instance B, which never fetched the policy, defers thanks to Redis; instance C,
//! without the cluster, delivers in cleartext (RFC 8461 §5: no policy known, no
//! policy applied). Then Redis is killed: A and B keep delivering other mail, report
//! `mxgate_cluster_up 0`, and B still defers the protected domain from its local cache.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "tls_policy/support.rs"]
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use common::{free_port, scrape, Mxgate, Settings};
use mxgate_testkit::certs::{TestCa, Validity};
use mxgate_testkit::dns::{DnsWorld, Signing};
use mxgate_testkit::https::{HttpResponse, HttpsServer};
use mxgate_testkit::mitm::{Mitm, MitmMode};
use mxgate_testkit::postfix::submit;
use mxgate_testkit::redis::RedisServer;
use mxgate_testkit::smtp::SmtpReceiver;
use support::{
    body, loopback, mx_records, rcpt, sts_policy, sts_records, tls_config, Forwarder, SENDER,
};

const LIMIT: Duration = Duration::from_secs(30);

async fn wait_metric(gate: &Mxgate, line: &str) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let metrics = scrape(gate.metrics);
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {line:?} within {LIMIT:?}:\n{metrics}\n{}",
            gate.log()
        );
        // The metrics endpoint is the event source here.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn send(gate: &Mxgate, domain: &str, tag: &str) {
    let to = rcpt(domain);
    let mut message = body(domain);
    message.extend_from_slice(format!("{tag}\r\n").as_bytes());
    submit(gate.listen, SENDER, &[to.as_str()], &message)
        .await
        .unwrap();
}

/// Number of delivery log lines of `gate` for `domain` with `status=...`.
fn count(gate: &Mxgate, domain: &str, status: &str) -> usize {
    let to = format!("to=<{}>", rcpt(domain));
    let status = format!("status={status}");
    gate.log()
        .lines()
        .filter(|l| l.contains(&to) && l.contains(&status))
        .count()
}

async fn wait_count(gate: &Mxgate, domain: &str, status: &str, at_least: usize) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while count(gate, domain, status) < at_least {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{domain}: fewer than {at_least} status={status} lines:\n{}",
            gate.log()
        );
        // The log file is the event source here.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_mta_sts_policies_through_redis() {
    if !RedisServer::available() {
        eprintln!("redis-server not installed: skipping");
        return;
    }
    let mut redis = RedisServer::start().await.unwrap();
    let ca = TestCa::new("Cluster Root");
    let base = tempfile::tempdir().unwrap();
    let ca_path = base.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let port = free_port();

    let d = "sts.cl.test";
    let host = format!("mx.{d}");
    let mut https = HttpsServer::start(
        ca.issue(&[&format!("mta-sts.{d}")], Validity::current())
            .server_config(),
    )
    .await
    .unwrap();
    https.serve_policy(d, HttpResponse::policy(&sts_policy("enforce", &[&host])));
    // The MX: a receiver with a valid certificate, reached through a forwarder that
    // the attacker later points at a STARTTLS-stripping proxy.
    let receiver = SmtpReceiver::start(tls_config(&ca.issue(&[&host], Validity::current())))
        .await
        .unwrap();
    let strip = Mitm::start(receiver.addr(), MitmMode::StripStarttls)
        .await
        .unwrap();
    let forwarder = Forwarder::start(SocketAddr::new(loopback(2), port), receiver.addr()).await;
    // A domain without any policy, delivered throughout.
    let plain = "plain.cl.test";
    let plain_rx = SmtpReceiver::start_on(
        SocketAddr::new(loopback(3), port),
        tls_config(&ca.issue(&[&format!("mx.{plain}")], Validity::current())),
    )
    .await
    .unwrap();

    let world = DnsWorld::builder().zone("cl.test.", Signing::Insecure);
    let world = sts_records(mx_records(world, d, 2), d, "1");
    let world = mx_records(world, plain, 3).start().await.unwrap();

    let sts_port = https.port();
    let redis_url = redis.url();
    let settings = |cluster: bool| {
        let mut s = Settings::new(world.addr(), port);
        s.dnssec = "validate";
        s.trust_anchor = Some(world.trust_anchor_path().to_path_buf());
        s.ca_file = Some(ca_path.clone());
        s.mta_sts_port = sts_port;
        if cluster {
            s.extra = format!("[cluster]\nredis = \"{redis_url}\"\n");
        }
        s
    };
    let dir_a = tempfile::tempdir().unwrap();
    let a = Mxgate::start(dir_a.path(), &settings(true));
    wait_metric(&a, "mxgate_cluster_up 1").await;

    // A fetches the policy and delivers over TLS.
    send(&a, d, "from-a").await;
    let msgs = receiver.wait_for(1).await;
    assert!(msgs[0].tls.is_some(), "A delivered in cleartext");
    wait_count(&a, d, "sent", 1).await;
    assert_eq!(https.requests(&format!("mta-sts.{d}")), 1);

    // The policy host goes down; the attacker strips STARTTLS.
    https.stop();
    forwarder.set_target(strip.addr());

    // B never fetched the policy: Redis has it, B defers, nothing in cleartext.
    let dir_b = tempfile::tempdir().unwrap();
    let b = Mxgate::start(dir_b.path(), &settings(true));
    send(&b, d, "from-b").await;
    wait_count(&b, d, "deferred", 1).await;
    assert_eq!(count(&b, d, "sent"), 0, "{}", b.log());
    assert!(
        b.log()
            .lines()
            .any(|l| l.contains(&format!("to=<{}>", rcpt(d)))
                && l.contains("status=deferred")
                && l.contains("source=mta-sts")),
        "B's deferral is not MTA-STS's:\n{}",
        b.log()
    );
    assert!(
        !strip.cleartext_contains("MAIL FROM"),
        "B sent MAIL FROM in cleartext"
    );
    assert_eq!(receiver.messages().len(), 1, "B's message reached the MX");

    // C, the same without the cluster: no policy known, delivered in cleartext.
    let dir_c = tempfile::tempdir().unwrap();
    let c = Mxgate::start(dir_c.path(), &settings(false));
    send(&c, d, "from-c").await;
    let msgs = receiver.wait_for(2).await;
    assert!(
        msgs[1].tls.is_none(),
        "C was expected to fall back to cleartext"
    );
    assert!(String::from_utf8_lossy(&msgs[1].data).contains("from-c"));
    drop(c);

    // Redis dies: both instances see it, keep delivering, downgrade nothing.
    redis.kill().await;
    wait_metric(&a, "mxgate_cluster_up 0").await;
    wait_metric(&b, "mxgate_cluster_up 0").await;
    send(&a, plain, "plain-a").await;
    send(&b, plain, "plain-b").await;
    plain_rx.wait_for(2).await;
    wait_count(&a, plain, "sent", 1).await;
    wait_count(&b, plain, "sent", 1).await;
    // B retries the protected message from its own cache now: still deferred.
    let before = count(&b, d, "deferred");
    wait_count(&b, d, "deferred", before + 1).await;
    assert_eq!(count(&b, d, "sent"), 0, "{}", b.log());
    // (C's message crossed the attacker in cleartext; B's never did.)
    assert!(!strip.cleartext_contains("from-b"));
    assert!(receiver
        .messages()
        .iter()
        .all(|m| !String::from_utf8_lossy(&m.data).contains("from-b")));

    // Redis returns: the instances find it again.
    redis.restart().await.unwrap();
    wait_metric(&a, "mxgate_cluster_up 1").await;
}
