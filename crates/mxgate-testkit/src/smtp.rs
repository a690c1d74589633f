//! `SmtpReceiver`: a real SMTP server on `127.0.0.1:0` that plays a destination MX.
//!
//! It advertises what a test asks for (STARTTLS with a chosen rustls config, PIPELINING,
//! DSN, SMTPUTF8, 8BITMIME, SIZE), answers MAIL / RCPT / DATA / STARTTLS with scripted
//! replies, and records every message (envelope with raw parameters, DATA bytes
//! dot-unstuffed, TLS facts, SNI) and every byte received in cleartext, so tests can
//! assert what reached the wire and how. Waiting is event-driven (`watch` channel).
//!
//! The parser is deliberately independent of `mxgate-smtp` and strict: it flags bare
//! LF, pipelining without PIPELINING advertised, and bytes pipelined after `STARTTLS`,
//! so client bugs show up in tests.
//!
//! Not here: authentication, BDAT/CHUNKING, relaying, or any durable storage. Dropping
//! the receiver stops accepting connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How long the wait helpers wait before panicking (a test bug, not a slow machine).
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// A scripted reply: `first` for the first `count` times the command is seen (counted
/// across connections), then `then`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyScript {
    pub first: String,
    pub count: u32,
    pub then: String,
}

impl ReplyScript {
    /// Always answer `reply` (e.g. `"550 5.1.1 no such user"`).
    pub fn always(reply: &str) -> Self {
        ReplyScript {
            first: reply.to_string(),
            count: u32::MAX,
            then: reply.to_string(),
        }
    }

    /// Answer `first` the first `count` times, then `then`.
    pub fn first_n(count: u32, first: &str, then: &str) -> Self {
        ReplyScript {
            first: first.to_string(),
            count,
            then: then.to_string(),
        }
    }

    fn pick(&self, seen_before: u32) -> &str {
        if seen_before < self.count {
            &self.first
        } else {
            &self.then
        }
    }
}

/// What happens after the client says `STARTTLS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartTlsBehaviour {
    /// `220 2.0.0 Ready to start TLS`, then a TLS handshake.
    Normal,
    /// Answer this reply instead (e.g. `"454 4.7.0 TLS not available"`) and continue in
    /// cleartext.
    Refuse(String),
    /// `220`, then send these bytes in cleartext before the handshake (response
    /// injection, CVE-2011-0411 class), then attempt the handshake.
    InjectAfterReady(Vec<u8>),
    /// `220`, then send garbage instead of a TLS handshake and close.
    GarbageHandshake,
}

/// What the receiver advertises and answers.
#[derive(Clone)]
pub struct ReceiverConfig {
    pub hostname: String,
    /// `220` banner; a non-2xx value makes the greeting a refusal (then close).
    pub greeting: String,
    /// Offer STARTTLS with this server configuration (see
    /// [`crate::certs::TestCert::server_config_with`] for a TLS-1.2-only server).
    pub starttls: Option<Arc<ServerConfig>>,
    pub starttls_behaviour: StartTlsBehaviour,
    pub pipelining: bool,
    pub dsn: bool,
    pub smtputf8: bool,
    pub eightbitmime: bool,
    pub enhanced_status_codes: bool,
    /// `SIZE n` advertised when set.
    pub size: Option<u64>,
    /// Reject `EHLO` with `502` (to exercise a HELO fallback).
    pub ehlo_unsupported: bool,
    pub mail_reply: Option<ReplyScript>,
    /// Per recipient address (lower-case, without brackets).
    pub rcpt_replies: HashMap<String, ReplyScript>,
    /// Reply after the final `.`.
    pub data_reply: Option<ReplyScript>,
    /// Close the connection (no reply, no `421`) right after answering the final `.`
    /// of this many messages in one session, as a server dropping an idle client does.
    pub max_messages_per_session: Option<usize>,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            hostname: "mx.test".to_string(),
            greeting: "220 mx.test ESMTP testkit".to_string(),
            starttls: None,
            starttls_behaviour: StartTlsBehaviour::Normal,
            pipelining: true,
            dsn: true,
            smtputf8: true,
            eightbitmime: true,
            enhanced_status_codes: true,
            size: Some(10_485_760),
            ehlo_unsupported: false,
            mail_reply: None,
            rcpt_replies: HashMap::new(),
            data_reply: None,
            max_messages_per_session: None,
        }
    }
}

impl ReceiverConfig {
    /// A receiver offering STARTTLS with `config`.
    pub fn with_starttls(config: Arc<ServerConfig>) -> Self {
        ReceiverConfig {
            starttls: Some(config),
            ..ReceiverConfig::default()
        }
    }

    /// Script the reply to `RCPT TO:<address>`.
    pub fn rcpt(mut self, address: &str, script: ReplyScript) -> Self {
        self.rcpt_replies
            .insert(address.to_ascii_lowercase(), script);
        self
    }
}

/// TLS facts of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The SNI the client sent, if any.
    pub sni: Option<String>,
}

/// One recipient accepted with `2xx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedRcpt {
    /// The address between the angle brackets.
    pub address: String,
    /// Raw ESMTP parameters (`NOTIFY=SUCCESS,FAILURE`, `ORCPT=rfc822;a@b`).
    pub params: Vec<String>,
}

/// One message accepted with `250` after DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The reverse-path between the angle brackets (empty for `<>`).
    pub sender: String,
    /// Raw MAIL parameters (`SIZE=123`, `BODY=8BITMIME`, `RET=HDRS`, `ENVID=x`).
    pub mail_params: Vec<String>,
    pub recipients: Vec<ReceivedRcpt>,
    /// The DATA bytes, dot-unstuffed, without the final `.CRLF`.
    pub data: Vec<u8>,
    /// `None` when the message came in cleartext.
    pub tls: Option<TlsInfo>,
    /// The EHLO/HELO argument of the session.
    pub helo: String,
}

/// One finished connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionRecord {
    pub peer: Option<SocketAddr>,
    /// Every byte the client sent before TLS (all of them if TLS never started).
    pub cleartext: Vec<u8>,
    /// Every command line (without CRLF) received, cleartext and TLS, in order.
    pub commands: Vec<String>,
    pub tls: Option<TlsInfo>,
    /// The client sent commands past a reply it should have waited for, without
    /// PIPELINING advertised (RFC 2920 §3), or after STARTTLS (RFC 3207 §4).
    pub pipelining_violation: bool,
    /// More than one command arrived in one read (the client pipelined).
    pub pipelined: bool,
    /// A line ended in a bare LF.
    pub bare_lf: bool,
}

#[derive(Default)]
struct State {
    messages: Vec<ReceivedMessage>,
    sessions: Vec<SessionRecord>,
    connections: usize,
    active: usize,
    max_active: usize,
}

/// A running SMTP server; dropping it stops accepting connections.
pub struct SmtpReceiver {
    addr: SocketAddr,
    state: watch::Sender<State>,
    cursor: AtomicUsize,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpReceiver {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl SmtpReceiver {
    /// Starts a receiver on `127.0.0.1:0`.
    pub async fn start(config: ReceiverConfig) -> std::io::Result<SmtpReceiver> {
        SmtpReceiver::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts a receiver on `addr`. mxgate dials every MX on one port
    /// (`delivery.smtp_port`), so tests with several MX hosts put each receiver on its
    /// own loopback address (`127.0.0.2`, `127.0.0.3`, ...) with the same port.
    pub async fn start_on(
        addr: SocketAddr,
        config: ReceiverConfig,
    ) -> std::io::Result<SmtpReceiver> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(State::default());
        let shared = Arc::new(Shared {
            config,
            counters: Mutex::new(HashMap::new()),
            state: state.clone(),
        });
        let accept_task = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                shared.state.send_modify(|s| {
                    s.connections += 1;
                    s.active += 1;
                    s.max_active = s.max_active.max(s.active);
                });
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mut record = SessionRecord {
                        peer: Some(peer),
                        ..SessionRecord::default()
                    };
                    let _ = serve(stream, &shared, &mut record).await;
                    shared.state.send_modify(|s| {
                        s.active -= 1;
                        s.sessions.push(record);
                    });
                });
            }
        });
        Ok(SmtpReceiver {
            addr,
            state,
            cursor: AtomicUsize::new(0),
            accept_task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every message accepted so far.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.state.borrow().messages.clone()
    }

    /// Every finished session so far.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        self.state.borrow().sessions.clone()
    }

    /// Connections accepted so far (finished or not).
    pub fn connections(&self) -> usize {
        self.state.borrow().connections
    }

    /// The largest number of simultaneous connections seen so far.
    pub fn max_concurrent_connections(&self) -> usize {
        self.state.borrow().max_active
    }

    /// Everything received in cleartext over all finished sessions.
    pub fn cleartext_transcript(&self) -> Vec<u8> {
        self.state
            .borrow()
            .sessions
            .iter()
            .flat_map(|s| s.cleartext.iter().copied())
            .collect()
    }

    /// The next message not yet returned by this method. Panics after 10 s.
    pub async fn next_message(&self) -> ReceivedMessage {
        let index = self.cursor.fetch_add(1, Ordering::SeqCst);
        self.wait_until(|s| s.messages.len() > index, "a message")
            .await;
        self.state.borrow().messages[index].clone()
    }

    /// Waits until at least `n` messages have been accepted; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<ReceivedMessage> {
        self.wait_until(|s| s.messages.len() >= n, "messages").await;
        self.messages()
    }

    /// Waits until at least `n` sessions have finished (the client closed or quit);
    /// returns them all.
    pub async fn wait_sessions(&self, n: usize) -> Vec<SessionRecord> {
        self.wait_until(|s| s.sessions.len() >= n, "sessions").await;
        self.sessions()
    }

    async fn wait_until(&self, cond: impl Fn(&State) -> bool, what: &str) {
        let mut rx = self.state.subscribe();
        let waited = tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|s| cond(s))).await;
        if !matches!(waited, Ok(Ok(_))) {
            panic!("SmtpReceiver: timed out waiting for {what}");
        }
    }
}

struct Shared {
    config: ReceiverConfig,
    /// How often each scripted command was seen (key: `MAIL`, `DATA`, `RCPT addr`).
    counters: Mutex<HashMap<String, u32>>,
    state: watch::Sender<State>,
}

impl Shared {
    fn scripted(&self, key: &str, script: Option<&ReplyScript>, default: &str) -> String {
        let Some(script) = script else {
            return default.to_string();
        };
        let mut counters = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let seen = counters.entry(key.to_string()).or_insert(0);
        let reply = script.pick(*seen).to_string();
        *seen = seen.saturating_add(1);
        reply
    }
}

/// Line reader over any stream with our own buffer, so bytes read ahead are visible.
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
    tls: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// One line without its line end; `None` at EOF.
    async fn line(&mut self, record: &mut SessionRecord) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                } else {
                    record.bare_lf = true;
                }
                return Ok(Some(line));
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            if !self.tls {
                record.cleartext.extend_from_slice(&chunk[..n]);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        let mut out = String::new();
        for line in text.lines() {
            out.push_str(line);
            out.push_str("\r\n");
        }
        self.stream.write_all(out.as_bytes()).await?;
        self.stream.flush().await
    }
}

#[derive(Default)]
struct Transaction {
    sender: Option<(String, Vec<String>)>,
    recipients: Vec<ReceivedRcpt>,
}

enum SessionEnd {
    Closed,
    StartTls,
}

async fn serve(
    stream: TcpStream,
    shared: &Shared,
    record: &mut SessionRecord,
) -> std::io::Result<()> {
    let config = &shared.config;
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        tls: false,
    };
    conn.reply(&config.greeting).await?;
    if !config.greeting.starts_with('2') {
        return Ok(());
    }
    let mut helo = String::new();
    match session(&mut conn, shared, record, &mut helo, None).await? {
        SessionEnd::Closed => Ok(()),
        SessionEnd::StartTls => {
            let Some(tls_config) = config.starttls.clone() else {
                return Ok(());
            };
            // RFC 3207 §4.2: the server MUST discard any knowledge obtained from the
            // client before the TLS negotiation.
            if !conn.buf.is_empty() {
                record.pipelining_violation = true;
            }
            match &config.starttls_behaviour {
                StartTlsBehaviour::InjectAfterReady(bytes) => {
                    conn.stream.write_all(bytes).await?;
                }
                StartTlsBehaviour::GarbageHandshake => {
                    conn.stream
                        .write_all(b"this is not a TLS server hello\r\n\r\n\x00\x01\x02")
                        .await?;
                    // Drain what the client sends until it gives up.
                    let mut sink = [0u8; 1024];
                    while conn.stream.read(&mut sink).await? > 0 {}
                    return Ok(());
                }
                StartTlsBehaviour::Normal | StartTlsBehaviour::Refuse(_) => {}
            }
            let tls = TlsAcceptor::from(tls_config).accept(conn.stream).await?;
            let (_, server) = tls.get_ref();
            let info = TlsInfo {
                version: match server.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
                    Some(other) => format!("{other:?}"),
                    None => "unknown".to_string(),
                },
                cipher: server
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default(),
                sni: server.server_name().map(str::to_string),
            };
            record.tls = Some(info.clone());
            let mut tls_conn = Conn {
                stream: tls,
                buf: Vec::new(),
                tls: true,
            };
            let mut helo = String::new();
            session(&mut tls_conn, shared, record, &mut helo, Some(info)).await?;
            Ok(())
        }
    }
}

fn ehlo_reply(config: &ReceiverConfig, tls: bool, arg: &str) -> String {
    let mut lines = vec![format!("{} greets {arg}", config.hostname)];
    if config.pipelining {
        lines.push("PIPELINING".into());
    }
    if let Some(size) = config.size {
        lines.push(format!("SIZE {size}"));
    }
    if config.eightbitmime {
        lines.push("8BITMIME".into());
    }
    if config.smtputf8 {
        lines.push("SMTPUTF8".into());
    }
    if config.dsn {
        lines.push("DSN".into());
    }
    if config.enhanced_status_codes {
        lines.push("ENHANCEDSTATUSCODES".into());
    }
    if config.starttls.is_some() && !tls {
        lines.push("STARTTLS".into());
    }
    let last = lines.len() - 1;
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("250{}{l}\n", if i == last { ' ' } else { '-' }))
        .collect()
}

/// Splits `<path> PARAM PARAM` after `MAIL FROM:` / `RCPT TO:`.
fn path_and_params(rest: &str) -> Option<(String, Vec<String>)> {
    let rest = rest.trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let path = rest[..end].to_string();
    let params = rest[end + 1..]
        .split_ascii_whitespace()
        .map(str::to_string)
        .collect();
    Some((path, params))
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    shared: &Shared,
    record: &mut SessionRecord,
    helo: &mut String,
    tls: Option<TlsInfo>,
) -> std::io::Result<SessionEnd> {
    let config = &shared.config;
    let mut txn = Transaction::default();
    while let Some(raw) = conn.line(record).await? {
        let line = String::from_utf8_lossy(&raw).into_owned();
        record.commands.push(line.clone());
        if !conn.buf.is_empty() {
            record.pipelined = true;
            // RFC 2920 §3.1: without PIPELINING the client waits for each reply.
            if !config.pipelining {
                record.pipelining_violation = true;
            }
        }
        let upper = line.to_ascii_uppercase();
        let verb = upper.split_ascii_whitespace().next().unwrap_or("");
        match verb {
            "EHLO" if config.ehlo_unsupported => conn.reply("502 5.5.1 EHLO not supported").await?,
            "EHLO" => {
                *helo = line[4..].trim().to_string();
                txn = Transaction::default();
                conn.reply(&ehlo_reply(config, tls.is_some(), helo)).await?;
            }
            "HELO" => {
                *helo = line[4..].trim().to_string();
                txn = Transaction::default();
                conn.reply(&format!("250 {}", config.hostname)).await?;
            }
            "STARTTLS" if config.starttls.is_some() && tls.is_none() => {
                match &config.starttls_behaviour {
                    StartTlsBehaviour::Refuse(reply) => conn.reply(reply).await?,
                    _ => {
                        conn.reply("220 2.0.0 Ready to start TLS").await?;
                        return Ok(SessionEnd::StartTls);
                    }
                }
            }
            "MAIL" if upper.starts_with("MAIL FROM:") => {
                if helo.is_empty() {
                    conn.reply("503 5.5.1 EHLO first").await?;
                    continue;
                }
                let Some(parsed) = path_and_params(&line[10..]) else {
                    conn.reply("501 5.5.4 bad MAIL syntax").await?;
                    continue;
                };
                let reply = shared.scripted("MAIL", config.mail_reply.as_ref(), "250 2.1.0 ok");
                if reply.starts_with('2') {
                    txn = Transaction {
                        sender: Some(parsed),
                        recipients: Vec::new(),
                    };
                }
                conn.reply(&reply).await?;
            }
            "RCPT" if upper.starts_with("RCPT TO:") => {
                if txn.sender.is_none() {
                    conn.reply("503 5.5.1 MAIL first").await?;
                    continue;
                }
                let Some((address, params)) = path_and_params(&line[8..]) else {
                    conn.reply("501 5.5.4 bad RCPT syntax").await?;
                    continue;
                };
                let key = address.to_ascii_lowercase();
                let reply = shared.scripted(
                    &format!("RCPT {key}"),
                    config.rcpt_replies.get(&key),
                    "250 2.1.5 ok",
                );
                if reply.starts_with('2') {
                    txn.recipients.push(ReceivedRcpt { address, params });
                }
                conn.reply(&reply).await?;
            }
            "DATA" => {
                if txn.sender.is_none() || txn.recipients.is_empty() {
                    conn.reply("554 5.5.1 no valid recipients").await?;
                    continue;
                }
                conn.reply("354 End data with <CR><LF>.<CR><LF>").await?;
                let mut data = Vec::new();
                loop {
                    let Some(mut l) = conn.line(record).await? else {
                        return Ok(SessionEnd::Closed);
                    };
                    if l == b"." {
                        break;
                    }
                    // RFC 5321 §4.5.2: delete the first period of a line starting with one.
                    if l.first() == Some(&b'.') {
                        l.remove(0);
                    }
                    data.extend_from_slice(&l);
                    data.extend_from_slice(b"\r\n");
                }
                let reply = shared.scripted(
                    "DATA",
                    config.data_reply.as_ref(),
                    "250 2.0.0 queued as TEST",
                );
                if reply.starts_with('2') {
                    let (sender, mail_params) = txn.sender.take().unwrap_or_default();
                    let msg = ReceivedMessage {
                        sender,
                        mail_params,
                        recipients: std::mem::take(&mut txn.recipients),
                        data,
                        tls: tls.clone(),
                        helo: helo.clone(),
                    };
                    shared.state.send_modify(|s| s.messages.push(msg));
                }
                txn = Transaction::default();
                conn.reply(&reply).await?;
                let sent = record
                    .commands
                    .iter()
                    .filter(|c| c.eq_ignore_ascii_case("DATA"))
                    .count();
                if config
                    .max_messages_per_session
                    .is_some_and(|max| sent >= max)
                {
                    return Ok(SessionEnd::Closed);
                }
            }
            "RSET" => {
                txn = Transaction::default();
                conn.reply("250 2.0.0 ok").await?;
            }
            "NOOP" => conn.reply("250 2.0.0 ok").await?,
            "QUIT" => {
                conn.reply("221 2.0.0 bye").await?;
                return Ok(SessionEnd::Closed);
            }
            _ => conn.reply("500 5.5.2 command not recognized").await?,
        }
    }
    Ok(SessionEnd::Closed)
}

#[cfg(test)]
mod tests;
