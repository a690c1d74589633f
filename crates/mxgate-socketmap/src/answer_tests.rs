//! One row per plan shape × configured level: what Postfix is told.

use super::*;
use mxgate_config::OnTlsFailure;
use mxgate_policy::{LookupFailure, MxPlan, SkipReason, TlsaRecord};

fn mx(host: &str, requirement: Result<TlsRequirement, SkipReason>) -> MxPlan {
    MxPlan {
        host: host.to_string(),
        preference: 10,
        addrs: vec![[127, 0, 0, 1].into()],
        requirement,
        shadow: None,
    }
}

fn plan(level: Level, source: PolicySource, mx: Vec<MxPlan>) -> Result<DeliveryPlan, PlanError> {
    Ok(DeliveryPlan {
        domain: "example.com".into(),
        level,
        source,
        configured: Level::Auto,
        min_tls_version: TlsVersion::Tls12,
        on_tls_failure: OnTlsFailure::Defer,
        port: 25,
        mta_sts_failure: None,
        mx,
    })
}

fn dane_req() -> TlsRequirement {
    TlsRequirement::Dane {
        tlsa: vec![TlsaRecord {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0; 32],
        }],
        names: vec!["mx1.example.com".into()],
    }
}

fn pkix(host: &str) -> TlsRequirement {
    TlsRequirement::Pkix {
        names: vec![host.into()],
    }
}

fn tlsa_failed(host: &str) -> SkipReason {
    SkipReason::TlsaLookup {
        host: host.into(),
        failure: LookupFailure::Temporary("SERVFAIL".into()),
    }
}

fn not_in_policy(host: &str) -> SkipReason {
    SkipReason::NotInMtaStsPolicy { host: host.into() }
}

fn payload(plan: &Result<DeliveryPlan, PlanError>) -> String {
    answer_domain(plan, &Configured { match_names: &[] }).payload()
}

#[test]
fn dane_is_answered_as_dane_never_secure() {
    // DANE on one MX, MTA-STS would apply to the other: DANE decides (RFC 8461 §2).
    let p = plan(
        Level::Dane,
        PolicySource::Dane,
        vec![
            mx("mx1.example.com", Ok(dane_req())),
            mx("mx2.example.com", Ok(pkix("mx2.example.com"))),
        ],
    );
    assert_eq!(payload(&p), "OK dane protocols=>=TLSv1.2");
}

#[test]
fn dane_with_only_unusable_tlsa_is_still_dane() {
    // Postfix: "If TLSA records are found, but none are usable, the effective
    // security level is encrypt" — the same as the plan.
    let p = plan(
        Level::Dane,
        PolicySource::Dane,
        vec![mx("mx1.example.com", Ok(TlsRequirement::Encrypt))],
    );
    assert_eq!(payload(&p), "OK dane protocols=>=TLSv1.2");
}

#[test]
fn dnssec_failure_on_one_mx_keeps_postfix_on_dane() {
    // One MX's TLSA lookup failed, the other has none: Postfix must not fall back to
    // its default, it repeats the lookups at `dane`.
    let p = plan(
        Level::Dane,
        PolicySource::Dane,
        vec![
            mx("mx1.example.com", Err(tlsa_failed("mx1.example.com"))),
            mx("mx2.example.com", Ok(TlsRequirement::Opportunistic)),
        ],
    );
    assert_eq!(payload(&p), "OK dane protocols=>=TLSv1.2");
}

#[test]
fn no_dialable_mx_is_temp() {
    let p = plan(
        Level::Dane,
        PolicySource::Dane,
        vec![
            mx("mx1.example.com", Err(tlsa_failed("mx1.example.com"))),
            mx("mx2.example.com", Err(tlsa_failed("mx2.example.com"))),
        ],
    );
    assert_eq!(
        payload(&p),
        "TEMP dane: TLSA records of mx1.example.com: lookup failed: SERVFAIL"
    );
    let p = plan(
        Level::MtaSts,
        PolicySource::MtaSts,
        vec![mx(
            "evil.example.net",
            Err(not_in_policy("evil.example.net")),
        )],
    );
    assert_eq!(
        payload(&p),
        "TEMP mta-sts enforce: evil.example.net not in policy"
    );
}

#[test]
fn dane_only_is_dane_only_with_or_without_tlsa() {
    let without = plan(
        Level::DaneOnly,
        PolicySource::Config,
        vec![
            mx(
                "mx1.example.com",
                Err(SkipReason::DaneOnlyNoTlsa {
                    host: "mx1.example.com".into(),
                }),
            ),
            mx(
                "mx2.example.com",
                Err(SkipReason::DaneOnlyUnusableTlsa {
                    host: "mx2.example.com".into(),
                }),
            ),
        ],
    );
    assert_eq!(payload(&without), "OK dane-only protocols=>=TLSv1.2");
    let with = plan(
        Level::DaneOnly,
        PolicySource::Dane,
        vec![mx("mx1.example.com", Ok(dane_req()))],
    );
    assert_eq!(payload(&with), "OK dane-only protocols=>=TLSv1.2");
}

#[test]
fn mta_sts_enforce_lists_the_matching_mx_hosts() {
    let p = plan(
        Level::MtaSts,
        PolicySource::MtaSts,
        vec![
            mx("mx1.example.com", Ok(pkix("mx1.example.com"))),
            mx("evil.example.net", Err(not_in_policy("evil.example.net"))),
            mx("mx2.example.com", Ok(pkix("mx2.example.com"))),
        ],
    );
    assert_eq!(
        payload(&p),
        "OK secure match=mx1.example.com:mx2.example.com servername=hostname protocols=>=TLSv1.2"
    );
}

#[test]
fn mta_sts_testing_and_fallback_are_notfound() {
    let testing = plan(
        Level::MtaSts,
        PolicySource::MtaSts,
        vec![mx("mx1.example.com", Ok(TlsRequirement::Opportunistic))],
    );
    assert_eq!(payload(&testing), "NOTFOUND ");
    for fallback in [Level::May, Level::Encrypt, Level::None, Level::Verify] {
        let req = match fallback {
            Level::None => TlsRequirement::Cleartext,
            Level::Encrypt => TlsRequirement::Encrypt,
            Level::Verify => pkix("mx1.example.com"),
            _ => TlsRequirement::Opportunistic,
        };
        let p = plan(
            fallback,
            PolicySource::Fallback,
            vec![mx("mx1.example.com", Ok(req))],
        );
        for configured in [Level::Auto, Level::MtaSts, Level::Dane] {
            assert_eq!(payload(&p), "NOTFOUND ", "{fallback} {configured}");
        }
    }
}

#[test]
fn configured_levels_are_answered_as_configured() {
    for (level, req, want) in [
        (Level::None, TlsRequirement::Cleartext, "OK none"),
        (
            Level::May,
            TlsRequirement::Opportunistic,
            "OK may protocols=>=TLSv1.2",
        ),
        (
            Level::Encrypt,
            TlsRequirement::Encrypt,
            "OK encrypt protocols=>=TLSv1.2",
        ),
        (
            Level::Verify,
            pkix("mx1.example.com"),
            "OK verify protocols=>=TLSv1.2",
        ),
    ] {
        let p = plan(
            level,
            PolicySource::Config,
            vec![mx("mx1.example.com", Ok(req))],
        );
        assert_eq!(payload(&p), want);
    }
}

#[test]
fn verify_with_a_match_list_and_tls13() {
    let names = vec![
        "mx1.partner.example".to_string(),
        ".partner.example".to_string(),
    ];
    let mut p = plan(
        Level::Verify,
        PolicySource::Config,
        vec![mx(
            "mx1.partner.example",
            Ok(TlsRequirement::Pkix {
                names: names.clone(),
            }),
        )],
    );
    if let Ok(p) = &mut p {
        p.min_tls_version = TlsVersion::Tls13;
    }
    let c = Configured {
        match_names: &names,
    };
    assert_eq!(
        answer_domain(&p, &c).payload(),
        "OK verify match=mx1.partner.example:.partner.example protocols=>=TLSv1.3"
    );
    let bad = vec!["a b".to_string()];
    let c = Configured { match_names: &bad };
    assert!(matches!(answer_domain(&p, &c), Reply::Temp(_)));
}

#[test]
fn plan_errors() {
    let temp: Result<DeliveryPlan, PlanError> = Err(PlanError::MxLookup {
        domain: "example.com".into(),
        failure: LookupFailure::Bogus,
    });
    assert_eq!(
        payload(&temp),
        "TEMP MX records of example.com: DNSSEC validation failed (bogus)"
    );
    let domain = || "example.com".to_string();
    for permanent in [
        PlanError::NullMx { domain: domain() },
        PlanError::NxDomain { domain: domain() },
        PlanError::NoMailHost { domain: domain() },
        PlanError::InvalidName { domain: domain() },
    ] {
        assert_eq!(payload(&Err(permanent)), "NOTFOUND ");
    }
}

#[test]
fn reasons_are_printable_and_bounded() {
    let r = Reply::Temp(format!("bad\r\nline{}", "x".repeat(1000)));
    let p = r.payload();
    assert!(p.starts_with("TEMP bad??line"));
    assert!(p.len() <= 5 + MAX_REASON);
    assert!(p.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
}

#[test]
fn overlong_answers_become_temp() {
    let hosts: Vec<MxPlan> = (0..5000)
        .map(|i| {
            let h = format!("mx{i:05}.{}.example.com", "a".repeat(20));
            mx(&h, Ok(pkix(&h)))
        })
        .collect();
    let p = plan(Level::MtaSts, PolicySource::MtaSts, hosts);
    let out = payload(&p);
    assert_eq!(out, "TEMP policy too long for a socketmap reply");
}

#[test]
fn unsafe_mx_names_never_reach_a_match_list() {
    let p = plan(
        Level::MtaSts,
        PolicySource::MtaSts,
        vec![
            mx("mx1.example.com,evil", Ok(pkix("mx1.example.com,evil"))),
            mx("mx2.example.com", Ok(pkix("mx2.example.com"))),
        ],
    );
    assert_eq!(
        payload(&p),
        "OK secure match=mx2.example.com servername=hostname protocols=>=TLSv1.2"
    );
}

#[test]
fn parent_domain_entries() {
    let entry = |level, match_names: Vec<&str>, tls| DomainPolicy {
        level,
        match_names: match_names.into_iter().map(String::from).collect(),
        min_tls_version: tls,
        on_tls_failure: None,
        shadow: None,
    };
    let g = TlsVersion::Tls12;
    assert_eq!(answer_parent(None, g), Reply::NotFound);
    let cases = [
        (entry(Level::None, vec![], None), "OK none"),
        (
            entry(Level::May, vec![], None),
            "OK may protocols=>=TLSv1.2",
        ),
        (
            entry(Level::Encrypt, vec![], Some(TlsVersion::Tls13)),
            "OK encrypt protocols=>=TLSv1.3",
        ),
        (
            entry(Level::Verify, vec![".example.org"], None),
            "OK verify match=.example.org protocols=>=TLSv1.2",
        ),
        (
            entry(Level::Dane, vec![], None),
            "OK dane protocols=>=TLSv1.2",
        ),
        (
            entry(Level::DaneOnly, vec![], None),
            "OK dane-only protocols=>=TLSv1.2",
        ),
        (entry(Level::MtaSts, vec![], None), "NOTFOUND "),
        (entry(Level::Auto, vec![], None), "NOTFOUND "),
    ];
    for (e, want) in cases {
        assert_eq!(answer_parent(Some(&e), g).payload(), want, "{:?}", e.level);
    }
}

#[test]
fn metric_labels_are_bounded() {
    let labels = [
        Reply::NotFound.metric_label(),
        Reply::Temp(String::new()).metric_label(),
        Reply::Perm(String::new()).metric_label(),
        Reply::Found(PostfixPolicy::new(PostfixLevel::Secure, TlsVersion::Tls12)).metric_label(),
    ];
    assert_eq!(labels, ["notfound", "temp", "perm", "secure"]);
}
