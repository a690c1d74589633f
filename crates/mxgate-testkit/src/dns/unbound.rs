//! A private validating resolver (unbound) in front of a [`DnsWorld`], for `trust-ad` tests.
//!
//! [`Unbound::start`] writes a configuration into its own temporary directory (stub zone
//! `.` pointing at the world, the world's trust anchor, no chroot, no daemon, no remote
//! control), runs `unbound -d` on 127.0.0.1 and a free port, and returns once the resolver
//! answers. Dropping the handle kills that process.
//!
//! What it does NOT do: install unbound (the `unbound` binary must be on `PATH`; use
//! [`Unbound::available`] to skip a test otherwise), or pick a port race-free: the port is
//! found by binding and releasing it, and a start that collides is retried on a new port.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query},
    rr::{Name, RecordType},
};
use tokio::{
    net::UdpSocket,
    process::{Child, Command},
};

use super::DnsWorld;

/// How long unbound may take to answer its first query.
const STARTUP_DEADLINE: Duration = Duration::from_secs(10);
/// How many ports to try when unbound exits during startup.
const START_ATTEMPTS: usize = 5;
/// How long one readiness probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// Errors starting unbound.
#[derive(Debug, thiserror::Error)]
pub enum UnboundError {
    /// The configuration, the process or the readiness probe failed.
    #[error("unbound I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The process exited before it answered.
    #[error("unbound exited during startup ({status}): {log}")]
    Exited {
        status: std::process::ExitStatus,
        log: String,
    },
    /// No answer within the startup deadline.
    #[error("unbound did not answer within {0:?}")]
    NotReady(Duration),
}

/// A running private unbound; killed on drop.
pub struct Unbound {
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Unbound {
    /// True when an `unbound` binary can be run.
    pub fn available() -> bool {
        std::process::Command::new("unbound")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Starts unbound as a validating resolver whose only upstream is `world`.
    ///
    /// The port is picked by binding and releasing it, so another socket may take it
    /// before unbound binds; an exit during startup is therefore retried on a new port.
    pub async fn start(world: &DnsWorld) -> Result<Self, UnboundError> {
        let mut attempt = 1;
        loop {
            let port = {
                let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
                probe.local_addr()?.port()
            };
            match Self::start_once(world, SocketAddr::from(([127, 0, 0, 1], port))).await {
                Err(UnboundError::Exited { .. }) if attempt < START_ATTEMPTS => attempt += 1,
                result => return result,
            }
        }
    }

    /// Starts unbound on port 53 of a random address in 127.53.0.0/16, for clients
    /// that can only name a resolver by address (glibc's `resolv.conf`, so Postfix).
    /// Binding port 53 needs root, as Postfix's tests do anyway.
    pub async fn start_on_port_53(world: &DnsWorld) -> Result<Self, UnboundError> {
        let mut attempt = 1;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let seed = nanos ^ std::process::id().rotate_left(16) ^ (attempt as u32 * 7919);
            let ip = std::net::Ipv4Addr::new(127, 53, (seed >> 8) as u8, (seed as u8).max(1));
            match Self::start_once(world, SocketAddr::from((ip, 53))).await {
                Err(UnboundError::Exited { .. }) if attempt < START_ATTEMPTS => attempt += 1,
                result => return result,
            }
        }
    }

    async fn start_once(world: &DnsWorld, addr: SocketAddr) -> Result<Self, UnboundError> {
        let dir = tempfile::tempdir()?;
        let anchor = dir.path().join("root.key");
        std::fs::write(&anchor, world.trust_anchor_text())?;
        let config = dir.path().join("unbound.conf");
        std::fs::write(&config, configuration(dir.path(), addr, world.addr()))?;
        let log = dir.path().join("unbound.log");
        let mut child = Command::new("unbound")
            .arg("-d")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(UnboundError::Exited { status, log });
            }
            if probe(addr).await {
                return Ok(Self { addr, child, dir });
            }
            if started.elapsed() > STARTUP_DEADLINE {
                return Err(UnboundError::NotReady(STARTUP_DEADLINE));
            }
        }
    }

    /// The resolver's address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// unbound's log so far (stderr), for test failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("unbound.log")).unwrap_or_default()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        // kill_on_drop also covers this; start_kill makes it immediate.
        let _ = self.child.start_kill();
    }
}

fn configuration(dir: &std::path::Path, addr: SocketAddr, world: SocketAddr) -> String {
    let dir = dir.display();
    let (ip, port) = (addr.ip(), addr.port());
    format!(
        r#"server:
    interface: {ip}
    port: {port}
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{dir}"
    pidfile: "{dir}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 1
    val-log-level: 2
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    qname-minimisation: no
    harden-referral-path: no
    target-fetch-policy: "0 0 0 0 0"
    module-config: "validator iterator"
    trust-anchor-file: "{dir}/root.key"
    trust-anchor-signaling: no
    root-key-sentinel: no
    prefetch: no
    so-reuseport: no
    num-threads: 1
    # RFC 6761 §6.2 names are blocked by default; the test world lives under them.
    local-zone: "test." nodefault
    local-zone: "invalid." nodefault
    local-zone: "example." nodefault
remote-control:
    control-enable: no
stub-zone:
    name: "."
    stub-addr: {world_ip}@{world_port}
"#,
        world_ip = world.ip(),
        world_port = world.port()
    )
}

/// True when something at `addr` answered a DNS query for the root SOA.
async fn probe(addr: SocketAddr) -> bool {
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
        return false;
    };
    let mut message = Message::new(1, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::root(), RecordType::SOA));
    message.set_edns(Edns::new());
    let Ok(bytes) = message.to_vec() else {
        return false;
    };
    if socket.send_to(&bytes, addr).await.is_err() {
        return false;
    }
    let mut buffer = [0u8; 4096];
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, socket.recv(&mut buffer)).await,
        Ok(Ok(_))
    )
}
