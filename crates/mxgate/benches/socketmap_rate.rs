//! Socketmap cached lookup rate: the real `mxgate run` answering Postfix-style
//! netstring lookups for MTA-STS `enforce` domains whose policies are cached, against
//! postfix-mta-sts-resolver's responder with the same policies in its in-memory cache
//! (bench/socketmap/resolver_cached.py), driven by the same load client.
//!
//! Run through `bench/socketmap/run.sh` (docs/benchmarks.md). Environment:
//! `DOMAINS` (100), `CONNECTIONS` (8 concurrent Postfix-like clients, one lookup at a
//! time each), `SECONDS` (5 per contender), `MTA_STS_RESOLVER_PYTHON` (a python3 that
//! can import `postfix_mta_sts_resolver`; unset = mxgate only), `CLUSTER_REDIS`
//! (a `redis://` URL: mxgate is measured a second time with `[cluster] redis` set, and
//! the shared cache's own cost, one policy read from Redis, is timed).

// Real processes on the real clock: the clock rule of clippy.toml is for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mxgate_testkit::certs::{TestCa, Validity};
use mxgate_testkit::dns::{DnsWorld, Signing};
use mxgate_testkit::https::{HttpResponse, HttpsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn domain(i: usize) -> String {
    format!("d{i}.bench.test")
}

/// One lookup on an open connection: the reply payload.
async fn lookup(stream: &mut TcpStream, buf: &mut Vec<u8>, key: &str) -> String {
    let request = format!("postfix {key}");
    let frame = format!("{}:{request},", request.len());
    stream.write_all(frame.as_bytes()).await.unwrap();
    buf.clear();
    loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(colon) = buf.iter().position(|&b| b == b':') {
            let len: usize = std::str::from_utf8(&buf[..colon]).unwrap().parse().unwrap();
            if buf.len() > colon + len {
                return String::from_utf8_lossy(&buf[colon + 1..colon + 1 + len]).into_owned();
            }
        }
    }
}

async fn wait_accepting(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} never accepted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every domain answered `OK secure ...` once (fills mxgate's caches).
async fn warm(addr: SocketAddr, domains: usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..domains {
        let answer = lookup(&mut s, &mut buf, &domain(i)).await;
        assert!(
            answer.starts_with("OK secure match="),
            "{}: {answer}",
            domain(i)
        );
    }
}

/// `connections` clients, each one lookup at a time, for `seconds`: lookups per second.
async fn measure(addr: SocketAddr, domains: usize, connections: usize, seconds: u64) -> f64 {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        tasks.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut buf = Vec::new();
            let mut n = 0u64;
            let mut i = c;
            while Instant::now() < deadline {
                let answer = lookup(&mut s, &mut buf, &domain(i % domains)).await;
                assert!(answer.starts_with("OK secure"), "{answer}");
                n += 1;
                i += 7;
            }
            n
        });
    }
    let mut total = 0u64;
    while let Some(n) = tasks.join_next().await {
        total += n.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

fn toml_path(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    // The bench harness passes `--bench`; nothing to parse.
    let domains = env_or("DOMAINS", 100);
    let connections = env_or("CONNECTIONS", 8);
    let seconds = env_or("SECONDS", 5) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Bench Root");
        let ca_path = dir.path().join("ca.pem");
        ca.write_pem(&ca_path).unwrap();
        let names: Vec<String> = (0..domains).map(|i| format!("mta-sts.{}", domain(i))).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let https = HttpsServer::start(ca.issue(&refs, Validity::current()).server_config())
            .await
            .unwrap();
        let mut world = DnsWorld::builder().zone("bench.test.", Signing::Insecure);
        for i in 0..domains {
            let d = domain(i);
            world = world
                .record(&format!("{d}. 3600 IN MX 10 mx.{d}."))
                .record(&format!("mx.{d}. 3600 IN A 127.0.0.2"))
                // An AAAA record too: with only A records, every plan asks the DNS
                // server for AAAA again (the NODATA answer is not served from cache),
                // which measures the DNS server rather than the cached path
                // (docs/benchmarks.md; NODATA_AAAA=1 leaves it out).
                .record(&if std::env::var_os("NODATA_AAAA").is_some() {
                    format!("mx.{d}. 3600 IN TXT \"no AAAA\"")
                } else {
                    format!("mx.{d}. 3600 IN AAAA ::1")
                })
                .record(&format!("_mta-sts.{d}. 3600 IN TXT \"v=STSv1; id=1\""))
                .record(&format!("mta-sts.{d}. 3600 IN A 127.0.0.1"));
            https.serve_policy(
                &d,
                HttpResponse::policy(&format!(
                    "version: STSv1\r\nmode: enforce\r\nmx: mx.{d}\r\nmax_age: 86400\r\n"
                )),
            );
        }
        let world = world.start().await.unwrap();

        let redis_url = std::env::var("CLUSTER_REDIS").ok();
        let run_mxgate = |cluster: Option<&str>, name: &str| {
        let socketmap = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cluster = cluster
            .map(|url| format!("[cluster]\nredis = \"{url}\"\n"))
            .unwrap_or_default();
        let state = dir.path().join(name);
        std::fs::create_dir_all(&state).unwrap();
        let config = format!(
            r#"
[listener]
listen = ["{listen}"]
[queue]
path = {queue}
[delivery]
ca_file = {ca}
[dns]
nameservers = ["{dns}"]
dnssec = "validate"
trust_anchor = {anchor}
[policy]
mta_sts_port = {sts_port}
cache_path = {cache}
[metrics]
listen = ""
[control]
socket = {control}
[socketmap]
listen = "{socketmap}"
{cluster}
"#,
            queue = toml_path(&state.join("queue")),
            ca = toml_path(&ca_path),
            dns = world.addr(),
            anchor = toml_path(world.trust_anchor_path()),
            sts_port = https.port(),
            cache = toml_path(&state.join("policy")),
            control = toml_path(&state.join("control.sock")),
        );
        let config_path = state.join("mxgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let gate = Killed(
            Command::new(env!("CARGO_BIN_EXE_mxgate"))
                .arg("run")
                .arg("--config")
                .arg(&config_path)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        (gate, socketmap)
        };
        let (gate, socketmap) = run_mxgate(None, "alone");
        wait_accepting(socketmap).await;
        warm(socketmap, domains).await;
        let queries = world.queries().len();
        let fetches = https.seen().len();
        let mxgate = measure(socketmap, domains, connections, seconds).await;
        if std::env::var_os("SHOW_QUERIES").is_some() {
            let mut kinds = std::collections::BTreeMap::new();
            for (name, rtype) in &world.queries()[queries..] {
                let label = name.to_string();
                let label = label.split('.').next().unwrap_or("").to_string();
                *kinds.entry(format!("{rtype} {}", if label.starts_with('d') { "dN" } else { &label })).or_insert(0) += 1;
            }
            println!("queries while measured: {kinds:?}");
        }
        drop(gate);
        println!(
            "socketmap cached lookups: mxgate {mxgate:.0}/s ({domains} domains, {connections} connections, {seconds} s; {} DNS queries and {} policy fetches while measured)",
            world.queries().len() - queries,
            https.seen().len() - fetches,
        );

        if let Some(url) = &redis_url {
            let (gate, socketmap) = run_mxgate(Some(url), "cluster");
            wait_accepting(socketmap).await;
            warm(socketmap, domains).await;
            let clustered = measure(socketmap, domains, connections, seconds).await;
            drop(gate);
            println!("socketmap cached lookups: mxgate with [cluster] redis {clustered:.0}/s");
            // What a lookup pays when it consults Redis (local copy missing, expired or
            // due for refresh): one policy read, as the store does it.
            let cluster = mxgate_cluster::Cluster::new(url).unwrap();
            assert!(cluster.check().await, "redis at {url} does not answer");
            let shared = mxgate_cluster::policy::RedisPolicyCache::new(cluster);
            use mxgate_policy::sts::shared::SharedPolicyCache;
            let reads = 20_000;
            let start = Instant::now();
            for i in 0..reads {
                let p = shared.get(&domain(i % domains)).await;
                assert!(p.is_some(), "policy of {} not in redis", domain(i % domains));
            }
            let per = start.elapsed() / reads as u32;
            println!("shared cache: one policy read from redis {:.1} µs ({reads} sequential reads)", per.as_secs_f64() * 1e6);
        }

        let Ok(python) = std::env::var("MTA_STS_RESOLVER_PYTHON") else {
            println!("postfix-mta-sts-resolver: not measured (MTA_STS_RESOLVER_PYTHON unset)");
            return;
        };
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/socketmap/resolver_cached.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(domains.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let resolver = Killed(child);
        let mut ready = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut ready).unwrap();
        assert_eq!(&ready, b"READY\n");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        warm(addr, domains).await;
        let theirs = measure(addr, domains, connections, seconds).await;
        drop(resolver);
        println!("socketmap cached lookups: postfix-mta-sts-resolver {theirs:.0}/s (same load)");
        println!("ratio: {:.1}x", mxgate / theirs);
    });
}
