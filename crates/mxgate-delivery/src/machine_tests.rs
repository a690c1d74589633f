//! The table test of [`ClientSession`]: every requirement × server behaviour → the
//! commands sent and the end, without sockets. A scripted "server" answers each step.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mxgate_policy::TlsRequirement;
use mxgate_queue::{FailureKind, Outcome};
use mxgate_smtp::{Envelope, Recipient};

use super::*;
use crate::session::SessionError;

/// What the scripted server does at the next step.
#[derive(Debug, Clone)]
enum Srv {
    /// A reply (lines joined with `|`, e.g. `250-mx|250 STARTTLS`).
    R(&'static str),
    Lost,
    Timeout,
    TlsUp,
    TlsFail(FailureKind),
    Inject,
}
use Srv::*;

const EHLO_TLS: &str = "250-mx.test|250-PIPELINING|250 STARTTLS";
const EHLO_PLAIN: &str = "250-mx.test|250 PIPELINING";

fn reply(text: &str) -> Reply {
    let wire: String = text.split('|').map(|l| format!("{l}\r\n")).collect();
    let mut buf = BytesMut::from(wire.as_str());
    mxgate_smtp::parse_reply(&mut buf)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("bad reply in table: {text}"))
}

fn peer() -> Peer {
    Peer {
        helo_name: "relay.test".into(),
        mx_host: "mx.test".into(),
        relay: "mx.test[192.0.2.1]:25".into(),
        policy_label: "encrypt".into(),
    }
}

fn mail_to(rcpts: &[&str]) -> Mail {
    mail_with(rcpts, b"Subject: x\r\n\r\nbody\r\n", false)
}

fn mail_with(rcpts: &[&str], message: &[u8], smtputf8: bool) -> Mail {
    Mail {
        envelope: Arc::new(Envelope {
            sender: "a@src.test".into(),
            body: Default::default(),
            smtputf8,
            ret: None,
            envid: None,
            recipients: rcpts
                .iter()
                .map(|r| Recipient {
                    address: r.to_string(),
                    notify: None,
                    orcpt: None,
                })
                .collect(),
        }),
        recipients: (0..rcpts.len()).collect(),
        message: Bytes::copy_from_slice(message),
    }
}

fn facts() -> TlsFacts {
    TlsFacts {
        version: Some("TLSv1.3"),
        cipher: Some("TLS13_AES_128_GCM_SHA256".into()),
        auth: "none",
        peer_chain: Vec::new(),
        shadow: None,
    }
}

/// Runs the machine against `script`; returns the commands it wrote (first word,
/// `<body>` for message data, `<tls>` for a handshake) and its end.
fn run_machine(mut m: ClientSession, script: &[Srv]) -> (Vec<String>, End) {
    let mut sent = Vec::new();
    let mut script = script.iter();
    let mut step = m.start();
    loop {
        let input = match &step {
            Step::Done(end) => return (sent, end.clone()),
            Step::Send { bytes, .. } => {
                let text = String::from_utf8_lossy(bytes);
                let words: Vec<&str> = text
                    .split("\r\n")
                    .filter(|l| !l.is_empty())
                    .map(|l| l.split([' ', ':']).next().unwrap_or(""))
                    .collect();
                if text.starts_with("Subject") {
                    sent.push("<body>".to_string());
                } else {
                    sent.push(words.join("+"));
                }
                script.next()
            }
            Step::Read { .. } => script.next(),
            Step::StartTls => {
                sent.push("<tls>".into());
                script.next()
            }
        };
        let input = match input.cloned() {
            None => panic!("script ended; sent so far {sent:?}, step {step:?}"),
            Some(R(text)) => Input::Reply(reply(text)),
            Some(Lost) => Input::Lost(super::Lost::Closed("connection closed by server".into())),
            Some(Timeout) => Input::Lost(super::Lost::Timeout("timed out after 300s".into())),
            Some(TlsUp) => Input::TlsUp(facts()),
            Some(TlsFail(kind)) => Input::TlsFailed {
                kind,
                reason: "certificate for mx.test not valid: expired".into(),
            },
            Some(Inject) => Input::DataBeforeHandshake,
        };
        step = m.handle(input);
    }
}

fn run(req: TlsRequirement, script: &[Srv]) -> (Vec<String>, End) {
    run_machine(
        ClientSession::fresh(peer(), req, false, Some(mail_to(&["r@dest.test"]))),
        script,
    )
}

fn pkix() -> TlsRequirement {
    TlsRequirement::Pkix {
        names: vec!["mx.test".into()],
    }
}

fn tls_policy_kind(end: &End) -> Option<FailureKind> {
    match end {
        End::Failed(SessionError::TlsPolicy { failure, .. }) => Some(failure.kind),
        _ => None,
    }
}

fn unreachable_kind(end: &End) -> Option<FailureKind> {
    match end {
        End::Failed(SessionError::Unreachable { failure, .. }) => Some(failure.kind),
        _ => None,
    }
}

fn outcomes(end: &End) -> Vec<Outcome> {
    match end {
        End::Transacted { report, .. } => {
            report.outcomes.iter().map(|o| o.outcome.clone()).collect()
        }
        other => panic!("not transacted: {other:?}"),
    }
}

/// The commands of a delivered, pipelined, TLS session.
const TLS_DELIVERY: &[Srv] = &[
    R("220 mx.test"),
    R(EHLO_TLS),
    R("220 go ahead"),
    TlsUp,
    R(EHLO_PLAIN),
    R("250 2.1.0 ok"),
    R("250 2.1.5 ok"),
    R("354 go"),
    R("250 2.0.0 queued as X"),
];

#[test]
fn tls_requirements_deliver_after_tls_and_a_second_ehlo() {
    for req in [
        TlsRequirement::Encrypt,
        pkix(),
        TlsRequirement::Opportunistic,
    ] {
        let (sent, end) = run(req.clone(), TLS_DELIVERY);
        assert_eq!(
            sent,
            [
                "EHLO",
                "STARTTLS",
                "<tls>",
                "EHLO",
                "MAIL+RCPT",
                "DATA",
                "<body>"
            ],
            "{req:?}"
        );
        assert!(
            matches!(end, End::Transacted { reusable: true, .. }),
            "{end:?}"
        );
        assert!(
            matches!(&outcomes(&end)[0], Outcome::Delivered { reply, .. } if reply == "250 2.0.0 queued as X")
        );
    }
}

#[test]
fn starttls_table() {
    struct Row {
        req: TlsRequirement,
        script: &'static [Srv],
        sent: &'static [&'static str],
        tls_policy: Option<FailureKind>,
        retry: bool,
        delivered: bool,
    }
    let row = |req, script, sent, tls_policy, retry, delivered| Row {
        req,
        script,
        sent,
        tls_policy,
        retry,
        delivered,
    };
    let delivered_plain: &[Srv] = &[
        R("220 mx.test"),
        R(EHLO_PLAIN),
        R("250 ok"),
        R("250 ok"),
        R("354 go"),
        R("250 ok"),
    ];
    let rows = vec![
        // No STARTTLS offered.
        row(
            TlsRequirement::Encrypt,
            &[R("220 mx"), R(EHLO_PLAIN), R("221 bye")],
            &["EHLO", "QUIT"],
            Some(FailureKind::StarttlsNotOffered),
            false,
            false,
        ),
        row(
            pkix(),
            &[R("220 mx"), R(EHLO_PLAIN), R("221 bye")],
            &["EHLO", "QUIT"],
            Some(FailureKind::StarttlsNotOffered),
            false,
            false,
        ),
        row(
            TlsRequirement::Opportunistic,
            delivered_plain,
            &["EHLO", "MAIL+RCPT", "DATA", "<body>"],
            None,
            false,
            true,
        ),
        row(
            TlsRequirement::Cleartext,
            delivered_plain,
            &["EHLO", "MAIL+RCPT", "DATA", "<body>"],
            None,
            false,
            true,
        ),
        // `none` never says STARTTLS, even when offered.
        row(
            TlsRequirement::Cleartext,
            &[
                R("220 mx"),
                R(EHLO_TLS),
                R("250 ok"),
                R("250 ok"),
                R("354 go"),
                R("250 ok"),
            ],
            &["EHLO", "MAIL+RCPT", "DATA", "<body>"],
            None,
            false,
            true,
        ),
        // 454 / 554 to STARTTLS: a policy failure at required levels (never a bounce),
        // cleartext at `may`.
        row(
            TlsRequirement::Encrypt,
            &[
                R("220 mx"),
                R(EHLO_TLS),
                R("454 4.7.0 not now"),
                R("221 bye"),
            ],
            &["EHLO", "STARTTLS", "QUIT"],
            Some(FailureKind::StarttlsRefused),
            false,
            false,
        ),
        row(
            pkix(),
            &[R("220 mx"), R(EHLO_TLS), R("554 5.7.0 no"), R("221 bye")],
            &["EHLO", "STARTTLS", "QUIT"],
            Some(FailureKind::StarttlsRefused),
            false,
            false,
        ),
        row(
            TlsRequirement::Opportunistic,
            &[
                R("220 mx"),
                R(EHLO_TLS),
                R("454 4.7.0 not now"),
                R("250 ok"),
                R("250 ok"),
                R("354 go"),
                R("250 ok"),
            ],
            &["EHLO", "STARTTLS", "MAIL+RCPT", "DATA", "<body>"],
            None,
            false,
            true,
        ),
        // Handshake failure / wrong certificate.
        row(
            TlsRequirement::Encrypt,
            &[
                R("220 mx"),
                R(EHLO_TLS),
                R("220 go"),
                TlsFail(FailureKind::HandshakeFailed),
            ],
            &["EHLO", "STARTTLS", "<tls>"],
            Some(FailureKind::HandshakeFailed),
            false,
            false,
        ),
        row(
            pkix(),
            &[
                R("220 mx"),
                R(EHLO_TLS),
                R("220 go"),
                TlsFail(FailureKind::CertificateHostMismatch),
            ],
            &["EHLO", "STARTTLS", "<tls>"],
            Some(FailureKind::CertificateHostMismatch),
            false,
            false,
        ),
        row(
            TlsRequirement::Opportunistic,
            &[
                R("220 mx"),
                R(EHLO_TLS),
                R("220 go"),
                TlsFail(FailureKind::HandshakeFailed),
            ],
            &["EHLO", "STARTTLS", "<tls>"],
            None,
            true,
            false,
        ),
        // Injection after 220: refused, no QUIT on a poisoned connection.
        row(
            TlsRequirement::Encrypt,
            &[R("220 mx"), R(EHLO_TLS), R("220 go"), Inject],
            &["EHLO", "STARTTLS", "<tls>"],
            Some(FailureKind::ResponseInjection),
            false,
            false,
        ),
        row(
            TlsRequirement::Opportunistic,
            &[R("220 mx"), R(EHLO_TLS), R("220 go"), Inject],
            &["EHLO", "STARTTLS", "<tls>"],
            None,
            true,
            false,
        ),
        // Lost while waiting for the STARTTLS answer.
        row(
            TlsRequirement::Opportunistic,
            &[R("220 mx"), R(EHLO_TLS), Lost],
            &["EHLO", "STARTTLS"],
            None,
            true,
            false,
        ),
    ];
    for (i, r) in rows.iter().enumerate() {
        let (sent, end) = run(r.req.clone(), r.script);
        assert_eq!(sent, r.sent, "row {i} {:?}", r.req);
        assert_eq!(tls_policy_kind(&end), r.tls_policy, "row {i}: {end:?}");
        assert_eq!(
            matches!(end, End::RetryCleartext { .. }),
            r.retry,
            "row {i}: {end:?}"
        );
        let delivered = matches!(&end, End::Transacted { report, .. }
            if report.outcomes.iter().all(|o| matches!(o.outcome, Outcome::Delivered { .. })));
        assert_eq!(delivered, r.delivered, "row {i}: {end:?}");
        // No byte of the envelope before the requirement is met.
        if !r.req.allows_cleartext() {
            let tls_at = sent.iter().position(|c| c == "<tls>");
            let mail_at = sent.iter().position(|c| c.starts_with("MAIL"));
            if let Some(m) = mail_at {
                assert!(tls_at.is_some_and(|t| t < m), "row {i}: {sent:?}");
            }
        }
    }
}

#[test]
fn the_cleartext_retry_of_may_never_says_starttls() {
    let m = ClientSession::fresh(
        peer(),
        TlsRequirement::Opportunistic,
        true,
        Some(mail_to(&["r@dest.test"])),
    );
    let (sent, end) = run_machine(
        m,
        &[
            R("220 mx"),
            R(EHLO_TLS),
            R("250 ok"),
            R("250 ok"),
            R("354 go"),
            R("250 ok"),
        ],
    );
    assert_eq!(sent, ["EHLO", "MAIL+RCPT", "DATA", "<body>"]);
    assert!(matches!(end, End::Transacted { .. }));
}

#[test]
fn greetings_other_than_220_never_bounce() {
    for (greeting, status) in [
        ("421 4.3.2 busy", "4.3.2"),
        ("554 no service", "4.0.0"),
        ("554 5.7.1 go away", "4.7.1"),
    ] {
        for req in [TlsRequirement::Opportunistic, TlsRequirement::Encrypt] {
            let (sent, end) = run(req, &[R(greeting), R("221 bye")]);
            assert_eq!(sent, ["QUIT"]);
            let End::Failed(SessionError::Unreachable { failure, .. }) = &end else {
                panic!("{end:?}")
            };
            assert_eq!(failure.kind, FailureKind::GreetingRejected);
            assert_eq!(failure.status, status, "{greeting}");
            assert!(failure.remote);
        }
    }
}

#[test]
fn helo_only_where_cleartext_is_allowed() {
    let (sent, end) = run(
        TlsRequirement::Encrypt,
        &[R("220 mx"), R("502 no EHLO"), R("221 bye")],
    );
    assert_eq!(sent, ["EHLO", "QUIT"]);
    assert_eq!(unreachable_kind(&end), Some(FailureKind::HeloRejected));
    // `may`: HELO, then a lock-step transaction (no PIPELINING without EHLO).
    let (sent, end) = run(
        TlsRequirement::Opportunistic,
        &[
            R("220 mx"),
            R("502 no EHLO"),
            R("250 hi"),
            R("250 ok"),
            R("250 ok"),
            R("354 go"),
            R("250 ok"),
        ],
    );
    assert_eq!(sent, ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "<body>"]);
    assert!(matches!(&outcomes(&end)[0], Outcome::Delivered { .. }));
}

#[test]
fn mixed_pipelined_rcpt_replies_and_452() {
    let m = ClientSession::fresh(
        peer(),
        TlsRequirement::Cleartext,
        false,
        Some(mail_to(&["a@d.test", "b@d.test", "c@d.test", "e@d.test"])),
    );
    let (sent, end) = run_machine(
        m,
        &[
            R("220 mx"),
            R(EHLO_PLAIN),
            R("250 ok"),
            R("250 2.1.5 ok"),
            R("550 5.1.1 no such user"),
            R("451 4.3.0 later"),
            R("452 4.5.3 too many recipients"),
            R("354 go"),
            R("250 2.0.0 ok"),
        ],
    );
    assert_eq!(sent, ["EHLO", "MAIL+RCPT+RCPT+RCPT+RCPT", "DATA", "<body>"]);
    let End::Transacted { report, reusable } = &end else {
        panic!("{end:?}")
    };
    assert!(*reusable);
    let by_index = |i: usize| {
        &report
            .outcomes
            .iter()
            .find(|o| o.index == i)
            .unwrap()
            .outcome
    };
    assert!(matches!(by_index(0), Outcome::Delivered { .. }));
    assert!(
        matches!(by_index(1), Outcome::Failed(f) if f.status == "5.1.1" && f.kind == FailureKind::Rejected)
    );
    assert!(matches!(by_index(2), Outcome::Deferred(f) if f.status == "4.3.0"));
    assert!(
        matches!(by_index(3), Outcome::Deferred(f) if f.status == "4.5.3" && f.kind == FailureKind::RemoteTemporary)
    );
}

#[test]
fn all_recipients_refused_resets_and_421_never_reuses() {
    let (sent, end) = run(
        TlsRequirement::Cleartext,
        &[
            R("220 mx"),
            R(EHLO_PLAIN),
            R("250 ok"),
            R("550 5.1.1 no"),
            R("250 reset"),
        ],
    );
    assert_eq!(sent, ["EHLO", "MAIL+RCPT", "RSET"]);
    assert!(matches!(end, End::Transacted { reusable: true, .. }));
    let (sent, end) = run(
        TlsRequirement::Cleartext,
        &[
            R("220 mx"),
            R(EHLO_PLAIN),
            R("250 ok"),
            R("421 4.3.2 closing"),
            R("221 bye"),
        ],
    );
    assert_eq!(sent, ["EHLO", "MAIL+RCPT", "QUIT"]);
    assert!(matches!(
        end,
        End::Transacted {
            reusable: false,
            ..
        }
    ));
    assert!(matches!(&outcomes(&end)[0], Outcome::Deferred(_)));
    // A 421 as the final reply: deferred, not kept.
    let (_, end) = run(
        TlsRequirement::Cleartext,
        &[
            R("220 mx"),
            R(EHLO_PLAIN),
            R("250 ok"),
            R("250 ok"),
            R("354 go"),
            R("421 4.4.2 bye"),
            R("221 bye"),
        ],
    );
    assert!(matches!(
        end,
        End::Transacted {
            reusable: false,
            ..
        }
    ));
}

#[test]
fn lost_at_every_step_decides_nothing_until_the_final_dot() {
    for req in [TlsRequirement::Encrypt, TlsRequirement::Opportunistic] {
        for cut in 0..TLS_DELIVERY.len() {
            for how in [Lost, Timeout] {
                let mut script: Vec<Srv> = TLS_DELIVERY[..cut].to_vec();
                // The handshake step reports failure, not a lost connection.
                let at_handshake = matches!(TLS_DELIVERY[cut], TlsUp);
                script.push(if at_handshake {
                    TlsFail(FailureKind::HandshakeFailed)
                } else {
                    how.clone()
                });
                let (_, end) = run(req.clone(), &script);
                let last = cut == TLS_DELIVERY.len() - 1;
                match (&end, last) {
                    (End::Failed(SessionError::Unreachable { failure, .. }), true) => {
                        assert_eq!(failure.kind, FailureKind::LostAfterData);
                        assert!(failure
                            .diagnostic
                            .contains("may be delivered more than once"));
                        assert!(failure.status.is_transient());
                    }
                    (End::Failed(SessionError::Unreachable { failure, .. }), false) => {
                        assert!(
                            matches!(
                                failure.kind,
                                FailureKind::ConnectionLost | FailureKind::Timeout
                            ),
                            "{req:?} cut {cut}: {failure:?}"
                        );
                    }
                    (End::Failed(SessionError::TlsPolicy { .. }), false) if at_handshake => {}
                    (End::RetryCleartext { .. }, false)
                        if req == TlsRequirement::Opportunistic && (at_handshake || cut == 2) => {}
                    other => panic!("{req:?} cut {cut} {how:?}: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn smtputf8_message_bounces_5_6_7_at_a_server_without_it() {
    let mail = mail_with(
        &["r@dest.test"],
        "Subject: caf\u{e9}\r\n\r\nx\r\n".as_bytes(),
        true,
    );
    let m = ClientSession::fresh(peer(), TlsRequirement::Cleartext, false, Some(mail));
    let (sent, end) = run_machine(m, &[R("220 mx"), R(EHLO_PLAIN), R("221 bye")]);
    assert_eq!(sent, ["EHLO", "QUIT"]);
    let o = outcomes(&end);
    assert!(
        matches!(&o[0], Outcome::Failed(f) if f.status == "5.6.7" && f.kind == FailureKind::Smtputf8NotSupported),
        "{o:?}"
    );
    // With SMTPUTF8 offered it goes, with the parameter.
    let mail = mail_with(
        &["r@dest.test"],
        "Subject: caf\u{e9}\r\n\r\nx\r\n".as_bytes(),
        true,
    );
    let mut m = ClientSession::fresh(peer(), TlsRequirement::Cleartext, false, Some(mail));
    let _ = m.start();
    let _ = m.handle(Input::Reply(reply("220 mx")));
    let step = m.handle(Input::Reply(reply("250-mx|250-PIPELINING|250 SMTPUTF8")));
    let Step::Send { bytes, .. } = step else {
        panic!("{step:?}")
    };
    assert!(String::from_utf8_lossy(&bytes).contains(" SMTPUTF8\r\n"));
    // ASCII headers and addresses: sent without the parameter.
    let mail = mail_with(&["r@dest.test"], b"Subject: cafe\r\n\r\n\xc3\xa9\r\n", true);
    let m = ClientSession::fresh(peer(), TlsRequirement::Cleartext, false, Some(mail));
    let (sent, _) = run_machine(
        m,
        &[
            R("220 mx"),
            R(EHLO_PLAIN),
            R("250 ok"),
            R("250 ok"),
            R("354 go"),
            R("250 ok"),
        ],
    );
    assert_eq!(sent, ["EHLO", "MAIL+RCPT", "DATA", "<body>"]);
}

#[test]
fn probe_mode_stops_before_mail() {
    let m = ClientSession::fresh(peer(), TlsRequirement::Encrypt, false, None);
    let (sent, end) = run_machine(
        m,
        &[
            R("220 mx"),
            R(EHLO_TLS),
            R("220 go"),
            TlsUp,
            R(EHLO_PLAIN),
            R("221 bye"),
        ],
    );
    assert_eq!(sent, ["EHLO", "STARTTLS", "<tls>", "EHLO", "QUIT"]);
    assert_eq!(end, End::Probed);
}

#[test]
fn a_resumed_session_resets_first_and_is_stale_without_250() {
    let resumed = |tls| {
        ClientSession::resumed(
            peer(),
            pkix(),
            mxgate_smtp::Capabilities::from_ehlo(&reply(EHLO_PLAIN)),
            tls,
            mail_to(&["r@dest.test"]),
        )
    };
    let (sent, end) = run_machine(
        resumed(Some(facts())),
        &[
            R("250 ok"),
            R("250 ok"),
            R("250 ok"),
            R("354 go"),
            R("250 ok"),
        ],
    );
    assert_eq!(sent, ["RSET", "MAIL+RCPT", "DATA", "<body>"]);
    assert!(matches!(end, End::Transacted { reusable: true, .. }));
    for script in [
        &[R("421 4.4.2 idle too long")][..],
        &[Lost][..],
        &[Timeout][..],
    ] {
        let (sent, end) = run_machine(resumed(Some(facts())), script);
        assert_eq!(sent, ["RSET"]);
        assert_eq!(end, End::Stale);
    }
    // Defence in depth: a cleartext session under a TLS requirement sends no envelope.
    let (sent, end) = run_machine(resumed(None), &[R("250 ok"), R("221 bye")]);
    assert_eq!(sent, ["RSET", "QUIT"]);
    assert_eq!(tls_policy_kind(&end), Some(FailureKind::HandshakeFailed));
    // Lost after the final dot on a resumed session is LostAfterData too.
    let (_, end) = run_machine(
        resumed(Some(facts())),
        &[R("250 ok"), R("250 ok"), R("250 ok"), R("354 go"), Lost],
    );
    assert_eq!(unreachable_kind(&end), Some(FailureKind::LostAfterData));
}
