//! Security levels and related enums (docs/policy.md).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// The TLS security level of a destination (docs/policy.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// Never STARTTLS.
    None,
    /// STARTTLS if offered; fall back to cleartext on failure.
    May,
    /// TLS required, any certificate.
    Encrypt,
    /// TLS required, PKIX-valid certificate for the MX name (or `match` list).
    Verify,
    /// The domain's MTA-STS policy (RFC 8461).
    MtaSts,
    /// Opportunistic DANE (RFC 7672).
    Dane,
    /// DANE required.
    DaneOnly,
    /// DANE, else MTA-STS, else the fallback level.
    Auto,
}

impl Level {
    pub const ALL: [Level; 8] = [
        Level::None,
        Level::May,
        Level::Encrypt,
        Level::Verify,
        Level::MtaSts,
        Level::Dane,
        Level::DaneOnly,
        Level::Auto,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::May => "may",
            Level::Encrypt => "encrypt",
            Level::Verify => "verify",
            Level::MtaSts => "mta-sts",
            Level::Dane => "dane",
            Level::DaneOnly => "dane-only",
            Level::Auto => "auto",
        }
    }

    /// Levels that need DNSSEC to mean anything.
    pub fn needs_dnssec(self) -> bool {
        matches!(self, Level::Dane | Level::DaneOnly)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Level::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| unknown_level(s))
    }
}

/// The error for a word that is not a level: the levels that exist, and what a
/// Postfix word (smtp_tls_security_level, TLS_README) is called here.
fn unknown_level(s: &str) -> String {
    let all: Vec<&str> = Level::ALL.iter().map(|l| l.as_str()).collect();
    let hint = match s {
        "secure" => {
            "; \"secure\" is Postfix's name for \"verify\" (with a `match` list), and for \
             MTA-STS use \"mta-sts\""
        }
        "fingerprint" => "; certificate fingerprints are not supported, use \"dane-only\"",
        "dane_only" | "daneonly" => "; did you mean \"dane-only\"?",
        "mta_sts" | "mtasts" | "sts" => "; did you mean \"mta-sts\"?",
        "" => "; an empty level is only allowed for `shadow`",
        _ => "",
    };
    format!(
        "unknown level {s:?}: the levels are {}{hint}",
        all.join(", ")
    )
}

impl<'de> Deserialize<'de> for Level {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `shadow = ""` (none) or a level.
pub(crate) fn deserialize_optional_level<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Level>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// Lowest TLS protocol version negotiated (TLS 1.0/1.1 never are, RFC 8996).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLSv1.2",
            TlsVersion::Tls13 => "TLSv1.3",
        }
    }
}

/// What a TLS policy failure does to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnTlsFailure {
    /// Temporary failure: retry per `queue.retry_intervals` until `queue.max_age`.
    Defer,
    /// Permanent failure: bounce at once.
    Bounce,
}
