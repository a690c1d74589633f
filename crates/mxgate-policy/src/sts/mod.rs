//! MTA-STS (RFC 8461): the TXT record and policy parsers (pure), the HTTPS fetch
//! ([`fetch`]), the persistent policy store ([`store`]) and the trait of a cache shared
//! between instances ([`shared`]); [`CachedPolicy`] is what the last two hold.
//!
//! The parsers are strict where the RFC is normative and lenient only where it says
//! to ignore (unknown fields). They do not do I/O and do not decide delivery: that is
//! [`crate::decide`].

pub mod fetch;
pub mod shared;
pub mod store;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

/// RFC 8461 §3.2: "max_age: Max lifetime of the policy (plaintext non-negative integer
/// seconds, maximum value of 31557600)."
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// One cached policy, as stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPolicy {
    pub domain: String,
    pub id: String,
    pub policy: MtaStsPolicy,
    /// Unix seconds.
    pub fetched_at: u64,
}

impl CachedPolicy {
    pub fn expires_at(&self) -> u64 {
        self.fetched_at.saturating_add(self.policy.max_age)
    }

    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.expires_at()
    }

    /// When to refresh proactively: between 50 % and 75 % of max_age, per domain.
    pub fn refresh_at(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.domain.hash(&mut h);
        let share = 50 + h.finish() % 26; // percent
        self.fetched_at
            .saturating_add(self.policy.max_age.saturating_mul(share) / 100)
    }
}

/// `mode` of a policy (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtaStsMode {
    Enforce,
    Testing,
    None,
}

impl MtaStsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtaStsMode::Enforce => "enforce",
            MtaStsMode::Testing => "testing",
            MtaStsMode::None => "none",
        }
    }
}

/// A parsed policy (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MtaStsPolicy {
    pub mode: MtaStsMode,
    /// Patterns, lower case, without trailing dot; `*.` prefix = one label wildcard.
    pub mx: Vec<String>,
    /// Seconds.
    pub max_age: u64,
}

impl MtaStsPolicy {
    /// Whether `host` matches one of the `mx` patterns (RFC 8461 §4.1).
    pub fn mx_matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| mx_pattern_matches(p, &host))
    }
}

/// RFC 8461 §4.1 (paraphrased): a pattern starting with `*.` matches exactly one
/// leftmost label: `*.example.com` matches `mx1.example.com`, not `example.com` nor
/// `foo.bar.example.com`. Otherwise the match is exact (case-insensitive).
pub fn mx_pattern_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => match host.split_once('.') {
            Some((first, rest)) => !first.is_empty() && rest == suffix,
            None => false,
        },
        None => pattern == host,
    }
}

/// Why a TXT record set or a policy body was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsParseError {
    #[error("no TXT record starts with v=STSv1")]
    NoRecord,
    #[error("{0} TXT records start with v=STSv1 (exactly one allowed)")]
    MultipleRecords(usize),
    #[error("TXT record: {0}")]
    BadRecord(String),
    #[error("policy line {line}: {detail}")]
    BadLine { line: usize, detail: String },
    #[error("policy: {0}")]
    BadPolicy(String),
}

/// The `_mta-sts` TXT record (RFC 8461 §3.1): the policy id.
pub fn parse_txt(records: &[String]) -> Result<String, StsParseError> {
    // RFC 8461 §3.1: "If multiple TXT records for "_mta-sts" are returned by the
    // resolver, records that do not begin with "v=STSv1;" are discarded. If the number
    // of resulting records is not one, or if the resulting record is syntactically
    // invalid, senders MUST assume the recipient domain does not have an available
    // MTA-STS Policy."
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| {
            r.strip_prefix("v=STSv1")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
        })
        .collect();
    let record = match sts.as_slice() {
        [] => return Err(StsParseError::NoRecord),
        [one] => *one,
        many => return Err(StsParseError::MultipleRecords(many.len())),
    };
    let mut id = None;
    let mut fields = record.split(';').map(|f| f.trim_matches([' ', '\t']));
    fields.next(); // v=STSv1
    for field in fields {
        if field.is_empty() {
            continue; // trailing ";"
        }
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| StsParseError::BadRecord(format!("field {field:?} has no '='")))?;
        if key == "id" {
            // RFC 8461 §3.1: sts-id = %s"id=" 1*32(ALPHA / DIGIT)
            if value.is_empty()
                || value.len() > 32
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(StsParseError::BadRecord(format!("invalid id {value:?}")));
            }
            if id.is_some() {
                return Err(StsParseError::BadRecord("duplicate id".into()));
            }
            id = Some(value.to_string());
        } else {
            // sts-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
            // sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E)
            let name_ok = !key.is_empty()
                && key.len() <= 32
                && key
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric())
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            let value_ok = !value.is_empty()
                && value
                    .bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) && b != b';' && b != b'=');
            if !name_ok || !value_ok {
                return Err(StsParseError::BadRecord(format!("invalid field {field:?}")));
            }
        }
    }
    id.ok_or_else(|| StsParseError::BadRecord("no id field".into()))
}

/// The policy body (RFC 8461 §3.2).
pub fn parse_policy(body: &str) -> Result<MtaStsPolicy, StsParseError> {
    let mut version_seen = false;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    // sts-policy-term = LF / CRLF
    let lines: Vec<&str> = body.split('\n').collect();
    for (i, raw) in lines.iter().enumerate() {
        let n = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.contains('\r') {
            return Err(bad(n, "bare CR"));
        }
        // sts-policy-record = sts-policy-field *WSP *(sts-policy-term *WSP): trailing
        // whitespace and empty lines between terms are allowed.
        let line = line.trim_end_matches([' ', '\t']);
        if line.is_empty() {
            continue;
        }
        let (key, value) = line.split_once(':').ok_or_else(|| bad(n, "no ':'"))?;
        // sts-policy-field-delim = ":" *WSP
        let value = value.trim_start_matches([' ', '\t']);
        if !version_seen && key != "version" {
            return Err(bad(n, "the first field must be version"));
        }
        match key {
            // RFC 8461 §3.2: "version: Currently, only "STSv1" is supported."
            "version" => {
                if version_seen {
                    return Err(bad(n, "duplicate version"));
                }
                if value != "STSv1" {
                    return Err(bad(n, "version must be STSv1"));
                }
                version_seen = true;
            }
            // sts-policy-mode-value = %s"testing" / %s"enforce" / %s"none"
            "mode" => {
                if mode.is_some() {
                    return Err(bad(n, "duplicate mode"));
                }
                mode = Some(match value {
                    "enforce" => MtaStsMode::Enforce,
                    "testing" => MtaStsMode::Testing,
                    "none" => MtaStsMode::None,
                    _ => return Err(bad(n, "mode must be enforce, testing or none")),
                });
            }
            // sts-policy-max-age-value = 1*10(DIGIT), at most 31557600 (§3.2).
            "max_age" => {
                if max_age.is_some() {
                    return Err(bad(n, "duplicate max_age"));
                }
                if value.is_empty()
                    || value.len() > 10
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad(n, "max_age must be 1 to 10 digits"));
                }
                let v: u64 = value.parse().map_err(|_| bad(n, "max_age"))?;
                if v > MAX_AGE_LIMIT {
                    return Err(bad(n, "max_age above 31557600"));
                }
                max_age = Some(v);
            }
            // sts-policy-mx-value = ["*."] Domain
            "mx" => {
                if !valid_mx_pattern(value) {
                    return Err(bad(n, "invalid mx pattern"));
                }
                mx.push(value.trim_end_matches('.').to_ascii_lowercase());
            }
            // RFC 8461 §3.2 (paraphrased): unknown fields are extensions and are
            // ignored, provided they have the extension syntax:
            // sts-policy-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
            other => {
                let ok = !other.is_empty()
                    && other.len() <= 32
                    && other
                        .bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_alphanumeric())
                    && other
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
                if !ok {
                    return Err(bad(n, "invalid field name"));
                }
            }
        }
    }
    if !version_seen {
        return Err(StsParseError::BadPolicy("no version".into()));
    }
    let mode = mode.ok_or_else(|| StsParseError::BadPolicy("no mode".into()))?;
    let max_age = max_age.ok_or_else(|| StsParseError::BadPolicy("no max_age".into()))?;
    if mx.is_empty() && mode != MtaStsMode::None {
        return Err(StsParseError::BadPolicy("no mx pattern".into()));
    }
    Ok(MtaStsPolicy { mode, mx, max_age })
}

fn bad(line: usize, detail: &str) -> StsParseError {
    StsParseError::BadLine {
        line,
        detail: detail.to_string(),
    }
}

/// `["*."] Domain` with LDH labels (RFC 5321 §4.1.2 Domain).
fn valid_mx_pattern(p: &str) -> bool {
    let p = p.strip_prefix("*.").unwrap_or(p);
    let p = p.strip_suffix('.').unwrap_or(p);
    !p.is_empty()
        && p.len() <= 253
        && p.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
