//! Server-side parsing of one SMTP command line (RFC 5321 §4.1) with the MAIL/RCPT
//! parameters of SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531) and DSN
//! (RFC 3461).
//!
//! Input is one line without its CRLF (see [`crate::line`]). Verbs and parameter
//! keywords are case-insensitive. Addresses are returned as written, without angle
//! brackets and source route. This module does not know the session state: sequence
//! errors, limits, and "non-ASCII RCPT without SMTPUTF8 on MAIL" are the caller's
//! checks (see [`CommandError::NonAsciiAddress`]).
//!
//! Tolerances (as Postfix): spaces between `FROM:`/`TO:` and `<`, and several spaces
//! between parameters, are accepted.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::envelope::{BodyType, Notify, Ret};
use crate::reply::Reply;
use crate::xtext;

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy(String),
    Help,
    StartTls,
}

/// `MAIL FROM:<sender> params`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailFrom {
    /// Empty for the null reverse-path `<>`.
    pub sender: String,
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// xtext-decoded.
    pub envid: Option<String>,
}

/// `RCPT TO:<address> params`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptTo {
    pub address: String,
    pub notify: Option<Notify>,
    /// `addr-type;address`, xtext-decoded.
    pub orcpt: Option<String>,
}

/// Why a command line was refused; [`CommandError::reply`] gives the answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command line is not UTF-8")]
    NotUtf8,
    #[error("command not recognized: {0}")]
    Unrecognized(String),
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("bad address syntax: {0}")]
    BadAddress(&'static str),
    #[error("non-ASCII address without SMTPUTF8")]
    NonAsciiAddress,
    #[error("unknown parameter {0}")]
    UnknownParameter(String),
    #[error("duplicate parameter {0}")]
    DuplicateParameter(String),
    #[error("unsupported value for parameter {0}")]
    UnsupportedValue(String),
    #[error("bad value for parameter {0}")]
    BadValue(String),
}

impl CommandError {
    /// The reply that answers this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::NotUtf8 => Reply::new(500, (5, 5, 2), "Error: command line is not UTF-8"),
            CommandError::Unrecognized(_) => {
                Reply::new(500, (5, 5, 1), "Error: command not recognized")
            }
            CommandError::Syntax(what) => Reply::new(501, (5, 5, 4), format!("Syntax: {what}")),
            CommandError::BadAddress(what) => {
                Reply::new(501, (5, 1, 3), format!("Bad address syntax: {what}"))
            }
            // RFC 6531 §3.5 / RFC 6532: 553 5.6.7 for a UTF-8 address the transaction
            // did not announce with SMTPUTF8.
            CommandError::NonAsciiAddress => Reply::new(
                553,
                (5, 6, 7),
                "Non-ASCII address requires SMTPUTF8 on MAIL FROM",
            ),
            // RFC 5321 §4.1.1.11: "If the server SMTP does not recognize or cannot
            // implement one or more of the parameters associated with a particular MAIL
            // FROM or RCPT TO command, it will return code 555."
            CommandError::UnknownParameter(p) => {
                Reply::new(555, (5, 5, 4), format!("Unsupported parameter {p}"))
            }
            CommandError::DuplicateParameter(p) => {
                Reply::new(555, (5, 5, 4), format!("Duplicate parameter {p}"))
            }
            CommandError::UnsupportedValue(p) => {
                Reply::new(555, (5, 5, 4), format!("Unsupported value for {p}"))
            }
            CommandError::BadValue(p) => Reply::new(501, (5, 5, 4), format!("Bad value for {p}")),
        }
    }
}

/// Parses one command line (without CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    let line = std::str::from_utf8(line).map_err(|_| CommandError::NotUtf8)?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |cmd: Command| {
        if rest.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(CommandError::Syntax("no arguments allowed"))
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            let domain = rest
                .split_whitespace()
                .next()
                .ok_or(CommandError::Syntax("EHLO/HELO needs a domain"))?;
            if !domain.chars().all(|c| !c.is_control()) {
                return Err(CommandError::Syntax("bad EHLO/HELO domain"));
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(domain.to_string())
            } else {
                Command::Helo(domain.to_string())
            })
        }
        "MAIL" => parse_mail(rest).map(Command::Mail),
        "RCPT" => parse_rcpt(rest).map(Command::Rcpt),
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        "STARTTLS" => no_args(Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" => {
            if rest.trim().is_empty() {
                Err(CommandError::Syntax("VRFY needs an argument"))
            } else {
                Ok(Command::Vrfy(rest.trim().to_string()))
            }
        }
        _ => Err(CommandError::Unrecognized(verb.chars().take(20).collect())),
    }
}

/// Strips a case-insensitive `prefix` (`FROM:` / `TO:`) and any spaces after it.
fn strip_keyword<'a>(rest: &'a str, prefix: &'static str) -> Option<&'a str> {
    let head = rest.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    Some(rest[prefix.len()..].trim_start_matches(' '))
}

fn parse_mail(rest: &str) -> Result<MailFrom, CommandError> {
    let rest = strip_keyword(rest, "FROM:").ok_or(CommandError::Syntax("MAIL FROM:<address>"))?;
    let (sender, params) = parse_path(rest, PathKind::Reverse)?;
    let mut mail = MailFrom {
        sender,
        ..MailFrom::default()
    };
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in parse_params(params, &mut seen)? {
        match (key.as_str(), value) {
            // RFC 1870 §3: "size-value ::= 1*20DIGIT"
            ("SIZE", Some(v))
                if !v.is_empty() && v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                mail.size = Some(v.parse().map_err(|_| CommandError::BadValue(key.clone()))?);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => {
                mail.body = Some(BodyType::SevenBit)
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                mail.body = Some(BodyType::EightBitMime)
            }
            ("BODY", Some(_)) => return Err(CommandError::UnsupportedValue(key)),
            ("SMTPUTF8", None) => mail.smtputf8 = true,
            ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => mail.ret = Some(Ret::Full),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => mail.ret = Some(Ret::Hdrs),
            ("ENVID", Some(v)) => {
                let decoded = xtext::decode(v).map_err(|_| CommandError::BadValue(key.clone()))?;
                // RFC 3461 §4.4: "the value of the ENVID parameter prior to encoding as
                // xtext MUST consist entirely of printable (graphic and white space)
                // characters from the US-ASCII repertoire"; Postfix caps it at 100.
                if decoded.len() > 100 || !decoded.bytes().all(|b| (b' '..=b'~').contains(&b)) {
                    return Err(CommandError::BadValue(key));
                }
                mail.envid = Some(decoded);
            }
            ("SIZE" | "BODY" | "SMTPUTF8" | "RET" | "ENVID", _) => {
                return Err(CommandError::BadValue(key))
            }
            _ => return Err(CommandError::UnknownParameter(key)),
        }
    }
    // RFC 6531 §3.4: the UTF-8 address syntax is only allowed when the SMTPUTF8
    // parameter is given on MAIL.
    if !mail.smtputf8 && !mail.sender.is_ascii() {
        return Err(CommandError::NonAsciiAddress);
    }
    Ok(mail)
}

fn parse_rcpt(rest: &str) -> Result<RcptTo, CommandError> {
    let rest = strip_keyword(rest, "TO:").ok_or(CommandError::Syntax("RCPT TO:<address>"))?;
    let (address, params) = parse_path(rest, PathKind::Forward)?;
    let mut rcpt = RcptTo {
        address,
        ..RcptTo::default()
    };
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in parse_params(params, &mut seen)? {
        match (key.as_str(), value) {
            ("NOTIFY", Some(v)) => {
                rcpt.notify = Some(parse_notify(v).ok_or(CommandError::BadValue(key))?)
            }
            ("ORCPT", Some(v)) => {
                // RFC 3461 §4.2: orcpt-parameter = "ORCPT=" original-recipient-address
                // original-recipient-address = addr-type ";" xtext
                let (kind, addr) = v
                    .split_once(';')
                    .ok_or(CommandError::BadValue(key.clone()))?;
                let atom = |s: &str| {
                    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                };
                if v.len() > 500 || !atom(kind) {
                    return Err(CommandError::BadValue(key));
                }
                let addr = xtext::decode(addr).map_err(|_| CommandError::BadValue(key.clone()))?;
                rcpt.orcpt = Some(format!("{kind};{addr}"));
            }
            ("NOTIFY" | "ORCPT", None) => return Err(CommandError::BadValue(key)),
            _ => return Err(CommandError::UnknownParameter(key)),
        }
    }
    Ok(rcpt)
}

/// RFC 3461 §4.1: `"NOTIFY=" ("NEVER" / 1#notify-list-element)` where
/// `notify-list-element = "SUCCESS" / "FAILURE" / "DELAY"`; "NEVER" appears alone.
fn parse_notify(v: &str) -> Option<Notify> {
    if v.eq_ignore_ascii_case("NEVER") {
        return Some(Notify::NEVER);
    }
    let mut n = Notify::default();
    for word in v.split(',') {
        let flag = match word.to_ascii_uppercase().as_str() {
            "SUCCESS" => &mut n.success,
            "FAILURE" => &mut n.failure,
            "DELAY" => &mut n.delay,
            _ => return None,
        };
        if *flag {
            return None;
        }
        *flag = true;
    }
    Some(n)
}

/// Splits `" KEY=value KEY2"` into upper-cased keywords and values, rejecting
/// duplicates and malformed keywords.
fn parse_params<'a>(
    params: &'a str,
    seen: &mut Vec<String>,
) -> Result<Vec<(String, Option<&'a str>)>, CommandError> {
    if params.is_empty() {
        return Ok(Vec::new());
    }
    if !params.starts_with(' ') {
        return Err(CommandError::Syntax("garbage after address"));
    }
    let mut out = Vec::new();
    for word in params.split(' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        // RFC 5321 §4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        // esmtp-value = 1*(%d33-60 / %d62-126)
        let key_ok = key
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !key_ok {
            return Err(CommandError::Syntax("bad parameter keyword"));
        }
        let key = key.to_ascii_uppercase();
        if let Some(v) = value {
            if v.is_empty() || v.contains('=') || v.chars().any(char::is_control) {
                return Err(CommandError::BadValue(key));
            }
        }
        if seen.contains(&key) {
            return Err(CommandError::DuplicateParameter(key));
        }
        seen.push(key.clone());
        out.push((key, value));
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PathKind {
    /// MAIL: `<>` allowed.
    Reverse,
    /// RCPT: a mailbox is required.
    Forward,
}

fn is_atext(c: char) -> bool {
    // RFC 5322 atext, extended with UTF-8 by RFC 6531 §3.3 (checked by the caller).
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Parses `<path>` at the start of `s`; returns the address and what follows `>`.
fn parse_path(s: &str, kind: PathKind) -> Result<(String, &str), CommandError> {
    let inner_start = s
        .strip_prefix('<')
        .ok_or(CommandError::BadAddress("missing <"))?;
    let end = find_path_end(inner_start).ok_or(CommandError::BadAddress("missing >"))?;
    let mut inner = &inner_start[..end];
    let rest = &inner_start[end + 1..];
    if inner.is_empty() {
        return match kind {
            PathKind::Reverse => Ok((String::new(), rest)),
            PathKind::Forward => Err(CommandError::BadAddress("empty recipient")),
        };
    }
    // RFC 5321 §4.1.1.3: "Servers MUST be prepared to encounter a list of source routes
    // in the forward-path, but they SHOULD ignore the routes".
    if inner.starts_with('@') {
        let colon = inner
            .find(':')
            .ok_or(CommandError::BadAddress("bad source route"))?;
        inner = &inner[colon + 1..];
    }
    let (local, domain) = split_mailbox(inner)?;
    check_local_part(local)?;
    check_domain(domain)?;
    Ok((inner.to_string(), rest))
}

/// Index of the `>` that closes the path, skipping quoted strings.
fn find_path_end(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => quoted = !quoted,
            (false, _, '>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// Splits at the `@` after the local part (which may be a quoted string with `@`).
fn split_mailbox(s: &str) -> Result<(&str, &str), CommandError> {
    let at = if let Some(q) = s.strip_prefix('"') {
        // The closing quote, skipping quoted pairs; the `@` must follow it.
        let mut escaped = false;
        let mut close = None;
        for (i, c) in q.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    close = Some(i + 2);
                    break;
                }
                _ => {}
            }
        }
        close.filter(|&i| s[i..].starts_with('@'))
    } else {
        s.rfind('@')
    };
    match at {
        Some(i) => Ok((&s[..i], &s[i + 1..])),
        None => Err(CommandError::BadAddress("no domain")),
    }
}

fn check_local_part(local: &str) -> Result<(), CommandError> {
    if let Some(q) = local.strip_prefix('"') {
        // RFC 5321 §4.1.2: Quoted-string = DQUOTE *QcontentSMTP DQUOTE
        // qtextSMTP = %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP = %d92 %d32-126
        let body = q
            .strip_suffix('"')
            .ok_or(CommandError::BadAddress("unterminated quoted local part"))?;
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(n) if (' '..='~').contains(&n) || !n.is_ascii() => {}
                    _ => return Err(CommandError::BadAddress("bad quoted pair")),
                },
                '"' => return Err(CommandError::BadAddress("bad quoted local part")),
                c if (' '..='~').contains(&c) || !c.is_ascii() => {}
                _ => {
                    return Err(CommandError::BadAddress(
                        "bad character in quoted local part",
                    ))
                }
            }
        }
        return Ok(());
    }
    // Dot-string = Atom *("."  Atom)
    if local.is_empty()
        || local
            .split('.')
            .any(|atom| atom.is_empty() || !atom.chars().all(is_atext))
    {
        return Err(CommandError::BadAddress("bad local part"));
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), CommandError> {
    if let Some(lit) = domain.strip_prefix('[') {
        let lit = lit
            .strip_suffix(']')
            .ok_or(CommandError::BadAddress("bad address literal"))?;
        let ok = match lit.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("IPv6:") => lit[5..].parse::<Ipv6Addr>().is_ok(),
            _ => lit.parse::<Ipv4Addr>().is_ok(),
        };
        return if ok {
            Ok(())
        } else {
            Err(CommandError::BadAddress("bad address literal"))
        };
    }
    // Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]
    // (U-labels allowed with SMTPUTF8, RFC 6531 §3.3).
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii() && !c.is_control())
    };
    if domain.len() > 255 || !domain.split('.').all(label_ok) {
        return Err(CommandError::BadAddress("bad domain"));
    }
    Ok(())
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
