//! A man-in-the-middle SMTP proxy: the attacker on the path between mxgate and a receiver.
//!
//! [`Mitm::start`] listens on 127.0.0.1 and relays each connection to a real upstream SMTP
//! server, attacking STARTTLS as [`MitmMode`] says: strip it from the EHLO reply, answer
//! it with 454 or 554, inject a reply after `220 Ready to start TLS` (the CVE-2011-0411
//! command injection pattern), or terminate TLS itself with its own certificate and relay
//! the decrypted session upstream in cleartext. It records every byte the client sent in
//! cleartext, what it could read inside its own TLS, and whether the client completed a
//! TLS handshake, so a test can assert that nothing secret crossed in the clear.
//!
//! What it does NOT do: modify message content, attack TLS itself (in `Passthrough` and
//! after injection the TLS bytes are relayed unchanged), or handle more than the SMTP
//! framing it needs (reply boundaries and command lines).

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use rustls::ServerConfig;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    task::{JoinHandle, JoinSet},
};
use tokio_rustls::TlsAcceptor;

/// Longest line the proxy buffers before relaying it anyway.
const MAX_LINE: usize = 64 * 1024;

/// How the proxy attacks STARTTLS.
#[derive(Clone)]
pub enum MitmMode {
    /// Relay everything unchanged (TLS passes through end to end).
    Passthrough,
    /// Remove STARTTLS from EHLO replies; answer `502` if the client sends it anyway.
    StripStarttls,
    /// Answer STARTTLS with `454 4.7.0` without asking upstream.
    Reply454,
    /// Answer STARTTLS with `554 5.7.0` without asking upstream.
    Reply554,
    /// Answer STARTTLS with `220 Ready to start TLS` plus an injected `250` reply in the
    /// same packet, then let the client's handshake through to the upstream.
    InjectAfterReady,
    /// Terminate the client's TLS with this configuration (the attacker's certificate) and
    /// relay the decrypted session upstream in cleartext.
    OwnCertificate(Arc<ServerConfig>),
}

impl std::fmt::Debug for MitmMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::Passthrough => "Passthrough",
            Self::StripStarttls => "StripStarttls",
            Self::Reply454 => "Reply454",
            Self::Reply554 => "Reply554",
            Self::InjectAfterReady => "InjectAfterReady",
            Self::OwnCertificate(_) => "OwnCertificate",
        };
        f.write_str(name)
    }
}

/// The reply line injected by [`MitmMode::InjectAfterReady`].
pub const INJECTED_REPLY: &str = "250 2.0.0 injected by the man in the middle\r\n";

#[derive(Default)]
struct Observations {
    cleartext_from_client: Mutex<Vec<u8>>,
    decrypted_from_client: Mutex<Vec<u8>>,
    handshake_completed: AtomicBool,
    starttls_seen: AtomicUsize,
    connections: AtomicUsize,
}

/// A running MITM proxy; dropping it closes the listener and all connections.
pub struct Mitm {
    addr: SocketAddr,
    seen: Arc<Observations>,
    task: JoinHandle<()>,
}

impl Mitm {
    /// Listens on 127.0.0.1 (ephemeral port) and relays every connection to `upstream`.
    pub async fn start(upstream: SocketAddr, mode: MitmMode) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Observations::default());
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((client, _)) = accepted {
                            shared.connections.fetch_add(1, Ordering::SeqCst);
                            connections.spawn(relay(client, upstream, mode.clone(), shared.clone()));
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self { addr, seen, task })
    }

    /// Where the client should connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every byte any client sent in cleartext on the wire (before TLS), in order.
    pub fn cleartext_from_client(&self) -> Vec<u8> {
        lock(&self.seen.cleartext_from_client).clone()
    }

    /// True when the client's cleartext contains `needle` (case-insensitive ASCII).
    pub fn cleartext_contains(&self, needle: &str) -> bool {
        let haystack = String::from_utf8_lossy(&self.cleartext_from_client()).to_ascii_lowercase();
        haystack.contains(&needle.to_ascii_lowercase())
    }

    /// What the client sent inside TLS that the proxy could read ([`MitmMode::OwnCertificate`]).
    pub fn decrypted_from_client(&self) -> Vec<u8> {
        lock(&self.seen.decrypted_from_client).clone()
    }

    /// True once a client completed a TLS handshake through or with the proxy (seen as
    /// the proxy's own handshake, or as a TLS application-data record from the client).
    pub fn client_handshake_completed(&self) -> bool {
        self.seen.handshake_completed.load(Ordering::SeqCst)
    }

    /// How many STARTTLS commands clients sent.
    pub fn starttls_count(&self) -> usize {
        self.seen.starttls_seen.load(Ordering::SeqCst)
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Mitm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The client's write side, plain or (after the proxy's own handshake) inside TLS.
type ClientWriter = Arc<tokio::sync::Mutex<Option<Box<dyn AsyncWrite + Send + Unpin>>>>;

/// What the upstream→client pump does once the client side changes.
#[derive(Default)]
struct Switch {
    /// Copy raw bytes from the next reply on (TLS passes through).
    raw: AtomicBool,
    /// Swallow the next reply (the upstream's 220 to our STARTTLS), then copy raw.
    swallow_then_raw: AtomicBool,
}

async fn relay(client: TcpStream, upstream: SocketAddr, mode: MitmMode, seen: Arc<Observations>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let writer: ClientWriter = Arc::new(tokio::sync::Mutex::new(Some(Box::new(client_write))));
    let switch = Arc::new(Switch::default());
    let strip = matches!(mode, MitmMode::StripStarttls);
    let downstream = tokio::spawn(server_to_client(
        BufReader::new(server_read),
        writer.clone(),
        switch.clone(),
        strip,
    ));
    client_to_server(client_read, server_write, writer, switch, mode, seen).await;
    downstream.abort();
}

/// Relays upstream replies to the client, one whole reply at a time.
async fn server_to_client(
    mut server: BufReader<OwnedReadHalf>,
    writer: ClientWriter,
    switch: Arc<Switch>,
    strip: bool,
) {
    loop {
        if switch.raw.load(Ordering::SeqCst) {
            break;
        }
        let Some(reply) = read_reply(&mut server).await else {
            return;
        };
        if switch.swallow_then_raw.load(Ordering::SeqCst) {
            switch.raw.store(true, Ordering::SeqCst);
            break;
        }
        let reply = if strip { strip_starttls(&reply) } else { reply };
        if write_client(&writer, &reply).await.is_err() {
            return;
        }
    }
    // Raw phase: whatever is buffered first, then a plain byte copy.
    let buffered = server.buffer().to_vec();
    if !buffered.is_empty() && write_client(&writer, &buffered).await.is_err() {
        return;
    }
    let mut server = server.into_inner();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::io::AsyncReadExt::read(&mut server, &mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if write_client(&writer, &buffer[..n]).await.is_err() {
            return;
        }
    }
}

async fn write_client(writer: &ClientWriter, bytes: &[u8]) -> io::Result<()> {
    let mut guard = writer.lock().await;
    match guard.as_mut() {
        Some(stream) => {
            stream.write_all(bytes).await?;
            stream.flush().await
        }
        None => Err(io::Error::other("client side closed")),
    }
}

/// One SMTP reply: lines up to the one with a space after the code (RFC 5321 §4.2.1).
async fn read_reply<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> Option<Vec<u8>> {
    let mut reply = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader.read_until(b'\n', &mut line).await.ok()?;
        if n == 0 {
            return (!reply.is_empty()).then_some(reply);
        }
        let last = line.get(3) != Some(&b'-');
        reply.extend_from_slice(&line);
        if last || reply.len() > MAX_LINE {
            return Some(reply);
        }
    }
}

/// The reply without any `STARTTLS` extension line, continuation marks repaired.
fn strip_starttls(reply: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(reply);
    let lines: Vec<&str> = text
        .split_inclusive('\n')
        .filter(|line| {
            let keyword = line.get(4..).unwrap_or("").trim();
            !keyword.eq_ignore_ascii_case("STARTTLS")
        })
        .collect();
    let count = lines.len();
    let mut out = String::new();
    for (index, line) in lines.into_iter().enumerate() {
        let marker = if index + 1 == count { ' ' } else { '-' };
        match (line.get(..3), line.get(4..)) {
            (Some(code), Some(rest)) => {
                out.push_str(code);
                out.push(marker);
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
    }
    out.into_bytes()
}

/// Relays client commands upstream and runs the attack when STARTTLS arrives.
async fn client_to_server(
    client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
    writer: ClientWriter,
    switch: Arc<Switch>,
    mode: MitmMode,
    seen: Arc<Observations>,
) {
    let mut client = BufReader::new(client);
    loop {
        let mut line = Vec::new();
        match client.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        lock(&seen.cleartext_from_client).extend_from_slice(&line);
        let is_starttls = String::from_utf8_lossy(&line)
            .trim()
            .eq_ignore_ascii_case("STARTTLS");
        if !is_starttls {
            if server.write_all(&line).await.is_err() {
                return;
            }
            continue;
        }
        seen.starttls_seen.fetch_add(1, Ordering::SeqCst);
        match &mode {
            MitmMode::StripStarttls => {
                let _ = write_client(&writer, b"502 5.5.1 Command not implemented\r\n").await;
            }
            MitmMode::Reply454 => {
                let _ = write_client(
                    &writer,
                    b"454 4.7.0 TLS not available due to temporary reason\r\n",
                )
                .await;
            }
            MitmMode::Reply554 => {
                let _ = write_client(&writer, b"554 5.7.0 TLS not available\r\n").await;
            }
            MitmMode::Passthrough => {
                switch.raw.store(true, Ordering::SeqCst);
                if server.write_all(&line).await.is_err() {
                    return;
                }
                return raw_client_to_server(client, server, &seen).await;
            }
            MitmMode::InjectAfterReady => {
                switch.swallow_then_raw.store(true, Ordering::SeqCst);
                let injected = format!("220 2.0.0 Ready to start TLS\r\n{INJECTED_REPLY}");
                if write_client(&writer, injected.as_bytes()).await.is_err()
                    || server.write_all(&line).await.is_err()
                {
                    return;
                }
                return raw_client_to_server(client, server, &seen).await;
            }
            MitmMode::OwnCertificate(config) => {
                return terminate_tls(client, server, writer, config.clone(), &seen).await;
            }
        }
    }
}

/// Copies the client's TLS bytes upstream, watching record types for a finished handshake.
async fn raw_client_to_server(
    client: BufReader<OwnedReadHalf>,
    mut server: OwnedWriteHalf,
    seen: &Observations,
) {
    let mut records = RecordScanner::default();
    let buffered = client.buffer().to_vec();
    if records.feed(&buffered) {
        seen.handshake_completed.store(true, Ordering::SeqCst);
    }
    if server.write_all(&buffered).await.is_err() {
        return;
    }
    let mut client = client.into_inner();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = match tokio::io::AsyncReadExt::read(&mut client, &mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if records.feed(&buffer[..n]) {
            seen.handshake_completed.store(true, Ordering::SeqCst);
        }
        if server.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Walks TLS record headers (RFC 8446 §5.1) in a byte stream.
#[derive(Default)]
struct RecordScanner {
    header: Vec<u8>,
    skip: usize,
}

impl RecordScanner {
    /// RFC 8446 §5.1 content type 23 is application_data: a client only sends it after its
    /// Finished, so seeing one means the handshake completed.
    const APPLICATION_DATA: u8 = 23;

    /// Feeds bytes; true when an application-data record header was seen.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut application_data = false;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let need = 5 - self.header.len();
            let n = need.min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 5 {
                application_data |= self.header[0] == Self::APPLICATION_DATA;
                self.skip = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header.clear();
            }
        }
        application_data
    }
}

/// Answers STARTTLS itself, completes TLS with the client using the attacker's
/// certificate, then relays the decrypted commands upstream in cleartext.
async fn terminate_tls(
    client: BufReader<OwnedReadHalf>,
    mut server: OwnedWriteHalf,
    writer: ClientWriter,
    config: Arc<ServerConfig>,
    seen: &Observations,
) {
    let mut guard = writer.lock().await;
    let Some(mut plain) = guard.take() else {
        return;
    };
    if plain
        .write_all(b"220 2.0.0 Ready to start TLS\r\n")
        .await
        .is_err()
    {
        return;
    }
    let read_half = client.into_inner();
    let stream = Joined {
        read: read_half,
        write: plain,
    };
    let Ok(tls) = TlsAcceptor::from(config).accept(stream).await else {
        return;
    };
    seen.handshake_completed.store(true, Ordering::SeqCst);
    let (tls_read, tls_write) = tokio::io::split(tls);
    *guard = Some(Box::new(tls_write));
    drop(guard);
    let mut tls_read = BufReader::new(tls_read);
    loop {
        let mut line = Vec::new();
        match tls_read.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        lock(&seen.decrypted_from_client).extend_from_slice(&line);
        if server.write_all(&line).await.is_err() {
            return;
        }
    }
}

/// A read half and a boxed write half joined back into one stream for the TLS acceptor.
struct Joined {
    read: OwnedReadHalf,
    write: Box<dyn AsyncWrite + Send + Unpin>,
}

impl AsyncRead for Joined {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Joined {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
