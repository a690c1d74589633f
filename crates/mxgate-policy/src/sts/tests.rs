use super::*;
use proptest::prelude::*;

fn txt(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn txt_table() {
    let ok = |v: &[&str], id: &str| assert_eq!(parse_txt(&txt(v)).as_deref(), Ok(id), "{v:?}");
    ok(&["v=STSv1; id=20160831085700Z;"], "20160831085700Z");
    ok(&["v=STSv1;id=abc"], "abc");
    ok(&["v=STSv1; id=abc; ext=val"], "abc");
    ok(&["some other", "v=STSv1; id=x1"], "x1");
    let err = |v: &[&str]| assert!(parse_txt(&txt(v)).is_err(), "{v:?} accepted");
    err(&[]);
    err(&["v=spf1 -all"]);
    err(&["v=STSv1; id=a", "v=STSv1; id=b"]);
    err(&["v=STSv1;"]);
    err(&["v=STSv1; id="]);
    err(&["v=STSv1; id=abc-def"]);
    err(&["v=STSv1; id=123456789012345678901234567890123"]); // 33 chars
    err(&["v=STSv1; id=a; id=b"]);
    err(&["v=STSv1; id=a; junk"]);
    err(&["v=STSv10; id=a"]);
}

const GOOD: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n";

#[test]
fn policy_parses_crlf_and_lf() {
    let want = MtaStsPolicy {
        mode: MtaStsMode::Enforce,
        mx: vec!["mail.example.com".into(), "*.example.net".into()],
        max_age: 604800,
    };
    assert_eq!(parse_policy(GOOD), Ok(want.clone()));
    assert_eq!(parse_policy(&GOOD.replace("\r\n", "\n")), Ok(want.clone()));
    assert_eq!(parse_policy(&GOOD.replace("\r\n", "  \n")), Ok(want));
}

#[test]
fn policy_rejects_table() {
    let cases = [
        (
            "mode: enforce\nversion: STSv1\nmx: a.example\nmax_age: 1\n",
            "version not first",
        ),
        (
            "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
            "bad version",
        ),
        (
            "version: STSv1\nmode: enforced\nmx: a.example\nmax_age: 1\n",
            "bad mode",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n",
            "max_age too big",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n",
            "11 digits",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
            "negative",
        ),
        ("version: STSv1\nmode: enforce\nmax_age: 100\n", "no mx"),
        ("version: STSv1\nmx: a.example\nmax_age: 100\n", "no mode"),
        (
            "version: STSv1\nmode: enforce\nmx: a.example\n",
            "no max_age",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 1\n",
            "empty label",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n",
            "double wildcard",
        ),
        (
            "version: STSv1\nmode: enforce\rmx: a.example\nmax_age: 1\n",
            "bare CR",
        ),
        (
            "version: STSv1\nmode: enforce\nmode: none\nmx: a.example\nmax_age: 1\n",
            "dup mode",
        ),
        (
            "version: STSv1\nmode enforce\nmx: a.example\nmax_age: 1\n",
            "no colon",
        ),
        ("", "empty"),
        ("<html>hello</html>", "html"),
    ];
    for (body, why) in cases {
        assert!(parse_policy(body).is_err(), "{why}: accepted {body:?}");
    }
}

#[test]
fn policy_ignores_unknown_fields_and_allows_none_without_mx() {
    let p = parse_policy("version: STSv1\nmode: none\nmax_age: 0\nfoo_bar: baz\n").unwrap();
    assert_eq!(p.mode, MtaStsMode::None);
    assert!(p.mx.is_empty());
}

#[test]
fn mx_patterns_match_one_label() {
    let table = [
        ("mail.example.com", "mail.example.com", true),
        ("mail.example.com", "MAIL.example.com.", true),
        ("mail.example.com", "mail2.example.com", false),
        ("*.example.com", "mx1.example.com", true),
        ("*.example.com", "example.com", false),
        ("*.example.com", "a.b.example.com", false),
        ("*.example.com", ".example.com", false),
        ("*.example.com", "mx1.example.org", false),
    ];
    for (p, h, want) in table {
        assert_eq!(mx_pattern_matches(p, h), want, "{p} vs {h}");
    }
}

proptest! {
    #[test]
    fn txt_parser_never_panics(records in proptest::collection::vec(".{0,80}", 0..4)) {
        let _ = parse_txt(&records);
    }

    #[test]
    fn txt_id_roundtrip(id in "[A-Za-z0-9]{1,32}", ext in proptest::option::of("[a-z][a-z0-9_]{0,8}=[a-z0-9]{1,8}")) {
        let rec = match ext {
            Some(e) => format!("v=STSv1; id={id}; {e}"),
            None => format!("v=STSv1; id={id};"),
        };
        prop_assert_eq!(parse_txt(&[rec]), Ok(id));
    }

    #[test]
    fn policy_parser_never_panics(body in "(?s).{0,400}") {
        let _ = parse_policy(&body);
    }

    #[test]
    fn policy_roundtrip(
        mode in prop_oneof![Just("enforce"), Just("testing")],
        mx in proptest::collection::vec("(\\*\\.)?[a-z][a-z0-9]{0,5}(\\.[a-z][a-z0-9]{0,5}){1,3}", 1..4),
        max_age in 0u64..=MAX_AGE_LIMIT,
        crlf in any::<bool>(),
    ) {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut body = format!("version: STSv1{nl}mode: {mode}{nl}");
        for m in &mx { body.push_str(&format!("mx: {m}{nl}")); }
        body.push_str(&format!("max_age: {max_age}{nl}"));
        let p = parse_policy(&body).unwrap();
        prop_assert_eq!(p.mode.as_str(), mode);
        prop_assert_eq!(p.mx, mx);
        prop_assert_eq!(p.max_age, max_age);
    }

    #[test]
    fn policy_above_limit_rejected(max_age in (MAX_AGE_LIMIT + 1)..10_000_000_000u64) {
        let body = format!("version: STSv1\nmode: enforce\nmx: a.example\nmax_age: {max_age}\n");
        prop_assert!(parse_policy(&body).is_err());
    }
}
