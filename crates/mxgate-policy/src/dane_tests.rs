//! TLSA matching and chain checks with real certificates from the test kit.

use super::*;
use mxgate_testkit::certs::{sha256, sha512, TestCa, TestCert, Validity};

const MX: &str = "mx.example.com";

fn rec(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> TlsaRecord {
    TlsaRecord {
        usage,
        selector,
        matching,
        data,
    }
}

fn now() -> UnixTime {
    UnixTime::now()
}

fn names() -> Vec<String> {
    vec![MX.to_string()]
}

#[test]
fn usability_table() {
    let table = [
        (rec(3, 1, 1, vec![0; 32]), true),
        (rec(2, 0, 2, vec![0; 64]), true),
        (rec(3, 0, 0, vec![1, 2, 3]), true),
        (rec(0, 1, 1, vec![0; 32]), false), // PKIX-TA
        (rec(1, 1, 1, vec![0; 32]), false), // PKIX-EE
        (rec(4, 1, 1, vec![0; 32]), false),
        (rec(3, 2, 1, vec![0; 32]), false),
        (rec(3, 1, 3, vec![0; 32]), false),
        (rec(3, 1, 1, vec![0; 31]), false), // wrong digest length
        (rec(3, 1, 2, vec![0; 32]), false),
        (rec(3, 1, 0, vec![]), false),
    ];
    for (r, want) in table {
        assert_eq!(r.is_usable(), want, "{}", r.params());
    }
}

#[test]
fn dane_ee_ignores_names_and_dates() {
    let ca = TestCa::new("Some CA");
    let cert = ca.issue(&["wrong.example.net"], Validity::expired());
    for r in [
        rec(3, 1, 1, sha256(&cert.spki_der)),
        rec(3, 1, 2, sha512(&cert.spki_der)),
        rec(3, 0, 1, sha256(&cert.leaf_der)),
        rec(3, 1, 0, cert.spki_der.clone()),
        rec(3, 0, 0, cert.leaf_der.clone()),
    ] {
        assert_eq!(
            match_chain(std::slice::from_ref(&r), &cert.chain, &names(), now()),
            Ok(Auth::DaneEe),
            "{}",
            r.params()
        );
    }
    let other = TestCert::self_signed(&[MX]);
    let got = match_chain(
        &[rec(3, 1, 1, sha256(&other.spki_der))],
        &cert.chain,
        &names(),
        now(),
    );
    assert_eq!(got, Err(DaneError::NoMatch("3 1 1".into())));
}

#[test]
fn unusable_records_never_match() {
    let cert = TestCert::self_signed(&[MX]);
    let got = match_chain(
        &[rec(1, 1, 1, sha256(&cert.spki_der))],
        &cert.chain,
        &names(),
        now(),
    );
    assert!(got.is_err());
    assert_eq!(
        match_chain(&[], &[], &names(), now()),
        Err(DaneError::NoCertificate)
    );
}

#[test]
fn dane_ta_root_and_intermediate() {
    let root = TestCa::new("Root");
    let inter = root.intermediate("Inter");
    let cert = inter
        .issue(&[MX], Validity::current())
        .with_chain_cert(root.cert_der());
    // TA = root certificate (2 0 1), sent in the chain.
    let ta_root = rec(2, 0, 1, sha256(&root.cert_der()));
    assert_eq!(
        match_chain(std::slice::from_ref(&ta_root), &cert.chain, &names(), now()),
        Ok(Auth::DaneTa)
    );
    // TA = intermediate key (2 1 1).
    let ta_inter = rec(2, 1, 1, sha256(&inter.spki_der()));
    assert_eq!(
        match_chain(&[ta_inter], &cert.chain, &names(), now()),
        Ok(Auth::DaneTa)
    );
    // Names are checked with DANE-TA.
    let other = vec!["other.example.com".to_string()];
    assert!(matches!(
        match_chain(std::slice::from_ref(&ta_root), &cert.chain, &other, now()),
        Err(DaneError::BadName(_))
    ));
    // Dates are checked with DANE-TA.
    let expired = inter
        .issue(&[MX], Validity::expired())
        .with_chain_cert(root.cert_der());
    assert!(matches!(
        match_chain(&[ta_root], &expired.chain, &names(), now()),
        Err(DaneError::BadChain(_))
    ));
}

#[test]
fn forged_chain_with_real_ta_appended_fails() {
    let root = TestCa::new("Root");
    let ta = rec(2, 0, 1, sha256(&root.cert_der()));
    let forged = TestCert::self_signed(&[MX]).with_chain_cert(root.cert_der());
    let got = match_chain(std::slice::from_ref(&ta), &forged.chain, &names(), now());
    assert!(matches!(got, Err(DaneError::BadChain(_))), "{got:?}");
    // A leaf from another CA with the real TA appended fails as well.
    let evil = TestCa::new("Root")
        .issue(&[MX], Validity::current())
        .with_chain_cert(root.cert_der());
    assert!(match_chain(&[ta], &evil.chain, &names(), now()).is_err());
}

#[test]
fn authenticated_by_reports_the_method() {
    use crate::plan::TlsRequirement;
    use crate::tls::authenticated_by;
    let root = TestCa::new("Root");
    let cert = root
        .issue(&[MX], Validity::current())
        .with_chain_cert(root.cert_der());
    let ee = rec(3, 1, 1, sha256(&cert.spki_der));
    let ta = rec(2, 0, 1, sha256(&root.cert_der()));
    let dane = |t: Vec<TlsaRecord>| TlsRequirement::Dane {
        tlsa: t,
        names: names(),
    };
    assert_eq!(
        authenticated_by(&dane(vec![ta.clone(), ee]), &cert.chain),
        Auth::DaneEe
    );
    assert_eq!(authenticated_by(&dane(vec![ta]), &cert.chain), Auth::DaneTa);
    assert_eq!(
        authenticated_by(&TlsRequirement::Pkix { names: names() }, &cert.chain),
        Auth::Pkix
    );
    assert_eq!(
        authenticated_by(&TlsRequirement::Encrypt, &cert.chain),
        Auth::None
    );
}
