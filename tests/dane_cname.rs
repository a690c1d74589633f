//! End-to-end: DANE for MX hosts that are CNAME aliases (RFC 7672 §2.2.3), through the
//! real `mxgate` binary and the signed test DNS world.
//!
//! An MX host reached through a DNSSEC-secure CNAME chain has two TLSA base domains:
//! the expanded name first, then the MX host name itself. A chain with an insecure
//! link leaves the MX host name alone (and makes the addresses insecure, so no TLSA is
//! looked up at all, docs/policy.md). A bogus link defers. Each case is one
//! destination domain of one mxgate; `mxgate policy --json` names the base domain used
//! (`tlsa_base`).
//!
//! Not here: the decision table of base domains (mxgate-policy's unit tests), the CNAME
//! chain read-back itself (mxgate-dns's tests/world.rs), DANE without CNAMEs
//! (tests/tls_policy.rs).

#![allow(clippy::unwrap_used)]

mod common;
#[allow(dead_code)]
#[path = "tls_policy/support.rs"]
mod support;

use common::Mxgate;
use mxgate_testkit::certs::{sha256, TestCa, TestCert, Validity};
use mxgate_testkit::dns::{DnsWorld, DnsWorldBuilder, Signing};
use support::*;

/// `D. MX 10 mx.D.` and `mx.D. CNAME TARGET.`, `TARGET. A 127.0.0.n`.
fn aliased_mx(world: DnsWorldBuilder, domain: &str, target: &str, n: u8) -> DnsWorldBuilder {
    world
        .record(&format!("{domain}. 300 IN MX 10 mx.{domain}."))
        .record(&format!("mx.{domain}. 300 IN CNAME {target}."))
        .record(&format!("{target}. 300 IN A 127.0.0.{n}"))
}

/// The CNAME world: one destination domain per case, receivers on `127.0.0.2..=6`.
async fn cname_world(ca: &TestCa, port: u16) -> (DnsWorldBuilder, Vec<Case>) {
    // DANE-EE(3 1 1) ignores names and dates: a certificate for another name proves
    // that the TLSA records, not PKIX, authenticated the session.
    let cert = ca.issue(&["unrelated.example"], Validity::current());
    let spki = sha256(&cert.spki_der);
    let other = sha256(&TestCert::self_signed(&["other.example"]).spki_der);
    let mut world = DnsWorld::builder()
        .zone("a.test.", Signing::Secure)
        .zone("b.test.", Signing::Secure)
        .zone("u.test.", Signing::Insecure)
        .zone("x.test.", Signing::Bogus);
    let mut cases = Vec::new();

    // Both zones signed, TLSA only at the expanded name: DANE.
    let d = "secure.a.test";
    world = aliased_mx(world, d, "real1.b.test", 2).record(&tlsa(port, "real1.b.test", 3, &spki));
    cases.push(Case {
        domain: d.into(),
        mx: Mx::direct(2, port, tls_config(&cert)).await,
        expect: Expect::Tls(Some("dane-ee")),
    });

    // The CNAME in an unsigned zone: the TLSA records at the expanded name are not
    // used; `auto` falls back to opportunistic TLS.
    let d = "plain.u.test";
    world = aliased_mx(world, d, "real2.b.test", 3).record(&tlsa(port, "real2.b.test", 3, &spki));
    cases.push(Case {
        domain: d.into(),
        mx: Mx::direct(3, port, tls_config(&cert)).await,
        expect: Expect::Tls(Some("none")),
    });

    // Records at the expanded name decide: they do not match, so the matching records
    // at the MX host name are never consulted and the message defers.
    let d = "mismatch.a.test";
    world = aliased_mx(world, d, "real3.b.test", 4)
        .record(&tlsa(port, "real3.b.test", 3, &other))
        .record(&tlsa(port, &format!("mx.{d}"), 3, &spki));
    cases.push(Case {
        domain: d.into(),
        mx: Mx::direct(4, port, tls_config(&cert)).await,
        expect: Expect::Deferred,
    });

    // Securely no TLSA at the expanded name: the MX host name's records apply.
    let d = "orig.a.test";
    world =
        aliased_mx(world, d, "real4.b.test", 5).record(&tlsa(port, &format!("mx.{d}"), 3, &spki));
    cases.push(Case {
        domain: d.into(),
        mx: Mx::direct(5, port, tls_config(&cert)).await,
        expect: Expect::Tls(Some("dane-ee")),
    });

    // The CNAME in a bogus zone: defers without dialling, never downgrades.
    let d = "link.a.test";
    world = world
        .record(&format!("{d}. 300 IN MX 10 mx.link.x.test."))
        .record("mx.link.x.test. 300 IN CNAME real5.b.test.")
        .record("real5.b.test. 300 IN A 127.0.0.6")
        .record(&tlsa(port, "real5.b.test", 3, &spki));
    cases.push(Case {
        domain: d.into(),
        mx: Mx::direct(6, port, tls_config(&cert)).await,
        expect: Expect::DeferredUndialled,
    });

    (world, cases)
}

/// Every case's outcome, then what `mxgate policy --json` says about it.
async fn check_cname_cases(gate: &Mxgate, cases: &[Case]) {
    run_cases(gate, cases).await;

    // `mxgate policy --json` names the TLSA base domain and the reference names.
    let v = policy_json(gate, "secure.a.test");
    let mx = &v["mx"][0];
    assert_eq!(mx["host"], "mx.secure.a.test", "{v}");
    assert_eq!(mx["tlsa_base"], "real1.b.test", "{v}");
    assert_eq!(mx["tlsa_state"], "secure usable", "{v}");
    assert_eq!(
        mx["requirement"], "dane (real1.b.test, mx.secure.a.test)",
        "{v}"
    );
    assert_eq!(v["source"], "dane", "{v}");

    let v = policy_json(gate, "plain.u.test");
    let mx = &v["mx"][0];
    assert_eq!(mx["address_dnssec"], "insecure", "{v}");
    assert!(mx["tlsa_base"].is_null(), "{v}");
    assert_eq!(mx["tlsa_state"], "not looked up", "{v}");
    assert_eq!(mx["requirement"], "may", "{v}");

    let v = policy_json(gate, "mismatch.a.test");
    assert_eq!(v["mx"][0]["tlsa_base"], "real3.b.test", "{v}");

    let v = policy_json(gate, "orig.a.test");
    let mx = &v["mx"][0];
    assert_eq!(mx["tlsa_base"], "mx.orig.a.test", "{v}");
    assert_eq!(
        mx["requirement"], "dane (mx.orig.a.test, real4.b.test)",
        "{v}"
    );

    let line = log_line(gate, "mismatch.a.test", "deferred").await;
    assert!(line.to_ascii_lowercase().contains("dane"), "{line}");
    let line = log_line(gate, "secure.a.test", "sent").await;
    assert!(line.contains("source=dane"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsa_at_the_expanded_name_only_through_a_secure_chain() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CNAME Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let port = common::free_port();
    let (world, cases) = cname_world(&ca, port).await;
    let world = world.start().await.unwrap();
    let s = settings(&world, world.addr(), port, &ca_path, "validate");
    let gate = Mxgate::start(dir.path(), &s);
    check_cname_cases(&gate, &cases).await;
}

/// The same through a real validating resolver (unbound): in `trust-ad` mode the
/// chain is as secure as the AD bit of the answer that carried it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsa_at_the_expanded_name_with_trust_ad_through_unbound() {
    use mxgate_testkit::dns::unbound::Unbound;
    if !Unbound::available() {
        eprintln!("unbound not installed: skipping the trust-ad test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("CNAME AD Root");
    let ca_path = dir.path().join("ca.pem");
    ca.write_pem(&ca_path).unwrap();
    let port = common::free_port();
    let (world, cases) = cname_world(&ca, port).await;
    let world = world.start().await.unwrap();
    let unbound = Unbound::start(&world).await.unwrap();
    let s = settings(&world, unbound.addr(), port, &ca_path, "trust-ad");
    let gate = Mxgate::start(dir.path(), &s);
    check_cname_cases(&gate, &cases).await;
}
