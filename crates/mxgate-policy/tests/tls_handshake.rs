//! Real TLS handshakes on loopback with the configurations of `client_config`.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use mxgate_config::{Config, DnsConfig, TlsVersion};
use mxgate_dns::DnsClient;
use mxgate_policy::{Auth, PolicyEngine, TlsRequirement, TlsaRecord};
use mxgate_testkit::certs::{sha256, TestCa, TestCert, Validity};
use rustls::ServerConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

const MX: &str = "mx.example.com";

fn engine(ca_file: Option<&std::path::Path>) -> PolicyEngine {
    let mut config = Config::default();
    if let Some(p) = ca_file {
        config.delivery.ca_file = p.to_path_buf();
    }
    config.policy.cache_path = std::env::temp_dir().join("mxgate-policy-test-unused");
    let dns = DnsClient::new(&DnsConfig {
        nameservers: vec!["127.0.0.1:9".parse().unwrap()],
        ..DnsConfig::default()
    })
    .unwrap();
    PolicyEngine::new(Arc::new(config), Arc::new(dns)).unwrap()
}

/// One handshake: server with `server`, client with `client` and SNI `MX`.
/// Returns the negotiated version and the peer certificates.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Result<
    (
        rustls::ProtocolVersion,
        Vec<rustls_pki_types::CertificateDer<'static>>,
    ),
    std::io::Error,
> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        acceptor.accept(tcp).await.map(|_| ())
    });
    let tcp = TcpStream::connect(addr).await?;
    let conn = tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from(MX).unwrap(), tcp)
        .await;
    let _ = srv.await;
    let tls = conn?;
    let (_, c) = tls.get_ref();
    Ok((
        c.protocol_version().unwrap(),
        c.peer_certificates().unwrap_or_default().to_vec(),
    ))
}

#[tokio::test]
async fn encrypt_accepts_any_certificate_but_min_version_holds() {
    let e = engine(None);
    let cert = TestCert::self_signed(&["whatever.invalid"]);
    let (v, _) = handshake(
        cert.server_config(),
        e.client_config(&TlsRequirement::Encrypt, TlsVersion::Tls12),
    )
    .await
    .unwrap();
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_3);
    // A TLS 1.2-only server with min_tls_version = 1.3 fails; with 1.2 it works.
    let tls12 = cert.server_config_with(&[&rustls::version::TLS12]);
    assert!(handshake(
        tls12.clone(),
        e.client_config(&TlsRequirement::Encrypt, TlsVersion::Tls13)
    )
    .await
    .is_err());
    let (v, _) = handshake(
        tls12,
        e.client_config(&TlsRequirement::Opportunistic, TlsVersion::Tls12),
    )
    .await
    .unwrap();
    assert_eq!(v, rustls::ProtocolVersion::TLSv1_2);
    // Configs are cached.
    assert!(Arc::ptr_eq(
        &e.client_config(&TlsRequirement::Encrypt, TlsVersion::Tls12),
        &e.client_config(&TlsRequirement::Encrypt, TlsVersion::Tls12)
    ));
}

#[tokio::test]
async fn pkix_checks_chain_and_any_of_the_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Private CA");
    let ca_file = dir.path().join("ca.pem");
    ca.write_pem(&ca_file).unwrap();
    let e = engine(Some(&ca_file));
    // The certificate names the `match` entry, not the MX host used as SNI.
    let cert = ca.issue(&["mx1.partner.example"], Validity::current());
    let req = |n: &[&str]| TlsRequirement::Pkix {
        names: n.iter().map(|s| s.to_string()).collect(),
    };
    let ok = handshake(
        cert.server_config(),
        e.client_config(
            &req(&["other.example", "mx1.partner.example"]),
            TlsVersion::Tls12,
        ),
    )
    .await;
    let (_, peer) = ok.unwrap();
    assert_eq!(
        mxgate_policy::tls::authenticated_by(&req(&["mx1.partner.example"]), &peer),
        Auth::Pkix
    );
    assert!(handshake(
        cert.server_config(),
        e.client_config(&req(&[MX]), TlsVersion::Tls12)
    )
    .await
    .is_err());
    // Unknown issuer and expired certificates fail.
    let stranger = TestCa::new("Stranger").issue(&[MX], Validity::current());
    assert!(handshake(
        stranger.server_config(),
        e.client_config(&req(&[MX]), TlsVersion::Tls12)
    )
    .await
    .is_err());
    let expired = ca.issue(&[MX], Validity::expired());
    assert!(handshake(
        expired.server_config(),
        e.client_config(&req(&[MX]), TlsVersion::Tls12)
    )
    .await
    .is_err());
}

#[tokio::test]
async fn dane_ee_on_expired_wrong_name_cert_succeeds_and_mismatch_fails() {
    let e = engine(None);
    let cert = TestCa::new("Nobody").issue(&["wrong.example.net"], Validity::expired());
    let good = TlsRequirement::Dane {
        tlsa: vec![TlsaRecord {
            usage: 3,
            selector: 1,
            matching: 1,
            data: sha256(&cert.spki_der),
        }],
        names: vec![MX.into()],
    };
    let (_, peer) = handshake(
        cert.server_config(),
        e.client_config(&good, TlsVersion::Tls12),
    )
    .await
    .unwrap();
    assert_eq!(
        mxgate_policy::tls::authenticated_by(&good, &peer),
        Auth::DaneEe
    );
    let bad = TlsRequirement::Dane {
        tlsa: vec![TlsaRecord {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0; 32],
        }],
        names: vec![MX.into()],
    };
    assert!(handshake(
        cert.server_config(),
        e.client_config(&bad, TlsVersion::Tls12)
    )
    .await
    .is_err());
}

#[tokio::test]
async fn dane_ta_forged_chain_fails_in_a_handshake() {
    let e = engine(None);
    let root = TestCa::new("DANE root");
    let req = TlsRequirement::Dane {
        tlsa: vec![TlsaRecord {
            usage: 2,
            selector: 0,
            matching: 1,
            data: sha256(&root.cert_der()),
        }],
        names: vec![MX.into()],
    };
    let real = root
        .issue(&[MX], Validity::current())
        .with_chain_cert(root.cert_der());
    let (_, peer) = handshake(
        real.server_config(),
        e.client_config(&req, TlsVersion::Tls12),
    )
    .await
    .unwrap();
    assert_eq!(
        mxgate_policy::tls::authenticated_by(&req, &peer),
        Auth::DaneTa
    );
    let forged = TestCert::self_signed(&[MX]).with_chain_cert(root.cert_der());
    assert!(handshake(
        forged.server_config(),
        e.client_config(&req, TlsVersion::Tls12)
    )
    .await
    .is_err());
}
