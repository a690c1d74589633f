//! From the policy engine's [`DeliveryPlan`] to a socketmap reply in Postfix's
//! policy-table syntax (postconf(5), `smtp_tls_policy_maps`). Pure: no lookups here.
//!
//! The level is decided once, by mxgate-policy's decision function; this module only
//! translates the plan into the words Postfix understands, and says `NOTFOUND ` where
//! the plan applies nothing of mxgate's own (only `policy.fallback`), so Postfix's own
//! `smtp_tls_security_level` governs. The translation, per plan:
//!
//! | plan | reply |
//! |---|---|
//! | `dane-only` is configured | `OK dane-only` (Postfix then does the DANE check itself) |
//! | DANE applies to an MX (RFC 7672) | `OK dane` |
//! | MTA-STS `enforce` (RFC 8461 §5) | `OK secure match=mx1:mx2 servername=hostname` (the MX hosts that match the policy) |
//! | MTA-STS `testing`, or only the fallback | `NOTFOUND ` |
//! | a configured `none`/`may`/`encrypt`/`verify` | that level (`verify match=…` with a `match` list) |
//! | no MX host may be dialled, or a temporary failure | `TEMP reason` |
//! | null MX, NXDOMAIN | `NOTFOUND ` (Postfix finds that out itself) |
//!
//! DANE before MTA-STS (RFC 8461 §2): where validated TLSA records exist the reply is
//! `dane`/`dane-only`, never `secure`.

use mxgate_config::{DomainPolicy, Level, TlsVersion};
use mxgate_policy::{DeliveryPlan, PlanError, PolicySource, TlsRequirement};

use crate::netstring::MAX_ANSWER;

/// A Postfix TLS security level (postconf(5), `smtp_tls_policy_maps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostfixLevel {
    None,
    May,
    Encrypt,
    Verify,
    Secure,
    Dane,
    DaneOnly,
}

impl PostfixLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            PostfixLevel::None => "none",
            PostfixLevel::May => "may",
            PostfixLevel::Encrypt => "encrypt",
            PostfixLevel::Verify => "verify",
            PostfixLevel::Secure => "secure",
            PostfixLevel::Dane => "dane",
            PostfixLevel::DaneOnly => "dane-only",
        }
    }
}

/// One policy-table entry: a level and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostfixPolicy {
    pub level: PostfixLevel,
    /// `match=` names (colon-separated on the wire), for `verify` and `secure`.
    pub match_names: Vec<String>,
    /// `servername=hostname`: SNI is the MX host name (Postfix ≥ 3.4).
    pub servername_hostname: bool,
    /// `protocols=>=TLSv1.2` or `>=TLSv1.3` (Postfix ≥ 3.6 syntax); never at `none`.
    pub min_tls_version: TlsVersion,
}

impl PostfixPolicy {
    fn new(level: PostfixLevel, min_tls_version: TlsVersion) -> Self {
        PostfixPolicy {
            level,
            match_names: Vec::new(),
            servername_hostname: false,
            min_tls_version,
        }
    }

    /// The policy-table result: `level attr=value ...`.
    pub fn render(&self) -> String {
        let mut out = self.level.as_str().to_string();
        if self.level == PostfixLevel::None {
            // postconf(5): "none: No TLS. No additional attributes are supported".
            return out;
        }
        if !self.match_names.is_empty() {
            out.push_str(" match=");
            out.push_str(&self.match_names.join(":"));
        }
        if self.servername_hostname {
            out.push_str(" servername=hostname");
        }
        out.push_str(match self.min_tls_version {
            TlsVersion::Tls12 => " protocols=>=TLSv1.2",
            TlsVersion::Tls13 => " protocols=>=TLSv1.3",
        });
        out
    }
}

/// A socketmap reply (socketmap_table(5), "REPLY FORMAT").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK <policy>`.
    Found(PostfixPolicy),
    /// `NOTFOUND `: Postfix applies its own default.
    NotFound,
    /// `TEMP reason`: Postfix defers the delivery.
    Temp(String),
    /// `PERM reason`: a request mxgate cannot answer.
    Perm(String),
}

/// Longest reason text sent back (Postfix logs it).
const MAX_REASON: usize = 400;

impl Reply {
    /// The `answer` label of `mxgate_socketmap_answers_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Reply::Found(p) => p.level.as_str(),
            Reply::NotFound => "notfound",
            Reply::Temp(_) => "temp",
            Reply::Perm(_) => "perm",
        }
    }

    /// The reply payload, at most [`MAX_ANSWER`] bytes: an entry that would be longer
    /// (thousands of MX names) becomes `TEMP`, never a truncated `match=` list.
    pub fn payload(&self) -> String {
        let text = match self {
            Reply::Found(p) => format!("OK {}", p.render()),
            Reply::NotFound => "NOTFOUND ".to_string(),
            Reply::Temp(why) => format!("TEMP {}", sanitize(why)),
            Reply::Perm(why) => format!("PERM {}", sanitize(why)),
        };
        if text.len() > MAX_ANSWER {
            return "TEMP policy too long for a socketmap reply".to_string();
        }
        text
    }
}

/// Printable ASCII only, bounded.
fn sanitize(why: &str) -> String {
    let mut out: String = why
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if out.len() > MAX_REASON {
        out.truncate(MAX_REASON);
    }
    out
}

/// The configuration that applies to the queried domain (its `[policy.domains]`
/// entry): only what the plan does not carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured<'a> {
    /// The entry's `match` list (names accepted at `verify`).
    pub match_names: &'a [String],
}

/// A name usable inside a `match=` attribute: "attribute values may not contain
/// whitespace or commas", and `:` separates the names.
fn attribute_safe(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'*'))
}

/// The reply for a next-hop domain, from the engine's plan.
pub fn answer_domain(plan: &Result<DeliveryPlan, PlanError>, configured: &Configured<'_>) -> Reply {
    let plan = match plan {
        Ok(plan) => plan,
        // Null MX or no such domain: Postfix's own lookups bounce it.
        Err(e) if e.is_permanent() => return Reply::NotFound,
        Err(e) => return Reply::Temp(e.to_string()),
    };
    let tls = plan.min_tls_version;
    // `dane-only` is passed on as such: Postfix repeats the TLSA lookups and defers
    // exactly where relay mode would ("no usable secure TLSA record means defer").
    if plan.level == Level::DaneOnly {
        return Reply::Found(PostfixPolicy::new(PostfixLevel::DaneOnly, tls));
    }
    // Relay mode defers when no MX host may be dialled; so does Postfix after TEMP.
    if !plan.mx.is_empty() && plan.mx.iter().all(|m| m.requirement.is_err()) {
        let why = plan
            .mx
            .iter()
            .find_map(|m| m.requirement.as_ref().err())
            .map(ToString::to_string)
            .unwrap_or_default();
        return Reply::Temp(why);
    }
    let found = |level| Reply::Found(PostfixPolicy::new(level, tls));
    match plan.source {
        // RFC 7672 §2.2 and RFC 8461 §2: DANE decides wherever it applies; Postfix
        // repeats the TLSA lookup and check itself.
        PolicySource::Dane => found(PostfixLevel::Dane),
        // Only policy.fallback would apply: Postfix's own default governs.
        PolicySource::Fallback => Reply::NotFound,
        PolicySource::MtaSts => {
            // RFC 8461 §4.1: the certificate must be valid for the MX host name, and
            // only MX hosts matching the policy may be used (§4.2).
            let names: Vec<String> = plan
                .mx
                .iter()
                .filter(|m| matches!(m.requirement, Ok(TlsRequirement::Pkix { .. })))
                .map(|m| m.host.clone())
                .filter(|h| attribute_safe(h))
                .collect();
            if names.is_empty() {
                // `testing` (RFC 8461 §5): deliver as if no policy, report failures.
                return Reply::NotFound;
            }
            Reply::Found(PostfixPolicy {
                level: PostfixLevel::Secure,
                match_names: names,
                servername_hostname: true,
                min_tls_version: tls,
            })
        }
        PolicySource::Config => match plan.level {
            Level::None => found(PostfixLevel::None),
            Level::May => found(PostfixLevel::May),
            Level::Encrypt => found(PostfixLevel::Encrypt),
            Level::Verify => verify(configured.match_names, tls),
            Level::Dane => found(PostfixLevel::Dane),
            Level::DaneOnly => found(PostfixLevel::DaneOnly),
            Level::MtaSts | Level::Auto => Reply::NotFound,
        },
    }
}

fn verify(match_names: &[String], tls: TlsVersion) -> Reply {
    if match_names.iter().any(|n| !attribute_safe(n)) {
        return Reply::Temp("policy.domains match list has a name Postfix cannot take".into());
    }
    Reply::Found(PostfixPolicy {
        level: PostfixLevel::Verify,
        match_names: match_names.to_vec(),
        servername_hostname: false,
        min_tls_version: tls,
    })
}

/// The reply for a parent-domain key (`.example.com`): its own leading-dot
/// `[policy.domains]` entry, else `NOTFOUND `. Levels that need the domain's DNS
/// (`mta-sts`, `auto`) cannot apply to every subdomain at once: `NOTFOUND `.
pub fn answer_parent(entry: Option<&DomainPolicy>, global_min: TlsVersion) -> Reply {
    let Some(entry) = entry else {
        return Reply::NotFound;
    };
    let tls = entry.min_tls_version.unwrap_or(global_min);
    let found = |level| Reply::Found(PostfixPolicy::new(level, tls));
    match entry.level {
        Level::None => found(PostfixLevel::None),
        Level::May => found(PostfixLevel::May),
        Level::Encrypt => found(PostfixLevel::Encrypt),
        Level::Verify => verify(&entry.match_names, tls),
        Level::Dane => found(PostfixLevel::Dane),
        Level::DaneOnly => found(PostfixLevel::DaneOnly),
        Level::MtaSts | Level::Auto => Reply::NotFound,
    }
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
