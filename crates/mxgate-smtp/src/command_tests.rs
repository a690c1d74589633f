//! Table tests for [`super::parse_command`], each case run through the line reader
//! with several line endings.

use super::*;
use crate::line::{LineError, LineReader};
use bytes::BytesMut;

fn mail(sender: &str) -> MailFrom {
    MailFrom {
        sender: sender.into(),
        ..MailFrom::default()
    }
}

fn rcpt(address: &str) -> RcptTo {
    RcptTo {
        address: address.into(),
        ..RcptTo::default()
    }
}

fn table() -> Vec<(&'static str, Result<Command, CommandError>)> {
    use CommandError as E;
    vec![
        (
            "EHLO client.example",
            Ok(Command::Ehlo("client.example".into())),
        ),
        (
            "ehlo client.example",
            Ok(Command::Ehlo("client.example".into())),
        ),
        ("HELO [127.0.0.1]", Ok(Command::Helo("[127.0.0.1]".into()))),
        ("EHLO", Err(E::Syntax("EHLO/HELO needs a domain"))),
        (
            "MAIL FROM:<a@example.org>",
            Ok(Command::Mail(mail("a@example.org"))),
        ),
        (
            "mail from:<a@example.org>",
            Ok(Command::Mail(mail("a@example.org"))),
        ),
        (
            "MAIL FROM: <a@example.org>",
            Ok(Command::Mail(mail("a@example.org"))),
        ),
        ("MAIL FROM:<>", Ok(Command::Mail(mail("")))),
        (
            "MAIL FROM:<@relay.example:a@example.org>",
            Ok(Command::Mail(mail("a@example.org"))),
        ),
        (
            "MAIL FROM:<\"a b@c\"@example.org>",
            Ok(Command::Mail(mail("\"a b@c\"@example.org"))),
        ),
        (
            "MAIL FROM:<\"a\\\"b\"@example.org>",
            Ok(Command::Mail(mail("\"a\\\"b\"@example.org"))),
        ),
        (
            "MAIL FROM:<a@[192.0.2.1]>",
            Ok(Command::Mail(mail("a@[192.0.2.1]"))),
        ),
        (
            "MAIL FROM:<a@[IPv6:2001:db8::1]>",
            Ok(Command::Mail(mail("a@[IPv6:2001:db8::1]"))),
        ),
        (
            "MAIL FROM:<a@[300.1.1.1]>",
            Err(E::BadAddress("bad address literal")),
        ),
        ("MAIL FROM:a@example.org", Err(E::BadAddress("missing <"))),
        ("MAIL FROM:<a@example.org", Err(E::BadAddress("missing >"))),
        ("MAIL FROM:<a>", Err(E::BadAddress("no domain"))),
        (
            "MAIL FROM:<a..b@example.org>",
            Err(E::BadAddress("bad local part")),
        ),
        ("MAIL FROM:<a@-x.example>", Err(E::BadAddress("bad domain"))),
        ("MAIL FROM:<a@x..example>", Err(E::BadAddress("bad domain"))),
        (
            "MAIL TO:<a@example.org>",
            Err(E::Syntax("MAIL FROM:<address>")),
        ),
        (
            "MAIL FROM:<a@example.org>x",
            Err(E::Syntax("garbage after address")),
        ),
        (
            "MAIL FROM:<a@example.org> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=QQ+2B1",
            Ok(Command::Mail(MailFrom {
                sender: "a@example.org".into(),
                size: Some(1000),
                body: Some(BodyType::EightBitMime),
                smtputf8: false,
                ret: Some(Ret::Hdrs),
                envid: Some("QQ+1".into()),
            })),
        ),
        (
            "MAIL FROM:<a@example.org> size=5 body=7bit ret=full",
            Ok(Command::Mail(MailFrom {
                sender: "a@example.org".into(),
                size: Some(5),
                body: Some(BodyType::SevenBit),
                ret: Some(Ret::Full),
                ..MailFrom::default()
            })),
        ),
        (
            "MAIL FROM:<ü@example.org> SMTPUTF8",
            Ok(Command::Mail(MailFrom {
                sender: "ü@example.org".into(),
                smtputf8: true,
                ..MailFrom::default()
            })),
        ),
        ("MAIL FROM:<ü@example.org>", Err(E::NonAsciiAddress)),
        ("MAIL FROM:<a@bü.example>", Err(E::NonAsciiAddress)),
        (
            "MAIL FROM:<a@example.org> SIZE=1 SIZE=2",
            Err(E::DuplicateParameter("SIZE".into())),
        ),
        (
            "MAIL FROM:<a@example.org> SIZE=1 size=2",
            Err(E::DuplicateParameter("SIZE".into())),
        ),
        (
            "MAIL FROM:<a@example.org> SIZE=abc",
            Err(E::BadValue("SIZE".into())),
        ),
        (
            "MAIL FROM:<a@example.org> SIZE=99999999999999999999",
            Err(E::BadValue("SIZE".into())),
        ),
        (
            "MAIL FROM:<a@example.org> SIZE",
            Err(E::BadValue("SIZE".into())),
        ),
        (
            "MAIL FROM:<a@example.org> BODY=BINARYMIME",
            Err(E::UnsupportedValue("BODY".into())),
        ),
        (
            "MAIL FROM:<a@example.org> RET=ALL",
            Err(E::BadValue("RET".into())),
        ),
        (
            "MAIL FROM:<a@example.org> SMTPUTF8=yes",
            Err(E::BadValue("SMTPUTF8".into())),
        ),
        (
            "MAIL FROM:<a@example.org> ENVID=a+zz",
            Err(E::BadValue("ENVID".into())),
        ),
        (
            "MAIL FROM:<a@example.org> XFOO=1",
            Err(E::UnknownParameter("XFOO".into())),
        ),
        (
            "MAIL FROM:<a@example.org> AUTH=<>",
            Err(E::UnknownParameter("AUTH".into())),
        ),
        (
            "RCPT TO:<b@example.com>",
            Ok(Command::Rcpt(rcpt("b@example.com"))),
        ),
        ("RCPT TO:<>", Err(E::BadAddress("empty recipient"))),
        (
            "RCPT TO:<b@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+2Bx@example.com",
            Ok(Command::Rcpt(RcptTo {
                address: "b@example.com".into(),
                notify: Some(Notify {
                    success: true,
                    failure: false,
                    delay: true,
                }),
                orcpt: Some("rfc822;b+x@example.com".into()),
            })),
        ),
        (
            "RCPT TO:<b@example.com> notify=never",
            Ok(Command::Rcpt(RcptTo {
                address: "b@example.com".into(),
                notify: Some(Notify::NEVER),
                orcpt: None,
            })),
        ),
        (
            "RCPT TO:<b@example.com> NOTIFY=NEVER,FAILURE",
            Err(E::BadValue("NOTIFY".into())),
        ),
        (
            "RCPT TO:<b@example.com> NOTIFY=FAILURE,FAILURE",
            Err(E::BadValue("NOTIFY".into())),
        ),
        (
            "RCPT TO:<b@example.com> NOTIFY=SOMETIMES",
            Err(E::BadValue("NOTIFY".into())),
        ),
        (
            "RCPT TO:<b@example.com> ORCPT=b@example.com",
            Err(E::BadValue("ORCPT".into())),
        ),
        (
            "RCPT TO:<b@example.com> SIZE=1",
            Err(E::UnknownParameter("SIZE".into())),
        ),
        (
            "RCPT TO:<ü@example.com>",
            Ok(Command::Rcpt(rcpt("ü@example.com"))),
        ),
        (
            "RCPT FROM:<b@example.com>",
            Err(E::Syntax("RCPT TO:<address>")),
        ),
        ("DATA", Ok(Command::Data)),
        ("data", Ok(Command::Data)),
        ("DATA now", Err(E::Syntax("no arguments allowed"))),
        ("RSET", Ok(Command::Rset)),
        ("NOOP", Ok(Command::Noop)),
        ("NOOP anything", Ok(Command::Noop)),
        ("QUIT", Ok(Command::Quit)),
        ("STARTTLS", Ok(Command::StartTls)),
        ("HELP", Ok(Command::Help)),
        ("VRFY root", Ok(Command::Vrfy("root".into()))),
        ("VRFY", Err(E::Syntax("VRFY needs an argument"))),
        ("BDAT 10 LAST", Err(E::Unrecognized("BDAT".into()))),
        ("", Err(E::Unrecognized("".into()))),
    ]
}

/// Feeds `input` through a command line reader, then the parser.
fn via_line(input: &[u8]) -> Result<Option<Result<Command, CommandError>>, LineError> {
    let mut buf = BytesMut::from(input);
    let mut reader = LineReader::commands();
    Ok(reader.read_line(&mut buf)?.map(|l| parse_command(&l)))
}

#[test]
fn commands_with_line_ending_variants() {
    for (line, want) in table() {
        let crlf = format!("{line}\r\n");
        assert_eq!(
            via_line(crlf.as_bytes()),
            Ok(Some(want.clone())),
            "CRLF: {line}"
        );
        let lf = format!("{line}\n");
        assert_eq!(
            via_line(lf.as_bytes()),
            Err(LineError::BareLf),
            "LF: {line}"
        );
        let cr = format!("{line}\r");
        assert_eq!(via_line(cr.as_bytes()), Ok(None), "CR: {line}");
        let mixed = format!("{line}\r\r\n");
        assert_eq!(
            via_line(mixed.as_bytes()),
            Err(LineError::BareCr),
            "CRCRLF: {line}"
        );
        let mixed = format!("{line}\n\r\n");
        assert_eq!(
            via_line(mixed.as_bytes()),
            Err(LineError::BareLf),
            "LFCRLF: {line}"
        );
    }
}

#[test]
fn not_utf8() {
    assert_eq!(
        parse_command(b"MAIL FROM:<\xff@x.example>"),
        Err(CommandError::NotUtf8)
    );
}

#[test]
fn error_replies() {
    let codes: Vec<(CommandError, &str)> = vec![
        (CommandError::Unrecognized("X".into()), "500 5.5.1"),
        (CommandError::Syntax("x"), "501 5.5.4"),
        (CommandError::BadAddress("x"), "501 5.1.3"),
        (CommandError::NonAsciiAddress, "553 5.6.7"),
        (CommandError::UnknownParameter("X".into()), "555 5.5.4"),
        (CommandError::DuplicateParameter("X".into()), "555 5.5.4"),
        (CommandError::BadValue("X".into()), "501 5.5.4"),
    ];
    for (e, want) in codes {
        assert!(
            e.reply().to_string().starts_with(want),
            "{e:?} -> {}",
            e.reply()
        );
    }
}

proptest::proptest! {
    #[test]
    fn arbitrary_lines_never_panic(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
        let _ = parse_command(&line);
    }

    #[test]
    fn mail_parameters_in_any_order_and_case(upper in proptest::prelude::any::<bool>(), order in proptest::prelude::any::<u8>()) {
        let mut params = ["SIZE=10", "BODY=8BITMIME", "RET=FULL", "ENVID=x", "SMTPUTF8"];
        let n = params.len();
        params.rotate_left(usize::from(order) % n);
        let mut line = format!("MAIL FROM:<a@example.org> {}", params.join(" "));
        if !upper {
            line = line.to_ascii_lowercase();
        }
        let Ok(Command::Mail(m)) = parse_command(line.as_bytes()) else {
            return Err(proptest::test_runner::TestCaseError::fail(line));
        };
        proptest::prop_assert_eq!(m.size, Some(10));
        proptest::prop_assert!(m.smtputf8 && m.ret == Some(Ret::Full) && m.body == Some(BodyType::EightBitMime));
    }
}
