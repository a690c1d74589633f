//! Session reuse through `Transport::deliver`: jobs back to back share one connection
//! (with `RSET` between), only under the same TLS requirement, and a dead or expired
//! cached session costs nothing but a new connection.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use mxgate_config::{DeliveryConfig, Level, TlsVersion};
use mxgate_delivery::{Delivery, Planner};
use mxgate_policy::{DeliveryPlan, PlanError, TlsRequirement};
use mxgate_queue::{Outcome, RecipientOutcome, Transport};
use mxgate_testkit::certs::TestCert;
use mxgate_testkit::smtp::{ReceiverConfig, ReplyScript, SmtpReceiver};
use rustls::ClientConfig;

/// A planner whose plan the test changes between jobs.
struct SwitchPlanner {
    plan: Mutex<DeliveryPlan>,
    /// The receiver's port, which every plan names.
    port: AtomicU16,
    /// The trust generation; a test bumps it as a reload would.
    generation: AtomicU64,
    tls: Arc<ClientConfig>,
}

impl Planner for SwitchPlanner {
    async fn plan(&self, _domain: &str) -> Result<DeliveryPlan, PlanError> {
        let mut plan = self.plan.lock().unwrap().clone();
        plan.port = self.port.load(Ordering::SeqCst);
        Ok(plan)
    }
    fn client_config(&self, _: &TlsRequirement, _: TlsVersion) -> Arc<ClientConfig> {
        self.tls.clone()
    }
    fn trust_generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

fn one_mx(requirement: TlsRequirement) -> DeliveryPlan {
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    plan(Level::May, vec![("mx.test", vec![ip], Ok(requirement))])
}

fn delivery_with(
    port: u16,
    planner: Arc<SwitchPlanner>,
    idle: Duration,
) -> Delivery<SwitchPlanner> {
    planner.port.store(port, Ordering::SeqCst);
    let settings = DeliveryConfig {
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        ..DeliveryConfig::default()
    };
    Delivery::with_idle_timeout(settings, planner, "relay.test".into(), idle)
}

fn planner(requirement: TlsRequirement) -> Arc<SwitchPlanner> {
    Arc::new(SwitchPlanner {
        plan: Mutex::new(one_mx(requirement)),
        port: AtomicU16::new(0),
        generation: AtomicU64::new(0),
        tls: insecure_config(),
    })
}

fn delivery(port: u16, requirement: TlsRequirement) -> Delivery<SwitchPlanner> {
    delivery_with(port, planner(requirement), Duration::from_secs(5))
}

fn tls_receiver() -> ReceiverConfig {
    ReceiverConfig::with_starttls(TestCert::self_signed(&["mx.test"]).server_config())
}

fn delivered(out: &[RecipientOutcome]) -> bool {
    !out.is_empty()
        && out
            .iter()
            .all(|o| matches!(o.outcome, Outcome::Delivered { .. }))
}

fn verbs(commands: &[String]) -> Vec<String> {
    commands
        .iter()
        .map(|c| {
            c.split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase()
        })
        .collect()
}

#[tokio::test]
async fn jobs_back_to_back_share_one_connection_with_rset_between() {
    let receiver = SmtpReceiver::start(ReceiverConfig::default())
        .await
        .unwrap();
    let d = delivery(receiver.port(), TlsRequirement::Opportunistic);
    assert!(delivered(&d.deliver(job(&["r1@dest.test"])).await));
    assert_eq!(d.idle_sessions(), 1, "the clean session is kept");
    assert!(delivered(&d.deliver(job(&["r2@dest.test"])).await));
    assert!(delivered(&d.deliver(job(&["r3@dest.test"])).await));
    assert_eq!(receiver.wait_for(3).await.len(), 3);
    assert_eq!(receiver.connections(), 1, "three messages, one connection");
    d.close_idle_sessions().await;
    let sessions = receiver.wait_sessions(1).await;
    assert_eq!(
        verbs(&sessions[0].commands),
        [
            "EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT",
            "DATA", "QUIT"
        ]
    );
}

#[tokio::test]
async fn may_reuses_the_tls_session_without_a_second_handshake() {
    let receiver = SmtpReceiver::start(tls_receiver()).await.unwrap();
    let d = delivery(receiver.port(), TlsRequirement::Opportunistic);
    assert!(delivered(&d.deliver(job(&["r1@dest.test"])).await));
    assert!(delivered(&d.deliver(job(&["r2@dest.test"])).await));
    let messages = receiver.wait_for(2).await;
    assert!(messages.iter().all(|m| m.tls.is_some()), "{messages:?}");
    d.close_idle_sessions().await;
    let sessions = receiver.wait_sessions(1).await;
    assert_eq!(receiver.connections(), 1);
    assert_eq!(sessions.len(), 1, "one TLS handshake");
    assert!(sessions[0].tls.is_some());
    let clear = String::from_utf8_lossy(&receiver.cleartext_transcript()).to_ascii_uppercase();
    assert!(
        !clear.contains("RSET") && !clear.contains("MAIL"),
        "{clear}"
    );
    let starttls = verbs(&sessions[0].commands)
        .iter()
        .filter(|v| *v == "STARTTLS")
        .count();
    assert_eq!(starttls, 1);
}

#[tokio::test]
async fn a_session_serves_only_the_same_requirement_and_version() {
    let receiver = SmtpReceiver::start(tls_receiver()).await.unwrap();
    let switchable = planner(TlsRequirement::Cleartext);
    let d = delivery_with(receiver.port(), switchable.clone(), Duration::from_secs(5));
    let switch = |requirement: TlsRequirement, min: TlsVersion| {
        let mut p = one_mx(requirement);
        p.min_tls_version = min;
        *switchable.plan.lock().unwrap() = p;
    };
    // (requirement, min version, connections afterwards)
    let steps = [
        (TlsRequirement::Cleartext, TlsVersion::Tls12, 1),
        // A cleartext session never serves a TLS job, even an opportunistic one.
        (TlsRequirement::Opportunistic, TlsVersion::Tls12, 2),
        // An opportunistic TLS session never serves a required level.
        (TlsRequirement::Encrypt, TlsVersion::Tls12, 3),
        (TlsRequirement::Encrypt, TlsVersion::Tls12, 3),
        (TlsRequirement::Encrypt, TlsVersion::Tls13, 4),
        (TlsRequirement::Opportunistic, TlsVersion::Tls12, 4),
    ];
    for (n, (requirement, min, connections)) in steps.into_iter().enumerate() {
        switch(requirement.clone(), min);
        let out = d.deliver(job(&[&format!("r{n}@dest.test")])).await;
        assert!(delivered(&out), "{requirement:?}: {out:?}");
        assert_eq!(
            receiver.connections(),
            connections,
            "{requirement:?} {min:?}"
        );
    }
    let messages = receiver.wait_for(6).await;
    assert!(messages[0].tls.is_none());
    assert!(messages[1..].iter().all(|m| m.tls.is_some()));
}

#[tokio::test]
async fn a_new_trust_generation_closes_the_idle_session_and_dials_afresh() {
    let receiver = SmtpReceiver::start(tls_receiver()).await.unwrap();
    let switchable = planner(TlsRequirement::Encrypt);
    let d = delivery_with(receiver.port(), switchable.clone(), Duration::from_secs(30));
    assert!(delivered(&d.deliver(job(&["r1@dest.test"])).await));
    assert_eq!(d.idle_sessions(), 1);
    // A reload: the trust roots may differ, so the verified session is not reused.
    switchable.generation.store(1, Ordering::SeqCst);
    assert!(delivered(&d.deliver(job(&["r2@dest.test"])).await));
    assert_eq!(receiver.connections(), 2, "the second job dialled afresh");
    // The old session got QUIT at once, without a second transaction.
    let old = receiver.wait_sessions(1).await;
    assert_eq!(
        verbs(&old[0].commands),
        ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    );
    assert_eq!(d.idle_sessions(), 1, "the new session is kept");
    // Jobs of the new generation share the new session again.
    assert!(delivered(&d.deliver(job(&["r3@dest.test"])).await));
    assert_eq!(receiver.connections(), 2);
    assert_eq!(receiver.wait_for(3).await.len(), 3);
}

#[tokio::test]
async fn a_session_the_server_closed_falls_back_to_a_fresh_connection() {
    let config = ReceiverConfig {
        max_messages_per_session: Some(1),
        ..tls_receiver()
    };
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let d = delivery(receiver.port(), TlsRequirement::Encrypt);
    assert!(delivered(&d.deliver(job(&["r1@dest.test"])).await));
    // The server dropped the connection after the message; the cache still holds it.
    receiver.wait_sessions(1).await;
    assert_eq!(d.idle_sessions(), 1);
    let out = d.deliver(job(&["r2@dest.test"])).await;
    assert!(
        delivered(&out),
        "a dead cached session is no failure: {out:?}"
    );
    assert_eq!(receiver.connections(), 2);
    let messages = receiver.wait_for(2).await;
    assert!(messages.iter().all(|m| m.tls.is_some()));
}

#[tokio::test]
async fn an_idle_session_expires_with_quit() {
    let receiver = SmtpReceiver::start(ReceiverConfig::default())
        .await
        .unwrap();
    let d = delivery_with(
        receiver.port(),
        planner(TlsRequirement::Cleartext),
        Duration::from_millis(100),
    );
    assert!(delivered(&d.deliver(job(&["r1@dest.test"])).await));
    // The expiry timer closes the session; the receiver sees it end.
    let sessions = receiver.wait_sessions(1).await;
    assert_eq!(verbs(&sessions[0].commands).last().unwrap(), "QUIT");
    assert_eq!(d.idle_sessions(), 0);
    assert!(delivered(&d.deliver(job(&["r2@dest.test"])).await));
    assert_eq!(receiver.connections(), 2);
}

#[tokio::test]
async fn all_recipients_refused_then_rset_keeps_the_session() {
    let config =
        ReceiverConfig::default().rcpt("r1@dest.test", ReplyScript::always("550 5.1.1 no"));
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let d = delivery(receiver.port(), TlsRequirement::Cleartext);
    let out = d.deliver(job(&["r1@dest.test"])).await;
    assert!(
        matches!(&out[0].outcome, Outcome::Failed(f) if f.status == "5.1.1"),
        "{out:?}"
    );
    assert!(delivered(&d.deliver(job(&["r2@dest.test"])).await));
    assert_eq!(receiver.connections(), 1);
    d.close_idle_sessions().await;
    let sessions = receiver.wait_sessions(1).await;
    assert_eq!(
        verbs(&sessions[0].commands),
        ["EHLO", "MAIL", "RCPT", "RSET", "RSET", "MAIL", "RCPT", "DATA", "QUIT"]
    );
}

#[tokio::test]
async fn sessions_are_not_kept_after_421_or_a_refused_sender() {
    for config in [
        ReceiverConfig {
            data_reply: Some(ReplyScript::first_n(1, "421 4.3.2 closing", "250 2.0.0 ok")),
            ..ReceiverConfig::default()
        },
        ReceiverConfig {
            mail_reply: Some(ReplyScript::first_n(1, "451 4.3.0 later", "250 2.1.0 ok")),
            ..ReceiverConfig::default()
        },
    ] {
        let receiver = SmtpReceiver::start(config).await.unwrap();
        let d = delivery(receiver.port(), TlsRequirement::Cleartext);
        let out = d.deliver(job(&["r1@dest.test"])).await;
        assert!(matches!(&out[0].outcome, Outcome::Deferred(_)), "{out:?}");
        assert_eq!(d.idle_sessions(), 0);
        assert!(delivered(&d.deliver(job(&["r2@dest.test"])).await));
        assert_eq!(receiver.connections(), 2);
        let first = receiver.wait_sessions(1).await;
        assert_eq!(verbs(&first[0].commands).last().unwrap(), "QUIT");
    }
}

#[tokio::test]
async fn deliver_to_address_still_quits_after_its_transaction() {
    let receiver = SmtpReceiver::start(ReceiverConfig::default())
        .await
        .unwrap();
    let p = params(receiver.addr(), TlsRequirement::Cleartext, None);
    mxgate_delivery::deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap();
    let sessions = receiver.wait_sessions(1).await;
    assert_eq!(verbs(&sessions[0].commands).last().unwrap(), "QUIT");
}
