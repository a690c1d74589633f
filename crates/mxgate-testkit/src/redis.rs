//! A private `redis-server` (Debian's `redis-server` package) on loopback, for the
//! cluster tests: no persistence, its own directory, killed on drop. It can be killed
//! and started again on the same port while a test runs.
//!
//! What it does NOT do: install Redis (use [`RedisServer::available`] to skip a test
//! otherwise), or pick a port race-free: the port is found by binding and releasing it,
//! and a start that fails is retried on a new port.

use std::io;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const REDIS: &str = "redis-server";
const STARTUP_DEADLINE: Duration = Duration::from_secs(10);

/// A running (or killed) private redis-server.
pub struct RedisServer {
    addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// True when `redis-server` can be run.
    pub fn available() -> bool {
        std::process::Command::new(REDIS)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts on 127.0.0.1 and a free port; resolves once it answers `PING`.
    pub async fn start() -> io::Result<RedisServer> {
        let mut last = None;
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let mut server = RedisServer {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child: None,
                dir: tempfile::tempdir()?,
            };
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `kill -9`: connections drop, connects are refused until [`RedisServer::restart`].
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts again on the same port (empty: nothing was persisted).
    pub async fn restart(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn().await
    }

    async fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::File::create(self.dir.path().join("redis.log"))?;
        let mut child = Command::new(REDIS)
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.addr.port().to_string())
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-server exited ({status}): {}",
                    self.log()
                )));
            }
            if ping(self.addr).await {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > STARTUP_DEADLINE {
                let _ = child.kill().await;
                return Err(io::Error::other("redis-server did not answer PING"));
            }
            // redis-server gives no readiness signal but its socket.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// redis-server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

/// True when `addr` answers `PING` with `+PONG`.
async fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"+PONG\r\n"
    )
}
