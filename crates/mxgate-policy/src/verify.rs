//! The rustls certificate verifiers, one per way a requirement judges a certificate:
//! [`DangerAcceptAnyCertificate`] (opportunistic/encrypt), [`PkixNamesVerifier`]
//! (verify, MTA-STS enforce) and [`DaneVerifier`] (RFC 7672, on [`match_chain`]).
//! Every one checks the handshake signature the same way; only how the certificate
//! is judged differs. `tls.rs` picks one per requirement.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::dane::match_chain;
use crate::plan::TlsaRecord;

/// The handshake-signature half of [`ServerCertVerifier`], checked with `self.algs`
/// (the provider's algorithms). Every verifier here checks handshake signatures the
/// same way; only how the certificate is judged differs.
macro_rules! verify_handshake_signatures_with_algs {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// Accepts any certificate, still checking the handshake signature. Only for levels
/// that do not authenticate (`may`, `encrypt`, DANE with unusable TLSA records):
/// docs/policy.md "none (any certificate)".
#[derive(Debug)]
pub struct DangerAcceptAnyCertificate {
    algs: WebPkiSupportedAlgorithms,
}

impl DangerAcceptAnyCertificate {
    pub fn new(algs: WebPkiSupportedAlgorithms) -> Arc<Self> {
        Arc::new(DangerAcceptAnyCertificate { algs })
    }
}

impl ServerCertVerifier for DangerAcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    verify_handshake_signatures_with_algs!();
}

/// PKIX to the configured roots, and ANY of `names` in the certificate (not only the
/// SNI: a `match` list may differ from the MX name).
#[derive(Debug)]
pub struct PkixNamesVerifier {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<String>,
}

impl PkixNamesVerifier {
    /// `inner` checks the chain to the trust roots; `names` are the reference
    /// identifiers, any one of which the certificate must carry.
    pub fn new(inner: Arc<WebPkiServerVerifier>, names: Vec<String>) -> Arc<Self> {
        Arc::new(PkixNamesVerifier { inner, names })
    }
}

impl ServerCertVerifier for PkixNamesVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("no reference identifier configured".into());
        for name in &self.names {
            let Ok(sn) = ServerName::try_from(name.as_str()) else {
                continue;
            };
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, &sn, ocsp_response, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// rustls verifier for a DANE requirement. The handshake signature is still checked
/// against the leaf's key.
#[derive(Debug)]
pub struct DaneVerifier {
    tlsa: Vec<TlsaRecord>,
    names: Vec<String>,
    algs: WebPkiSupportedAlgorithms,
}

impl DaneVerifier {
    pub fn new(
        tlsa: Vec<TlsaRecord>,
        names: Vec<String>,
        algs: WebPkiSupportedAlgorithms,
    ) -> Arc<Self> {
        Arc::new(DaneVerifier { tlsa, names, algs })
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = Vec::with_capacity(intermediates.len() + 1);
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        match match_chain(&self.tlsa, &chain, &self.names, now) {
            Ok(_) => Ok(ServerCertVerified::assertion()),
            // A typed certificate error, so delivery reports a DANE mismatch as such
            // (RFC 8460 §4.3.2.1 `tlsa-invalid`); the detail goes to the log.
            Err(e) => {
                tracing::info!(names = %self.names.join(", "), "dane: {e}");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    verify_handshake_signatures_with_algs!();
}
