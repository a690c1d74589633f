//! A private Postfix instance (Debian's `postfix` package) as the submitting MTA.
//!
//! Each [`Postfix`] has its own configuration directory, queue and log under a
//! temporary directory, listens with `smtpd` on a loopback port of its own and relays
//! everything to `relayhost`, exactly as an operator would point Postfix at mxgate.
//! It runs as `postfix -c DIR start-fg` (needs root, as Postfix's master does) and is
//! stopped when dropped.
//!
//! Also here: [`submit`], a minimal SMTP client that tests use to hand a message to
//! Postfix or straight to mxgate, checking every reply.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Where Debian installs the `postfix` command.
const POSTFIX: &str = "/usr/sbin/postfix";

/// How a [`Postfix`] delivers, beyond the defaults of [`Postfix::start`].
#[derive(Debug, Clone, Default)]
pub struct PostfixOptions {
    /// `relayhost = [ip]:port`; `None` = Postfix's own smtp client delivers to the
    /// recipient domain's MX hosts.
    pub relayhost: Option<SocketAddr>,
    /// Extra `main.cf` lines (they override the defaults above them).
    pub main_cf: String,
    /// The resolver Postfix uses (glibc reads `/etc/resolv.conf` and takes no port):
    /// when set, Postfix runs in a private mount namespace (`unshare -m`) where this
    /// `nameserver` (with `options trust-ad`, so the AD bit of a validating resolver
    /// reaches Postfix, as DANE needs) is bind-mounted over `/etc/resolv.conf`. The rest
    /// of the machine keeps its own resolver.
    pub nameserver: Option<std::net::IpAddr>,
}

/// A running private Postfix.
pub struct Postfix {
    dir: tempfile::TempDir,
    child: Child,
    smtpd: SocketAddr,
}

impl Postfix {
    /// Whether Postfix is installed (the README's test command installs it).
    pub fn available() -> bool {
        Path::new(POSTFIX).exists()
    }

    /// Starts an instance whose `smtpd` listens on a free loopback port and whose
    /// `relayhost` is `[relayhost.ip]:relayhost.port`. Resolves once `smtpd` accepts
    /// connections.
    pub async fn start(relayhost: SocketAddr) -> io::Result<Postfix> {
        Self::start_with(PostfixOptions {
            relayhost: Some(relayhost),
            ..PostfixOptions::default()
        })
        .await
    }

    /// Starts an instance as [`Postfix::start`] does, configured by `options`.
    pub async fn start_with(options: PostfixOptions) -> io::Result<Postfix> {
        let dir = tempfile::Builder::new()
            .prefix("mxgate-postfix")
            .tempdir()?;
        let root = dir.path().to_path_buf();
        // Postfix daemons run as the `postfix` user and must traverse the tree.
        set_mode(&root, 0o755)?;
        std::fs::create_dir_all(root.join("queue"))?;
        std::fs::create_dir_all(root.join("data"))?;
        chown_postfix(&root.join("data"))?;
        let port = free_port()?;
        let smtpd = SocketAddr::from(([127, 0, 0, 1], port));
        let mut main = main_cf(&root, options.relayhost);
        main.push_str(&options.main_cf);
        main.push('\n');
        std::fs::write(root.join("main.cf"), main)?;
        std::fs::write(root.join("master.cf"), master_cf(smtpd))?;
        let mut command = match options.nameserver {
            None => {
                let mut c = Command::new(POSTFIX);
                c.arg("-c").arg(&root).arg("start-fg");
                c
            }
            Some(ns) => {
                let resolv = root.join("resolv.conf");
                std::fs::write(&resolv, format!("nameserver {ns}\noptions trust-ad\n"))?;
                set_mode(&resolv, 0o644)?;
                let mut c = Command::new("unshare");
                c.arg("--mount")
                    .arg("--propagation")
                    .arg("private")
                    .arg("sh")
                    .arg("-c")
                    .arg("mount --bind \"$1\" /etc/resolv.conf && exec \"$2\" -c \"$3\" start-fg")
                    .arg("sh")
                    .arg(&resolv)
                    .arg(POSTFIX)
                    .arg(&root);
                c
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut postfix = Postfix { dir, child, smtpd };
        postfix.wait_listening().await?;
        Ok(postfix)
    }

    async fn wait_listening(&mut self) -> io::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(stream) = TcpStream::connect(self.smtpd).await {
                // Read the banner so that smtpd is really serving, then leave.
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line).await?;
                if line.starts_with("220") {
                    reader.get_mut().write_all(b"QUIT\r\n").await?;
                    return Ok(());
                }
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "postfix exited with {status}: {}",
                    self.maillog()
                )));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "postfix smtpd did not come up: {}",
                    self.maillog()
                )));
            }
            // Nothing to await: Postfix gives no readiness signal but its socket.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The address of this instance's `smtpd`.
    pub fn smtpd_addr(&self) -> SocketAddr {
        self.smtpd
    }

    /// The configuration directory (`postfix -c` / `postqueue -c`).
    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything Postfix logged so far.
    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// Asks Postfix to retry deferred mail now (`postqueue -f`).
    pub async fn flush(&self) -> io::Result<()> {
        let status = Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(self.dir.path())
            .arg("-f")
            .status()
            .await?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("postqueue -f: {status}")))
        }
    }

    /// Waits until the log shows `status=sent` for `count` messages relayed to
    /// mxgate, or returns the log on timeout.
    pub async fn wait_relayed(&self, count: usize, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let log = self.maillog();
            if log.matches("status=sent").count() >= count {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(log);
            }
            // Postfix reports only through its log file.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = std::process::Command::new(POSTFIX)
            .arg("-c")
            .arg(self.dir.path())
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.start_kill();
    }
}

fn main_cf(root: &Path, relayhost: Option<SocketAddr>) -> String {
    let root = root.display();
    let relayhost = relayhost
        .map(|r| format!("[{}]:{}", r.ip(), r.port()))
        .unwrap_or_default();
    format!(
        "compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = submit.test
mydomain = submit.test
myorigin = submit.test
mydestination =
local_transport = error:no local delivery
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = {relayhost}
smtp_tls_security_level = none
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
biff = no
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
smtp_connect_timeout = 5s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s
"
    )
}

fn master_cf(smtpd: SocketAddr) -> String {
    format!(
        "{smtpd} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000    0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
postlog   unix-dgram n  -       n       -       1       postlogd
showq     unix  n       -       n       -       -       showq
"
    )
}

fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn chown_postfix(path: &PathBuf) -> io::Result<()> {
    let status = std::process::Command::new("chown")
        .arg("postfix")
        .arg(path)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "chown postfix {}: {status}",
            path.display()
        )))
    }
}

/// Why [`submit`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("after {command:?} the server said {reply:?}")]
    Rejected { command: String, reply: String },
}

/// Sends one message over SMTP to `addr` (no TLS): EHLO, MAIL, RCPT for each of
/// `recipients`, DATA with `message` (CRLF line ends, dot-stuffed here), QUIT.
/// Returns the reply to the final `.`.
pub async fn submit(
    addr: SocketAddr,
    sender: &str,
    recipients: &[&str],
    message: &[u8],
) -> Result<String, SubmitError> {
    let stream = TcpStream::connect(addr).await?;
    let mut conn = BufReader::new(stream);
    expect(&mut conn, "banner", '2').await?;
    command(&mut conn, "EHLO client.test", '2').await?;
    command(&mut conn, &format!("MAIL FROM:<{sender}>"), '2').await?;
    for rcpt in recipients {
        command(&mut conn, &format!("RCPT TO:<{rcpt}>"), '2').await?;
    }
    command(&mut conn, "DATA", '3').await?;
    let mut data = Vec::with_capacity(message.len() + 16);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    if !data.ends_with(b"\r\n") {
        data.extend_from_slice(b"\r\n");
    }
    data.extend_from_slice(b".\r\n");
    conn.get_mut().write_all(&data).await?;
    let reply = expect(&mut conn, ".", '2').await?;
    let _ = conn.get_mut().write_all(b"QUIT\r\n").await;
    Ok(reply)
}

async fn command(
    conn: &mut BufReader<TcpStream>,
    line: &str,
    want: char,
) -> Result<String, SubmitError> {
    conn.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .await?;
    expect(conn, line, want).await
}

async fn expect(
    conn: &mut BufReader<TcpStream>,
    command: &str,
    want: char,
) -> Result<String, SubmitError> {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            return Err(SubmitError::Rejected {
                command: command.to_string(),
                reply: format!("{reply}<connection closed>"),
            });
        }
        reply.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    if reply.starts_with(want) {
        Ok(reply.trim_end().to_string())
    } else {
        Err(SubmitError::Rejected {
            command: command.to_string(),
            reply: reply.trim_end().to_string(),
        })
    }
}
