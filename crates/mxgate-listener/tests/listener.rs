//! The listener over real sockets on 127.0.0.1 with ephemeral ports.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mxgate_config::ListenerConfig;
use mxgate_listener::{Listener, ListenerSettings};
use mxgate_queue::{MessageStore, QueueId, StoreError};
use mxgate_smtp::{parse_reply, Envelope, Notify, Reply, Ret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Records stored messages; can be told to fail the next store with NoSpace.
#[derive(Default)]
struct MemStore {
    stored: Mutex<Vec<(Envelope, Bytes)>>,
    fail_next: AtomicBool,
    reserved: std::sync::atomic::AtomicU32,
}

impl MessageStore for MemStore {
    fn reserve_id(&self) -> QueueId {
        QueueId(format!(
            "Q{}",
            self.reserved.fetch_add(1, Ordering::SeqCst) + 1
        ))
    }

    async fn store_as(
        &self,
        id: QueueId,
        envelope: Envelope,
        message: Bytes,
    ) -> Result<QueueId, StoreError> {
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(StoreError::NoSpace(std::io::Error::other("disk full")));
        }
        self.stored.lock().unwrap().push((envelope, message));
        Ok(id)
    }
}

impl MemStore {
    fn messages(&self) -> Vec<(Envelope, Bytes)> {
        self.stored.lock().unwrap().clone()
    }
}

struct Server {
    addr: SocketAddr,
    store: Arc<MemStore>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

async fn start(tune: impl FnOnce(&mut ListenerSettings)) -> Server {
    let mut settings = ListenerSettings::new(&ListenerConfig::default(), "relay.test");
    settings.listen = vec!["127.0.0.1:0".parse().unwrap()];
    tune(&mut settings);
    let store = Arc::new(MemStore::default());
    let listener = Listener::bind(settings, Arc::clone(&store)).await.unwrap();
    let addr = listener.local_addrs().unwrap()[0];
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(listener.run(shutdown.clone()));
    Server {
        addr,
        store,
        shutdown,
        task,
    }
}

struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    /// Connects and checks the 220 banner.
    async fn greeted(addr: SocketAddr) -> Client {
        let mut c = Client::connect(addr).await;
        let banner = c.reply().await;
        assert_eq!(banner.to_string(), "220 relay.test ESMTP mxgate");
        c
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn reply(&mut self) -> Reply {
        loop {
            if let Some(r) = parse_reply(&mut self.buf).unwrap() {
                return r;
            }
            let n = self.stream.read_buf(&mut self.buf).await.unwrap();
            assert!(n > 0, "connection closed while waiting for a reply");
        }
    }

    async fn replies(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let r = self.reply().await;
            out.push(match r.enhanced_string() {
                Some(e) => format!("{} {e}", r.code),
                None => r.code.to_string(),
            });
        }
        out
    }

    async fn closed(&mut self) -> bool {
        matches!(self.stream.read_buf(&mut self.buf).await, Ok(0) | Err(_))
    }
}

const BODY: &[u8] = b"From: a@x.example\r\nSubject: t\r\n\r\nline one\r\n..dotted\r\n.\r\n";

#[tokio::test]
async fn pipelined_happy_path_stores_byte_exact_message() {
    let server = start(|_| {}).await;
    let mut c = Client::greeted(server.addr).await;
    let mut wire = b"EHLO client.test\r\nMAIL FROM:<a@x.example> SIZE=60 BODY=8BITMIME RET=HDRS ENVID=env+2B1\r\n\
RCPT TO:<b@y.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@y.example\r\nRCPT TO:<c@y.example> NOTIFY=NEVER\r\nDATA\r\n"
        .to_vec();
    wire.extend_from_slice(BODY);
    wire.extend_from_slice(b"QUIT\r\n");
    c.send(&wire).await;
    let ehlo = c.reply().await;
    assert!(ehlo.lines.contains(&"PIPELINING".to_string()));
    assert!(ehlo.lines.contains(&format!(
        "SIZE {}",
        ListenerConfig::default().max_message_size
    )));
    assert!(
        ehlo.lines.contains(&"DSN".to_string()) && !ehlo.lines.contains(&"STARTTLS".to_string())
    );
    assert_eq!(
        c.replies(4).await,
        ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"]
    );
    let queued = c.reply().await;
    assert_eq!(queued.to_string(), "250 2.0.0 Ok: queued as Q1");
    assert_eq!(c.replies(1).await, ["221 2.0.0"]);
    assert!(c.closed().await);

    let msgs = server.store.messages();
    assert_eq!(msgs.len(), 1);
    let (env, msg) = &msgs[0];
    assert_eq!(env.sender, "a@x.example");
    assert_eq!(env.ret, Some(Ret::Hdrs));
    assert_eq!(env.envid.as_deref(), Some("env+1"));
    assert_eq!(env.body, mxgate_smtp::BodyType::EightBitMime);
    assert_eq!(env.recipients.len(), 2);
    assert_eq!(
        env.recipients[0].notify,
        Some(Notify {
            success: true,
            failure: true,
            delay: false
        })
    );
    assert_eq!(
        env.recipients[0].orcpt.as_deref(),
        Some("rfc822;b@y.example")
    );
    assert_eq!(env.recipients[1].notify, Some(Notify::NEVER));
    let text = std::str::from_utf8(msg).unwrap();
    assert_eq!(text.matches("Received:").count(), 1);
    assert!(text.starts_with(
        "Received: from client.test ([127.0.0.1])\r\n\tby relay.test (mxgate) with ESMTP id Q"
    ));
    // The `id` clause names the id the message was stored under.
    let named = text
        .split_once(" id ")
        .and_then(|(_, rest)| rest.split_once(";\r\n\t"))
        .map(|(id, _)| id)
        .unwrap();
    assert!(
        named.starts_with('Q') && named[1..].parse::<u32>().is_ok(),
        "{text}"
    );
    // Two recipients: no `for` clause. The rest byte-exact, dot unstuffed.
    assert!(!text.contains(" for <"));
    let body_start = text.find("\r\nFrom: ").unwrap() + 2;
    assert_eq!(
        &msg[body_start..],
        b"From: a@x.example\r\nSubject: t\r\n\r\nline one\r\n.dotted\r\n"
    );
    server.shutdown.cancel();
    server.task.await.unwrap();
}

async fn transaction(c: &mut Client, rcpts: &[&str]) {
    c.send(b"MAIL FROM:<a@x.example>\r\n").await;
    assert_eq!(c.replies(1).await, ["250 2.1.0"]);
    for r in rcpts {
        c.send(format!("RCPT TO:<{r}>\r\n").as_bytes()).await;
        c.reply().await;
    }
    c.send(b"DATA\r\n").await;
    assert_eq!(c.replies(1).await, ["354"]);
}

#[tokio::test]
async fn bare_lf_in_data_is_rejected_and_nothing_stored() {
    let server = start(|_| {}).await;
    let mut c = Client::greeted(server.addr).await;
    c.send(b"EHLO c\r\n").await;
    c.reply().await;
    transaction(&mut c, &["b@y.example"]).await;
    // A smuggling attempt: `\n.\n` is not the end; the real terminator is.
    c.send(b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x.example>\r\n.\r\nNOOP\r\n")
        .await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced), (550, Some((5, 5, 2))), "{r}");
    assert_eq!(
        c.replies(1).await,
        ["250 2.0.0"],
        "session continues in step"
    );
    assert!(server.store.messages().is_empty());
}

#[tokio::test]
async fn bare_lf_and_long_line_in_command() {
    let server = start(|_| {}).await;
    let mut c = Client::greeted(server.addr).await;
    c.send(b"EHLO c\nNOOP\r\n").await;
    assert_eq!(c.replies(2).await, ["500 5.5.2", "250 2.0.0"]);
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 1000));
    long.extend_from_slice(b"\r\nNOOP\r\n");
    c.send(&long).await;
    let r = c.reply().await;
    assert_eq!(r.to_string(), "500 5.5.2 Line too long");
    assert_eq!(c.replies(1).await, ["250 2.0.0"]);
}

#[tokio::test]
async fn long_dsn_parameters_fit_the_extended_line_limit() {
    let server = start(|_| {}).await;
    let mut c = Client::greeted(server.addr).await;
    let orcpt = format!("rfc822;{}@y.example", "o".repeat(480));
    let rcpt = format!(
        "RCPT TO:<{}@y.example> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT={orcpt}\r\n",
        "r".repeat(200)
    );
    assert!(rcpt.len() > 512 && rcpt.len() < 1000);
    c.send(b"EHLO c\r\nMAIL FROM:<a@x.example>\r\n").await;
    c.send(rcpt.as_bytes()).await;
    assert_eq!(c.replies(3).await, ["250", "250 2.1.0", "250 2.1.5"]);
}

#[tokio::test]
async fn client_outside_allowed_clients_gets_554() {
    let server = start(|s| s.allowed_clients = vec!["10.0.0.0/8".parse().unwrap()]).await;
    let mut c = Client::connect(server.addr).await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced), (554, Some((5, 7, 1))));
    assert!(c.closed().await);
}

#[tokio::test]
async fn oversized_message_then_next_message_succeeds() {
    let server = start(|s| s.max_message_size = 100).await;
    let mut c = Client::greeted(server.addr).await;
    c.send(b"EHLO c\r\n").await;
    c.reply().await;
    c.send(b"MAIL FROM:<a@x.example> SIZE=101\r\n").await;
    assert_eq!(c.replies(1).await, ["552 5.3.4"]);
    transaction(&mut c, &["b@y.example"]).await;
    let mut big = vec![b'x'; 150];
    big.extend_from_slice(b"\r\n.\r\n");
    c.send(&big).await;
    assert_eq!(c.replies(1).await, ["552 5.3.4"]);
    transaction(&mut c, &["b@y.example"]).await;
    c.send(b"small\r\n.\r\n").await;
    assert_eq!(c.replies(1).await, ["250 2.0.0"]);
    let msgs = server.store.messages();
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].1.ends_with(b"\r\nsmall\r\n"));
    // One recipient: the `for` clause names it.
    assert!(std::str::from_utf8(&msgs[0].1)
        .unwrap()
        .contains(" for <b@y.example>;"));
}

#[tokio::test]
async fn too_many_recipients_keeps_earlier_ones() {
    let server = start(|s| s.max_recipients = 2).await;
    let mut c = Client::greeted(server.addr).await;
    c.send(b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<1@y.example>\r\nRCPT TO:<2@y.example>\r\nRCPT TO:<3@y.example>\r\nDATA\r\n")
        .await;
    c.reply().await;
    assert_eq!(
        c.replies(5).await,
        ["250 2.1.0", "250 2.1.5", "250 2.1.5", "452 4.5.3", "354"]
    );
    c.send(b"hi\r\n.\r\n").await;
    assert_eq!(c.replies(1).await, ["250 2.0.0"]);
    let msgs = server.store.messages();
    let addrs: Vec<&str> = msgs[0]
        .0
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    assert_eq!(addrs, ["1@y.example", "2@y.example"]);
}

#[tokio::test]
async fn store_no_space_answers_452_and_session_continues() {
    let server = start(|_| {}).await;
    server.store.fail_next.store(true, Ordering::SeqCst);
    let mut c = Client::greeted(server.addr).await;
    c.send(b"EHLO c\r\n").await;
    c.reply().await;
    transaction(&mut c, &["b@y.example"]).await;
    c.send(b"hi\r\n.\r\n").await;
    let r = c.reply().await;
    assert_eq!(r.to_string(), "452 4.3.1 Insufficient system storage");
    assert!(server.store.messages().is_empty());
    transaction(&mut c, &["b@y.example"]).await;
    c.send(b"hi\r\n.\r\n").await;
    assert_eq!(c.replies(1).await, ["250 2.0.0"]);
    assert_eq!(server.store.messages().len(), 1);
}

#[tokio::test]
async fn command_timeout_answers_421() {
    let server = start(|s| s.command_timeout = Duration::from_millis(200)).await;
    let mut c = Client::greeted(server.addr).await;
    c.send(b"EHLO c\r\n").await;
    c.reply().await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced), (421, Some((4, 4, 2))));
    assert!(c.closed().await);
}

#[tokio::test]
async fn data_timeout_answers_421_and_stores_nothing() {
    let server = start(|s| s.data_timeout = Duration::from_millis(200)).await;
    let mut c = Client::greeted(server.addr).await;
    c.send(b"EHLO c\r\n").await;
    c.reply().await;
    transaction(&mut c, &["b@y.example"]).await;
    c.send(b"partial\r\n").await;
    let r = c.reply().await;
    assert_eq!((r.code, r.enhanced), (421, Some((4, 4, 2))));
    assert!(server.store.messages().is_empty());
}

#[tokio::test]
async fn max_sessions_answers_421() {
    let server = start(|s| s.max_sessions = 1).await;
    let _first = Client::greeted(server.addr).await;
    let mut second = Client::connect(server.addr).await;
    let r = second.reply().await;
    assert_eq!((r.code, r.enhanced), (421, Some((4, 3, 2))));
    assert!(second.closed().await);
}

#[tokio::test]
async fn shutdown_lets_the_open_transaction_finish() {
    let server = start(|_| {}).await;
    let mut busy = Client::greeted(server.addr).await;
    let mut idle = Client::greeted(server.addr).await;
    busy.send(b"EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n")
        .await;
    assert_eq!(busy.replies(3).await, ["250", "250 2.1.0", "250 2.1.5"]);
    server.shutdown.cancel();
    // The idle session is told at once.
    assert_eq!(idle.replies(1).await, ["421 4.3.2"]);
    // The busy one completes its transaction, then is told.
    busy.send(b"DATA\r\n").await;
    assert_eq!(busy.replies(1).await, ["354"]);
    busy.send(b"hi\r\n.\r\n").await;
    assert_eq!(busy.replies(2).await, ["250 2.0.0", "421 4.3.2"]);
    server.task.await.unwrap();
    assert_eq!(server.store.messages().len(), 1);
    // No longer accepting.
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn body_lines_over_998_octets_are_kept_byte_exact() {
    // Postfix with `smtp_line_length_limit = 0` sends long lines as they are, to keep
    // DKIM signatures valid: accepted and stored unchanged, never a 554 (a bounce).
    let server = start(|_| {}).await;
    let mut c = Client::greeted(server.addr).await;
    c.send(b"EHLO c\r\n").await;
    c.reply().await;
    transaction(&mut c, &["b@y.example"]).await;
    let mut body = b"Subject: long\r\n\r\n".to_vec();
    body.extend_from_slice(&[b'l'; 5000]);
    body.extend_from_slice(b"\r\nshort\r\n");
    let mut data = body.clone();
    data.extend_from_slice(b".\r\n");
    c.send(&data).await;
    assert_eq!(c.replies(1).await, ["250 2.0.0"]);
    let msgs = server.store.messages();
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].1.ends_with(&body), "the message was changed");
}
