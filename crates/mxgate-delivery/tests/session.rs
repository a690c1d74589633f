//! One SMTP session against a real `SmtpReceiver` on loopback, per requirement and
//! server behaviour.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use mxgate_delivery::{deliver_to_address, SessionError};
use mxgate_policy::TlsRequirement;
use mxgate_queue::Outcome;
use mxgate_testkit::certs::{TestCa, TestCert, Validity};
use mxgate_testkit::smtp::{ReceiverConfig, ReplyScript, SmtpReceiver, StartTlsBehaviour};

fn tls_receiver_config() -> ReceiverConfig {
    let cert = TestCert::self_signed(&["mx.test"]);
    ReceiverConfig::with_starttls(cert.server_config())
}

fn cleartext_sent(receiver: &SmtpReceiver) -> String {
    String::from_utf8_lossy(&receiver.cleartext_transcript()).to_ascii_uppercase()
}

#[tokio::test]
async fn may_uses_starttls_tls13_and_relays_byte_exact() {
    let receiver = SmtpReceiver::start(tls_receiver_config()).await.unwrap();
    let p = params(
        receiver.addr(),
        TlsRequirement::Opportunistic,
        Some(insecure_config()),
    );
    let report = deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap();
    assert_eq!(report.tls.version, Some("TLSv1.3"));
    assert!(
        matches!(&report.outcomes[0].outcome, Outcome::Delivered { relay, .. } if relay.starts_with("mx.test[127.0.0.1]:"))
    );
    let msg = receiver.next_message().await;
    assert_eq!(msg.data, MESSAGE);
    let tls = msg.tls.unwrap();
    assert_eq!(tls.version, "TLSv1.3");
    assert_eq!(tls.sni.as_deref(), Some("mx.test"));
    assert!(msg.mail_params.contains(&"BODY=8BITMIME".to_string()));
    assert!(msg.mail_params.contains(&"ENVID=ENV1".to_string()));
    receiver.wait_sessions(1).await;
    assert!(!cleartext_sent(&receiver).contains("MAIL FROM"));
}

#[tokio::test]
async fn may_without_starttls_delivers_in_cleartext() {
    let receiver = SmtpReceiver::start(ReceiverConfig::default())
        .await
        .unwrap();
    let p = params(
        receiver.addr(),
        TlsRequirement::Opportunistic,
        Some(insecure_config()),
    );
    let report = deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap();
    assert_eq!(report.tls.version, None);
    assert!(matches!(
        report.outcomes[0].outcome,
        Outcome::Delivered { .. }
    ));
    assert_eq!(receiver.next_message().await.tls, None);
}

#[tokio::test]
async fn cleartext_level_never_sends_starttls() {
    let receiver = SmtpReceiver::start(tls_receiver_config()).await.unwrap();
    let p = params(receiver.addr(), TlsRequirement::Cleartext, None);
    deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap();
    assert_eq!(receiver.next_message().await.tls, None);
    let sessions = receiver.wait_sessions(1).await;
    assert!(!sessions[0]
        .commands
        .iter()
        .any(|c| c.eq_ignore_ascii_case("STARTTLS")));
}

#[tokio::test]
async fn encrypt_without_starttls_fails_policy_and_sends_no_mail() {
    let receiver = SmtpReceiver::start(ReceiverConfig::default())
        .await
        .unwrap();
    let p = params(
        receiver.addr(),
        TlsRequirement::Encrypt,
        Some(insecure_config()),
    );
    let err = deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap_err();
    let SessionError::TlsPolicy { failure, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(failure.reason(), "starttls_not_offered");
    assert_eq!(failure.message, "encrypt: STARTTLS not offered by mx.test");
    receiver.wait_sessions(1).await;
    let sent = cleartext_sent(&receiver);
    assert!(
        sent.contains("EHLO") && !sent.contains("MAIL FROM") && !sent.contains("RCPT"),
        "{sent}"
    );
}

#[tokio::test]
async fn encrypt_with_forged_554_to_starttls_is_policy_failure_not_bounce() {
    let config = ReceiverConfig {
        starttls_behaviour: StartTlsBehaviour::Refuse("554 5.7.0 go away".into()),
        ..tls_receiver_config()
    };
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let p = params(
        receiver.addr(),
        TlsRequirement::Encrypt,
        Some(insecure_config()),
    );
    let err = deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SessionError::TlsPolicy { failure, .. } if failure.reason() == "starttls_refused"),
        "{err:?}"
    );
    receiver.wait_sessions(1).await;
    assert!(!cleartext_sent(&receiver).contains("MAIL FROM"));
}

#[tokio::test]
async fn may_with_refused_starttls_continues_in_cleartext() {
    let config = ReceiverConfig {
        starttls_behaviour: StartTlsBehaviour::Refuse("454 4.7.0 TLS not available".into()),
        ..tls_receiver_config()
    };
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let p = params(
        receiver.addr(),
        TlsRequirement::Opportunistic,
        Some(insecure_config()),
    );
    deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap();
    assert_eq!(receiver.next_message().await.tls, None);
    assert_eq!(receiver.connections(), 1);
}

#[tokio::test]
async fn response_injection_after_starttls_is_rejected_at_encrypt() {
    let config = ReceiverConfig {
        starttls_behaviour: StartTlsBehaviour::InjectAfterReady(b"250 injected\r\n".to_vec()),
        ..tls_receiver_config()
    };
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let p = params(
        receiver.addr(),
        TlsRequirement::Encrypt,
        Some(insecure_config()),
    );
    let err = deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap_err();
    let SessionError::TlsPolicy { failure, .. } = err else {
        panic!("{err:?}")
    };
    // Either we saw the bytes in our buffer, or they broke the handshake: never delivered.
    assert!(
        matches!(failure.reason(), "response_injection" | "handshake_failed"),
        "{failure:?}"
    );
    assert!(receiver.messages().is_empty());
}

#[tokio::test]
async fn may_handshake_failure_retries_once_in_cleartext() {
    let config = ReceiverConfig {
        starttls_behaviour: StartTlsBehaviour::GarbageHandshake,
        ..tls_receiver_config()
    };
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let p = params(
        receiver.addr(),
        TlsRequirement::Opportunistic,
        Some(insecure_config()),
    );
    let report = deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap();
    assert_eq!(report.tls.version, None);
    let msg = receiver.next_message().await;
    assert_eq!(msg.tls, None);
    assert_eq!(msg.data, MESSAGE);
    let sessions = receiver.wait_sessions(2).await;
    assert_eq!(sessions.len(), 2);
    assert!(!sessions.iter().any(|s| s
        .commands
        .iter()
        .filter(|c| c.eq_ignore_ascii_case("STARTTLS"))
        .count()
        > 1));
}

#[tokio::test]
async fn may_version_mismatch_falls_back_but_encrypt_defers() {
    let cert = TestCert::self_signed(&["mx.test"]);
    let config = ReceiverConfig::with_starttls(cert.server_config_with(&[&rustls::version::TLS12]));
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let p = params(
        receiver.addr(),
        TlsRequirement::Opportunistic,
        Some(tls13_only_config()),
    );
    deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap();
    assert_eq!(receiver.next_message().await.tls, None);

    let p = params(
        receiver.addr(),
        TlsRequirement::Encrypt,
        Some(tls13_only_config()),
    );
    let err = deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SessionError::TlsPolicy { failure, .. } if failure.reason() == "handshake_failed"),
        "{err:?}"
    );
}

#[tokio::test]
async fn tls12_server_negotiates_tls12() {
    let cert = TestCert::self_signed(&["mx.test"]);
    let config = ReceiverConfig::with_starttls(cert.server_config_with(&[&rustls::version::TLS12]));
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let p = params(
        receiver.addr(),
        TlsRequirement::Encrypt,
        Some(insecure_config()),
    );
    let report = deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap();
    assert_eq!(report.tls.version, Some("TLSv1.2"));
    assert_eq!(
        receiver.next_message().await.tls.unwrap().version,
        "TLSv1.2"
    );
}

#[tokio::test]
async fn verify_with_unknown_issuer_names_the_certificate() {
    let trusted = TestCa::new("Trusted CA");
    let rogue = TestCa::new("Rogue CA");
    let cert = rogue.issue(&["mx.test"], Validity::current());
    let receiver = SmtpReceiver::start(ReceiverConfig::with_starttls(cert.server_config()))
        .await
        .unwrap();
    let req = TlsRequirement::Pkix {
        names: vec!["mx.test".into()],
    };
    let p = params(receiver.addr(), req, Some(pkix_config(&trusted)));
    let err = deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap_err();
    let SessionError::TlsPolicy { failure, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(
        failure.message,
        "verify: certificate for mx.test not valid: unknown issuer"
    );
    receiver.wait_sessions(1).await;
    assert!(!cleartext_sent(&receiver).contains("MAIL FROM"));
    assert!(receiver.messages().is_empty());
}

#[tokio::test]
async fn verify_with_intermediate_chain_delivers() {
    let root = TestCa::new("Root");
    let cert = root
        .intermediate("Intermediate")
        .issue(&["mx.test"], Validity::current());
    let receiver = SmtpReceiver::start(ReceiverConfig::with_starttls(cert.server_config()))
        .await
        .unwrap();
    let req = TlsRequirement::Pkix {
        names: vec!["mx.test".into()],
    };
    let p = params(receiver.addr(), req, Some(pkix_config(&root)));
    deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap();
    assert!(receiver.next_message().await.tls.is_some());
}

#[tokio::test]
async fn one_of_two_recipients_rejected_with_550() {
    for pipelining in [true, false] {
        let config = ReceiverConfig {
            pipelining,
            ..ReceiverConfig::default()
        }
        .rcpt(
            "bad@dest.test",
            ReplyScript::always("550 5.1.1 no such user"),
        );
        let receiver = SmtpReceiver::start(config).await.unwrap();
        let p = params(receiver.addr(), TlsRequirement::Opportunistic, None);
        let report = deliver_to_address(&p, &job(&["bad@dest.test", "good@dest.test"]), &[0, 1])
            .await
            .unwrap();
        let by_index = |i| {
            report
                .outcomes
                .iter()
                .find(|o| o.index == i)
                .unwrap()
                .outcome
                .clone()
        };
        let Outcome::Failed(f) = by_index(0) else {
            panic!("bad must fail")
        };
        assert_eq!(f.status, "5.1.1");
        assert_eq!(f.remote_mta.as_deref(), Some("mx.test"));
        assert!(f.diagnostic.contains("550 5.1.1"));
        assert!(matches!(by_index(1), Outcome::Delivered { .. }));
        let msg = receiver.next_message().await;
        assert_eq!(msg.recipients.len(), 1);
        assert_eq!(msg.recipients[0].address, "good@dest.test");
        let sessions = receiver.wait_sessions(1).await;
        assert!(!sessions[0].pipelining_violation, "pipelining={pipelining}");
        // RFC 2920: MAIL and RCPTs go in one batch exactly when PIPELINING is offered.
        assert_eq!(sessions[0].pipelined, pipelining);
    }
}

#[tokio::test]
async fn all_recipients_451_defers_without_data() {
    let config =
        ReceiverConfig::default().rcpt("r1@dest.test", ReplyScript::always("451 4.3.0 try later"));
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let p = params(receiver.addr(), TlsRequirement::Opportunistic, None);
    let report = deliver_to_address(&p, &job(&["r1@dest.test"]), &[0])
        .await
        .unwrap();
    let Outcome::Deferred(f) = &report.outcomes[0].outcome else {
        panic!("{report:?}")
    };
    assert_eq!(f.status, "4.3.0");
    let sessions = receiver.wait_sessions(1).await;
    assert!(!sessions[0].commands.iter().any(|c| c == "DATA"));
}

#[tokio::test]
async fn data_rejection_applies_to_all_accepted() {
    let config = ReceiverConfig {
        data_reply: Some(ReplyScript::always("554 5.6.0 content rejected")),
        ..ReceiverConfig::default()
    };
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let p = params(receiver.addr(), TlsRequirement::Opportunistic, None);
    let report = deliver_to_address(&p, &job(&["a@dest.test", "b@dest.test"]), &[0, 1])
        .await
        .unwrap();
    assert_eq!(report.outcomes.len(), 2);
    assert!(report
        .outcomes
        .iter()
        .all(|o| matches!(&o.outcome, Outcome::Failed(f) if f.status == "5.6.0")));
}

#[tokio::test]
async fn smtputf8_message_to_server_without_it_fails_5_6_7() {
    let config = ReceiverConfig {
        smtputf8: false,
        ..ReceiverConfig::default()
    };
    let receiver = SmtpReceiver::start(config).await.unwrap();
    let p = params(receiver.addr(), TlsRequirement::Opportunistic, None);
    let report = deliver_to_address(&p, &job_with(&["jösé@dest.test"], MESSAGE, true), &[0])
        .await
        .unwrap();
    assert!(
        matches!(&report.outcomes[0].outcome, Outcome::Failed(f) if f.status == "5.6.7"),
        "{report:?}"
    );
    receiver.wait_sessions(1).await;
    assert!(!cleartext_sent(&receiver).contains("MAIL FROM"));
}
