//! A thin async SMTP client connection: write commands, read parsed replies with a
//! timeout. The read buffer is visible so the STARTTLS step can see bytes the server
//! sent ahead of the handshake, and [`Conn::into_stream`] drops it, so nothing received
//! in cleartext can leak into the TLS session (RFC 3207 §4.2).
//!
//! [`SmtpStream`] is the one stream type a transaction runs over (cleartext or after
//! STARTTLS), so a finished session can be kept for reuse whatever it negotiated.
//!
//! This module makes no decisions; see `decide` and `session`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use mxgate_smtp::reply::{parse_reply, reply_complete, Reply, ReplyError, ReplyScan};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection to an MX: cleartext TCP, or TLS after STARTTLS.
pub enum SmtpStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl SmtpStream {
    /// Our address on the connection.
    pub fn local_ip(&self) -> Option<std::net::IpAddr> {
        let tcp = match self {
            SmtpStream::Plain(s) => s,
            SmtpStream::Tls(s) => s.get_ref().0,
        };
        tcp.local_addr().ok().map(|a| a.ip())
    }
}

impl AsyncRead for SmtpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SmtpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SmtpStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SmtpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SmtpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SmtpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SmtpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why the conversation with the server broke down.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection closed by server")]
    Closed,
    #[error("{0}")]
    Malformed(#[from] ReplyError),
}

pub struct Conn<S> {
    stream: S,
    buf: BytesMut,
    /// How far `buf` is known to hold only continuation lines of the next reply.
    scan: ReplyScan,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(stream: S, timeout: Duration) -> Self {
        Conn {
            stream,
            buf: BytesMut::with_capacity(4096),
            scan: ReplyScan::default(),
            timeout,
        }
    }

    /// Writes `bytes` and flushes, within the command timeout.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| ConnError::Timeout(self.timeout))??;
        Ok(())
    }

    /// Reads one complete reply within the command timeout.
    pub async fn reply(&mut self) -> Result<Reply, ConnError> {
        let timeout = self.timeout;
        self.reply_within(timeout).await
    }

    /// Reads one complete reply within `timeout`.
    pub async fn reply_within(&mut self, timeout: Duration) -> Result<Reply, ConnError> {
        let read = async {
            loop {
                // Parse only once the reply is complete: a server trickling bytes
                // does not make us rescan the buffer on every read.
                if reply_complete(&self.buf, &mut self.scan) {
                    self.scan = ReplyScan::default();
                    if let Some(reply) = parse_reply(&mut self.buf)? {
                        return Ok(reply);
                    }
                }
                let n = self.stream.read_buf(&mut self.buf).await?;
                if n == 0 {
                    return Err(ConnError::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| ConnError::Timeout(timeout))?
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the server sent bytes we have not consumed yet.
    pub fn has_buffered_input(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Gives up the connection for a TLS upgrade, discarding the read buffer.
    pub fn into_stream(self) -> S {
        self.stream
    }

    /// The same conversation over a wrapped stream, keeping unread input (for a
    /// cleartext session, nothing is discarded; use [`Conn::into_stream`] for TLS).
    pub fn map_stream<T>(self, wrap: impl FnOnce(S) -> T) -> Conn<T> {
        Conn {
            stream: wrap(self.stream),
            buf: self.buf,
            scan: self.scan,
            timeout: self.timeout,
        }
    }

    /// `QUIT`, best effort: errors are irrelevant once the outcome is known.
    pub async fn quit(&mut self) {
        if self.send(mxgate_smtp::client::QUIT).await.is_ok() {
            let _ = self
                .reply_within(Duration::from_secs(5).min(self.timeout))
                .await;
        }
    }
}
