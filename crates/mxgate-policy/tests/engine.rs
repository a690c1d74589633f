//! The engine against a real signed DNS world and a real HTTPS policy server.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use mxgate_config::{Config, DnsConfig, DnssecMode, DomainPolicy, Level};
use mxgate_dns::DnsClient;
use mxgate_policy::sts::fetch::{FetchError, FetchFailure};
use mxgate_policy::{
    CacheWrite, PlanError, PolicyEngine, PolicySource, SkipReason, TlsRequirement,
};
use mxgate_testkit::certs::{TestCa, Validity};
use mxgate_testkit::dns::{DnsWorld, Fault, Signing};
use mxgate_testkit::https::{HttpResponse, HttpsServer};

const TLSA_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const ENFORCE: &str =
    "version: STSv1\nmode: enforce\nmx: mx.sts.insecure.test\nmx: *.secure.test\nmax_age: 86400\n";

struct World {
    dns: DnsWorld,
    https: HttpsServer,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    let dns = DnsWorld::builder()
        .zone("secure.test.", Signing::Secure)
        .zone("insecure.test.", Signing::Insecure)
        .zone("bogus.test.", Signing::BogusExpired)
        // DANE domain that also publishes an MTA-STS policy.
        .record("dane.secure.test. 300 IN MX 10 mx.secure.test.")
        .record("mx.secure.test. 300 IN A 127.0.0.1")
        .record(&format!(
            "_25._tcp.mx.secure.test. 300 IN TLSA 3 1 1 {TLSA_HEX}"
        ))
        .record("_mta-sts.dane.secure.test. 300 IN TXT \"v=STSv1; id=1\"")
        .record("mta-sts.dane.secure.test. 300 IN A 127.0.0.1")
        // Secure MX without TLSA, and one with only unusable TLSA records.
        .record("notlsa.secure.test. 300 IN MX 10 mx2.secure.test.")
        .record("mx2.secure.test. 300 IN A 127.0.0.1")
        // mx2 has a TLSA record for port 2525 only.
        .record(&format!(
            "_2525._tcp.mx2.secure.test. 300 IN TLSA 3 1 1 {TLSA_HEX}"
        ))
        .record("unusable.secure.test. 300 IN MX 10 mx3.secure.test.")
        .record("mx3.secure.test. 300 IN A 127.0.0.1")
        .record(&format!(
            "_25._tcp.mx3.secure.test. 300 IN TLSA 1 1 1 {TLSA_HEX}"
        ))
        .record("tlsafail.secure.test. 300 IN MX 10 mx4.secure.test.")
        .record("mx4.secure.test. 300 IN A 127.0.0.1")
        .fault("_25._tcp.mx4.secure.test.", None, Fault::ServFail)
        .record("null.secure.test. 300 IN MX 0 .")
        // Half-DANE: insecure MX RRset pointing into the secure zone.
        .record("half.insecure.test. 300 IN MX 10 mx.secure.test.")
        // MTA-STS domain: one MX in the policy, one not.
        .record("sts.insecure.test. 300 IN MX 10 mx.sts.insecure.test.")
        .record("sts.insecure.test. 300 IN MX 20 evil.insecure.test.")
        .record("mx.sts.insecure.test. 300 IN A 127.0.0.1")
        .record("evil.insecure.test. 300 IN A 127.0.0.1")
        .record("_mta-sts.sts.insecure.test. 300 IN TXT \"v=STSv1; id=20240101\"")
        .record("mta-sts.sts.insecure.test. 300 IN A 127.0.0.1")
        // MTA-STS announced, but the policy host's certificate names other hosts.
        .record("wrongname.insecure.test. 300 IN MX 10 mx.plain.insecure.test.")
        .record("_mta-sts.wrongname.insecure.test. 300 IN TXT \"v=STSv1; id=1\"")
        .record("mta-sts.wrongname.insecure.test. 300 IN A 127.0.0.1")
        // Neither DANE nor MTA-STS; an implicit MX.
        .record("plain.insecure.test. 300 IN MX 10 mx.plain.insecure.test.")
        .record("mx.plain.insecure.test. 300 IN A 127.0.0.1")
        .record("implicit.insecure.test. 300 IN A 127.0.0.9")
        .record("bogus.test. 300 IN MX 10 mx.bogus.test.")
        .record("mx.bogus.test. 300 IN A 127.0.0.1")
        .start()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Policy CA");
    ca.write_pem(&dir.path().join("ca.pem")).unwrap();
    let cert = ca.issue(
        &["mta-sts.sts.insecure.test", "mta-sts.dane.secure.test"],
        Validity::current(),
    );
    let https = HttpsServer::start(cert.server_config()).await.unwrap();
    https.serve_policy("sts.insecure.test", HttpResponse::policy(ENFORCE));
    https.serve_policy("dane.secure.test", HttpResponse::policy(ENFORCE));
    World { dns, https, dir }
}

fn engine(w: &World, tweak: impl FnOnce(&mut Config)) -> PolicyEngine {
    let mut config = Config::default();
    config.delivery.ca_file = w.dir.path().join("ca.pem");
    config.policy.cache_path = w.dir.path().join("policy");
    config.policy.mta_sts_port = w.https.port();
    config.policy.mta_sts_timeout = Duration::from_secs(3);
    config.dns = DnsConfig {
        nameservers: vec![w.dns.addr()],
        dnssec: DnssecMode::Validate,
        trust_anchor: w.dns.trust_anchor_path().to_path_buf(),
        timeout: Duration::from_millis(500),
        ..DnsConfig::default()
    };
    tweak(&mut config);
    let dns = DnsClient::new(&config.dns).unwrap();
    PolicyEngine::new(Arc::new(config), Arc::new(dns)).unwrap()
}

/// RFC 7672 §2.2.3: the TLSA records are those of the port the plan is dialled on.
#[tokio::test]
async fn the_plan_names_the_port_whose_tlsa_records_it_looked_up() {
    let w = world().await;
    let on_25 = engine(&w, |_| {});
    let p = on_25.plan("notlsa.secure.test").await.unwrap();
    assert_eq!(p.port, 25);
    assert!(!matches!(
        p.mx[0].requirement,
        Ok(TlsRequirement::Dane { .. })
    ));
    let p = on_25.plan("dane.secure.test").await.unwrap();
    assert_eq!((p.port, p.source), (25, PolicySource::Dane));

    let on_2525 = engine(&w, |c| c.delivery.smtp_port = 2525);
    let p = on_2525.plan("notlsa.secure.test").await.unwrap();
    assert_eq!((p.port, p.source), (2525, PolicySource::Dane));
    assert!(matches!(
        p.mx[0].requirement,
        Ok(TlsRequirement::Dane { .. })
    ));
    let p = on_2525.plan("dane.secure.test").await.unwrap();
    assert_eq!(p.port, 2525);
    assert_ne!(p.source, PolicySource::Dane, "no TLSA record at _2525._tcp");
}

#[tokio::test]
async fn auto_level_in_a_real_world() {
    let w = world().await;
    let e = engine(&w, |_| {});

    // DANE wins over a valid MTA-STS policy, and the policy is not even fetched.
    let p = e.plan("dane.secure.test").await.unwrap();
    assert_eq!((p.level, p.source), (Level::Dane, PolicySource::Dane));
    assert!(
        matches!(&p.mx[0].requirement, Ok(TlsRequirement::Dane { names, .. }) if names == &["mx.secure.test"])
    );
    assert_eq!(w.https.requests("mta-sts.dane.secure.test"), 0);

    // Half-DANE.
    let p = e.plan("half.insecure.test").await.unwrap();
    assert_eq!(p.source, PolicySource::Dane);
    assert!(matches!(
        p.mx[0].requirement,
        Ok(TlsRequirement::Dane { .. })
    ));

    // Only unusable TLSA records: TLS mandatory, unauthenticated.
    let p = e.plan("unusable.secure.test").await.unwrap();
    assert_eq!(p.mx[0].requirement, Ok(TlsRequirement::Encrypt));

    // TLSA SERVFAIL: never dialled, never MTA-STS or cleartext.
    let p = e.plan("tlsafail.secure.test").await.unwrap();
    assert!(
        p.mx[0]
            .requirement
            .as_ref()
            .is_err_and(|e| matches!(e, SkipReason::TlsaLookup { .. })),
        "{:?}",
        p.mx[0]
    );

    // MTA-STS enforce: the MX outside the policy is skipped.
    let p = e.plan("sts.insecure.test").await.unwrap();
    assert_eq!((p.level, p.source), (Level::MtaSts, PolicySource::MtaSts));
    assert_eq!(
        p.mx[0].requirement,
        Ok(TlsRequirement::Pkix {
            names: vec!["mx.sts.insecure.test".into()]
        })
    );
    assert_eq!(
        p.mx[1].requirement,
        Err(SkipReason::NotInMtaStsPolicy {
            host: "evil.insecure.test".into()
        })
    );

    // Neither: fallback `may`; implicit MX; secure MX without TLSA.
    let p = e.plan("plain.insecure.test").await.unwrap();
    assert_eq!((p.level, p.source), (Level::May, PolicySource::Fallback));
    assert_eq!(p.mx[0].requirement, Ok(TlsRequirement::Opportunistic));
    let p = e.plan("implicit.insecure.test").await.unwrap();
    assert_eq!(p.mx[0].host, "implicit.insecure.test");
    assert_eq!(
        p.mx[0].addrs,
        vec!["127.0.0.9".parse::<std::net::IpAddr>().unwrap()]
    );
    let p = e.plan("notlsa.secure.test").await.unwrap();
    assert_eq!(p.source, PolicySource::Fallback);

    // DNS outcomes.
    assert_eq!(
        e.plan("null.secure.test").await,
        Err(PlanError::NullMx {
            domain: "null.secure.test".into()
        })
    );
    let nx = e.plan("nope.secure.test").await.unwrap_err();
    assert!(nx.is_permanent(), "{nx:?}");
    let bogus = e.plan("bogus.test").await.unwrap_err();
    assert!(!bogus.is_permanent(), "{bogus:?}");

    // The report.
    let x =
        serde_json::to_value(e.explain("sts.insecure.test", CacheWrite::ReadOnly).await).unwrap();
    assert_eq!(x["source"], "mta-sts");
    assert_eq!(x["mx"][0]["dnssec"], "insecure");
    assert_eq!(x["mta_sts"]["mode"], "enforce");
    assert_eq!(x["mta_sts"]["id"], "20240101");
    let x =
        serde_json::to_value(e.explain("dane.secure.test", CacheWrite::ReadOnly).await).unwrap();
    assert_eq!(x["mx"][0]["dnssec"], "secure");
    assert_eq!(x["mx"][0]["tlsa"][0], format!("3 1 1 {TLSA_HEX}"));
}

#[tokio::test]
async fn mta_sts_policy_survives_server_outage_and_restart() {
    let mut w = world().await;
    let e = engine(&w, |_| {});
    assert_eq!(
        e.plan("sts.insecure.test").await.unwrap().source,
        PolicySource::MtaSts
    );
    assert_eq!(w.https.requests("mta-sts.sts.insecure.test"), 1);
    w.https.stop();
    drop(e);
    // A new engine (a restart) with the policy server down still enforces.
    let e = engine(&w, |_| {});
    let p = e.plan("sts.insecure.test").await.unwrap();
    assert_eq!((p.level, p.source), (Level::MtaSts, PolicySource::MtaSts));
    assert!(p.mx[1].requirement.is_err());
}

/// RFC 8461 §5: a policy that cannot be fetched or validated means delivery as though
/// the domain had none; the plan keeps why, classed as RFC 8460 §4.3.2.2 does.
#[tokio::test]
async fn bad_policies_are_no_policy() {
    let w = world().await;
    for (bad, class) in [
        (
            HttpResponse::status(200)
                .header("Content-Type", "text/html")
                .body(ENFORCE.as_bytes()),
            FetchFailure::Fetch,
        ),
        (
            HttpResponse::redirect(302, "https://mta-sts.sts.insecure.test/other"),
            FetchFailure::Fetch,
        ),
        (HttpResponse::status(404), FetchFailure::Fetch),
        (
            HttpResponse::policy(&format!("{ENFORCE}{}", "x: y\n".repeat(20000))),
            FetchFailure::Fetch,
        ),
        (
            HttpResponse::policy("version: STSv1\nmode: enforce\n"),
            FetchFailure::Invalid,
        ),
        (
            HttpResponse::policy("version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n"),
            FetchFailure::Invalid,
        ),
    ] {
        // A fresh engine per case: one engine does not fetch the same announced id
        // again within its back-off (below).
        let e = engine(&w, |_| {});
        w.https.serve_policy("sts.insecure.test", bad.clone());
        let p = e.plan("sts.insecure.test").await.unwrap();
        assert_eq!(p.source, PolicySource::Fallback, "{bad:?}");
        let failure = p.mta_sts_failure.as_ref().expect("the failure is kept");
        assert_eq!(failure.class(), class, "{bad:?}: {failure}");
    }
    // Within the back-off the same id is not fetched again: the failure stays
    // reported even once the policy is served again...
    let e = engine(&w, |_| {});
    w.https
        .serve_policy("sts.insecure.test", HttpResponse::status(404));
    assert!(e
        .plan("sts.insecure.test")
        .await
        .unwrap()
        .mta_sts_failure
        .is_some());
    w.https
        .serve_policy("sts.insecure.test", HttpResponse::policy(ENFORCE));
    let p = e.plan("sts.insecure.test").await.unwrap();
    assert_eq!(p.source, PolicySource::Fallback);
    assert!(p.mta_sts_failure.is_some());
    // ...and a policy that is served clears it once fetched (here: a new engine, as
    // after the back-off).
    let e = engine(&w, |_| {});
    let p = e.plan("sts.insecure.test").await.unwrap();
    assert_eq!((p.source, p.mta_sts_failure), (PolicySource::MtaSts, None));
    // Without a TXT record there is nothing to report.
    assert_eq!(
        e.plan("plain.insecure.test").await.unwrap().mta_sts_failure,
        None
    );
}

/// RFC 8461 §3.3: the policy host's certificate must be valid for `mta-sts.DOMAIN`:
/// one for other names fails PKIX validation (RFC 8460 `sts-webpki-invalid`), and the
/// request is never sent.
#[tokio::test]
async fn a_policy_host_certificate_for_other_names_is_a_webpki_failure() {
    let w = world().await;
    let e = engine(&w, |_| {});
    let p = e.plan("wrongname.insecure.test").await.unwrap();
    assert_eq!(p.source, PolicySource::Fallback);
    let failure = p.mta_sts_failure.expect("the failure is kept");
    assert_eq!(failure.class(), FetchFailure::Webpki, "{failure}");
    assert!(matches!(failure, FetchError::Certificate(_)), "{failure:?}");
    assert_eq!(w.https.requests("mta-sts.wrongname.insecure.test"), 0);
}

#[tokio::test]
async fn configured_levels() {
    let w = world().await;
    let e = engine(&w, |c| {
        let mut add = |d: &str, level, names: &[&str]| {
            c.policy.domains.insert(
                d.into(),
                DomainPolicy {
                    level,
                    match_names: names.iter().map(|s| s.to_string()).collect(),
                    min_tls_version: None,
                    on_tls_failure: None,
                    shadow: None,
                },
            );
        };
        add(
            "plain.insecure.test",
            Level::Verify,
            &["mx1.partner.example"],
        );
        add(".secure.test", Level::DaneOnly, &[]);
        add("sts.insecure.test", Level::None, &[]);
    });
    let p = e.plan("plain.insecure.test").await.unwrap();
    assert_eq!((p.level, p.source), (Level::Verify, PolicySource::Config));
    assert_eq!(
        p.mx[0].requirement,
        Ok(TlsRequirement::Pkix {
            names: vec!["mx1.partner.example".into()]
        })
    );
    let p = e.plan("notlsa.secure.test").await.unwrap();
    assert!(p.mx[0]
        .requirement
        .as_ref()
        .is_err_and(|e| matches!(e, SkipReason::DaneOnlyNoTlsa { .. })));
    let p = e.plan("sts.insecure.test").await.unwrap();
    assert!(p
        .mx
        .iter()
        .all(|m| m.requirement == Ok(TlsRequirement::Cleartext)));
}
