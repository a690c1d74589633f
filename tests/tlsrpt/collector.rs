//! The HTTPS report collector (RFC 8460 §5.4) and an RFC 8460 §4.4 report parser
//! written from the RFC, not from mxgate's code; shared by tests/tlsrpt.rs and
//! tests/cluster.rs.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mxgate_testkit::certs::TestCert;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// An HTTPS report collector (RFC 8460 §5.4): records every POST.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Post {
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

pub struct Collector {
    pub addr: SocketAddr,
    pub posts: Arc<Mutex<Vec<Post>>>,
    arrived: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start(cert: &TestCert) -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.server_config());
        let posts: Arc<Mutex<Vec<Post>>> = Arc::default();
        let arrived = Arc::new(Notify::new());
        let (p, a) = (posts.clone(), arrived.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, p, a) = (acceptor.clone(), p.clone(), a.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let head_end = loop {
                        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break pos + 4;
                        }
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                            })
                            .unwrap_or_default()
                    };
                    let len: usize = header("content-length").parse().unwrap_or(0);
                    while buf.len() < head_end + len {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let first: Vec<&str> = head.lines().next().unwrap_or("").split(' ').collect();
                    let post = Post {
                        path: first.get(1).unwrap_or(&"").to_string(),
                        content_type: header("content-type"),
                        body: buf[head_end..head_end + len].to_vec(),
                    };
                    let ok = first.first() == Some(&"POST");
                    let reply: &[u8] = if ok {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    } else {
                        b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    };
                    let _ = tls.write_all(reply).await;
                    let _ = tls.shutdown().await;
                    if ok {
                        p.lock().unwrap().push(post);
                        a.notify_waiters();
                    }
                });
            }
        });
        Collector {
            addr,
            posts,
            arrived,
            task,
        }
    }

    pub async fn wait_posts(&self, n: usize) -> Vec<Post> {
        tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.arrived.notified();
                if self.posts.lock().unwrap().len() >= n {
                    return self.posts.lock().unwrap().clone();
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "fewer than {n} reports POSTed: {:?}",
                self.posts.lock().unwrap().len()
            )
        })
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------
// The report as RFC 8460 §4.4 defines it, parsed independently of mxgate.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub result_type: String,
    pub receiving_mx_hostname: Option<String>,
    pub receiving_ip: Option<String>,
    pub failed_session_count: u64,
}

#[derive(Debug, Clone)]
pub struct PolicyResult {
    pub policy_type: String,
    pub policy_string: Vec<String>,
    pub policy_domain: String,
    pub mx_host: Vec<String>,
    pub successes: u64,
    pub failures: u64,
    pub details: Vec<Failure>,
}

#[derive(Debug, Clone)]
pub struct ParsedReport {
    pub organization_name: String,
    pub start: String,
    pub end: String,
    pub contact_info: String,
    pub report_id: String,
    pub policies: Vec<PolicyResult>,
}

pub fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("report: {key} missing or not a string in {v}"))
        .to_string()
}

pub fn num_field(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("report: {key} missing or not a number in {v}"))
}

pub fn strings(v: &Value, key: &str) -> Vec<String> {
    match v.get(key) {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().expect("array of strings").to_string())
            .collect(),
        Some(other) => panic!("report: {key} must be an array of strings: {other}"),
    }
}

/// RFC 8460 §4.4: `organization-name`, `date-range` {`start-datetime`,
/// `end-datetime`}, `contact-info`, `report-id`, `policies` [{`policy` {`policy-type`,
/// `policy-string`, `policy-domain`, `mx-host`}, `summary`
/// {`total-successful-session-count`, `total-failure-session-count`}, `failure-details`
/// [{`result-type`, `sending-mta-ip`, `receiving-mx-hostname`, `receiving-ip`,
/// `failed-session-count`, ...}]}].
pub fn parse_report(gzip: &[u8]) -> ParsedReport {
    assert_eq!(
        &gzip[..2],
        &[0x1f, 0x8b],
        "the report must be gzip-compressed"
    );
    let mut json = String::new();
    flate2::read::GzDecoder::new(gzip)
        .read_to_string(&mut json)
        .expect("gunzip");
    let v: Value = serde_json::from_str(&json).expect("report JSON");
    let range = v.get("date-range").expect("date-range");
    let rfc3339 = |s: &str| {
        assert!(
            s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T',
            "RFC 3339 UTC datetime: {s}"
        );
        s.to_string()
    };
    let policies = v
        .get("policies")
        .and_then(Value::as_array)
        .expect("policies array")
        .iter()
        .map(|p| {
            let policy = p.get("policy").expect("policy");
            let summary = p.get("summary").expect("summary");
            let details = match p.get("failure-details") {
                None => Vec::new(),
                Some(d) => d
                    .as_array()
                    .expect("failure-details array")
                    .iter()
                    .map(|f| Failure {
                        result_type: str_field(f, "result-type"),
                        receiving_mx_hostname: f
                            .get("receiving-mx-hostname")
                            .map(|s| s.as_str().unwrap().to_string()),
                        receiving_ip: f
                            .get("receiving-ip")
                            .map(|s| s.as_str().unwrap().to_string()),
                        failed_session_count: num_field(f, "failed-session-count"),
                    })
                    .collect(),
            };
            PolicyResult {
                policy_type: str_field(policy, "policy-type"),
                policy_string: strings(policy, "policy-string"),
                policy_domain: str_field(policy, "policy-domain"),
                mx_host: strings(policy, "mx-host"),
                successes: num_field(summary, "total-successful-session-count"),
                failures: num_field(summary, "total-failure-session-count"),
                details,
            }
        })
        .collect();
    ParsedReport {
        organization_name: str_field(&v, "organization-name"),
        start: rfc3339(&str_field(range, "start-datetime")),
        end: rfc3339(&str_field(range, "end-datetime")),
        contact_info: str_field(&v, "contact-info"),
        report_id: str_field(&v, "report-id"),
        policies,
    }
}
