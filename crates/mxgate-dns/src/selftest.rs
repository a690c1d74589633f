//! The resolver self-test (docs/operations.md, "Resolver self-test"): does the resolver
//! give answers that can be validated? Like Postfix's `dnssec_probe`, one lookup of
//! `dns.dnssec_probe` (default `". NS"`), whose answer must come out secure: in
//! `validate` mode the in-process validator proved it from the trust anchor; in
//! `trust-ad` mode the loopback resolver set the AD bit.
//!
//! The verdict ([`judge`]) is pure; [`crate::DnsClient::self_test`] does the lookup and
//! remembers the result, which the policy engine reads to say "resolver does not
//! validate DNSSEC" instead of "bogus". The result never changes a level: a failing
//! self-test makes DNSSEC answers fail, and failures defer.

use mxgate_config::DnssecMode;

use crate::{DnsError, DnssecStatus};

/// What the self-test found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelfTest {
    /// `dns.dnssec = "off"`: nothing to test.
    Skipped,
    /// The probe's answer is secure.
    Validates,
    /// The probe's answer is not secure: the resolver cannot be used for DNSSEC.
    NotValidating {
        /// What was seen, in mxgate's words.
        seen: String,
        /// What to do about it.
        fix: &'static str,
    },
    /// The probe lookup failed (SERVFAIL, timeout): the resolver is not answering.
    LookupFailed { detail: String },
}

impl SelfTest {
    /// Whether DNSSEC answers of this resolver can be trusted to mean what they say.
    pub fn passed(&self) -> bool {
        matches!(self, SelfTest::Validates | SelfTest::Skipped)
    }
}

const FIX_VALIDATE: &str = "use a resolver that passes DNSSEC records (RRSIG, NSEC) through, or a \
     validating resolver on loopback (unbound) with dns.dnssec = \"trust-ad\", or set \
     dns.dnssec = \"off\" knowing that DANE is then impossible";
const FIX_TRUST_AD: &str = "the resolver in dns.nameservers must validate DNSSEC and set the AD \
     bit (unbound with a trust anchor, or systemd-resolved with DNSSEC=yes), or use \
     dns.dnssec = \"validate\" with a resolver that passes RRSIGs, or set dns.dnssec = \
     \"off\" knowing that DANE is then impossible";

/// The verdict on the probe's answer (its DNSSEC status) or its failure.
pub fn judge(mode: DnssecMode, probe: &str, answer: Result<DnssecStatus, &DnsError>) -> SelfTest {
    let fix = match mode {
        DnssecMode::Off => return SelfTest::Skipped,
        DnssecMode::Validate => FIX_VALIDATE,
        DnssecMode::TrustAd => FIX_TRUST_AD,
    };
    match (mode, answer) {
        (_, Ok(DnssecStatus::Secure)) => SelfTest::Validates,
        (DnssecMode::TrustAd, Ok(status)) => SelfTest::NotValidating {
            seen: format!("the answer for {probe} has no AD bit ({status})"),
            fix,
        },
        (_, Ok(status)) => SelfTest::NotValidating {
            seen: format!("the answer for {probe} validates as {status}, not secure"),
            fix,
        },
        (_, Err(DnsError::Bogus { .. })) => SelfTest::NotValidating {
            seen: format!(
                "the answer for {probe} is bogus from the trust anchor: the resolver strips \
                 DNSSEC signatures"
            ),
            fix,
        },
        (DnssecMode::TrustAd, Err(e @ DnsError::Temporary { .. })) => SelfTest::LookupFailed {
            detail: format!("{e} (a validating resolver answers SERVFAIL for bogus data)"),
        },
        (_, Err(e)) => SelfTest::LookupFailed {
            detail: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DnssecMode::*;
    use DnssecStatus::*;

    #[test]
    fn verdicts() {
        let bogus = DnsError::Bogus {
            name: ".".into(),
            rtype: "NS",
        };
        let tmp = DnsError::Temporary {
            name: ".".into(),
            rtype: "NS",
            detail: "SERVFAIL".into(),
        };
        assert_eq!(judge(Off, ". NS", Ok(Insecure)), SelfTest::Skipped);
        assert_eq!(judge(Validate, ". NS", Ok(Secure)), SelfTest::Validates);
        assert_eq!(judge(TrustAd, ". NS", Ok(Secure)), SelfTest::Validates);
        for (mode, answer) in [
            (Validate, Ok(Insecure)),
            (Validate, Ok(Indeterminate)),
            (Validate, Err(&bogus)),
            (TrustAd, Ok(Insecure)),
        ] {
            let t = judge(mode, ". NS", answer);
            assert!(
                matches!(t, SelfTest::NotValidating { .. }),
                "{mode:?} {t:?}"
            );
            assert!(!t.passed());
        }
        assert!(matches!(
            judge(Validate, ". NS", Err(&tmp)),
            SelfTest::LookupFailed { .. }
        ));
        assert!(!judge(TrustAd, ". NS", Err(&tmp)).passed());
    }
}
