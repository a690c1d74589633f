//! The socketmap server: accept loop, one task per connection, requests answered in
//! order. Thin: framing is [`crate::netstring`], answers are [`crate::lookup`].
//!
//! Postfix's socketmap client (socketmap_table(5)) keeps a connection open between
//! lookups and closes it after 10 seconds of idleness, then reconnects on the next
//! lookup; mxgate's own idle timeout is longer, so Postfix closes first, and a client
//! that goes quiet without closing is dropped after it. A malformed netstring cannot
//! be resynchronised: that connection is closed, the server goes on.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::lookup::{answer_request, PolicyLookup};
use crate::netstring::{decode, encode, MAX_QUERY};
use crate::{METRIC_ANSWERS, METRIC_CLOSED};

/// Limits of the server.
#[derive(Debug, Clone)]
pub struct SocketmapSettings {
    /// A connection without a request for this long is closed (Postfix closes its own
    /// after 10 s).
    pub idle_timeout: Duration,
    /// A lookup slower than this is answered `TEMP` (Postfix gives up after 100 s).
    pub lookup_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for SocketmapSettings {
    fn default() -> Self {
        SocketmapSettings {
            idle_timeout: Duration::from_secs(60),
            lookup_timeout: Duration::from_secs(90),
            max_connections: 1024,
        }
    }
}

/// A bound socketmap listener.
pub struct SocketmapServer {
    listener: TcpListener,
    settings: SocketmapSettings,
}

impl SocketmapServer {
    /// Binds `addr` (`socketmap.listen`).
    pub async fn bind(addr: SocketAddr, settings: SocketmapSettings) -> io::Result<Self> {
        Ok(SocketmapServer {
            listener: TcpListener::bind(addr).await?,
            settings,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; then stops accepting and closes every connection at
    /// its next request boundary.
    pub async fn run<P: PolicyLookup>(self, policy: Arc<P>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.settings.max_connections.max(1)));
        let mut connections = JoinSet::new();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = self.listener.accept() => a,
            };
            // Reap finished connection tasks so the set stays small.
            while connections.try_join_next().is_some() {}
            match accepted {
                Ok((stream, peer)) => {
                    let policy = policy.clone();
                    let settings = self.settings.clone();
                    let shutdown = shutdown.clone();
                    connections.spawn(async move {
                        if let Err(e) = serve(stream, &*policy, &settings, &shutdown).await {
                            tracing::debug!(%peer, error = %e, "socketmap connection ended");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "socketmap accept failed");
                }
            }
        }
        connections.shutdown().await;
    }
}

/// One connection: read, answer every complete request in order, repeat.
async fn serve<P: PolicyLookup>(
    mut stream: TcpStream,
    policy: &P,
    settings: &SocketmapSettings,
    shutdown: &CancellationToken,
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut out: Vec<u8> = Vec::with_capacity(256);
    loop {
        loop {
            let (payload, consumed) = match decode(&buf, MAX_QUERY) {
                Ok(Some(frame)) => (frame.payload.to_vec(), frame.consumed),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "socketmap: malformed request, closing the connection");
                    metrics::counter!(METRIC_CLOSED, "reason" => "malformed").increment(1);
                    return Ok(());
                }
            };
            buf.drain(..consumed);
            let engine = policy.current();
            let reply = answer_request(&*engine, &payload, settings.lookup_timeout).await;
            metrics::counter!(METRIC_ANSWERS, "answer" => reply.metric_label()).increment(1);
            out.clear();
            encode(reply.payload().as_bytes(), &mut out);
            stream.write_all(&out).await?;
        }
        let read = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(settings.idle_timeout, stream.read_buf(&mut buf)) => r,
        };
        match read {
            Err(_) => {
                metrics::counter!(METRIC_CLOSED, "reason" => "idle").increment(1);
                return Ok(());
            }
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}
