//! rustls client configurations per [`TlsRequirement`]: the trust roots, the protocol
//! versions, which verifier (`verify.rs`) a requirement gets, and after a handshake
//! which [`Auth`] it performed.
//!
//! Every configuration uses the ring provider, TLS 1.2+ (or 1.3 only), and rustls'
//! default cipher suites (all AEAD with forward secrecy). This module does not open
//! connections.

use std::path::Path;
use std::sync::Arc;

use mxgate_config::TlsVersion;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::auth::Auth;
use crate::plan::TlsRequirement;
use crate::verify::{DaneVerifier, DangerAcceptAnyCertificate, PkixNamesVerifier};

/// The protocol versions allowed at `min` (docs/policy.md: `min_tls_version` applies to
/// every TLS connection). RFC 8996 §2/§3: TLS 1.0 and 1.1 "MUST NOT be used"; rustls
/// never offers them.
pub fn protocol_versions(min: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static TLS12_AND_UP: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::Tls12 => &TLS12_AND_UP,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}

/// The ring provider with rustls' default (AEAD, forward-secret) suites.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why the trust roots could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("delivery.ca_file {path}: {detail}")]
    CaFile { path: String, detail: String },
}

/// webpki-roots plus the PEM certificates of `ca_file` (empty path = none).
pub fn load_roots(ca_file: &Path) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if ca_file.as_os_str().is_empty() {
        return Ok(roots);
    }
    let err = |detail: String| RootsError::CaFile {
        path: ca_file.display().to_string(),
        detail,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
    }
    for cert in certs {
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    Ok(roots)
}

/// Builds the rustls configuration for one requirement.
pub fn build_client_config(
    provider: &Arc<CryptoProvider>,
    roots: &Arc<RootCertStore>,
    requirement: &TlsRequirement,
    min: TlsVersion,
) -> Result<ClientConfig, rustls::Error> {
    let algs = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match requirement {
        TlsRequirement::Cleartext | TlsRequirement::Opportunistic | TlsRequirement::Encrypt => {
            DangerAcceptAnyCertificate::new(algs)
        }
        TlsRequirement::Pkix { names } => {
            let inner =
                WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            PkixNamesVerifier::new(inner, names.clone())
        }
        TlsRequirement::Dane { tlsa, names } => {
            DaneVerifier::new(tlsa.clone(), names.clone(), algs)
        }
    };
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(protocol_versions(min))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Which authentication a successful handshake under `requirement` performed, from
/// the certificates the peer presented (leaf first). Pure; call after the handshake.
pub fn authenticated_by(
    requirement: &TlsRequirement,
    peer_certificates: &[CertificateDer<'_>],
) -> Auth {
    match requirement {
        TlsRequirement::Cleartext | TlsRequirement::Opportunistic | TlsRequirement::Encrypt => {
            Auth::None
        }
        TlsRequirement::Pkix { .. } => Auth::Pkix,
        TlsRequirement::Dane { tlsa, .. } => match peer_certificates.first() {
            Some(leaf)
                if tlsa
                    .iter()
                    .any(|r| r.is_usable() && r.usage == 3 && r.matches_cert(leaf)) =>
            {
                Auth::DaneEe
            }
            Some(_) => Auth::DaneTa,
            None => Auth::None,
        },
    }
}
