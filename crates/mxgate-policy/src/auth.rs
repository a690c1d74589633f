//! How a TLS session was authenticated ([`Auth`]: the log field `auth=`, a metric label).
//!
//! A vocabulary only: the verifiers (`verify.rs`) and the TLSA matcher (`dane.rs`)
//! produce it, [`crate::tls::authenticated_by`] names it after a handshake, delivery,
//! `check` and the session reports print and count it.

use std::fmt;

/// How a TLS session was authenticated (log field `auth=`, metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Auth {
    None,
    Pkix,
    DaneEe,
    DaneTa,
}

impl Auth {
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Pkix => "pkix",
            Auth::DaneEe => "dane-ee",
            Auth::DaneTa => "dane-ta",
        }
    }
}

impl fmt::Display for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
