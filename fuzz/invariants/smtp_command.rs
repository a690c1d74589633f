//! The listener's command side: `LineReader` takes the same lines off a stream in any
//! chunking, never hands out a line with CR, LF or NUL or over its limit, and every
//! line that `parse_command` accepts round-trips through the client's formatter
//! (`mxgate_smtp::client`) to the same command — what the listener accepted, delivery
//! sends on unchanged.
//!
//! Input: the first byte picks a chunk size, the rest is the client's stream.
//!
//! Shared by the fuzz target `smtp_command` and the corpus replay in mxgate-smtp's
//! tests.

use bytes::BytesMut;
use mxgate_smtp::client;
use mxgate_smtp::{
    parse_command, BodyType, Capabilities, Command, Envelope, LineError, LineReader, Recipient,
};

fn lines(stream: &[u8], chunk: usize) -> Vec<Result<Vec<u8>, LineError>> {
    let mut reader = LineReader::extended_commands();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match reader.read_line(&mut buf) {
                Ok(Some(line)) => out.push(Ok(line.to_vec())),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
    }
    out
}

/// A server that offers every extension the formatter can use.
fn everything() -> Capabilities {
    Capabilities {
        size: Some(0),
        eight_bit_mime: true,
        smtputf8: true,
        dsn: true,
        pipelining: true,
        ..Capabilities::default()
    }
}

fn reparse(wire: &[u8]) -> Command {
    let line = wire
        .strip_suffix(b"\r\n")
        .expect("formatted commands end with CRLF");
    parse_command(line)
        .unwrap_or_else(|e| panic!("{:?} does not parse: {e}", String::from_utf8_lossy(wire)))
}

fn round_trip(command: &Command) {
    let caps = everything();
    match command {
        Command::Ehlo(domain) => assert_eq!(&reparse(&client::ehlo(domain)), command),
        Command::Helo(domain) => assert_eq!(&reparse(&client::helo(domain)), command),
        Command::Mail(mail) => {
            let envelope = Envelope {
                sender: mail.sender.clone(),
                body: mail.body.unwrap_or(BodyType::SevenBit),
                smtputf8: mail.smtputf8,
                ret: mail.ret,
                envid: mail.envid.clone(),
                recipients: Vec::new(),
            };
            // An address the client refuses to write is refused, never altered.
            let Ok(wire) = client::mail_from(&envelope, &[], &caps, mail.size) else {
                return;
            };
            let Command::Mail(again) = reparse(&wire) else {
                panic!("MAIL became another command");
            };
            assert_eq!(again.sender, mail.sender);
            assert_eq!(again.size, mail.size);
            assert_eq!(again.body.unwrap_or(BodyType::SevenBit), envelope.body);
            assert_eq!(again.smtputf8, mail.smtputf8);
            assert_eq!(again.ret, mail.ret);
            assert_eq!(again.envid, mail.envid);
        }
        Command::Rcpt(rcpt) => {
            let recipient = Recipient {
                address: rcpt.address.clone(),
                notify: rcpt.notify,
                orcpt: rcpt.orcpt.clone(),
            };
            let Ok(wire) = client::rcpt_to(&recipient, &caps) else {
                return;
            };
            let Command::Rcpt(again) = reparse(&wire) else {
                panic!("RCPT became another command");
            };
            assert_eq!(again.address, rcpt.address);
            assert_eq!(again.notify, rcpt.notify);
            assert_eq!(again.orcpt, rcpt.orcpt);
        }
        Command::Data => assert_eq!(&reparse(client::DATA), command),
        Command::Rset => assert_eq!(&reparse(client::RSET), command),
        Command::Noop => assert_eq!(&reparse(client::NOOP), command),
        Command::Quit => assert_eq!(&reparse(client::QUIT), command),
        Command::StartTls => assert_eq!(&reparse(client::STARTTLS), command),
        Command::Vrfy(_) | Command::Help => {}
    }
}

pub fn check(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let whole = lines(stream, stream.len());
    assert_eq!(
        whole,
        lines(stream, usize::from(seed % 16) + 1),
        "chunking changed the lines"
    );
    for line in whole.iter().flatten() {
        assert!(
            !line.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "{line:?}"
        );
        assert!(line.len() + 2 <= mxgate_smtp::line::MAX_EXTENDED_COMMAND_LINE);
        if let Ok(command) = parse_command(line) {
            round_trip(&command);
        }
    }
}
