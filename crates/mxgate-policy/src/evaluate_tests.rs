//! [`evaluate`] with real certificates from the test kit: one row per requirement ×
//! what the session showed.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::RootCertStore;

use super::*;
use crate::plan::TlsaRecord;
use mxgate_testkit::certs::{sha256, TestCa, TestCert, Validity};

const MX: &str = "mx.example.com";

fn verifier(ca: &TestCa) -> Arc<WebPkiServerVerifier> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
        .build()
        .unwrap()
}

fn pkix(names: &[&str]) -> TlsRequirement {
    TlsRequirement::Pkix {
        names: names.iter().map(ToString::to_string).collect(),
    }
}

fn dane_ee(cert: &TestCert) -> TlsRequirement {
    TlsRequirement::Dane {
        tlsa: vec![TlsaRecord {
            usage: 3,
            selector: 1,
            matching: 1,
            data: sha256(&cert.spki_der),
        }],
        names: vec![MX.to_string()],
    }
}

fn run(
    req: &TlsRequirement,
    tls: bool,
    chain: &[CertificateDer<'_>],
    ca: &TestCa,
) -> Result<Auth, RequirementFailure> {
    let session = SessionFacts {
        tls,
        peer_chain: chain,
        now: UnixTime::now(),
    };
    evaluate(req, &session, verifier(ca).as_ref())
}

/// (what, requirement, TLS?, peer chain, expected verdict).
type Row<'a> = (
    &'static str,
    TlsRequirement,
    bool,
    &'a [CertificateDer<'a>],
    Result<Auth, RequirementFailure>,
);

#[test]
fn every_requirement_against_what_the_session_showed() {
    use RequirementFailure as F;
    let ca = TestCa::new("Evaluate CA");
    let good = ca.issue(&[MX], Validity::current());
    let expired = ca.issue(&[MX], Validity::expired());
    let other_name = ca.issue(&["other.example.net"], Validity::current());
    let self_signed = TestCert::self_signed(&[MX]);
    let none: &[CertificateDer<'_>] = &[];

    let table: Vec<Row<'_>> = vec![
        (
            "may, cleartext",
            TlsRequirement::Opportunistic,
            false,
            none,
            Ok(Auth::None),
        ),
        (
            "none, cleartext",
            TlsRequirement::Cleartext,
            false,
            none,
            Ok(Auth::None),
        ),
        (
            "encrypt, cleartext",
            TlsRequirement::Encrypt,
            false,
            none,
            Err(F::NoTls),
        ),
        (
            "encrypt, self-signed",
            TlsRequirement::Encrypt,
            true,
            &self_signed.chain,
            Ok(Auth::None),
        ),
        ("verify, cleartext", pkix(&[MX]), false, none, Err(F::NoTls)),
        (
            "verify, good",
            pkix(&[MX]),
            true,
            &good.chain,
            Ok(Auth::Pkix),
        ),
        (
            "verify, second name matches",
            pkix(&["a.example", MX]),
            true,
            &good.chain,
            Ok(Auth::Pkix),
        ),
        (
            "verify, self-signed",
            pkix(&[MX]),
            true,
            &self_signed.chain,
            Err(F::CertificateNotTrusted),
        ),
        (
            "verify, expired",
            pkix(&[MX]),
            true,
            &expired.chain,
            Err(F::CertificateExpired),
        ),
        (
            "verify, wrong name",
            pkix(&[MX]),
            true,
            &other_name.chain,
            Err(F::CertificateHostMismatch),
        ),
        (
            "verify, no certificate",
            pkix(&[MX]),
            true,
            none,
            Err(F::NoCertificate),
        ),
        (
            "dane-ee, matching self-signed",
            dane_ee(&self_signed),
            true,
            &self_signed.chain,
            Ok(Auth::DaneEe),
        ),
        (
            "dane-ee, other key",
            dane_ee(&self_signed),
            true,
            &good.chain,
            Err(F::TlsaMismatch),
        ),
        (
            "dane-ee, cleartext",
            dane_ee(&self_signed),
            false,
            none,
            Err(F::NoTls),
        ),
        (
            "dane-ee, no certificate",
            dane_ee(&self_signed),
            true,
            none,
            Err(F::NoCertificate),
        ),
    ];
    for (what, req, tls, chain, want) in table {
        assert_eq!(run(&req, tls, chain, &ca), want, "{what}");
    }
}

#[test]
fn skipped_hosts_and_tags() {
    let host = MX.to_string();
    assert_eq!(
        RequirementFailure::from(&SkipReason::NotInMtaStsPolicy { host: host.clone() }),
        RequirementFailure::MxNotInPolicy
    );
    assert_eq!(
        RequirementFailure::from(&SkipReason::DaneOnlyNoTlsa { host: host.clone() }),
        RequirementFailure::NoTlsa
    );
    assert_eq!(
        RequirementFailure::from(&SkipReason::NoAddress { host }),
        RequirementFailure::DnsFailure
    );
    assert_eq!(
        RequirementFailure::CertificateNotTrusted.as_str(),
        "certificate-not-trusted"
    );
    assert_eq!(
        RequirementFailure::NoTls.rfc8460_result_type(),
        "starttls-not-supported"
    );
    assert_eq!(
        RequirementFailure::TlsaMismatch.rfc8460_result_type(),
        "validation-failure"
    );
}
