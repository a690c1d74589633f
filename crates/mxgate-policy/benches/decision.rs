//! Cost of the cached policy decision (target: ≥ 1,000,000 decisions/s per core, docs/benchmarks.md).
//!
//! Two measurements, each reported by criterion as elements (decisions) per second:
//!
//! - `lookup+decide/*`: the pure path that runs for every message once the DNS facts
//!   are cached — the `[policy.domains]` lookup ([`PolicyConfig::domain_entry`], with
//!   1,000 configured entries) followed by the level choice ([`decide`]).
//! - `plan/warm-cache`: [`PolicyEngine::plan`] end to end, DNS answers served from the
//!   resolver's cache (a local [`DnsWorld`] answers the first lookup only), one
//!   current-thread tokio runtime; this includes the async shell and allocation.
//!
//! It does NOT measure cold lookups (network bound), MTA-STS fetches or TLS; run with
//! `cargo bench -p mxgate-policy --bench decision`. Single-threaded, so the figure is
//! per core.

// A benchmark's setup failing is a bug in the benchmark: panicking is the report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mxgate_config::{Config, DnsConfig, DnssecMode, DomainPolicy, Level, PolicyConfig};
use mxgate_dns::{DnsClient, DnssecStatus};
use mxgate_policy::decide::{decide, AddrFacts, DecisionInput, HostFacts, StsState, TlsaFacts};
use mxgate_policy::{PolicyEngine, TlsaRecord};
use mxgate_testkit::dns::{DnsWorld, Signing};

/// A `[policy.domains]` table of `n` entries: half exact names, half leading-dot suffixes,
/// plus the entries the scenarios below look up.
fn policy(n: usize) -> PolicyConfig {
    let entry = |level| DomainPolicy {
        level,
        match_names: Vec::new(),
        min_tls_version: None,
        on_tls_failure: None,
        shadow: None,
    };
    let mut domains = BTreeMap::new();
    for i in 0..n {
        let name = if i % 2 == 0 {
            format!("customer{i}.example")
        } else {
            format!(".tenant{i}.example")
        };
        domains.insert(name, entry(Level::Encrypt));
    }
    domains.insert("dane.example".to_string(), entry(Level::Dane));
    domains.insert(
        "partner.example".to_string(),
        DomainPolicy {
            match_names: vec!["mx1.partner.example".to_string()],
            ..entry(Level::Verify)
        },
    );
    PolicyConfig {
        default: Level::May,
        domains,
        ..PolicyConfig::default()
    }
}

/// The per-domain settings lookup and the level choice, as the engine runs them.
fn lookup_and_decide(p: &PolicyConfig, domain: &str, hosts: &[HostFacts]) -> usize {
    let (level, match_names) = match p.domain_entry(domain) {
        Some((_, e)) => (e.level, e.match_names.as_slice()),
        None => (p.default, &[][..]),
    };
    let decision = decide(&DecisionInput {
        level,
        fallback: p.fallback,
        match_names,
        mx_status: DnssecStatus::Insecure,
        hosts,
        sts: &StsState::NotConsulted,
    });
    decision.per_host.len()
}

fn host(name: &str, addrs: DnssecStatus, tlsa: TlsaFacts) -> HostFacts {
    HostFacts {
        host: name.to_string(),
        secure_alias: None,
        addrs: AddrFacts::Found(addrs),
        tlsa,
        tlsa_base: None,
    }
}

fn bench_decide(c: &mut Criterion) {
    let p = policy(1000);
    let tlsa = vec![TlsaRecord {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![0xab; 32],
    }];
    let scenarios = [
        (
            "may-unlisted",
            "mail.unlisted.example.net",
            vec![host(
                "mx.unlisted.example.net",
                DnssecStatus::Insecure,
                TlsaFacts::NotLooked,
            )],
        ),
        (
            "dane-secure",
            "dane.example",
            vec![host(
                "mx.dane.example",
                DnssecStatus::Secure,
                TlsaFacts::SecureUsable(tlsa),
            )],
        ),
        (
            "verify-match",
            "partner.example",
            vec![
                host(
                    "mx1.partner.example",
                    DnssecStatus::Insecure,
                    TlsaFacts::NotLooked,
                ),
                host(
                    "mx2.partner.example",
                    DnssecStatus::Insecure,
                    TlsaFacts::NotLooked,
                ),
            ],
        ),
    ];
    let mut group = c.benchmark_group("lookup+decide");
    group.throughput(Throughput::Elements(1));
    for (name, domain, hosts) in &scenarios {
        group.bench_function(*name, |b| {
            b.iter(|| lookup_and_decide(&p, std::hint::black_box(domain), hosts))
        });
    }
    group.finish();
}

fn bench_plan(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let world = runtime.block_on(async {
        DnsWorld::builder()
            .zone("insecure.test.", Signing::Insecure)
            .record("plain.insecure.test. 300 IN MX 10 mx.plain.insecure.test.")
            .record("mx.plain.insecure.test. 300 IN A 127.0.0.1")
            .start()
            .await
            .unwrap()
    });
    let mut policy = policy(1000);
    // dns.dnssec = "off" (no signed test zone needed) forbids DANE levels at startup.
    policy.domains.remove("dane.example");
    policy.cache_path = dir.path().join("policy");
    let config = Config {
        policy,
        dns: DnsConfig {
            nameservers: vec![world.addr()],
            dnssec: DnssecMode::Off,
            timeout: Duration::from_secs(2),
            ..DnsConfig::default()
        },
        ..Config::default()
    };
    let dns = Arc::new(DnsClient::new(&config.dns).unwrap());
    let engine = PolicyEngine::new(Arc::new(config), dns).unwrap();
    // The first plan fills the resolver cache; every later one is the cached path.
    let first = runtime
        .block_on(engine.plan("plain.insecure.test"))
        .unwrap();
    assert_eq!(first.level, Level::May);
    let queries = world.queries().len();

    let mut group = c.benchmark_group("plan");
    group.throughput(Throughput::Elements(1));
    group.bench_function("warm-cache", |b| {
        b.iter(|| runtime.block_on(engine.plan(std::hint::black_box("plain.insecure.test"))))
    });
    group.finish();
    // Had the cache missed, the numbers above would be DNS round trips, not decisions.
    assert_eq!(world.queries().len(), queries, "plan() went to DNS again");
}

criterion_group!(benches, bench_decide, bench_plan);
criterion_main!(benches);
