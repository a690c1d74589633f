//! Certificates for tests: a private CA (optionally with intermediates), leaf
//! certificates with chosen names and validity, self-signed certificates, the digests
//! TLSA records use, and ready-made rustls server configurations.
//!
//! Everything is generated fresh in memory with rcgen (ECDSA P-256, ring). Constructors
//! panic on failure: this is test scaffolding, and rcgen only fails on programming errors
//! (such as an invalid DNS name).
//!
//! Not here: certificate *verification* (that is `mxgate-policy`'s job), revocation, or
//! anything meant for production.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use rustls::{ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Digest;

/// The validity window of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

const DAY: Duration = Duration::from_secs(86_400);

impl Validity {
    /// Valid since yesterday, for a year.
    pub fn current() -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now - DAY,
            not_after: now + 365 * DAY,
        }
    }

    /// Expired: valid from 60 days ago until 30 days ago.
    pub fn expired() -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now - 60 * DAY,
            not_after: now - 30 * DAY,
        }
    }

    /// Not yet valid: valid from 30 days from now, for a year.
    pub fn not_yet_valid() -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now + 30 * DAY,
            not_after: now + 395 * DAY,
        }
    }

    fn apply(&self, params: &mut CertificateParams) {
        // rcgen's date type, built from `SystemTime` without naming the `time` crate.
        let to_date = |t: SystemTime| {
            let epoch = date_time_ymd(1970, 1, 1);
            match t.duration_since(UNIX_EPOCH) {
                Ok(d) => epoch + d,
                Err(e) => epoch - e.duration(),
            }
        };
        params.not_before = to_date(self.not_before);
        params.not_after = to_date(self.not_after);
    }
}

impl Default for Validity {
    fn default() -> Self {
        Validity::current()
    }
}

/// A certificate authority: a self-signed root, or an intermediate signed by another CA.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    /// Certificates between this CA and the root, this CA first, root excluded.
    chain_above: Vec<CertificateDer<'static>>,
    spki: Vec<u8>,
}

impl TestCa {
    /// A new self-signed root CA named `common_name`.
    pub fn new(common_name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate CA key");
        let params = ca_params(common_name);
        let cert = params.self_signed(&key).expect("self-sign CA");
        let spki = key.subject_public_key_info();
        TestCa {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
            chain_above: Vec::new(),
            spki,
        }
    }

    /// An intermediate CA named `common_name`, signed by `self` (for DANE-TA tests that
    /// pin a non-root trust anchor).
    pub fn intermediate(&self, common_name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate intermediate key");
        let params = ca_params(common_name);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate");
        let spki = key.subject_public_key_info();
        let mut chain_above = vec![cert.der().clone()];
        chain_above.extend(self.chain_above.iter().cloned());
        TestCa {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
            chain_above,
            spki,
        }
    }

    /// This CA's certificate (DER).
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// This CA's SubjectPublicKeyInfo (DER), for `2 1 x` TLSA records.
    pub fn spki_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    /// This CA's certificate in PEM.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// Writes [`TestCa::cert_pem`] to `path` (for `delivery.ca_file`).
    pub fn write_pem(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.cert_pem())
    }

    /// A leaf certificate for `names` (the first is also the common name), valid over
    /// `validity`. The chain holds the leaf, then every intermediate up to (not
    /// including) the root.
    pub fn issue(&self, names: &[&str], validity: Validity) -> TestCert {
        let key = KeyPair::generate().expect("generate leaf key");
        let params = leaf_params(names, validity);
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain_above.iter().cloned());
        TestCert::from_parts(chain, &key)
    }
}

/// A leaf certificate with its chain and private key.
pub struct TestCert {
    /// Leaf first, then intermediates (what a server sends).
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The leaf certificate (DER), for `3 0 x` TLSA records.
    pub leaf_der: Vec<u8>,
    /// The leaf's SubjectPublicKeyInfo (DER), for `3 1 x` TLSA records.
    pub spki_der: Vec<u8>,
}

impl Clone for TestCert {
    fn clone(&self) -> Self {
        TestCert {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            leaf_der: self.leaf_der.clone(),
            spki_der: self.spki_der.clone(),
        }
    }
}

impl TestCert {
    /// A self-signed certificate for `names`, valid now.
    pub fn self_signed(names: &[&str]) -> TestCert {
        let key = KeyPair::generate().expect("generate key");
        let params = leaf_params(names, Validity::current());
        let cert = params.self_signed(&key).expect("self-sign");
        TestCert::from_parts(vec![cert.der().clone()], &key)
    }

    fn from_parts(chain: Vec<CertificateDer<'static>>, key: &KeyPair) -> TestCert {
        let leaf_der = chain.first().map(|c| c.to_vec()).unwrap_or_default();
        TestCert {
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            leaf_der,
            spki_der: key.subject_public_key_info(),
        }
    }

    /// The same certificate with `extra` appended to the chain (e.g. the root, which a
    /// DANE-TA server must send when the root is the trust anchor, or a forged chain).
    pub fn with_chain_cert(mut self, extra: CertificateDer<'static>) -> TestCert {
        self.chain.push(extra);
        self
    }

    /// The chain in PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c))
            .collect()
    }

    /// The private key in PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", self.key.secret_der())
    }

    /// A rustls server configuration presenting this certificate, TLS 1.2 and 1.3.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config_with(&[&rustls::version::TLS13, &rustls::version::TLS12])
    }

    /// A rustls server configuration limited to `versions` (e.g. only
    /// `&rustls::version::TLS12` for a TLS-1.2-only server).
    pub fn server_config_with(
        &self,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .expect("certificate and key match");
        Arc::new(config)
    }
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    Validity {
        not_before: SystemTime::now() - 2 * 365 * DAY,
        not_after: SystemTime::now() + 10 * 365 * DAY,
    }
    .apply(&mut params);
    params
}

fn leaf_params(names: &[&str], validity: Validity) -> CertificateParams {
    let owned: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(owned).expect("valid subject alt names");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("test"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity.apply(&mut params);
    params
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// SHA-256 digest (TLSA matching type 1).
pub fn sha256(data: &[u8]) -> Vec<u8> {
    sha2::Sha256::digest(data).to_vec()
}

/// SHA-512 digest (TLSA matching type 2).
pub fn sha512(data: &[u8]) -> Vec<u8> {
    sha2::Sha512::digest(data).to_vec()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls_pki_types::{ServerName, UnixTime};

    fn verify(ca: &TestCa, cert: &TestCert, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        verifier
            .verify_server_cert(
                &cert.chain[0],
                &cert.chain[1..],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    fn cert_error(r: Result<(), rustls::Error>) -> String {
        match r {
            Err(rustls::Error::InvalidCertificate(e)) => format!("{e:?}"),
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }

    #[test]
    fn issued_certificates_verify_as_chosen() {
        let ca = TestCa::new("Test Root");
        let good = ca.issue(&["mx.test", "alt.test"], Validity::current());
        assert!(verify(&ca, &good, "mx.test").is_ok());
        assert!(verify(&ca, &good, "alt.test").is_ok());
        assert!(cert_error(verify(&ca, &good, "other.test")).contains("NotValidForName"));
        let expired = ca.issue(&["mx.test"], Validity::expired());
        assert!(cert_error(verify(&ca, &expired, "mx.test")).contains("Expired"));
        let early = ca.issue(&["mx.test"], Validity::not_yet_valid());
        assert!(cert_error(verify(&ca, &early, "mx.test")).contains("NotValidYet"));
        let selfsigned = TestCert::self_signed(&["mx.test"]);
        assert!(cert_error(verify(&ca, &selfsigned, "mx.test")).contains("UnknownIssuer"));
    }

    #[test]
    fn intermediate_chain_verifies_to_the_root() {
        let root = TestCa::new("Root");
        let inter = root.intermediate("Intermediate");
        let cert = inter.issue(&["mx.test"], Validity::current());
        assert_eq!(cert.chain.len(), 2);
        assert_eq!(cert.chain[1], inter.cert_der());
        assert!(verify(&root, &cert, "mx.test").is_ok());
        let with_root = cert.clone().with_chain_cert(root.cert_der());
        assert_eq!(with_root.chain.len(), 3);
        assert_ne!(inter.spki_der(), root.spki_der());
    }

    #[test]
    fn pem_and_digests() {
        let ca = TestCa::new("Root");
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
        let cert = ca.issue(&["mx.test"], Validity::current());
        assert_eq!(cert.chain_pem().matches("BEGIN CERTIFICATE").count(), 1);
        assert!(cert.key_pem().contains("BEGIN PRIVATE KEY"));
        assert_eq!(cert.leaf_der, cert.chain[0].to_vec());
        assert_eq!(sha256(&cert.spki_der).len(), 32);
        assert_eq!(sha512(&cert.leaf_der).len(), 64);
        assert_ne!(sha256(&cert.spki_der), sha256(&cert.leaf_der));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        ca.write_pem(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), ca.cert_pem());
    }
}
