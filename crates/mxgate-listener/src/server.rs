//! The async shell around [`Session`]: sockets, timeouts, session limit, shutdown.
//!
//! One task accepts on each listening socket and hands connections to [`Listener::run`],
//! which spawns one task per session into a `JoinSet`. Replies are buffered and flushed
//! whenever the input buffer holds no complete command (RFC 2920), and before the
//! connection reads again. This module does not parse SMTP itself.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mxgate_queue::MessageStore;
use mxgate_smtp::{DataOutcome, DataReader, LineReader, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::session::{Action, Session};
use crate::settings::ListenerSettings;

/// Counter of messages stored by the listener (docs/operations.md).
pub const MESSAGES_RECEIVED: &str = "mxgate_messages_received_total";

/// Registers the listener's metric descriptions with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        MESSAGES_RECEIVED,
        "Messages accepted from the local MTA and stored in the queue"
    );
}

/// Replies are flushed at the latest when this much is buffered.
const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// The SMTP listener for the local MTA (docs/postfix.md).
pub struct Listener<S> {
    sockets: Vec<TcpListener>,
    settings: Arc<ListenerSettings>,
    store: Arc<S>,
}

impl<S: MessageStore> Listener<S> {
    /// Binds every address of `settings.listen`.
    pub async fn bind(settings: ListenerSettings, store: Arc<S>) -> io::Result<Self> {
        let mut sockets = Vec::with_capacity(settings.listen.len());
        for addr in &settings.listen {
            sockets.push(TcpListener::bind(addr).await?);
        }
        Ok(Listener {
            sockets,
            settings: Arc::new(settings),
            store,
        })
    }

    /// The bound addresses (with the real port when `listen` said port 0).
    pub fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.sockets.iter().map(TcpListener::local_addr).collect()
    }

    /// Accepts connections until `shutdown` is cancelled, then waits for the open
    /// sessions: an idle session gets `421 4.3.2` at once, a session inside a
    /// transaction first finishes it.
    pub async fn run(self, shutdown: CancellationToken) {
        let (tx, mut rx) = mpsc::channel::<(TcpStream, SocketAddr)>(64);
        let mut acceptors = JoinSet::new();
        for socket in self.sockets {
            let tx = tx.clone();
            let shutdown = shutdown.clone();
            acceptors.spawn(accept_loop(socket, tx, shutdown));
        }
        drop(tx);
        let permits = Arc::new(Semaphore::new(self.settings.max_sessions));
        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                accepted = rx.recv() => {
                    let Some((stream, peer)) = accepted else { break };
                    let settings = Arc::clone(&self.settings);
                    let store = Arc::clone(&self.store);
                    let permits = Arc::clone(&permits);
                    let shutdown = shutdown.clone();
                    sessions.spawn(async move {
                        connection(stream, peer, settings, store, permits, shutdown).await;
                    });
                }
            }
        }
        acceptors.shutdown().await;
        while sessions.join_next().await.is_some() {}
    }
}

async fn accept_loop(
    socket: TcpListener,
    tx: mpsc::Sender<(TcpStream, SocketAddr)>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = socket.accept() => match accepted {
                Ok(conn) => {
                    if tx.send(conn).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Access checks, then the session.
async fn connection<S: MessageStore>(
    mut stream: TcpStream,
    peer: SocketAddr,
    settings: Arc<ListenerSettings>,
    store: Arc<S>,
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    if !settings.is_allowed(peer.ip()) {
        tracing::warn!(client = %peer.ip(), "connection from a client not in allowed_clients refused");
        let reply = Reply::new(
            554,
            (5, 7, 1),
            "Access denied: client not in allowed_clients",
        );
        let _ = stream.write_all(&reply.to_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    }
    let Ok(_permit) = permits.try_acquire_owned() else {
        tracing::warn!(client = %peer.ip(), "max_sessions reached, connection refused");
        let reply = Reply::new(421, (4, 3, 2), "Too many sessions, try again later");
        let _ = stream.write_all(&reply.to_bytes()).await;
        let _ = stream.shutdown().await;
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut conn = Connection {
        stream,
        input: BytesMut::with_capacity(4096),
        output: Vec::new(),
        peer,
    };
    if let Err(e) = conn.serve(settings, store, shutdown).await {
        tracing::debug!(client = %peer.ip(), error = %e, "session ended with an I/O error");
    }
}

/// Why the read loop stopped without an I/O error.
enum ReadEnd {
    Data,
    Eof,
    Timeout,
    Shutdown,
}

struct Connection {
    stream: TcpStream,
    input: BytesMut,
    output: Vec<u8>,
    peer: SocketAddr,
}

impl Connection {
    async fn flush(&mut self) -> io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.output.clear();
        }
        Ok(())
    }

    async fn close_with(&mut self, reply: Reply) -> io::Result<()> {
        self.output.extend_from_slice(&reply.to_bytes());
        self.flush().await?;
        self.stream.shutdown().await
    }

    /// Reads more input within `limit`; while `idle`, a shutdown ends the wait.
    async fn read_more(
        &mut self,
        limit: Duration,
        shutdown: &CancellationToken,
        idle: bool,
    ) -> io::Result<ReadEnd> {
        tokio::select! {
            _ = shutdown.cancelled(), if idle => Ok(ReadEnd::Shutdown),
            read = tokio::time::timeout(limit, self.stream.read_buf(&mut self.input)) => match read {
                Err(_) => Ok(ReadEnd::Timeout),
                Ok(Ok(0)) => Ok(ReadEnd::Eof),
                Ok(Ok(_)) => Ok(ReadEnd::Data),
                Ok(Err(e)) => Err(e),
            },
        }
    }

    async fn serve<S: MessageStore>(
        &mut self,
        settings: Arc<ListenerSettings>,
        store: Arc<S>,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        let mut session = Session::new(Arc::clone(&settings), self.peer.ip());
        let mut lines = LineReader::extended_commands();
        self.output
            .extend_from_slice(&session.greeting().to_bytes());
        loop {
            // Answer every complete command already buffered (PIPELINING).
            while let Some(line) = lines.read_line(&mut self.input).transpose() {
                match session.command(line) {
                    Action::Reply(reply) => {
                        self.output.extend_from_slice(&reply.to_bytes());
                        if self.output.len() >= MAX_PENDING_OUTPUT {
                            self.flush().await?;
                        }
                    }
                    Action::Close(reply) => return self.close_with(reply).await,
                    Action::StartData(reply) => {
                        self.output.extend_from_slice(&reply.to_bytes());
                        self.flush().await?;
                        let Some(outcome) = self.read_data(&settings).await? else {
                            return Ok(());
                        };
                        let reply = self.deliver(&mut session, outcome, &*store).await;
                        self.output.extend_from_slice(&reply.to_bytes());
                    }
                }
            }
            // RFC 2920 §3.2: the server flushes its replies when the input buffer
            // holds no further complete command.
            self.flush().await?;
            let idle = !session.in_transaction();
            if idle && shutdown.is_cancelled() {
                return self
                    .close_with(Reply::new(421, (4, 3, 2), "Service shutting down"))
                    .await;
            }
            match self
                .read_more(settings.command_timeout, &shutdown, idle)
                .await?
            {
                ReadEnd::Data => {}
                ReadEnd::Eof => return Ok(()),
                ReadEnd::Timeout => {
                    tracing::info!(client = %self.peer.ip(), "command timeout");
                    return self
                        .close_with(Reply::new(421, (4, 4, 2), "Error: timeout exceeded"))
                        .await;
                }
                ReadEnd::Shutdown => {
                    return self
                        .close_with(Reply::new(421, (4, 3, 2), "Service shutting down"))
                        .await;
                }
            }
        }
    }

    /// Reads DATA to its terminator. `None` when the session must end (EOF, timeout).
    async fn read_data(&mut self, settings: &ListenerSettings) -> io::Result<Option<DataOutcome>> {
        let mut reader = DataReader::new(settings.max_message_size);
        let never = CancellationToken::new();
        loop {
            if let Some(outcome) = reader.feed(&mut self.input) {
                return Ok(Some(outcome));
            }
            match self.read_more(settings.data_timeout, &never, false).await? {
                ReadEnd::Data => {}
                ReadEnd::Eof | ReadEnd::Shutdown => return Ok(None),
                ReadEnd::Timeout => {
                    tracing::info!(client = %self.peer.ip(), "data timeout");
                    self.close_with(Reply::new(421, (4, 4, 2), "Error: timeout exceeded"))
                        .await?;
                    return Ok(None);
                }
            }
        }
    }

    /// Builds the message, stores it, and returns the final reply to DATA.
    async fn deliver<S: MessageStore>(
        &mut self,
        session: &mut Session,
        outcome: DataOutcome,
        store: &S,
    ) -> Reply {
        let size = outcome.size;
        // The id is reserved first so that the `Received:` header can name it.
        let id = store.reserve_id();
        let (envelope, message) = match session.finish_data(outcome, &id.0, crate::clock::now()) {
            Ok(ready) => ready,
            Err(reply) => {
                tracing::info!(client = %self.peer.ip(), size, reply = %reply, "message rejected");
                return reply;
            }
        };
        let from = envelope.sender.clone();
        let nrcpt = envelope.recipients.len();
        let result = store.store_as(id, envelope, message).await;
        match &result {
            Ok(id) => {
                metrics::counter!(MESSAGES_RECEIVED).increment(1);
                tracing::info!(id = %id, from = %format_args!("<{}>", mxgate_smtp::LogValue(&from)), nrcpt, size, client = %self.peer.ip(), "message accepted");
            }
            Err(e) => {
                tracing::warn!(from = %format!("<{from}>"), nrcpt, size, client = %self.peer.ip(), error = %e, "message not stored");
            }
        }
        Session::stored_reply(&result)
    }
}
