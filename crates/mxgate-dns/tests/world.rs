//! Lookups against the test kit's authoritative server with really signed zones.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mxgate_config::{DnsConfig, DnssecMode};
use mxgate_dns::{Alias, Answer, DnsClient, DnsError, DnssecStatus, MxLookup};
use mxgate_testkit::dns::{DnsWorld, Signing};

async fn world() -> DnsWorld {
    DnsWorld::builder()
        .zone("secure.test.", Signing::Secure)
        .zone("insecure.test.", Signing::Insecure)
        .zone("bogus.test.", Signing::BogusSignature)
        .zone("wrongds.test.", Signing::Bogus)
        .zone("expired.test.", Signing::BogusExpired)
        .record("wrongds.test. 300 IN MX 10 mx.wrongds.test.")
        .record("expired.test. 300 IN MX 10 mx.expired.test.")
        .record("secure.test. 300 IN MX 10 mx.secure.test.")
        .record("mx.secure.test. 300 IN A 127.0.0.1")
        .record("_25._tcp.mx.secure.test. 300 IN TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        .record("_mta-sts.secure.test. 300 IN TXT \"v=STSv1; id=abc\"")
        .record("null.secure.test. 300 IN MX 0 .")
        .record("nomx.secure.test. 300 IN A 127.0.0.2")
        .record("insecure.test. 300 IN MX 10 mx.insecure.test.")
        .record("mx.insecure.test. 300 IN A 127.0.0.3")
        .record("bogus.test. 300 IN MX 10 mx.bogus.test.")
        .record("mx.bogus.test. 300 IN A 127.0.0.4")
        .record("slow.secure.test. 300 IN A 127.0.0.5")
        .record("alias.secure.test. 300 IN CNAME hop.secure.test.")
        .record("hop.secure.test. 300 IN CNAME MX.secure.test.")
        .record("alias.insecure.test. 300 IN CNAME mx.secure.test.")
        .drop_queries_for("slow.secure.test.")
        .start()
        .await
        .unwrap()
}

fn client(w: &DnsWorld, mode: DnssecMode) -> DnsClient {
    DnsClient::new(&DnsConfig {
        nameservers: vec![w.addr()],
        dnssec: mode,
        trust_anchor: w.trust_anchor_path().to_path_buf(),
        timeout: Duration::from_millis(500),
        ..DnsConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn validate_mode_reports_each_status() {
    let w = world().await;
    let c = client(&w, DnssecMode::Validate);

    let mx = c.mx("secure.test").await.unwrap();
    match &mx {
        MxLookup::Mx { hosts, status } => {
            assert_eq!(hosts[0].host, "mx.secure.test");
            assert_eq!(*status, DnssecStatus::Secure);
        }
        other => panic!("{other:?}"),
    }
    let a = c.addresses("mx.secure.test").await.unwrap();
    assert_eq!(a.status(), DnssecStatus::Secure);
    assert_eq!(
        a.records(),
        &["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    let t = c.tlsa(25, "mx.secure.test").await.unwrap();
    assert_eq!(t.status(), DnssecStatus::Secure);
    assert_eq!(
        (
            t.records()[0].usage,
            t.records()[0].selector,
            t.records()[0].matching
        ),
        (3, 1, 1)
    );
    let txt = c.txt("_mta-sts.secure.test").await.unwrap();
    assert_eq!(txt.records(), &["v=STSv1; id=abc".to_string()]);

    // Secure denials.
    let none = c.tlsa(25, "mx2.secure.test").await.unwrap();
    assert_eq!(
        none,
        Answer::NxDomain {
            status: DnssecStatus::Secure
        }
    );
    let insecure_none = c.tlsa(25, "mx.insecure.test").await.unwrap();
    assert_eq!(
        insecure_none,
        Answer::NxDomain {
            status: DnssecStatus::Insecure
        }
    );
    assert_eq!(
        c.mx("null.secure.test").await.unwrap(),
        MxLookup::NullMx {
            status: DnssecStatus::Secure
        }
    );
    assert!(matches!(
        c.mx("nomx.secure.test").await.unwrap(),
        MxLookup::NoMx { .. }
    ));
    assert!(matches!(
        c.mx("nxdomain.secure.test").await.unwrap(),
        MxLookup::NxDomain { .. }
    ));

    // Insecure delegation.
    let mx = c.mx("insecure.test").await.unwrap();
    assert_eq!(mx.status(), DnssecStatus::Insecure, "{mx:?}");
    assert_eq!(
        c.addresses("mx.insecure.test").await.unwrap().status(),
        DnssecStatus::Insecure
    );

    // Bogus zones, all three kinds, positive and negative answers.
    for name in ["bogus.test", "wrongds.test", "expired.test"] {
        let bogus = c.mx(name).await;
        assert!(
            matches!(bogus, Err(DnsError::Bogus { .. })),
            "{name}: {bogus:?}"
        );
    }
    let bogus_nx = c.tlsa(25, "mx.bogus.test").await;
    assert!(
        matches!(bogus_nx, Err(DnsError::Bogus { .. })),
        "{bogus_nx:?}"
    );

    // A server that never answers is a temporary failure.
    let slow = c.addresses("slow.secure.test").await;
    assert!(matches!(slow, Err(DnsError::Temporary { .. })), "{slow:?}");
}

#[tokio::test]
async fn off_mode_is_insecure_even_for_signed_zones() {
    let w = world().await;
    let c = client(&w, DnssecMode::Off);
    let mx = c.mx("secure.test").await.unwrap();
    assert_eq!(mx.status(), DnssecStatus::Insecure);
    // Without validation the bogus zone's data is simply returned.
    assert!(matches!(
        c.mx("bogus.test").await.unwrap(),
        MxLookup::Mx { .. }
    ));
}

#[tokio::test]
async fn trust_ad_mode_through_unbound() {
    use mxgate_testkit::dns::unbound::Unbound;
    if !Unbound::available() {
        eprintln!("unbound not installed: skipping");
        return;
    }
    let w = world().await;
    let u = Unbound::start(&w).await.unwrap();
    let c = DnsClient::new(&DnsConfig {
        nameservers: vec![u.addr()],
        dnssec: DnssecMode::TrustAd,
        trust_anchor: Default::default(),
        timeout: Duration::from_secs(2),
        ..DnsConfig::default()
    })
    .unwrap();
    let mx = c.mx("secure.test").await.unwrap();
    assert_eq!(mx.status(), DnssecStatus::Secure, "{mx:?}\n{}", u.log());
    let t = c.tlsa(25, "mx.secure.test").await.unwrap();
    assert_eq!(t.status(), DnssecStatus::Secure);
    assert_eq!(
        c.mx("insecure.test").await.unwrap().status(),
        DnssecStatus::Insecure
    );
    // unbound answers SERVFAIL for bogus data: a temporary failure here.
    assert!(matches!(
        c.mx("bogus.test").await,
        Err(DnsError::Temporary { .. })
    ));
}

/// RFC 2308: a denial is cached, so the AAAA lookup of an IPv4-only MX host (and the
/// TLSA lookup of a host without TLSA) reaches the server once, not once per plan; in
/// every mode, and with the DNSSEC status the first answer had.
#[tokio::test]
async fn denials_are_cached_per_rfc_2308() {
    use hickory_proto::rr::RecordType;
    let w = world().await;
    for mode in [DnssecMode::Validate, DnssecMode::Off] {
        let c = client(&w, mode);
        let status = |s| {
            if mode == DnssecMode::Off {
                DnssecStatus::Insecure
            } else {
                s
            }
        };
        for host in ["mx.secure.test", "mx.insecure.test"] {
            let before = w.query_count(host, RecordType::AAAA);
            for _ in 0..3 {
                let a = c.addresses(host).await.unwrap();
                assert_eq!(a.records().len(), 1, "{mode:?} {host}");
            }
            assert_eq!(
                w.query_count(host, RecordType::AAAA) - before,
                1,
                "{mode:?} {host}: AAAA asked more than once"
            );
        }
        for (host, want) in [
            ("mx2.secure.test", status(DnssecStatus::Secure)),
            ("mx.insecure.test", status(DnssecStatus::Insecure)),
        ] {
            let tlsa_name = format!("_25._tcp.{host}");
            let before = w.query_count(&tlsa_name, RecordType::TLSA);
            for _ in 0..2 {
                let t = c.tlsa(25, host).await.unwrap();
                assert_eq!(t, Answer::NxDomain { status: want }, "{mode:?} {host}");
            }
            assert_eq!(w.query_count(&tlsa_name, RecordType::TLSA) - before, 1);
        }
        // Bogus denials are never cached: each lookup asks again.
        if mode == DnssecMode::Validate {
            let name = "_25._tcp.mx.bogus.test";
            let before = w.query_count(name, RecordType::TLSA);
            assert!(matches!(
                c.tlsa(25, "mx.bogus.test").await,
                Err(DnsError::Bogus { .. })
            ));
            let once = w.query_count(name, RecordType::TLSA) - before;
            assert!(once >= 1);
            assert!(matches!(
                c.tlsa(25, "mx.bogus.test").await,
                Err(DnsError::Bogus { .. })
            ));
            assert_eq!(w.query_count(name, RecordType::TLSA) - before, 2 * once);
        }
    }
}

/// RFC 7672 §2.2.3 needs the expanded name of an MX host that is a CNAME and whether
/// every link of the chain is secure: both come back with the addresses, in
/// `validate` and in `trust-ad` mode.
#[tokio::test]
async fn cname_chains_come_back_with_the_addresses() {
    let w = world().await;
    let secure_chain = Some(Alias {
        target: "mx.secure.test".into(),
        status: DnssecStatus::Secure,
    });
    let insecure_chain = Some(Alias {
        target: "mx.secure.test".into(),
        status: DnssecStatus::Insecure,
    });
    let c = client(&w, DnssecMode::Validate);
    let got = c.host_addresses("alias.secure.test").await.unwrap();
    assert_eq!(got.alias, secure_chain);
    assert_eq!(got.addresses.status(), DnssecStatus::Secure);
    assert_eq!(got.addresses.records().len(), 1);
    // An insecure link makes the chain and the addresses insecure.
    let got = c.host_addresses("alias.insecure.test").await.unwrap();
    assert_eq!(got.alias, insecure_chain);
    assert_eq!(got.addresses.status(), DnssecStatus::Insecure);
    // No CNAME, no alias.
    assert_eq!(
        c.host_addresses("mx.secure.test").await.unwrap().alias,
        None
    );
    // Asked again (AAAA NODATA now cached): the same chain.
    let got = c.host_addresses("alias.secure.test").await.unwrap();
    assert_eq!(got.alias, secure_chain);
    // Off mode: the chain is followed but never secure.
    let off = client(&w, DnssecMode::Off);
    let got = off.host_addresses("alias.secure.test").await.unwrap();
    assert_eq!(got.alias.map(|a| a.status), Some(DnssecStatus::Insecure));

    use mxgate_testkit::dns::unbound::Unbound;
    if !Unbound::available() {
        eprintln!("unbound not installed: skipping the trust-ad half");
        return;
    }
    let u = Unbound::start(&w).await.unwrap();
    let stub = DnsClient::new(&DnsConfig {
        nameservers: vec![u.addr()],
        dnssec: DnssecMode::TrustAd,
        timeout: Duration::from_secs(2),
        ..DnsConfig::default()
    })
    .unwrap();
    let got = stub.host_addresses("alias.secure.test").await.unwrap();
    assert_eq!(got.alias, secure_chain, "{}", u.log());
    let got = stub.host_addresses("alias.insecure.test").await.unwrap();
    assert_eq!(got.alias, insecure_chain);
}
