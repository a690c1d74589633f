//! Harness shared by the end-to-end tests: runs the real `mxgate` binary with a
//! configuration written for the test world, and waits for its sd_notify `READY=1`.

#![allow(dead_code)]

pub mod world;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `mxgate run`.
pub struct Mxgate {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub control: PathBuf,
    log_path: PathBuf,
    notify_path: PathBuf,
}

/// Settings of the test world that go into mxgate's configuration.
pub struct Settings {
    pub dns: SocketAddr,
    pub trust_anchor: Option<PathBuf>,
    pub smtp_port: u16,
    pub ca_file: Option<PathBuf>,
    pub mta_sts_port: u16,
    pub dnssec: &'static str,
    /// Extra TOML appended to `[policy]` (e.g. `default = "may"`).
    pub policy: String,
    /// Extra `[policy.domains]` lines.
    pub domains: String,
    /// Extra `[queue]` lines.
    pub queue: String,
    /// Extra `[listener]` lines.
    pub listener: String,
    /// Extra `[tlsrpt]` lines (`path` is always the test directory's `tlsrpt/`).
    pub tlsrpt: String,
    /// Extra sections appended at the end (e.g. `[socketmap]`).
    pub extra: String,
}

impl Settings {
    pub fn new(dns: SocketAddr, smtp_port: u16) -> Settings {
        Settings {
            dns,
            trust_anchor: None,
            smtp_port,
            ca_file: None,
            mta_sts_port: 443,
            dnssec: "off",
            policy: String::new(),
            domains: String::new(),
            queue: String::new(),
            listener: String::new(),
            tlsrpt: String::new(),
            extra: String::new(),
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

impl Mxgate {
    /// Writes the configuration into `dir` (which keeps the spool across restarts)
    /// and starts mxgate.
    pub fn start(dir: &Path, settings: &Settings) -> Mxgate {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let control = dir.join("control.sock");
        let config_path = dir.join("mxgate.toml");
        let trust_anchor = settings
            .trust_anchor
            .as_deref()
            .map(toml_path)
            .unwrap_or_else(|| "\"\"".into());
        let ca_file = settings
            .ca_file
            .as_deref()
            .map(toml_path)
            .unwrap_or_else(|| "\"\"".into());
        let config = format!(
            r#"
[server]
hostname = "relay.mxgate.test"

[listener]
listen = ["{listen}"]
{listener_extra}

[queue]
path = {queue}
{queue_defaults}{queue_extra}

[delivery]
smtp_port = {smtp_port}
connect_timeout = "3s"
command_timeout = "10s"
ca_file = {ca_file}

[dns]
nameservers = ["{dns}"]
dnssec = "{dnssec}"
trust_anchor = {trust_anchor}
timeout = "2s"

[policy]
mta_sts_port = {mta_sts_port}
cache_path = {cache}
mta_sts_timeout = "3s"
{policy}

[policy.domains]
{domains}

[metrics]
listen = "{metrics}"

[control]
socket = {control_toml}

[tlsrpt]
path = {tlsrpt_path}
{tlsrpt}
{extra}
"#,
            tlsrpt_path = toml_path(&dir.join("tlsrpt")),
            tlsrpt = settings.tlsrpt,
            queue = toml_path(&dir.join("queue")),
            // Defaults for fast tests, unless the test sets these keys itself.
            queue_defaults = [
                ("retry_intervals", "retry_intervals = [\"1s\"]\n"),
                ("max_age", "max_age = \"1h\"\n")
            ]
            .iter()
            .filter(|(key, _)| !settings.queue.contains(key))
            .map(|(_, line)| *line)
            .collect::<String>(),
            queue_extra = settings.queue,
            listener_extra = settings.listener,
            smtp_port = settings.smtp_port,
            dns = settings.dns,
            dnssec = settings.dnssec,
            mta_sts_port = settings.mta_sts_port,
            cache = toml_path(&dir.join("policy")),
            policy = settings.policy,
            domains = settings.domains,
            control_toml = toml_path(&control),
            extra = settings.extra,
        );
        std::fs::write(&config_path, config).expect("write config");
        let mut gate = Mxgate {
            child: None,
            dir: dir.to_path_buf(),
            config_path,
            listen,
            metrics,
            control,
            log_path: dir.join("mxgate.log"),
            notify_path: dir.join("notify.sock"),
        };
        gate.spawn();
        gate
    }

    /// (Re)starts the process with the same configuration and spool, and waits for
    /// `READY=1` on `$NOTIFY_SOCKET`.
    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.notify_path);
        let notify = UnixDatagram::bind(&self.notify_path).expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_mxgate"))
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mxgate");
        self.child = Some(child);
        let mut buf = [0u8; 512];
        loop {
            match notify.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]);
                    if msg.lines().any(|l| l == "READY=1") {
                        return;
                    }
                }
                Err(e) => panic!("mxgate did not become ready: {e}\n{}", self.log()),
            }
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends a signal (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            let pid = child.id().to_string();
            let status = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid)
                .status()
                .expect("kill");
            assert!(status.success());
        }
    }

    /// Waits for the process to exit (after SIGTERM).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.child.take().expect("running").wait().expect("wait")
    }

    /// Everything mxgate logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Runs `mxgate ARGS --config ...` as a client command and returns (status, stdout).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_mxgate"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .output()
            .expect("run mxgate cli");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Waits until a log line matches `pred`, up to `timeout`.
    pub async fn wait_log(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| pred(l)) {
                return line.to_string();
            }
            if tokio::time::Instant::now() > deadline {
                panic!("no matching log line within {timeout:?}:\n{log}");
            }
            // The log file is the event source here.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Mxgate {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `GET /metrics` over plain TCP from mxgate's metrics endpoint; the body.
pub fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("send the metrics request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the metrics response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}
