//! The human form of `mxgate check`: per address the banner, TLS facts, the chain and
//! the PKIX/DANE results, then one verdict line per MX and the result. Only formatting;
//! the verdicts themselves are decided in `check.rs`.

use super::{stage_text, CheckReport};

/// The human form: details per address, then one verdict line per MX.
pub fn report_text(r: &CheckReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "domain {}: level {} (source {}), min TLS {}",
        r.domain, r.level, r.source, r.min_tls_version
    );
    match &r.mta_sts {
        Some(s) => {
            let _ = writeln!(
                out,
                "mta-sts: mode={} id={} mx={}",
                s.mode,
                s.id,
                s.mx.join(",")
            );
        }
        None => {
            let _ = writeln!(out, "mta-sts: none");
        }
    }
    for m in &r.mx {
        let _ = writeln!(
            out,
            "mx {} (pref {}): requires {}{}",
            m.host,
            m.preference,
            m.requirement,
            match m.mta_sts_mx_match {
                Some(true) => ", matches MTA-STS mx",
                Some(false) => ", NOT in MTA-STS mx",
                None => "",
            }
        );
        for a in &m.addresses {
            let _ = writeln!(
                out,
                "  {}: banner {:?}; {}",
                a.address,
                a.banner.as_deref().unwrap_or("-"),
                stage_text(&a.stage)
            );
            if let Some(t) = &a.tls {
                let _ = writeln!(out, "    TLS {} {} sni={}", t.version, t.cipher, t.sni);
                for (i, c) in t.chain.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "    cert[{i}] subject={} sans={} issuer={} not_after={}{}",
                        c.subject,
                        c.sans.join(","),
                        c.issuer,
                        c.not_after,
                        if c.expired { " EXPIRED" } else { "" }
                    );
                }
                let _ = writeln!(
                    out,
                    "    PKIX: {} ({})",
                    if t.pkix.ok { "ok" } else { "FAIL" },
                    t.pkix.detail
                );
                if let Some(d) = &t.dane {
                    let _ = writeln!(
                        out,
                        "    DANE: {} ({})",
                        if d.ok { "ok" } else { "FAIL" },
                        d.detail
                    );
                }
            }
            let _ = writeln!(
                out,
                "  {} {} [{}] {}",
                a.address,
                a.judgement.verdict.word(),
                a.judgement.code,
                a.judgement.detail
            );
        }
        let _ = writeln!(
            out,
            "verdict {}: {} [{}] {}",
            m.host,
            m.judgement.verdict.word(),
            m.judgement.code,
            m.judgement.detail
        );
    }
    let _ = writeln!(
        out,
        "result: {}",
        if r.deliverable {
            "deliverable"
        } else {
            "would defer"
        }
    );
    out
}
