//! MTA-STS (RFC 8461): the `_mta-sts` TXT record set and the policy body.
//!
//! - TXT: an accepted id is 1 to 32 letters and digits (§3.1), written back as a
//!   record it parses to the same id, and discarding non-STS records (which the
//!   parser must ignore) changes nothing.
//! - Policy: an accepted policy is within the limits of §3.2 (max_age ≤ 31557600, mx
//!   patterns lower case without a trailing dot, each matching the host it names),
//!   written back in the canonical form it parses to itself, and the same body with
//!   CRLF instead of LF line ends parses to the same policy.
//!
//! Input: the first byte selects the parser (even: TXT records separated by NUL,
//! odd: policy body).
//!
//! Shared by the fuzz target `mta_sts` and the corpus replay in mxgate-policy's tests.

use mxgate_policy::sts::{self, MtaStsPolicy, MAX_AGE_LIMIT};

fn format_policy(policy: &MtaStsPolicy) -> String {
    let mut body = format!("version: STSv1\nmode: {}\n", policy.mode.as_str());
    for mx in &policy.mx {
        body.push_str(&format!("mx: {mx}\n"));
    }
    body.push_str(&format!("max_age: {}\n", policy.max_age));
    body
}

fn check_txt(data: &[u8]) {
    let records: Vec<String> = data
        .split(|&b| b == 0)
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    let Ok(id) = sts::parse_txt(&records) else {
        return;
    };
    assert!(!id.is_empty() && id.len() <= 32, "{id:?}");
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()), "{id:?}");
    let canonical = vec![format!("v=STSv1; id={id};")];
    assert_eq!(sts::parse_txt(&canonical).as_deref(), Ok(id.as_str()));
    let only_sts: Vec<String> = records
        .iter()
        .filter(|r| r.starts_with("v=STSv1"))
        .cloned()
        .collect();
    assert_eq!(sts::parse_txt(&only_sts).as_deref(), Ok(id.as_str()));
}

fn check_policy(data: &[u8]) {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = sts::parse_policy(body) else {
        return;
    };
    assert!(policy.max_age <= MAX_AGE_LIMIT);
    for mx in &policy.mx {
        assert_eq!(mx, &mx.to_ascii_lowercase());
        assert!(!mx.ends_with('.'), "{mx:?}");
        let host = match mx.strip_prefix("*.") {
            Some(suffix) => format!("mx1.{suffix}"),
            None => mx.clone(),
        };
        assert!(policy.mx_matches(&host), "{mx:?} does not match {host:?}");
    }
    let canonical = format_policy(&policy);
    assert_eq!(
        sts::parse_policy(&canonical).as_ref(),
        Ok(&policy),
        "{canonical:?}"
    );
    if !body.contains('\r') {
        let crlf = body.replace('\n', "\r\n");
        assert_eq!(
            sts::parse_policy(&crlf).as_ref(),
            Ok(&policy),
            "CRLF changed it"
        );
    }
}

pub fn check(data: &[u8]) {
    match data.split_first() {
        Some((selector, rest)) if selector % 2 == 0 => check_txt(rest),
        Some((_, rest)) => check_policy(rest),
        None => {}
    }
}
