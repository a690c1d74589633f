//! MTA-STS discovery and policy fetch over the network (RFC 8461 §3.1, §3.3).
//!
//! [`NetworkSource`] looks up `_mta-sts.DOMAIN` TXT through mxgate-dns and fetches
//! `https://mta-sts.DOMAIN:PORT/.well-known/mta-sts.txt` with reqwest, resolving
//! host names through mxgate-dns too. It does not cache (that is [`super::store`]) and
//! does not interpret the policy beyond parsing it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mxgate_dns::{Answer, DnsClient};
use rustls::RootCertStore;

use super::{parse_policy, parse_txt, MtaStsPolicy};

/// Boxed future, so the source can be a trait object.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Cap on the policy body (RFC 8461 §3.3 asks senders to bound the fetch; 64 KiB is the
/// size policy hosts document as the maximum).
pub const MAX_BODY: usize = 64 * 1024;

/// The outcome of the TXT discovery (RFC 8461 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtOutcome {
    /// A valid record with this id.
    Id(String),
    /// No record, or not exactly one valid one: no policy is advertised.
    NoPolicy,
    /// The lookup failed (SERVFAIL, timeout, bogus).
    Failed(String),
}

/// Why a policy fetch failed; `label()` is the `result` of the fetch metric,
/// [`FetchError::class`] what RFC 8460 §4.3.2.2 calls it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FetchError {
    #[error("policy fetch: {0}")]
    Network(String),
    /// RFC 8461 §3.3: the policy host's certificate must chain to a trusted root and be
    /// valid for `mta-sts.DOMAIN`; this one is not.
    #[error("policy fetch: certificate of the policy host not valid: {0}")]
    Certificate(String),
    #[error("policy fetch: HTTP status {0} (only 200 is accepted)")]
    Status(u16),
    #[error("policy fetch: Content-Type {0:?} is not text/plain")]
    ContentType(String),
    #[error("policy fetch: body larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("policy fetch: timed out")]
    Timeout,
    /// The body is no valid policy (RFC 8461 §3.2): the parser's sentence, which names
    /// the policy (`policy: no max_age`, `policy line 2: …`).
    #[error("{0}")]
    Parse(String),
}

impl FetchError {
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Network(_) => "network_error",
            FetchError::Certificate(_) => "certificate",
            FetchError::Status(_) => "http_status",
            FetchError::ContentType(_) => "content_type",
            FetchError::TooLarge => "too_large",
            FetchError::Timeout => "timeout",
            FetchError::Parse(_) => "parse_error",
        }
    }

    /// The RFC 8460 §4.3.2.2 class of this failure.
    pub fn class(&self) -> FetchFailure {
        match self {
            FetchError::Certificate(_) => FetchFailure::Webpki,
            FetchError::Parse(_) => FetchFailure::Invalid,
            FetchError::Network(_)
            | FetchError::Status(_)
            | FetchError::ContentType(_)
            | FetchError::TooLarge
            | FetchError::Timeout => FetchFailure::Fetch,
        }
    }
}

/// The MTA-STS policy failures of RFC 8460 §4.3.2.2, for a domain whose `_mta-sts`
/// TXT record announces a policy that could not be obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchFailure {
    /// `sts-policy-fetch-error`: "a failure to retrieve an MTA-STS policy" (the host is
    /// unreachable, times out, answers other than `200 text/plain`, or too much).
    Fetch,
    /// `sts-policy-invalid`: a body was retrieved but is not a valid policy (RFC 8461
    /// §3.2).
    Invalid,
    /// `sts-webpki-invalid`: the policy "could not be authenticated using PKIX
    /// validation" (RFC 8461 §3.3).
    Webpki,
}

/// Where policies come from; a trait so the store can be tested without a network.
pub trait StsSource: Send + Sync {
    fn txt(&self, domain: &str) -> BoxFut<'_, TxtOutcome>;
    fn fetch(&self, domain: &str) -> BoxFut<'_, Result<MtaStsPolicy, FetchError>>;
}

/// The real source: DNS through mxgate-dns, HTTPS through reqwest.
pub struct NetworkSource {
    dns: Arc<DnsClient>,
    http: reqwest::Client,
    port: u16,
    timeout: Duration,
}

/// Resolves host names for reqwest through mxgate-dns, so HTTPS fetches (MTA-STS
/// policies here, TLS-RPT reports in the binary) use mxgate's own resolver.
pub struct DnsResolve(pub Arc<DnsClient>);

impl reqwest::dns::Resolve for DnsResolve {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let answer = dns
                .addresses(&host)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            let addrs: Vec<SocketAddr> = answer
                .records()
                .iter()
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            if addrs.is_empty() {
                return Err(format!("no address for {host}").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl NetworkSource {
    /// `roots`: webpki roots plus `delivery.ca_file` (RFC 8461 §3.3: the HTTPS server
    /// certificate must be valid for `mta-sts.DOMAIN` and chain to a trusted root).
    pub fn new(
        dns: Arc<DnsClient>,
        roots: Arc<RootCertStore>,
        port: u16,
        timeout: Duration,
        min_tls_version: mxgate_config::TlsVersion,
    ) -> Result<NetworkSource, FetchError> {
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(crate::tls::protocol_versions(min_tls_version))
            .map_err(|e| FetchError::Network(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .dns_resolver(Arc::new(DnsResolve(dns.clone())))
            // RFC 8461 §3.3: "HTTP 3xx redirects MUST NOT be followed".
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(true)
            .timeout(timeout)
            .build()
            .map_err(|e| FetchError::Network(e.to_string()))?;
        Ok(NetworkSource {
            dns,
            http,
            port,
            timeout,
        })
    }

    async fn fetch_body(&self, domain: &str) -> Result<String, FetchError> {
        let url = format!(
            "https://mta-sts.{domain}:{}/.well-known/mta-sts.txt",
            self.port
        );
        let mut resp = self.http.get(&url).send().await.map_err(classify)?;
        // RFC 8461 §3.3 (paraphrased): only a successful 200 answer carries a policy.
        if resp.status().as_u16() != 200 {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        // RFC 8461 §3.2 (paraphrased): the policy is served as media type text/plain.
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let media = ctype.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("text/plain") {
            return Err(FetchError::ContentType(ctype));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body).map_err(|_| FetchError::Parse("policy: body is not UTF-8".into()))
    }
}

fn classify(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout
    } else if let Some(tls) = certificate_error(&e) {
        FetchError::Certificate(tls.to_string())
    } else {
        // Include the source chain: reqwest's top-level message hides TLS errors.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        FetchError::Network(msg)
    }
}

/// The rustls certificate error somewhere in `e`'s source chain, if the fetch failed on
/// the policy host's certificate. tokio-rustls hands rustls errors up inside an
/// `io::Error`, whose `source()` skips its payload, so each `io::Error` is opened too.
fn certificate_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let is_certificate = |r: &rustls::Error| {
        matches!(
            r,
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
        )
    };
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return is_certificate(r).then_some(r);
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

impl StsSource for NetworkSource {
    fn txt(&self, domain: &str) -> BoxFut<'_, TxtOutcome> {
        let name = format!("_mta-sts.{domain}");
        Box::pin(async move {
            match self.dns.txt(&name).await {
                Ok(Answer::Found { records, .. }) => match parse_txt(&records) {
                    Ok(id) => TxtOutcome::Id(id),
                    Err(e) => {
                        tracing::info!(name, error = %e, "mta-sts: invalid TXT record");
                        TxtOutcome::NoPolicy
                    }
                },
                Ok(_) => TxtOutcome::NoPolicy,
                Err(e) => TxtOutcome::Failed(e.to_string()),
            }
        })
    }

    fn fetch(&self, domain: &str) -> BoxFut<'_, Result<MtaStsPolicy, FetchError>> {
        let domain = domain.to_string();
        Box::pin(async move {
            let body = tokio::time::timeout(self.timeout, self.fetch_body(&domain))
                .await
                .map_err(|_| FetchError::Timeout)??;
            parse_policy(&body).map_err(|e| FetchError::Parse(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_errors_have_their_rfc_8460_classes() {
        let rows = [
            (FetchError::Network("refused".into()), FetchFailure::Fetch),
            (FetchError::Status(404), FetchFailure::Fetch),
            (
                FetchError::ContentType("text/html".into()),
                FetchFailure::Fetch,
            ),
            (FetchError::TooLarge, FetchFailure::Fetch),
            (FetchError::Timeout, FetchFailure::Fetch),
            (
                FetchError::Parse("no max_age".into()),
                FetchFailure::Invalid,
            ),
            (
                FetchError::Certificate("UnknownIssuer".into()),
                FetchFailure::Webpki,
            ),
        ];
        for (e, class) in rows {
            assert_eq!(e.class(), class, "{e:?}");
        }
    }

    /// A wrapper whose `source()` is an `io::Error`, as hyper's connect errors are.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn certificate_errors_are_found_inside_io_errors() {
        let tls = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let found = Wrapped(tls(untrusted.clone()));
        assert_eq!(certificate_error(&found), Some(&untrusted));
        // Other TLS failures, and plain I/O errors, are no certificate failures.
        let alert = Wrapped(tls(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure,
        )));
        assert_eq!(certificate_error(&alert), None);
        let refused = Wrapped(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(certificate_error(&refused), None);
    }
}
