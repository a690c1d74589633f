//! RFC 3463 enhanced mail system status codes (`class.subject.detail`).
//!
//! [`EnhancedStatus`] is the typed form: the class is one of `2`, `4`, `5` (RFC 3463 §3.1),
//! the subject and detail are at most three digits each. It prints and parses as
//! `x.y.z`, and serialises as that text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// RFC 3463 §3.1 classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatusClass {
    /// `2.X.X` Success.
    Success,
    /// `4.X.X` Persistent Transient Failure.
    Transient,
    /// `5.X.X` Permanent Failure.
    Permanent,
}

impl StatusClass {
    pub fn digit(self) -> u8 {
        match self {
            StatusClass::Success => 2,
            StatusClass::Transient => 4,
            StatusClass::Permanent => 5,
        }
    }

    pub fn from_digit(d: u8) -> Option<StatusClass> {
        match d {
            2 => Some(StatusClass::Success),
            4 => Some(StatusClass::Transient),
            5 => Some(StatusClass::Permanent),
            _ => None,
        }
    }
}

/// An RFC 3463 enhanced status code such as `5.1.1` or `4.7.5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnhancedStatus {
    class: StatusClass,
    subject: u16,
    detail: u16,
}

/// Why a text is not an enhanced status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3463 status code (class.subject.detail): {0:?}")]
pub struct StatusParseError(pub String);

impl EnhancedStatus {
    /// RFC 3463 §2: subject and detail are 1 to 3 digits.
    pub const fn new(class: StatusClass, subject: u16, detail: u16) -> Self {
        let subject = if subject > 999 { 999 } else { subject };
        let detail = if detail > 999 { 999 } else { detail };
        EnhancedStatus {
            class,
            subject,
            detail,
        }
    }

    /// `4.y.z` — a transient failure.
    pub const fn transient(subject: u16, detail: u16) -> Self {
        EnhancedStatus::new(StatusClass::Transient, subject, detail)
    }

    /// `5.y.z` — a permanent failure.
    pub const fn permanent(subject: u16, detail: u16) -> Self {
        EnhancedStatus::new(StatusClass::Permanent, subject, detail)
    }

    /// The generic `X.0.0` of an SMTP reply code's class (RFC 3463 §3.1 "Other
    /// undefined status"); `None` for a code of no status class (1yz, 3yz).
    pub fn of_reply_code(code: u16) -> Option<Self> {
        let class = StatusClass::from_digit(u8::try_from(code / 100).ok()?)?;
        Some(EnhancedStatus::new(class, 0, 0))
    }

    pub fn class(self) -> StatusClass {
        self.class
    }

    pub fn subject(self) -> u16 {
        self.subject
    }

    pub fn detail(self) -> u16 {
        self.detail
    }

    pub fn is_permanent(self) -> bool {
        self.class == StatusClass::Permanent
    }

    pub fn is_transient(self) -> bool {
        self.class == StatusClass::Transient
    }

    /// RFC 3463 §3.8: subject 7 is "Security or Policy Status".
    pub fn is_security(self) -> bool {
        self.subject == 7
    }

    /// The same subject and detail in another class (`5.7.5` → `4.7.5`).
    pub fn with_class(self, class: StatusClass) -> Self {
        EnhancedStatus { class, ..self }
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class.digit(), self.subject, self.detail)
    }
}

impl FromStr for EnhancedStatus {
    type Err = StatusParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || StatusParseError(s.chars().take(32).collect());
        let mut parts = s.split('.');
        let (Some(c), Some(sub), Some(det), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
        if c.len() != 1 || !digits(c) || !digits(sub) || !digits(det) {
            return Err(bad());
        }
        let class = c
            .parse::<u8>()
            .ok()
            .and_then(StatusClass::from_digit)
            .ok_or_else(bad)?;
        Ok(EnhancedStatus::new(
            class,
            sub.parse().map_err(|_| bad())?,
            det.parse().map_err(|_| bad())?,
        ))
    }
}

/// `status == "5.1.1"`: compares the printed form (tests, assertions).
impl PartialEq<&str> for EnhancedStatus {
    fn eq(&self, other: &&str) -> bool {
        other.parse::<EnhancedStatus>().is_ok_and(|o| o == *self)
    }
}

impl Serialize for EnhancedStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EnhancedStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print_round_trip() {
        for s in ["2.0.0", "4.7.5", "5.1.10", "5.999.999", "4.4.1"] {
            let st: EnhancedStatus = s.parse().unwrap();
            assert_eq!(st.to_string(), s);
        }
        for bad in [
            "", "5", "5.1", "5.1.1.1", "3.0.0", "5.1.1000", "5.a.1", "55.1.1", "5..1", " 5.1.1",
        ] {
            assert!(bad.parse::<EnhancedStatus>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn classes_and_helpers() {
        let s: EnhancedStatus = "5.7.5".parse().unwrap();
        assert!(s.is_permanent() && !s.is_transient() && s.is_security());
        assert_eq!(s.with_class(StatusClass::Transient).to_string(), "4.7.5");
        assert_eq!(
            EnhancedStatus::of_reply_code(554).map(|s| s.to_string()),
            Some("5.0.0".into())
        );
        assert_eq!(EnhancedStatus::of_reply_code(354), None);
        assert_eq!(EnhancedStatus::transient(4, 2).to_string(), "4.4.2");
    }
}
