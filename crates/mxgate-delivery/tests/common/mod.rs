//! Shared helpers for delivery tests: jobs, client TLS configs, a fixed planner.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mxgate_config::{Level, OnTlsFailure, TlsVersion};
use mxgate_delivery::{Planner, SessionParams};
use mxgate_policy::{DeliveryPlan, MxPlan, PlanError, PolicySource, TlsRequirement};
use mxgate_queue::{DeliveryJob, QueueId};
use mxgate_smtp::{BodyType, Envelope, Recipient};
use mxgate_testkit::certs::TestCa;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

pub const MESSAGE: &[u8] = b"From: a@sender.test\r\nTo: r1@dest.test\r\nSubject: hi\r\n\r\n.leading dot\r\n..two dots\r\nbody\r\n.\r\nend\r\n";

pub fn job(recipients: &[&str]) -> DeliveryJob {
    job_with(recipients, MESSAGE, false)
}

pub fn job_with(recipients: &[&str], message: &[u8], smtputf8: bool) -> DeliveryJob {
    let envelope = Envelope {
        sender: "a@sender.test".into(),
        body: BodyType::EightBitMime,
        smtputf8,
        ret: None,
        envid: Some("ENV1".into()),
        recipients: recipients
            .iter()
            .map(|a| Recipient {
                address: a.to_string(),
                notify: None,
                orcpt: None,
            })
            .collect(),
    };
    DeliveryJob {
        id: QueueId("ABC123".into()),
        envelope: Arc::new(envelope),
        domain: "dest.test".into(),
        recipients: (0..recipients.len()).collect(),
        message: Bytes::copy_from_slice(message),
        attempt: 1,
        relay: None,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate (what `may`/`encrypt` use), TLS 1.2+.
pub fn insecure_config() -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(AcceptAny(provider())));
    Arc::new(config)
}

/// PKIX against `ca` only.
pub fn pkix_config(ca: &TestCa) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// TLS 1.3 only (to fail against a TLS-1.2-only server).
pub fn tls13_only_config() -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(AcceptAny(provider())));
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub fn params(
    addr: SocketAddr,
    requirement: TlsRequirement,
    tls: Option<Arc<ClientConfig>>,
) -> SessionParams {
    let policy_label = match requirement {
        TlsRequirement::Cleartext => "none",
        TlsRequirement::Opportunistic => "may",
        TlsRequirement::Encrypt => "encrypt",
        TlsRequirement::Pkix { .. } => "verify",
        TlsRequirement::Dane { .. } => "dane",
    };
    SessionParams {
        helo_name: "relay.test".into(),
        mx_host: "mx.test".into(),
        addr,
        requirement,
        tls_config: tls,
        policy_label: policy_label.into(),
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        shadow: None,
    }
}

/// A planner that always answers the same plan (until the real engine is wired in).
pub struct FixedPlanner {
    pub plan: Result<DeliveryPlan, PlanError>,
    pub tls: Arc<ClientConfig>,
}

impl Planner for FixedPlanner {
    async fn plan(&self, _domain: &str) -> Result<DeliveryPlan, PlanError> {
        self.plan.clone()
    }
    fn client_config(&self, _: &TlsRequirement, _: TlsVersion) -> Arc<ClientConfig> {
        self.tls.clone()
    }
}

pub fn plan(
    level: Level,
    mx: Vec<(
        &str,
        Vec<IpAddr>,
        Result<TlsRequirement, mxgate_policy::SkipReason>,
    )>,
) -> DeliveryPlan {
    DeliveryPlan {
        domain: "dest.test".into(),
        level,
        source: PolicySource::Config,
        configured: level,
        min_tls_version: TlsVersion::Tls12,
        on_tls_failure: OnTlsFailure::Defer,
        // The receiver's port; the tests' `delivery` helpers set it.
        port: 25,
        mta_sts_failure: None,
        mx: mx
            .into_iter()
            .enumerate()
            .map(|(i, (host, addrs, requirement))| MxPlan {
                host: host.into(),
                preference: 10 * i as u16,
                addrs,
                requirement,
                shadow: None,
            })
            .collect(),
    }
}
