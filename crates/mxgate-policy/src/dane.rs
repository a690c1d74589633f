//! DANE for SMTP (RFC 7672, RFC 6698 §2.1, RFC 7671 §5): which TLSA records are
//! usable and how a presented chain matches them ([`match_chain`], pure). The rustls
//! verifier built on it is [`crate::verify::DaneVerifier`].
//!
//! This module does not look up TLSA records (the engine does, through mxgate-dns) and
//! does not support PKIX-TA(0)/PKIX-EE(1): RFC 7672 §3.1.3 makes them unusable for SMTP.

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256, Sha512};

use crate::auth::Auth;
use crate::plan::TlsaRecord;

impl TlsaRecord {
    /// RFC 7672 §3.1 (paraphrased): SMTP clients support DANE-TA(2) and DANE-EE(3);
    /// §3.1.3: PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP. RFC 6698 §2.1.2/§2.1.3:
    /// selectors 0 (Cert) and 1 (SPKI), matching types 0 (Full), 1 (SHA2-256),
    /// 2 (SHA2-512); anything else is unusable (RFC 7671 §4 / RFC 6698 §4.1). A digest
    /// of the wrong length can never match and is unusable too.
    pub fn is_usable(&self) -> bool {
        let usage_ok = matches!(self.usage, 2 | 3);
        let selector_ok = matches!(self.selector, 0 | 1);
        let matching_ok = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        usage_ok && selector_ok && matching_ok
    }

    /// Whether this record's association data matches `cert` (RFC 6698 §2.1).
    pub fn matches_cert(&self, cert: &CertificateDer<'_>) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => cert.as_ref().to_vec(),
            1 => match spki_of(cert) {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data,
            1 => Sha256::digest(&selected).as_slice() == self.data.as_slice(),
            2 => Sha512::digest(&selected).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }

    /// `3 1 1` for messages.
    pub fn params(&self) -> String {
        format!("{} {} {}", self.usage, self.selector, self.matching)
    }
}

/// The DER SubjectPublicKeyInfo of a certificate.
pub fn spki_of(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let anchor = webpki::anchor_from_trusted_cert(cert).ok()?;
    Some(webpki::spki_for_anchor(&anchor).as_ref().to_vec())
}

/// Why a presented chain does not satisfy the TLSA records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaneError {
    #[error("no certificate presented")]
    NoCertificate,
    #[error("no TLSA match ({0})")]
    NoMatch(String),
    #[error("DANE-TA chain invalid: {0}")]
    BadChain(String),
    #[error("DANE-TA: certificate not valid for {0}")]
    BadName(String),
}

/// Matches a presented chain (leaf first) against usable TLSA records.
///
/// RFC 7672 §3.1.1 (paraphrased): with DANE-EE(3) only the key or certificate match
/// counts; names and validity dates of the certificate are ignored.
/// RFC 7672 §3.1.2 (paraphrased): with DANE-TA(2) the chain must lead from the leaf to
/// the matched trust anchor, and the names (§3.2.2) and dates are checked.
pub fn match_chain(
    tlsa: &[TlsaRecord],
    chain: &[CertificateDer<'_>],
    names: &[String],
    now: UnixTime,
) -> Result<Auth, DaneError> {
    let (leaf, rest) = chain.split_first().ok_or(DaneError::NoCertificate)?;
    let usable: Vec<&TlsaRecord> = tlsa.iter().filter(|r| r.is_usable()).collect();
    if usable.iter().any(|r| r.usage == 3 && r.matches_cert(leaf)) {
        return Ok(Auth::DaneEe);
    }
    let mut last_err = None;
    for ta_rec in usable.iter().filter(|r| r.usage == 2) {
        // The TA must be one of the certificates the server sent (RFC 7671 §5.2.2,
        // paraphrased: with DANE-TA the server includes the TA certificate in its chain).
        for (i, candidate) in chain.iter().enumerate() {
            if !ta_rec.matches_cert(candidate) {
                continue;
            }
            match verify_to_anchor(
                leaf,
                &rest[..i.saturating_sub(1).min(rest.len())],
                candidate,
                i == 0,
                names,
                now,
            ) {
                Ok(()) => return Ok(Auth::DaneTa),
                Err(e) => last_err = Some(e),
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        DaneError::NoMatch(
            usable
                .iter()
                .map(|r| r.params())
                .collect::<Vec<_>>()
                .join(", "),
        )
    }))
}

/// Validates `leaf` → `intermediates` → `anchor` with rustls-webpki, then the names.
fn verify_to_anchor(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    anchor_cert: &CertificateDer<'_>,
    anchor_is_leaf: bool,
    names: &[String],
    now: UnixTime,
) -> Result<(), DaneError> {
    let ee =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| DaneError::BadChain(e.to_string()))?;
    if !anchor_is_leaf {
        let anchor = webpki::anchor_from_trusted_cert(anchor_cert)
            .map_err(|e| DaneError::BadChain(e.to_string()))?;
        let intermediates: Vec<CertificateDer<'_>> = intermediates.to_vec();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| DaneError::BadChain(e.to_string()))?;
    }
    // RFC 7672 §3.2.2 (paraphrased): with DANE-TA the certificate must name the TLSA
    // base domain or the MX host (our `names`).
    let ok = names.iter().any(|n| {
        ServerName::try_from(n.as_str())
            .ok()
            .is_some_and(|sn| ee.verify_is_valid_for_subject_name(&sn).is_ok())
    });
    if ok {
        Ok(())
    } else {
        Err(DaneError::BadName(names.join(", ")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "dane_tests.rs"]
mod tests;
