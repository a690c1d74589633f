//! Several mxgate instances sharing their MTA-STS policies through a real
//! `redis-server` on loopback (`[cluster] redis`, docs/scaling.md).
//!
//! The story: instance A fetches a domain's `enforce` policy and delivers over TLS. Then
//! the policy host goes down and an attacker strips STARTTLS in front of the MX.
//! Instance B, which never fetched the policy, defers thanks to Redis; instance C,
//! without the cluster, delivers in cleartext (RFC 8461 §5: no policy known, no
//! policy applied). Then Redis is killed: A and B keep delivering other mail, report
//! `mxgate_cluster_up 0`, and B still defers the protected domain from its local cache.
//!
//! TLS-RPT (RFC 8460): A and B deliver to the same domains and add their counts into
//! Redis; exactly one report per domain reaches the HTTPS collector, with the summed
//! counts. While Redis is down both keep delivering and counting locally; when it
//! returns the counts are merged, and the next report has them all.

#![allow(clippy::unwrap_used)]

#[path = "tlsrpt/collector.rs"]
#[allow(dead_code)]
mod collector;
mod common;
#[path = "tls_policy/support.rs"]
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use collector::{parse_report, Collector};
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

/// Sessions `gate` has added to the shared TLS-RPT counters.
fn shared_sessions(gate: &Mxgate) -> u64 {
    scrape(gate.metrics)
        .lines()
        .find_map(|l| l.strip_prefix("mxgate_cluster_tlsrpt_shared_sessions_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn wait_shared(gate: &Mxgate, sessions: u64) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while shared_sessions(gate) < sessions {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {sessions} sessions shared:\n{}",
            gate.log()
        );
        // The metrics endpoint is the event source here.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `tlsrpt send` on `gate`: its output.
fn send_reports(gate: &Mxgate) -> String {
    let (code, out, err) = gate.cli(&["tlsrpt", "send"]);
    assert_eq!(code, 0, "tlsrpt send: {out}{err}\n{}", gate.log());
    out
}

fn rua(domain: &str, port: u16) -> String {
    format!(
        "_smtp._tls.{domain}. 300 IN TXT \"v=TLSRPTv1; rua=https://reports.cl.test:{port}/tlsrpt/v1\""
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_send_one_tls_report_per_domain_with_the_summed_counts() {
    if !RedisServer::available() {
        eprintln!("redis-server not installed: skipping");
        return;
    }
    let mut redis = RedisServer::start().await.unwrap();
    let ca = TestCa::new("Cluster TLSRPT Root");
    let base = tempfile::tempdir().unwrap();
    let ca_path = base.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let port = free_port();
    let collector = Collector::start(&ca.issue(&["reports.cl.test"], Validity::current())).await;
    let cport = collector.addr.port();
    let (one, two) = ("one.cl.test", "two.cl.test");
    let mx = |domain: &str, n: u8| {
        let cert = ca.issue(&[&format!("mx.{domain}")], Validity::current());
        SmtpReceiver::start_on(SocketAddr::new(loopback(n), port), tls_config(&cert))
    };
    let rx_one = mx(one, 4).await.unwrap();
    let rx_two = mx(two, 5).await.unwrap();
    let world = DnsWorld::builder()
        .zone("cl.test.", Signing::Insecure)
        .record("reports.cl.test. 300 IN A 127.0.0.1");
    let world = mx_records(world, one, 4).record(&rua(one, cport));
    let world = mx_records(world, two, 5)
        .record(&rua(two, cport))
        .start()
        .await
        .unwrap();
    let mut s = Settings::new(world.addr(), port);
    s.ca_file = Some(ca_path.clone());
    // A configured level that a downgrade would break: nothing may reach either MX
    // without a verified certificate, Redis or not.
    s.domains =
        format!("\"{one}\" = {{ level = \"verify\" }}\n\"{two}\" = {{ level = \"verify\" }}\n");
    s.tlsrpt = "send_delay = \"0s\"\nflush_interval = \"1s\"\n".into();
    s.extra = format!("[cluster]\nredis = \"{}\"\n", redis.url());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Mxgate::start(dir_a.path(), &s);
    let b = Mxgate::start(dir_b.path(), &s);
    wait_metric(&a, "mxgate_cluster_up 1").await;
    wait_metric(&b, "mxgate_cluster_up 1").await;

    // Two sessions through A, one through B: one report with three.
    send(&a, one, "a1").await;
    send(&a, one, "a2").await;
    send(&b, one, "b1").await;
    let msgs = rx_one.wait_for(3).await;
    assert!(msgs.iter().all(|m| m.tls.is_some()));
    wait_shared(&a, 2).await;
    wait_shared(&b, 1).await;
    let out = send_reports(&a) + &send_reports(&b);
    let posts = collector.wait_posts(1).await;
    assert_eq!(
        posts.len(),
        1,
        "one report for {one}, not one per instance: {out}"
    );
    let report = parse_report(&posts[0].body);
    assert_eq!(report.policies.len(), 1, "{report:?}");
    assert_eq!(report.policies[0].policy_domain, one);
    assert_eq!(
        (report.policies[0].successes, report.policies[0].failures),
        (3, 0),
        "the summed counts of A and B"
    );

    // Redis dies: both keep delivering at the configured level, counting locally.
    redis.kill().await;
    wait_metric(&a, "mxgate_cluster_up 0").await;
    wait_metric(&b, "mxgate_cluster_up 0").await;
    send(&a, two, "a3").await;
    send(&b, two, "b2").await;
    send(&b, two, "b3").await;
    let msgs = rx_two.wait_for(3).await;
    assert!(
        msgs.iter().all(|m| m.tls.is_some()),
        "downgraded while Redis was down"
    );
    wait_count(&a, two, "sent", 1).await;
    wait_count(&b, two, "sent", 2).await;
    assert_eq!(
        shared_sessions(&a),
        2,
        "nothing can be shared while Redis is down"
    );

    // Redis returns (empty): the local counts are merged, and the report has them all.
    redis.restart().await.unwrap();
    wait_metric(&a, "mxgate_cluster_up 1").await;
    wait_metric(&b, "mxgate_cluster_up 1").await;
    wait_shared(&a, 3).await;
    wait_shared(&b, 3).await;
    let out = send_reports(&b) + &send_reports(&a);
    let posts = collector.wait_posts(2).await;
    assert_eq!(posts.len(), 2, "one more report, for {two}: {out}");
    let report = parse_report(&posts[1].body);
    assert_eq!(report.policies[0].policy_domain, two);
    assert_eq!(
        (report.policies[0].successes, report.policies[0].failures),
        (3, 0),
        "the counts made while Redis was down, from both instances"
    );
}
