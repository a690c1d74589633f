//! Pure decisions of the SMTP client: what to do about STARTTLS for a requirement, what
//! a reply means for a recipient, which status code and kind a failure gets — and
//! **defer or bounce**: this is the one module where an [`Outcome`] is chosen as
//! `Deferred` or `Failed` ([`rcpt_verdict`] for a server's reply, [`plan_outcome`] for a
//! destination without a plan, [`leftover_outcome`] for recipients no session decided,
//! including `on_tls_failure`; the machine's own refusals — SMTPUTF8, SIZE, addresses —
//! go through [`refused`]).
//!
//! Nothing here does I/O; the async driver in `session` asks these functions and acts.
//! This module does not choose the TLS level (that is `mxgate-policy`).

use mxgate_config::OnTlsFailure;
use mxgate_policy::sts::fetch::FetchFailure;
use mxgate_policy::{DeliveryPlan, LookupFailure, PlanError, SkipReason, TlsRequirement};
use mxgate_queue::{DeliveryFailure, FailureKind, Outcome, MAX_DIAGNOSTIC};
use mxgate_smtp::reply::Reply;
use mxgate_smtp::EnhancedStatus;

/// What to do after EHLO, given the requirement and whether STARTTLS was advertised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartTlsStep {
    /// Go on in cleartext.
    Skip,
    /// Send STARTTLS; a refusal or failed handshake may fall back to cleartext.
    TryOpportunistic,
    /// Send STARTTLS; anything short of an authenticated session is a policy failure.
    Require,
    /// TLS is required but the server does not offer it.
    NotOffered,
}

/// The STARTTLS decision table (docs/policy.md).
pub fn starttls_step(
    requirement: &TlsRequirement,
    offered: bool,
    retry_cleartext: bool,
) -> StartTlsStep {
    match (requirement, offered) {
        // Level `none`: never STARTTLS.
        (TlsRequirement::Cleartext, _) => StartTlsStep::Skip,
        // The retry after a failed opportunistic handshake is cleartext by design.
        (TlsRequirement::Opportunistic, _) if retry_cleartext => StartTlsStep::Skip,
        (TlsRequirement::Opportunistic, true) => StartTlsStep::TryOpportunistic,
        (TlsRequirement::Opportunistic, false) => StartTlsStep::Skip,
        // RFC 3207 §4: "If the client receives the 454 response, the client must decide
        // whether or not to continue the SMTP session" — at required levels it must not.
        (
            TlsRequirement::Encrypt | TlsRequirement::Pkix { .. } | TlsRequirement::Dane { .. },
            true,
        ) => StartTlsStep::Require,
        (
            TlsRequirement::Encrypt | TlsRequirement::Pkix { .. } | TlsRequirement::Dane { .. },
            false,
        ) => StartTlsStep::NotOffered,
    }
}

/// The enhanced status code of a reply: its own when it has one (RFC 3463), else the
/// generic `X.0.0` of its class.
pub fn status_of(reply: &Reply) -> EnhancedStatus {
    reply.status()
}

/// Text from outside (a server's reply, an error message) made safe to keep: control
/// characters escaped as `\xNN`, then cut at a character boundary to at most
/// [`MAX_DIAGNOSTIC`] bytes (RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets),
/// ending in `...` when cut.
pub fn bounded(text: &str) -> String {
    const MARK: &str = "...";
    let mut out = String::with_capacity(text.len().min(MAX_DIAGNOSTIC));
    // The longest prefix that still leaves room for the marker.
    let mut cut = 0;
    for c in text.chars() {
        if out.len() <= MAX_DIAGNOSTIC - MARK.len() {
            cut = out.len();
        }
        if c.is_control() {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            out.push(c);
        }
        if out.len() > MAX_DIAGNOSTIC {
            out.truncate(cut);
            out.push_str(MARK);
            return out;
        }
    }
    out
}

/// A failure carrying the server's reply (`smtp;` diagnostic in a DSN).
pub fn remote_failure(reply: &Reply, mx_host: &str) -> DeliveryFailure {
    let kind = if reply.is_permanent() {
        FailureKind::Rejected
    } else {
        FailureKind::RemoteTemporary
    };
    DeliveryFailure {
        kind,
        status: status_of(reply),
        remote_mta: Some(mx_host.to_string()),
        diagnostic: bounded(&reply.to_string()),
        remote: true,
    }
}

/// A failure with a local reason (`x-mxgate;` diagnostic in a DSN).
pub fn local_failure(
    kind: FailureKind,
    status: EnhancedStatus,
    remote_mta: Option<&str>,
    diagnostic: impl AsRef<str>,
) -> DeliveryFailure {
    DeliveryFailure {
        kind,
        status,
        remote_mta: remote_mta.map(str::to_string),
        diagnostic: bounded(diagnostic.as_ref()),
        remote: false,
    }
}

/// Status codes for local reasons (RFC 3463, RFC 7505, RFC 6531).
pub mod status {
    use mxgate_smtp::EnhancedStatus;

    /// X.1.10 null MX (RFC 7505 §4.2).
    pub const NULL_MX: EnhancedStatus = EnhancedStatus::permanent(1, 10);
    /// X.1.2 bad destination system address (domain does not exist).
    pub const NO_SUCH_DOMAIN: EnhancedStatus = EnhancedStatus::permanent(1, 2);
    /// X.4.3 directory (DNS) server failure.
    pub const DNS_TEMPORARY: EnhancedStatus = EnhancedStatus::transient(4, 3);
    /// X.4.1 no answer from host.
    pub const NO_ANSWER: EnhancedStatus = EnhancedStatus::transient(4, 1);
    /// X.4.2 bad connection (lost, timed out, garbled).
    pub const BAD_CONNECTION: EnhancedStatus = EnhancedStatus::transient(4, 2);
    /// X.6.7 non-ASCII addresses not permitted for that recipient (RFC 6531 §3.5).
    pub const SMTPUTF8_REQUIRED: EnhancedStatus = EnhancedStatus::permanent(6, 7);
    /// X.3.4 message too big for system (RFC 1870).
    pub const TOO_BIG: EnhancedStatus = EnhancedStatus::permanent(3, 4);
    /// X.1.3 bad destination mailbox address syntax.
    pub const BAD_ADDRESS: EnhancedStatus = EnhancedStatus::permanent(1, 3);
    /// X.1.7 bad sender's mailbox address syntax.
    pub const BAD_SENDER: EnhancedStatus = EnhancedStatus::permanent(1, 7);
    /// X.5.0 other or undefined protocol status.
    pub const PROTOCOL: EnhancedStatus = EnhancedStatus::transient(5, 0);
    /// X.3.0 other or undefined mail system status (local trouble).
    pub const LOCAL: EnhancedStatus = EnhancedStatus::transient(3, 0);
}

/// Why a required TLS level was not met on one MX.
///
/// Status codes (RFC 3463 §3.8): a server that does not offer or refuses STARTTLS is
/// X.7.4 "Security features not supported"; a failed handshake, a certificate that does
/// not verify (PKIX or DANE) or a protocol violation around STARTTLS is X.7.5
/// "Cryptographic failure"; an MX excluded by policy (MTA-STS, TLSA lookup failure) is
/// X.7.5 as well. Class 4 when deferring, 5 with `on_tls_failure = "bounce"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicyFailure {
    pub kind: FailureKind,
    /// `encrypt: STARTTLS not offered by mx1.example.com`
    pub message: String,
}

impl TlsPolicyFailure {
    /// The RFC 3463 subject and detail (`7.4` or `7.5`).
    pub fn subject_detail(&self) -> (u16, u16) {
        match self.kind {
            FailureKind::StarttlsNotOffered | FailureKind::StarttlsRefused => (7, 4),
            _ => (7, 5),
        }
    }

    /// The `reason` label of `mxgate_tls_policy_failures_total` (docs/operations.md).
    pub fn reason(&self) -> &'static str {
        metric_reason(self.kind)
    }
}

/// The bounded `reason` label of `mxgate_tls_policy_failures_total` for a kind.
pub fn metric_reason(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::StarttlsNotOffered => "starttls_not_offered",
        FailureKind::StarttlsRefused => "starttls_refused",
        FailureKind::ResponseInjection => "response_injection",
        FailureKind::CertificateHostMismatch
        | FailureKind::CertificateExpired
        | FailureKind::CertificateNotTrusted
        | FailureKind::CertificateInvalid
        | FailureKind::DaneMismatch => "certificate_invalid",
        FailureKind::HandshakeFailed => "handshake_failed",
        FailureKind::BadAddress => "bad_name",
        _ => "policy_excluded",
    }
}

/// A greeting other than `220` (RFC 5321 §3.1): try elsewhere. It never bounces — it
/// comes before TLS at every level — so its class is made transient.
pub fn greeting_failure(reply: &Reply, mx_host: &str) -> DeliveryFailure {
    let mut failure = remote_failure(reply, mx_host);
    failure.kind = FailureKind::GreetingRejected;
    failure.status = failure
        .status
        .with_class(mxgate_smtp::StatusClass::Transient);
    failure
}

/// A recipient this server cannot be sent to at all (SMTPUTF8 needed, message too
/// big, an address that cannot be written): permanent for this destination.
pub fn refused(failure: DeliveryFailure) -> Outcome {
    Outcome::Failed(failure)
}

/// What a MAIL, DATA or final reply means for every accepted recipient: the reply's
/// class; a `2xx` where `354` was expected is protocol confusion, transient.
pub fn reply_outcome(reply: &Reply, mx: &str) -> Outcome {
    match rcpt_verdict(reply, mx) {
        RcptVerdict::Failed(f) => Outcome::Failed(f),
        RcptVerdict::Deferred(f) => Outcome::Deferred(f),
        RcptVerdict::Accepted => Outcome::Deferred(local_failure(
            FailureKind::ProtocolError,
            status::PROTOCOL,
            Some(mx),
            format!("unexpected reply {} from {mx}", bounded(&reply.to_string())),
        )),
    }
}

/// What a sequence of replies in one transaction means for each recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptVerdict {
    /// Accepted by RCPT; waits for the DATA result.
    Accepted,
    Deferred(DeliveryFailure),
    Failed(DeliveryFailure),
}

/// Reads a RCPT reply (RFC 5321 §4.2.1: 2yz positive, 4yz transient, 5yz permanent).
/// Anything else (a 3yz) is a protocol error treated as transient.
pub fn rcpt_verdict(reply: &Reply, mx_host: &str) -> RcptVerdict {
    if reply.is_positive() {
        RcptVerdict::Accepted
    } else if reply.is_permanent() {
        RcptVerdict::Failed(remote_failure(reply, mx_host))
    } else {
        let mut f = remote_failure(reply, mx_host);
        if !f.status.is_transient() {
            f.status = status::PROTOCOL;
        }
        RcptVerdict::Deferred(f)
    }
}

/// The outcome of recipients no session decided: TLS reasons first (they are what the
/// operator must see), else the last connection failure, else "no MX".
pub fn leftover_outcome(
    plan: &DeliveryPlan,
    tls: &[TlsPolicyFailure],
    other: Option<DeliveryFailure>,
) -> Outcome {
    if !tls.is_empty() {
        let message: Vec<&str> = tls.iter().map(|f| f.message.as_str()).collect();
        let message = message.join("; ");
        let (subject, detail) = tls.first().map(|f| f.subject_detail()).unwrap_or((7, 5));
        let kind = tls.first().map(|f| f.kind).unwrap_or(FailureKind::Other);
        // Only when every failure was a TLS policy failure may `bounce` apply: an
        // unreachable MX says nothing about policy.
        if plan.on_tls_failure == OnTlsFailure::Bounce && other.is_none() {
            let code = EnhancedStatus::permanent(subject, detail);
            return Outcome::Failed(local_failure(kind, code, None, message));
        }
        let message = match &other {
            Some(o) => format!("{message}; {}", o.diagnostic),
            None => message,
        };
        let code = EnhancedStatus::transient(subject, detail);
        return Outcome::Deferred(local_failure(kind, code, None, message));
    }
    match other {
        Some(f) => Outcome::Deferred(f),
        None => Outcome::Deferred(local_failure(
            FailureKind::NoMxHost,
            status::DNS_TEMPORARY,
            None,
            format!("no MX host of {} could be dialled", plan.domain),
        )),
    }
}

/// No plan for the destination: a permanent error (null MX, no such domain) bounces,
/// a DNS failure defers.
pub fn plan_outcome(e: &PlanError) -> Outcome {
    let (kind, code) = match e {
        // RFC 7505 §4.2: "SMTP clients ... SHOULD use ... 556 5.1.10".
        PlanError::NullMx { .. } => (FailureKind::NullMx, status::NULL_MX),
        PlanError::NxDomain { .. }
        | PlanError::NoMailHost { .. }
        | PlanError::InvalidName { .. } => (FailureKind::NoSuchDomain, status::NO_SUCH_DOMAIN),
        PlanError::MxLookup { failure, .. } => (lookup_kind(failure), status::DNS_TEMPORARY),
    };
    let failure = local_failure(kind, code, None, e.to_string());
    if e.is_permanent() {
        Outcome::Failed(failure)
    } else {
        Outcome::Deferred(failure)
    }
}

/// The failure kind of a DNS lookup that gave no usable answer.
fn lookup_kind(failure: &LookupFailure) -> FailureKind {
    match failure {
        LookupFailure::Bogus => FailureKind::DnssecInvalid,
        LookupFailure::Indeterminate
        | LookupFailure::Temporary(_)
        | LookupFailure::ResolverNotValidating => FailureKind::DnsTemporary,
    }
}

/// The failure kind of an MX host the plan does not dial.
pub fn skip_kind(reason: &SkipReason) -> FailureKind {
    match reason {
        SkipReason::AddressLookup { failure, .. } => lookup_kind(failure),
        SkipReason::NoAddress { .. } => FailureKind::NoMxHost,
        SkipReason::TlsaLookup { failure, .. } => match failure {
            LookupFailure::Bogus => FailureKind::DnssecInvalid,
            _ => FailureKind::TlsaInvalid,
        },
        SkipReason::NotInMtaStsPolicy { .. } => FailureKind::StsMxNotListed,
        SkipReason::DaneOnlyNoTlsa { .. } => FailureKind::DaneRequired,
        SkipReason::DaneOnlyUnusableTlsa { .. } => FailureKind::TlsaInvalid,
    }
}

/// The failure kind of an announced MTA-STS policy that could not be obtained
/// (RFC 8460 §4.3.2.2).
pub fn sts_fetch_kind(failure: FetchFailure) -> FailureKind {
    match failure {
        FetchFailure::Fetch => FailureKind::StsPolicyFetch,
        FetchFailure::Invalid => FailureKind::StsPolicyInvalid,
        FetchFailure::Webpki => FailureKind::StsWebpkiInvalid,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> Reply {
        let mut buf = bytes::BytesMut::from(format!("{code} {text}\r\n").as_str());
        mxgate_smtp::reply::parse_reply(&mut buf).unwrap().unwrap()
    }

    #[test]
    fn starttls_table() {
        let dane = TlsRequirement::Dane {
            tlsa: vec![],
            names: vec![],
        };
        let pkix = TlsRequirement::Pkix { names: vec![] };
        use StartTlsStep::*;
        let rows: &[(&TlsRequirement, bool, bool, StartTlsStep)] = &[
            (&TlsRequirement::Cleartext, true, false, Skip),
            (&TlsRequirement::Cleartext, false, false, Skip),
            (
                &TlsRequirement::Opportunistic,
                true,
                false,
                TryOpportunistic,
            ),
            (&TlsRequirement::Opportunistic, false, false, Skip),
            (&TlsRequirement::Opportunistic, true, true, Skip),
            (&TlsRequirement::Encrypt, true, false, Require),
            (&TlsRequirement::Encrypt, false, false, NotOffered),
            (&TlsRequirement::Encrypt, true, true, Require),
            (&pkix, true, false, Require),
            (&pkix, false, false, NotOffered),
            (&dane, true, false, Require),
            (&dane, false, true, NotOffered),
        ];
        for (req, offered, retry, want) in rows {
            assert_eq!(
                &starttls_step(req, *offered, *retry),
                want,
                "{req:?} offered={offered} retry={retry}"
            );
        }
    }

    #[test]
    fn rcpt_verdicts() {
        assert_eq!(
            rcpt_verdict(&reply(250, "2.1.5 ok"), "mx"),
            RcptVerdict::Accepted
        );
        let RcptVerdict::Failed(f) = rcpt_verdict(&reply(550, "5.1.1 no such user"), "mx") else {
            panic!("550 must fail")
        };
        assert_eq!(f.status.to_string(), "5.1.1");
        assert_eq!(f.diagnostic, "550 5.1.1 no such user");
        assert!(f.remote);
        let RcptVerdict::Deferred(f) = rcpt_verdict(&reply(451, "try later"), "mx") else {
            panic!("451 must defer")
        };
        assert_eq!(f.status.to_string(), "4.0.0");
        let RcptVerdict::Deferred(f) = rcpt_verdict(&reply(354, "what"), "mx") else {
            panic!("3xx must defer")
        };
        assert_eq!(f.status.to_string(), "4.5.0");
    }

    #[test]
    fn bounded_escapes_controls_and_cuts_at_512_bytes() {
        assert_eq!(
            bounded("550 no\x1b[31m user\r\n"),
            "550 no\\x1b[31m user\\x0d\\x0a"
        );
        assert_eq!(bounded("\u{85}"), "\\xc2\\x85");
        let exact = "a".repeat(MAX_DIAGNOSTIC);
        assert_eq!(bounded(&exact), exact);
        let long = "é".repeat(4000);
        let b = bounded(&long);
        assert!(
            b.len() <= MAX_DIAGNOSTIC && b.ends_with("...") && b.len() > 500,
            "{}",
            b.len()
        );
        let ctl = "\x07".repeat(1000);
        let b = bounded(&ctl);
        assert!(b.len() <= MAX_DIAGNOSTIC && b.ends_with("\\x07..."), "{b}");
        assert!(!b.chars().any(char::is_control));
    }

    #[test]
    fn tls_failure_codes() {
        let f = |kind| TlsPolicyFailure {
            kind,
            message: String::new(),
        };
        assert_eq!(f(FailureKind::StarttlsNotOffered).subject_detail(), (7, 4));
        assert_eq!(f(FailureKind::CertificateExpired).subject_detail(), (7, 5));
        assert_eq!(
            f(FailureKind::StarttlsNotOffered).reason(),
            "starttls_not_offered"
        );
        assert_eq!(
            f(FailureKind::CertificateNotTrusted).reason(),
            "certificate_invalid"
        );
    }
}
