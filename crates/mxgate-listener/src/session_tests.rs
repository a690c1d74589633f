//! Table tests for the pure session: each row is a command and the reply code.

use super::*;
use mxgate_config::ListenerConfig;
use mxgate_smtp::DataReader;
use std::time::UNIX_EPOCH;

fn session(max_recipients: usize) -> Session {
    let mut s = ListenerSettings::new(&ListenerConfig::default(), "relay.example");
    s.max_recipients = max_recipients;
    s.max_message_size = 1000;
    Session::new(Arc::new(s), "127.0.0.1".parse().unwrap())
}

fn run(s: &mut Session, line: &str) -> (u16, String) {
    let action = s.command(Ok(BytesMut::from(line.as_bytes())));
    let r = match &action {
        Action::Reply(r) | Action::StartData(r) | Action::Close(r) => r.clone(),
    };
    (r.code, r.enhanced_string().unwrap_or_default())
}

#[test]
fn command_sequences() {
    // (commands, expected code of each)
    let cases: &[(&[&str], &[u16])] = &[
        (&["MAIL FROM:<a@x.example>"], &[503]),
        (&["EHLO c", "RCPT TO:<b@y.example>"], &[250, 503]),
        (&["EHLO c", "DATA"], &[250, 503]),
        (
            &["EHLO c", "MAIL FROM:<a@x.example>", "DATA"],
            &[250, 250, 503],
        ),
        (
            &[
                "EHLO c",
                "MAIL FROM:<a@x.example>",
                "MAIL FROM:<a@x.example>",
            ],
            &[250, 250, 503],
        ),
        (
            &[
                "EHLO c",
                "MAIL FROM:<a@x.example>",
                "RCPT TO:<b@y.example>",
                "DATA",
            ],
            &[250, 250, 250, 354],
        ),
        (
            &[
                "EHLO c",
                "MAIL FROM:<a@x.example>",
                "RSET",
                "RCPT TO:<b@y.example>",
            ],
            &[250, 250, 250, 503],
        ),
        (
            &[
                "EHLO c",
                "MAIL FROM:<a@x.example>",
                "EHLO c",
                "RCPT TO:<b@y.example>",
            ],
            &[250, 250, 250, 503],
        ),
        (
            &["EHLO c", "MAIL FROM:<a@x.example> SIZE=1001"],
            &[250, 552],
        ),
        (
            &["EHLO c", "MAIL FROM:<a@x.example> SIZE=1000"],
            &[250, 250],
        ),
        (&["HELO c", "MAIL FROM:<a@x.example> SIZE=10"], &[250, 555]),
        (&["HELO c", "MAIL FROM:<a@x.example>"], &[250, 250]),
        (
            &["EHLO c", "MAIL FROM:<a@x.example>", "RCPT TO:<ü@y.example>"],
            &[250, 250, 553],
        ),
        (
            &[
                "EHLO c",
                "MAIL FROM:<a@x.example> SMTPUTF8",
                "RCPT TO:<ü@y.example>",
            ],
            &[250, 250, 250],
        ),
        (
            &[
                "EHLO c",
                "MAIL FROM:<a@x.example>",
                "RCPT TO:<b@y.example>",
                "RCPT TO:<c@y.example>",
                "RCPT TO:<d@y.example>",
            ],
            &[250, 250, 250, 250, 452],
        ),
        (
            &[
                "EHLO c",
                "MAIL FROM:<a@x.example>",
                "RCPT TO:<b@y.example> FOO=1",
                "RCPT TO:<b@y.example>",
            ],
            &[250, 250, 555, 250],
        ),
        (
            &["NOOP", "VRFY x", "HELP", "STARTTLS", "BOGUS", "QUIT"],
            &[250, 252, 214, 502, 500, 221],
        ),
    ];
    for (commands, codes) in cases {
        let mut s = session(2);
        let got: Vec<u16> = commands.iter().map(|c| run(&mut s, c).0).collect();
        assert_eq!(&got, codes, "{commands:?}");
    }
}

#[test]
fn replies_carry_enhanced_codes() {
    let mut s = session(1);
    assert_eq!(
        run(&mut s, "MAIL FROM:<a@x.example>"),
        (503, "5.5.1".into())
    );
    run(&mut s, "EHLO c");
    assert_eq!(
        run(&mut s, "MAIL FROM:<a@x.example>"),
        (250, "2.1.0".into())
    );
    assert_eq!(run(&mut s, "RCPT TO:<b@y.example>"), (250, "2.1.5".into()));
    assert_eq!(run(&mut s, "RCPT TO:<c@y.example>"), (452, "4.5.3".into()));
    assert_eq!(
        s.command(Err(LineError::TooLong { limit: 512 })),
        Action::Reply(Reply::new(500, (5, 5, 2), "Line too long"))
    );
    let Action::Reply(r) = s.command(Err(LineError::BareLf)) else {
        panic!()
    };
    assert_eq!((r.code, r.enhanced), (500, Some((5, 5, 2))));
    assert!(s.in_transaction(), "errors keep the transaction");
}

#[test]
fn ehlo_advertises() {
    let mut s = session(1);
    let Action::Reply(r) = s.command(Ok(BytesMut::from(&b"EHLO c"[..]))) else {
        panic!()
    };
    assert_eq!(
        r.lines,
        vec![
            "relay.example",
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN"
        ]
    );
    assert!(!r.lines.iter().any(|l| l == "STARTTLS" || l == "CHUNKING"));
    assert_eq!(
        s.greeting().to_bytes(),
        b"220 relay.example ESMTP mxgate\r\n"
    );
}

fn data(input: &[u8]) -> DataOutcome {
    DataReader::new(1000)
        .feed(&mut BytesMut::from(input))
        .unwrap()
}

#[test]
fn finish_data_builds_envelope_and_message() {
    let mut s = session(5);
    for c in [
        "EHLO client.example",
        "MAIL FROM:<a@x.example> BODY=8BITMIME RET=HDRS ENVID=E1",
        "RCPT TO:<b@y.example> NOTIFY=FAILURE ORCPT=rfc822;b@y.example",
        "DATA",
    ] {
        run(&mut s, c);
    }
    let (env, msg) = s
        .finish_data(data(b"Subject: x\r\n\r\nhi\r\n.\r\n"), "Q7", UNIX_EPOCH)
        .unwrap();
    assert!(!s.in_transaction());
    assert_eq!(env.sender, "a@x.example");
    assert_eq!(env.body, BodyType::EightBitMime);
    assert_eq!(env.ret, Some(mxgate_smtp::Ret::Hdrs));
    assert_eq!(env.envid.as_deref(), Some("E1"));
    assert_eq!(
        env.recipients[0].orcpt.as_deref(),
        Some("rfc822;b@y.example")
    );
    let expected = "Received: from client.example ([127.0.0.1])\r\n\tby relay.example (mxgate) with ESMTP \
                    id Q7 for <b@y.example>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\nSubject: x\r\n\r\nhi\r\n";
    assert_eq!(std::str::from_utf8(&msg).unwrap(), expected);
}

#[test]
fn finish_data_rejections() {
    let cases: &[(&[u8], u16)] = &[
        (b"a\nb\r\n.\r\n", 550),
        (b"a\rb\r\n.\r\n", 550),
        (b"a\0b\r\n.\r\n", 550),
        (&[b'x'; 1200], 552),
    ];
    for (body, code) in cases {
        let mut s = session(5);
        for c in [
            "EHLO c",
            "MAIL FROM:<a@x.example>",
            "RCPT TO:<b@y.example>",
            "DATA",
        ] {
            run(&mut s, c);
        }
        let mut input = body.to_vec();
        input.extend_from_slice(b"\r\n.\r\n");
        let r = s.finish_data(data(&input), "Q7", UNIX_EPOCH).unwrap_err();
        assert_eq!(r.code, *code, "{:?}", String::from_utf8_lossy(body));
        assert!(!s.in_transaction());
    }
}

#[test]
fn stored_replies() {
    let ok = Session::stored_reply(&Ok(QueueId("ABC123".into())));
    assert_eq!(ok.to_string(), "250 2.0.0 Ok: queued as ABC123");
    let full = Session::stored_reply(&Err(StoreError::NoSpace(std::io::Error::other("full"))));
    assert_eq!(full.to_string(), "452 4.3.1 Insufficient system storage");
    let io = Session::stored_reply(&Err(StoreError::Io(std::io::Error::other("EIO"))));
    assert!(io.to_string().starts_with("451 4.3.0"));
}
