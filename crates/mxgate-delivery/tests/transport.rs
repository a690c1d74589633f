//! `Transport::deliver` through the plan loop, with a fixed planner and real receivers.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mxgate_config::{DeliveryConfig, Level, OnTlsFailure};
use mxgate_delivery::Delivery;
use mxgate_policy::{LookupFailure, PlanError, SkipReason, TlsRequirement};
use mxgate_queue::{Outcome, Transport};
use mxgate_testkit::smtp::{ReceiverConfig, SmtpReceiver};

/// Delivery to `port`: the plan names the port dialled.
fn delivery(port: u16, mut planner: FixedPlanner) -> Delivery<FixedPlanner> {
    if let Ok(plan) = &mut planner.plan {
        plan.port = port;
    }
    let settings = DeliveryConfig {
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        ..DeliveryConfig::default()
    };
    Delivery::new(settings, Arc::new(planner), "relay.test".into())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn refused_first_address_then_second_address_delivers() {
    let receiver = SmtpReceiver::start(ReceiverConfig::default())
        .await
        .unwrap();
    // Nothing listens on 127.0.0.2 at the receiver's port: connection refused.
    let p = plan(
        Level::May,
        vec![(
            "mx.dest.test",
            vec![ip("127.0.0.2"), ip("127.0.0.1")],
            Ok(TlsRequirement::Opportunistic),
        )],
    );
    let d = delivery(
        receiver.port(),
        FixedPlanner {
            plan: Ok(p),
            tls: insecure_config(),
        },
    );
    let out = d.deliver(job(&["r1@dest.test"])).await;
    assert_eq!(out.len(), 1);
    let Outcome::Delivered { relay, .. } = &out[0].outcome else {
        panic!("{out:?}")
    };
    assert_eq!(
        relay,
        &format!("mx.dest.test[127.0.0.1]:{}", receiver.port())
    );
    assert_eq!(receiver.next_message().await.data, MESSAGE);
}

#[tokio::test]
async fn excluded_mx_is_skipped_and_next_mx_used() {
    let receiver = SmtpReceiver::start(ReceiverConfig::default())
        .await
        .unwrap();
    let p = plan(
        Level::May,
        vec![
            (
                "mx1.dest.test",
                vec![ip("127.0.0.1")],
                Err(SkipReason::NotInMtaStsPolicy {
                    host: "mx1.dest.test".into(),
                }),
            ),
            (
                "mx2.dest.test",
                vec![ip("127.0.0.1")],
                Ok(TlsRequirement::Opportunistic),
            ),
        ],
    );
    let d = delivery(
        receiver.port(),
        FixedPlanner {
            plan: Ok(p),
            tls: insecure_config(),
        },
    );
    let out = d.deliver(job(&["r1@dest.test", "r2@dest.test"])).await;
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|o| matches!(&o.outcome, Outcome::Delivered { relay, .. } if relay.starts_with("mx2.dest.test["))));
    assert_eq!(receiver.connections(), 1);
}

#[tokio::test]
async fn tls_policy_failure_on_every_mx_defers_with_reasons_or_bounces() {
    let receiver = SmtpReceiver::start(ReceiverConfig::default())
        .await
        .unwrap();
    for (on_failure, want_failed) in [(OnTlsFailure::Defer, false), (OnTlsFailure::Bounce, true)] {
        let mut p = plan(
            Level::Encrypt,
            vec![
                (
                    "mx1.dest.test",
                    vec![ip("127.0.0.1")],
                    Ok(TlsRequirement::Encrypt),
                ),
                (
                    "mx2.dest.test",
                    vec![ip("127.0.0.1")],
                    Err(SkipReason::TlsaLookup {
                        host: "mx2.dest.test".into(),
                        failure: LookupFailure::Temporary("SERVFAIL".into()),
                    }),
                ),
            ],
        );
        p.on_tls_failure = on_failure;
        let d = delivery(
            receiver.port(),
            FixedPlanner {
                plan: Ok(p),
                tls: insecure_config(),
            },
        );
        let out = d.deliver(job(&["r1@dest.test"])).await;
        let f = match (&out[0].outcome, want_failed) {
            (Outcome::Failed(f), true) | (Outcome::Deferred(f), false) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(f.status, if want_failed { "5.7.4" } else { "4.7.4" });
        assert_eq!(
            f.diagnostic,
            "encrypt: STARTTLS not offered by mx1.dest.test; \
             dane: TLSA records of mx2.dest.test: lookup failed: SERVFAIL"
        );
        assert!(!f.remote);
    }
    receiver.wait_sessions(2).await;
    let sent = String::from_utf8_lossy(&receiver.cleartext_transcript()).to_ascii_uppercase();
    assert!(!sent.contains("MAIL FROM"), "{sent}");
    assert!(receiver.messages().is_empty());
}

#[tokio::test]
async fn unreachable_everywhere_defers() {
    let receiver = SmtpReceiver::start(ReceiverConfig::default())
        .await
        .unwrap();
    let port = receiver.port();
    drop(receiver);
    let p = plan(
        Level::May,
        vec![(
            "mx.dest.test",
            vec![ip("127.0.0.2")],
            Ok(TlsRequirement::Opportunistic),
        )],
    );
    let d = delivery(
        port,
        FixedPlanner {
            plan: Ok(p),
            tls: insecure_config(),
        },
    );
    let out = d.deliver(job(&["r1@dest.test"])).await;
    assert!(
        matches!(&out[0].outcome, Outcome::Deferred(f) if f.status == "4.4.1"),
        "{out:?}"
    );
}

#[tokio::test]
async fn plan_errors_map_to_bounce_or_defer() {
    let rows = [
        (
            PlanError::NullMx {
                domain: "dest.test".into(),
            },
            "5.1.10",
            true,
        ),
        (
            PlanError::NxDomain {
                domain: "dest.test".into(),
            },
            "5.1.2",
            true,
        ),
        (
            PlanError::MxLookup {
                domain: "dest.test".into(),
                failure: LookupFailure::Temporary("SERVFAIL".into()),
            },
            "4.4.3",
            false,
        ),
    ];
    for (error, status, permanent) in rows {
        let d = delivery(
            25,
            FixedPlanner {
                plan: Err(error),
                tls: insecure_config(),
            },
        );
        let out = d.deliver(job(&["r1@dest.test", "r2@dest.test"])).await;
        assert_eq!(out.len(), 2);
        for o in out {
            let f = match (&o.outcome, permanent) {
                (Outcome::Failed(f), true) | (Outcome::Deferred(f), false) => f.clone(),
                other => panic!("{other:?}"),
            };
            assert_eq!(f.status, status);
        }
    }
}

/// Collects every [`SessionReport`] delivery hands out.
#[derive(Default)]
struct Collect(std::sync::Mutex<Vec<mxgate_delivery::SessionReport>>);

impl mxgate_delivery::SessionSink for Collect {
    fn session(&self, report: &mxgate_delivery::SessionReport) {
        self.0.lock().unwrap().push(report.clone());
    }
}

#[tokio::test]
async fn every_session_and_skipped_mx_is_reported_to_the_sink() {
    let receiver = SmtpReceiver::start(ReceiverConfig::default())
        .await
        .unwrap();
    let p = plan(
        Level::MtaSts,
        vec![
            (
                "mx0.dest.test",
                vec![ip("127.0.0.1")],
                Err(SkipReason::NotInMtaStsPolicy {
                    host: "mx0.dest.test".into(),
                }),
            ),
            // Refused, then delivered in cleartext (the receiver offers no STARTTLS).
            (
                "mx1.dest.test",
                vec![ip("127.0.0.2"), ip("127.0.0.1")],
                Ok(TlsRequirement::Opportunistic),
            ),
        ],
    );
    let sink = Arc::new(Collect::default());
    let d = delivery(
        receiver.port(),
        FixedPlanner {
            plan: Ok(p),
            tls: insecure_config(),
        },
    )
    .with_session_sink(sink.clone());
    let out = d.deliver(job(&["r1@dest.test"])).await;
    assert!(
        matches!(out[0].outcome, Outcome::Delivered { .. }),
        "{out:?}"
    );
    let reports = sink.0.lock().unwrap().clone();
    assert_eq!(reports.len(), 3, "{reports:#?}");
    let skipped = &reports[0];
    assert_eq!(skipped.mx_host, "mx0.dest.test");
    assert_eq!(skipped.mx_addr, None);
    let f = skipped.result.as_ref().unwrap_err();
    assert_eq!(f.kind, mxgate_queue::FailureKind::StsMxNotListed);
    assert_eq!(f.kind.tls_rpt_result(), Some("validation-failure"));
    assert_eq!(f.reason, "mta-sts enforce: mx0.dest.test not in policy");
    let refused = &reports[1];
    assert_eq!(refused.mx_addr, Some(ip("127.0.0.2")));
    assert_eq!(
        refused.result.as_ref().unwrap_err().kind,
        mxgate_queue::FailureKind::ConnectFailed
    );
    let ok = &reports[2];
    assert_eq!(ok.mx_addr, Some(ip("127.0.0.1")));
    assert_eq!(ok.local_addr, Some(ip("127.0.0.1")));
    assert_eq!(ok.result, Ok(()));
    assert_eq!(ok.tls, None, "cleartext session");
    assert_eq!(ok.domain, "dest.test");
    assert_eq!(ok.level, Level::MtaSts);
    assert!(reports.iter().all(|r| !r.is_tls_report));
    assert!(reports.iter().all(|r| r.mta_sts_failure.is_none()));
}

/// A plan made without the announced MTA-STS policy (RFC 8461 §5) says so on every
/// session report, with the RFC 8460 §4.3.2.2 kind of the failure.
#[tokio::test]
async fn an_unobtainable_mta_sts_policy_is_on_every_session_report() {
    use mxgate_policy::sts::fetch::FetchError;
    use mxgate_queue::FailureKind;
    for (error, kind) in [
        (FetchError::Status(404), FailureKind::StsPolicyFetch),
        (FetchError::Timeout, FailureKind::StsPolicyFetch),
        (
            FetchError::Parse("policy: no max_age".into()),
            FailureKind::StsPolicyInvalid,
        ),
        (
            FetchError::Certificate("invalid peer certificate: UnknownIssuer".into()),
            FailureKind::StsWebpkiInvalid,
        ),
    ] {
        let receiver = SmtpReceiver::start(ReceiverConfig::default())
            .await
            .unwrap();
        let mut p = plan(
            Level::May,
            vec![(
                "mx.dest.test",
                vec![ip("127.0.0.2"), ip("127.0.0.1")],
                Ok(TlsRequirement::Opportunistic),
            )],
        );
        p.mta_sts_failure = Some(error.clone());
        let sink = Arc::new(Collect::default());
        let d = delivery(
            receiver.port(),
            FixedPlanner {
                plan: Ok(p),
                tls: insecure_config(),
            },
        )
        .with_session_sink(sink.clone());
        let out = d.deliver(job(&["r1@dest.test"])).await;
        assert!(
            matches!(out[0].outcome, Outcome::Delivered { .. }),
            "{out:?}"
        );
        let reports = sink.0.lock().unwrap().clone();
        assert_eq!(reports.len(), 2, "refused, then delivered: {reports:#?}");
        for r in &reports {
            let f = r.mta_sts_failure.as_ref().expect("carried");
            assert_eq!(f.kind, kind, "{error:?}");
            assert_eq!(f.reason, format!("mta-sts: {error}"));
        }
        assert_eq!(reports[1].result, Ok(()));
    }
}

#[tokio::test]
async fn a_tls_report_message_is_flagged() {
    let receiver = SmtpReceiver::start(ReceiverConfig::default())
        .await
        .unwrap();
    let p = plan(
        Level::May,
        vec![(
            "mx.dest.test",
            vec![ip("127.0.0.1")],
            Ok(TlsRequirement::Opportunistic),
        )],
    );
    let sink = Arc::new(Collect::default());
    let d = delivery(
        receiver.port(),
        FixedPlanner {
            plan: Ok(p),
            tls: insecure_config(),
        },
    )
    .with_session_sink(sink.clone());
    let message = b"From: tlsrpt@relay.test\r\nTLS-Report-Domain: dest.test\r\n\r\nreport\r\n";
    let out = d
        .deliver(job_with(&["rua@dest.test"], message, false))
        .await;
    assert!(
        matches!(out[0].outcome, Outcome::Delivered { .. }),
        "{out:?}"
    );
    let reports = sink.0.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].is_tls_report);
}
