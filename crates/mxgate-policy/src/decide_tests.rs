//! The decision table: every level × situation, one row each.

use super::*;
use crate::sts::{MtaStsMode, MtaStsPolicy};
use DnssecStatus::{Insecure, Secure};

const MX: &str = "mx.example.com";

fn tlsa() -> Vec<TlsaRecord> {
    vec![TlsaRecord {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![7; 32],
    }]
}

/// Situations of the single MX host.
#[derive(Debug, Clone, Copy)]
enum S {
    /// Insecure MX and addresses: no DANE possible.
    Unsigned,
    SecureUsable,
    SecureUnusable,
    SecureNoTlsa,
    /// Insecure MX RRset, secure addresses and TLSA (half-DANE).
    HalfDane,
    TlsaBogus,
    AddrFailed,
}

fn host(s: S) -> (DnssecStatus, HostFacts) {
    let (mx_status, addrs, tlsa) = match s {
        S::Unsigned => (Insecure, AddrFacts::Found(Insecure), TlsaFacts::NotLooked),
        S::SecureUsable => (
            Secure,
            AddrFacts::Found(Secure),
            TlsaFacts::SecureUsable(tlsa()),
        ),
        S::SecureUnusable => (Secure, AddrFacts::Found(Secure), TlsaFacts::SecureUnusable),
        S::SecureNoTlsa => (Secure, AddrFacts::Found(Secure), TlsaFacts::SecureNone),
        S::HalfDane => (
            Insecure,
            AddrFacts::Found(Secure),
            TlsaFacts::SecureUsable(tlsa()),
        ),
        S::TlsaBogus => (
            Secure,
            AddrFacts::Found(Secure),
            TlsaFacts::Failed(LookupFailure::Bogus),
        ),
        S::AddrFailed => (
            Secure,
            AddrFacts::Failed(LookupFailure::Temporary("SERVFAIL".into())),
            TlsaFacts::NotLooked,
        ),
    };
    (
        mx_status,
        HostFacts {
            host: MX.into(),
            secure_alias: None,
            addrs,
            tlsa,
            tlsa_base: None,
        },
    )
}

fn sts(mode: Option<MtaStsMode>, mx: &str) -> StsState {
    match mode {
        None => StsState::Absent,
        Some(mode) => StsState::Policy(MtaStsPolicy {
            mode,
            mx: vec![mx.into()],
            max_age: 86400,
        }),
    }
}

/// Expected per-host outcome.
#[derive(Debug, PartialEq)]
enum R {
    Clear,
    May,
    Enc,
    Pkix,
    Dane,
    Skip(&'static str),
}

fn kind(r: &Result<TlsRequirement, SkipReason>) -> R {
    match r {
        Ok(TlsRequirement::Cleartext) => R::Clear,
        Ok(TlsRequirement::Opportunistic) => R::May,
        Ok(TlsRequirement::Encrypt) => R::Enc,
        Ok(TlsRequirement::Pkix { .. }) => R::Pkix,
        Ok(TlsRequirement::Dane { .. }) => R::Dane,
        Err(SkipReason::DaneOnlyNoTlsa { .. } | SkipReason::DaneOnlyUnusableTlsa { .. }) => {
            R::Skip("dane-only")
        }
        Err(SkipReason::NotInMtaStsPolicy { .. }) => R::Skip("mta-sts"),
        Err(SkipReason::TlsaLookup { .. } | SkipReason::AddressLookup { .. }) => R::Skip("dane"),
        Err(e) => panic!("unexpected reason {e}"),
    }
}

#[test]
fn decision_table() {
    use Level::*;
    use MtaStsMode::{Enforce, Testing};
    use PolicySource as P;
    let none: Option<MtaStsMode> = Option::None;
    let rows: Vec<(Level, S, Option<MtaStsMode>, Level, PolicySource, R)> = vec![
        // Config levels ignore DNS security and MTA-STS.
        (
            None,
            S::SecureUsable,
            Some(Enforce),
            None,
            P::Config,
            R::Clear,
        ),
        (May, S::Unsigned, none, May, P::Config, R::May),
        (Encrypt, S::Unsigned, none, Encrypt, P::Config, R::Enc),
        (Verify, S::Unsigned, none, Verify, P::Config, R::Pkix),
        (Verify, S::SecureUsable, none, Verify, P::Config, R::Pkix),
        // mta-sts
        (
            MtaSts,
            S::Unsigned,
            Some(Enforce),
            MtaSts,
            P::MtaSts,
            R::Pkix,
        ),
        (
            MtaSts,
            S::Unsigned,
            Some(Testing),
            MtaSts,
            P::MtaSts,
            R::May,
        ),
        (
            MtaSts,
            S::Unsigned,
            Some(MtaStsMode::None),
            May,
            P::Fallback,
            R::May,
        ),
        (MtaSts, S::Unsigned, none, May, P::Fallback, R::May),
        // dane
        (Dane, S::SecureUsable, none, Dane, P::Dane, R::Dane),
        (Dane, S::HalfDane, none, Dane, P::Dane, R::Dane),
        (Dane, S::SecureUnusable, none, Dane, P::Dane, R::Enc),
        (Dane, S::SecureNoTlsa, none, May, P::Fallback, R::May),
        (Dane, S::Unsigned, none, May, P::Fallback, R::May),
        (Dane, S::TlsaBogus, none, Dane, P::Dane, R::Skip("dane")),
        (Dane, S::AddrFailed, none, Dane, P::Dane, R::Skip("dane")),
        // dane-only
        (DaneOnly, S::SecureUsable, none, DaneOnly, P::Dane, R::Dane),
        (
            DaneOnly,
            S::SecureUnusable,
            none,
            DaneOnly,
            P::Dane,
            R::Skip("dane-only"),
        ),
        (
            DaneOnly,
            S::SecureNoTlsa,
            none,
            DaneOnly,
            P::Config,
            R::Skip("dane-only"),
        ),
        (
            DaneOnly,
            S::Unsigned,
            none,
            DaneOnly,
            P::Config,
            R::Skip("dane-only"),
        ),
        (
            DaneOnly,
            S::TlsaBogus,
            none,
            DaneOnly,
            P::Config,
            R::Skip("dane"),
        ),
        // auto: DANE first, MTA-STS never overrides it, then MTA-STS, then fallback.
        (Auto, S::SecureUsable, Some(Enforce), Dane, P::Dane, R::Dane),
        (Auto, S::HalfDane, Some(Enforce), Dane, P::Dane, R::Dane),
        (
            Auto,
            S::SecureUnusable,
            Some(Enforce),
            Dane,
            P::Dane,
            R::Enc,
        ),
        (
            Auto,
            S::TlsaBogus,
            Some(Enforce),
            Dane,
            P::Dane,
            R::Skip("dane"),
        ),
        (
            Auto,
            S::AddrFailed,
            Some(Enforce),
            Dane,
            P::Dane,
            R::Skip("dane"),
        ),
        (
            Auto,
            S::SecureNoTlsa,
            Some(Enforce),
            MtaSts,
            P::MtaSts,
            R::Pkix,
        ),
        (Auto, S::Unsigned, Some(Enforce), MtaSts, P::MtaSts, R::Pkix),
        (Auto, S::Unsigned, Some(Testing), MtaSts, P::MtaSts, R::May),
        (
            Auto,
            S::Unsigned,
            Some(MtaStsMode::None),
            May,
            P::Fallback,
            R::May,
        ),
        (Auto, S::Unsigned, none, May, P::Fallback, R::May),
        (Auto, S::SecureNoTlsa, none, May, P::Fallback, R::May),
    ];
    for (i, (level, situation, mode, want_level, want_source, want)) in rows.into_iter().enumerate()
    {
        let (mx_status, h) = host(situation);
        let hosts = [h];
        let st = sts(mode, MX);
        let d = decide(&DecisionInput {
            level,
            fallback: Level::May,
            match_names: &[],
            mx_status,
            hosts: &hosts,
            sts: &st,
        });
        let got = (d.level, d.source, kind(&d.per_host[0]));
        assert_eq!(
            got,
            (want_level, want_source, want),
            "row {i}: {level} {situation:?} {mode:?}"
        );
    }
}

#[test]
fn mta_sts_enforce_skips_mx_not_in_policy() {
    let (mx_status, h) = host(S::Unsigned);
    let other = HostFacts {
        host: "evil.example.net".into(),
        ..h.clone()
    };
    let hosts = [h, other];
    let st = sts(Some(MtaStsMode::Enforce), "*.example.com");
    for level in [Level::MtaSts, Level::Auto] {
        let d = decide(&DecisionInput {
            level,
            fallback: Level::May,
            match_names: &[],
            mx_status,
            hosts: &hosts,
            sts: &st,
        });
        assert_eq!(
            d.per_host[0],
            Ok(TlsRequirement::Pkix {
                names: vec![MX.into()]
            })
        );
        assert_eq!(
            d.per_host[1],
            Err(SkipReason::NotInMtaStsPolicy {
                host: "evil.example.net".into()
            })
        );
    }
}

#[test]
fn verify_uses_match_list_and_fallback_level_applies() {
    let (mx_status, h) = host(S::Unsigned);
    let hosts = [h];
    let names = vec!["mx1.partner.example".to_string()];
    let d = decide(&DecisionInput {
        level: Level::Verify,
        fallback: Level::May,
        match_names: &names,
        mx_status,
        hosts: &hosts,
        sts: &StsState::NotConsulted,
    });
    assert_eq!(d.per_host[0], Ok(TlsRequirement::Pkix { names }));
    let d = decide(&DecisionInput {
        level: Level::Auto,
        fallback: Level::Encrypt,
        match_names: &[],
        mx_status,
        hosts: &hosts,
        sts: &StsState::Absent,
    });
    assert_eq!(
        (d.level, d.source),
        (Level::Encrypt, PolicySource::Fallback)
    );
    assert_eq!(d.per_host[0], Ok(TlsRequirement::Encrypt));
}

#[test]
fn dane_requirement_names_the_mx_host() {
    let (mx_status, h) = host(S::HalfDane);
    let hosts = [h];
    let d = decide(&DecisionInput {
        level: Level::Auto,
        fallback: Level::May,
        match_names: &[],
        mx_status,
        hosts: &hosts,
        sts: &StsState::Absent,
    });
    assert_eq!(
        d.per_host[0],
        Ok(TlsRequirement::Dane {
            tlsa: tlsa(),
            names: vec![MX.into()]
        })
    );
}

#[test]
fn needs_sts_only_where_dane_does_not_apply() {
    let facts = |s| [host(s).1];
    assert!(needs_sts(Level::MtaSts, &facts(S::SecureUsable)));
    assert!(needs_sts(Level::Auto, &facts(S::Unsigned)));
    assert!(needs_sts(Level::Auto, &facts(S::SecureNoTlsa)));
    assert!(!needs_sts(Level::Auto, &facts(S::SecureUsable)));
    assert!(!needs_sts(Level::Auto, &facts(S::TlsaBogus)));
    assert!(!needs_sts(Level::Dane, &facts(S::Unsigned)));
    assert!(!needs_sts(Level::Verify, &facts(S::Unsigned)));
}

// ---------------------------------------------------------------------------------------
// TLSA base domains of an MX host reached through CNAME records (RFC 7672 §2.2.3)
// ---------------------------------------------------------------------------------------

const EXPANDED: &str = "real.provider.example";

#[test]
fn only_a_secure_cname_chain_adds_its_expanded_name() {
    use DnssecStatus::{Bogus, Indeterminate};
    let alias = |status| Alias {
        target: EXPANDED.into(),
        status,
    };
    type Want = Result<Option<String>, LookupFailure>;
    let rows: Vec<(Option<Alias>, Want)> = vec![
        // No CNAME: the MX host name alone.
        (None, Ok(None)),
        (Some(alias(Secure)), Ok(Some(EXPANDED.into()))),
        // An insecure or indeterminate link: the expansion is no base domain.
        (Some(alias(Insecure)), Ok(None)),
        (Some(alias(Indeterminate)), Ok(None)),
        // A bogus link fails the host, it never downgrades.
        (Some(alias(Bogus)), Err(LookupFailure::Bogus)),
        // A chain that leads back to the host adds nothing.
        (
            Some(Alias {
                target: MX.into(),
                status: Secure,
            }),
            Ok(None),
        ),
    ];
    for (i, (alias, want)) in rows.into_iter().enumerate() {
        assert_eq!(secure_alias(MX, alias.as_ref()), want, "row {i}: {alias:?}");
    }
    assert_eq!(
        tlsa_base_domains(MX, Some(EXPANDED)),
        vec![EXPANDED.to_string(), MX.to_string()]
    );
    assert_eq!(tlsa_base_domains(MX, None), vec![MX.to_string()]);
    assert_eq!(tlsa_base_domains(MX, Some(MX)), vec![MX.to_string()]);
}

#[test]
fn records_and_failures_settle_the_host_denials_and_insecure_answers_do_not() {
    assert!(tlsa_settles(&TlsaFacts::SecureUsable(tlsa())));
    assert!(tlsa_settles(&TlsaFacts::SecureUnusable));
    assert!(tlsa_settles(&TlsaFacts::Failed(LookupFailure::Bogus)));
    assert!(tlsa_settles(&TlsaFacts::Failed(LookupFailure::Temporary(
        "SERVFAIL".into()
    ))));
    assert!(!tlsa_settles(&TlsaFacts::SecureNone));
    assert!(!tlsa_settles(&TlsaFacts::Insecure));
}

/// The engine's walk over the base domains (engine.rs `host_facts`), on facts given per
/// name: the facts and base domain it ends with, and the names it asked.
fn walk(
    secure: Option<&str>,
    at: &dyn Fn(&str) -> TlsaFacts,
) -> (TlsaFacts, Option<String>, Vec<String>) {
    let (mut facts, mut base, mut asked) = (TlsaFacts::NotLooked, None, Vec::new());
    for name in tlsa_base_domains(MX, secure) {
        asked.push(name.clone());
        facts = at(&name);
        base = Some(name);
        if tlsa_settles(&facts) {
            break;
        }
    }
    (facts, base, asked)
}

#[test]
fn cname_table_base_domain_names_and_requirement() {
    use Level::{Auto, DaneOnly};
    let usable = || TlsaFacts::SecureUsable(tlsa());
    let bogus = || TlsaFacts::Failed(LookupFailure::Bogus);
    // (secure chain?, TLSA at the expanded name, TLSA at the MX host name, level,
    //  names asked, base used, expected requirement kind, reference names if DANE)
    type Row = (
        bool,
        TlsaFacts,
        TlsaFacts,
        Level,
        Vec<&'static str>,
        &'static str,
        R,
        Vec<&'static str>,
    );
    let rows: Vec<Row> = vec![
        // Secure chain, records at the expanded name: DANE, the expanded name first
        // (SNI), the MX host name also accepted; the MX host name is not asked.
        (
            true,
            usable(),
            TlsaFacts::SecureNone,
            Auto,
            vec![EXPANDED],
            EXPANDED,
            R::Dane,
            vec![EXPANDED, MX],
        ),
        // Securely none at the expanded name: the MX host name's records.
        (
            true,
            TlsaFacts::SecureNone,
            usable(),
            Auto,
            vec![EXPANDED, MX],
            MX,
            R::Dane,
            vec![MX, EXPANDED],
        ),
        // Insecure at the expanded name: the MX host name next.
        (
            true,
            TlsaFacts::Insecure,
            usable(),
            DaneOnly,
            vec![EXPANDED, MX],
            MX,
            R::Dane,
            vec![MX, EXPANDED],
        ),
        // None anywhere: no DANE (`auto` → fallback, `dane-only` defers).
        (
            true,
            TlsaFacts::SecureNone,
            TlsaFacts::SecureNone,
            Auto,
            vec![EXPANDED, MX],
            MX,
            R::May,
            vec![],
        ),
        (
            true,
            TlsaFacts::SecureNone,
            TlsaFacts::Insecure,
            DaneOnly,
            vec![EXPANDED, MX],
            MX,
            R::Skip("dane-only"),
            vec![],
        ),
        // A failed lookup at the expanded name defers: the MX host name's records
        // never stand in for it.
        (
            true,
            bogus(),
            usable(),
            Auto,
            vec![EXPANDED],
            EXPANDED,
            R::Skip("dane"),
            vec![],
        ),
        // Unusable records at the expanded name settle it: TLS without authentication.
        (
            true,
            TlsaFacts::SecureUnusable,
            usable(),
            Auto,
            vec![EXPANDED],
            EXPANDED,
            R::Enc,
            vec![],
        ),
        // Insecure chain: the expanded name is never asked, whatever it holds.
        (
            false,
            usable(),
            TlsaFacts::SecureNone,
            Auto,
            vec![MX],
            MX,
            R::May,
            vec![],
        ),
        (
            false,
            usable(),
            usable(),
            Auto,
            vec![MX],
            MX,
            R::Dane,
            vec![MX],
        ),
    ];
    for (i, (secure, at_expanded, at_host, level, want_asked, want_base, want, want_names)) in
        rows.into_iter().enumerate()
    {
        let alias = secure.then_some(EXPANDED);
        let at = |name: &str| {
            if name == EXPANDED {
                at_expanded.clone()
            } else {
                at_host.clone()
            }
        };
        let (facts, base, asked) = walk(alias, &at);
        assert_eq!(asked, want_asked, "row {i}: names asked");
        assert_eq!(base.as_deref(), Some(want_base), "row {i}: base domain");
        let hosts = [HostFacts {
            host: MX.into(),
            secure_alias: alias.map(str::to_string),
            addrs: AddrFacts::Found(Secure),
            tlsa: facts,
            tlsa_base: base,
        }];
        let d = decide(&DecisionInput {
            level,
            fallback: Level::May,
            match_names: &[],
            mx_status: Secure,
            hosts: &hosts,
            sts: &StsState::Absent,
        });
        assert_eq!(kind(&d.per_host[0]), want, "row {i}: requirement");
        if let Ok(TlsRequirement::Dane { names, .. }) = &d.per_host[0] {
            assert_eq!(names, &want_names, "row {i}: reference names");
        }
    }
}
