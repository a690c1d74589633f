//! Table tests of the probe's pure parts: the verdict per address and per MX, and the
//! certificate summary.

use super::*;
use mxgate_policy::TlsaRecord;
use mxgate_testkit::certs::{TestCa, Validity};

fn tls(pkix_ok: bool, dane: Option<bool>) -> TlsProbe {
    TlsProbe {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_256_GCM_SHA384".into(),
        sni: "mx".into(),
        chain: Vec::new(),
        pkix: ChainCheck {
            ok: pkix_ok,
            detail: if pkix_ok {
                "valid for mx".into()
            } else {
                "UnknownIssuer".into()
            },
        },
        dane: dane.map(|ok| ChainCheck {
            ok,
            detail: if ok {
                "dane-ee".into()
            } else {
                "no TLSA match (3 1 1)".into()
            },
        }),
    }
}

#[test]
fn verdict_per_requirement_and_stage() {
    let pkix = TlsRequirement::Pkix {
        names: vec!["mx.example".into()],
    };
    let dane = TlsRequirement::Dane {
        tlsa: vec![TlsaRecord {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0; 32],
        }],
        names: vec!["mx.example".into()],
    };
    let est = Stage::TlsEstablished;
    let none = Stage::StartTlsNotOffered;
    let refused = Stage::StartTlsRefused("454 4.7.0 no".into());
    let hs = Stage::HandshakeFailed("bad".into());
    let conn = Stage::ConnectFailed("refused".into());
    let greeting = Stage::GreetingRejected("554".into());
    let ehlo = Stage::EhloFailed("502".into());
    let good = tls(true, None);
    let bad_pkix = tls(false, None);
    let dane_ok = tls(false, Some(true));
    let dane_bad = tls(true, Some(false));
    use TlsRequirement::*;
    let rows: Vec<(&TlsRequirement, &Stage, Option<&TlsProbe>, Verdict, &str)> = vec![
        (&Cleartext, &none, None, Verdict::Pass, "cleartext"),
        (&Cleartext, &conn, None, Verdict::Fail, "connect-failed"),
        (
            &Opportunistic,
            &est,
            Some(&bad_pkix),
            Verdict::Pass,
            "tls-opportunistic",
        ),
        (&Opportunistic, &none, None, Verdict::Pass, "cleartext"),
        (
            &Opportunistic,
            &hs,
            None,
            Verdict::Pass,
            "cleartext-fallback",
        ),
        (
            &Opportunistic,
            &refused,
            None,
            Verdict::Pass,
            "cleartext-fallback",
        ),
        (
            &Encrypt,
            &est,
            Some(&bad_pkix),
            Verdict::Pass,
            "tls-encrypt",
        ),
        (&Encrypt, &none, None, Verdict::Fail, "starttls-missing"),
        (&Encrypt, &refused, None, Verdict::Fail, "starttls-refused"),
        (
            &Encrypt,
            &Stage::StartTlsInjection,
            None,
            Verdict::Fail,
            "starttls-injection",
        ),
        (&Encrypt, &hs, None, Verdict::Fail, "handshake-failed"),
        (&pkix, &est, Some(&good), Verdict::Pass, "tls-pkix"),
        (&pkix, &est, Some(&bad_pkix), Verdict::Fail, "pkix-invalid"),
        (&pkix, &none, None, Verdict::Fail, "starttls-missing"),
        (&dane, &est, Some(&dane_ok), Verdict::Pass, "tls-dane"),
        (&dane, &est, Some(&dane_bad), Verdict::Fail, "dane-mismatch"),
        (&dane, &est, Some(&good), Verdict::Fail, "dane-mismatch"),
        (&dane, &hs, None, Verdict::Fail, "handshake-failed"),
        (&dane, &greeting, None, Verdict::Fail, "greeting-rejected"),
        (&dane, &ehlo, None, Verdict::Fail, "ehlo-failed"),
    ];
    for (req, stage, probe, verdict, code) in rows {
        let j = judge(req, stage, probe);
        assert_eq!((j.verdict, j.code), (verdict, code), "{req:?} {stage:?}");
    }
}

fn address(verdict: Verdict, code: &'static str) -> AddressReport {
    AddressReport {
        address: "127.0.0.2:25".parse().unwrap(),
        banner: None,
        ehlo: Vec::new(),
        stage: Stage::TlsEstablished,
        tls: None,
        judgement: Judgement {
            verdict,
            code,
            detail: code.to_string(),
        },
    }
}

#[test]
fn mx_passes_when_any_address_passes_and_skips_when_not_dialled() {
    let plan = MxPlan {
        host: "mx.example".into(),
        preference: 10,
        addrs: Vec::new(),
        requirement: Ok(TlsRequirement::Encrypt),
        shadow: None,
    };
    let fail_then_pass = [
        address(Verdict::Fail, "connect-failed"),
        address(Verdict::Pass, "tls-encrypt"),
    ];
    assert_eq!(judge_mx(&plan, &fail_then_pass).code, "tls-encrypt");
    let all_fail = [
        address(Verdict::Fail, "connect-failed"),
        address(Verdict::Fail, "starttls-missing"),
    ];
    let j = judge_mx(&plan, &all_fail);
    assert_eq!((j.verdict, j.code), (Verdict::Fail, "starttls-missing"));
    assert_eq!(judge_mx(&plan, &[]).code, "no-address");
    let skipped = MxPlan {
        requirement: Err(mxgate_policy::SkipReason::NotInMtaStsPolicy {
            host: "mx.example".into(),
        }),
        ..plan
    };
    let j = judge_mx(&skipped, &[]);
    assert_eq!((j.verdict, j.code), (Verdict::Skip, "policy-skip"));
    assert!(j.detail.contains("not in policy"));
}

#[test]
fn cert_info_reads_names_issuer_and_expiry() {
    let ca = TestCa::new("Probe Test CA");
    let now = crate::clock::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let cert = ca.issue(
        &["mx1.example.test", "mx2.example.test"],
        Validity::current(),
    );
    let info = cert_info(&cert.leaf_der, now).unwrap();
    assert_eq!(info.subject, "CN=mx1.example.test");
    assert_eq!(info.issuer, "CN=Probe Test CA");
    assert_eq!(info.sans, ["DNS:mx1.example.test", "DNS:mx2.example.test"]);
    assert!(!info.expired);
    let old = ca.issue(&["old.example.test"], Validity::expired());
    assert!(cert_info(&old.leaf_der, now).unwrap().expired);
    assert_eq!(cert_info(b"not a certificate", now), None);
}

#[test]
fn certificate_dates_are_rfc_3339() {
    let rows = [
        (0, "1970-01-01T00:00:00Z"),
        (951_782_400, "2000-02-29T00:00:00Z"),
        (1_796_264_430, "2026-12-03T02:20:30Z"),
        (4_102_444_799, "2099-12-31T23:59:59Z"),
        (-1, "1969-12-31T23:59:59Z"),
    ];
    for (unix, want) in rows {
        assert_eq!(rfc3339(unix), want, "{unix}");
    }
}
