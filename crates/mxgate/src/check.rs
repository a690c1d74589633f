//! `mxgate check DOMAIN [--json]`: a live TLS probe of every MX host of a domain, in
//! the spirit of Postfix's `posttls-finger`.
//!
//! The MX hosts, their addresses and what each must prove come from the same
//! [`PolicyEngine`] the daemon uses (same DNS settings, same MTA-STS cache). For each
//! address the probe connects on `delivery.smtp_port`, reads the banner, says EHLO,
//! looks for STARTTLS, completes a TLS handshake that accepts any certificate but
//! records the chain, and then judges the chain offline: PKIX for the reference
//! names (webpki roots plus `delivery.ca_file`), and DANE against the plan's TLSA
//! records ([`mxgate_policy::dane::match_chain`]). After the handshake it says EHLO
//! again and QUIT. The verdict of an address is the pure function [`judge`]; an MX
//! passes when one of its addresses does, and the domain is deliverable when one MX
//! passes. Exit code: 0 deliverable, 1 the effective policy would defer (or the domain
//! cannot take mail at all).
//!
//! What it does NOT do: send `MAIL FROM` or anything after the second EHLO (no message
//! is ever transferred), retry, fall back to cleartext on a new connection (the verdict
//! says when delivery would), or change the queue or the policy cache beyond what a
//! normal policy lookup does.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mxgate_config::{Config, TlsVersion};
use mxgate_delivery::conn::{Conn, SmtpStream};
use mxgate_delivery::drive::{self, TlsSetup};
use mxgate_delivery::machine::{ClientSession, End, Peer, Phase};
use mxgate_delivery::SessionError;
use mxgate_dns::DnsClient;
use mxgate_policy::{Explanation, MxPlan, PolicyEngine, TlsRequirement};
use mxgate_queue::FailureKind;
use mxgate_smtp::date::UtcDateTime;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use tokio::net::TcpStream;

use crate::error::CliError;

/// One certificate of the presented chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub expired: bool,
}

/// The outcome of one offline check of the chain (PKIX or DANE).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainCheck {
    pub ok: bool,
    /// `valid for NAME`, `dane-ee`, or the error.
    pub detail: String,
}

/// What the TLS session looked like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsProbe {
    pub version: String,
    pub cipher: String,
    /// The server name sent (SNI): the MX host, for DANE the TLSA base domain.
    pub sni: String,
    pub chain: Vec<CertInfo>,
    pub pkix: ChainCheck,
    /// `None` when the plan has no TLSA records for this MX.
    pub dane: Option<ChainCheck>,
}

/// Where the conversation with one address ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "stage", content = "detail", rename_all = "kebab-case")]
pub enum Stage {
    ConnectFailed(String),
    GreetingRejected(String),
    EhloFailed(String),
    StartTlsNotOffered,
    StartTlsRefused(String),
    /// RFC 3207 §4.2 (paraphrased): data sent before the handshake is an attack.
    StartTlsInjection,
    HandshakeFailed(String),
    /// The TLS session was established (and the second EHLO answered).
    TlsEstablished,
}

/// Verdict of one address, one MX, or the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// The policy never dials this MX.
    Skip,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

/// A verdict with its diagnostic code (`tls-dane`, `pkix-invalid`, ...) and detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    pub code: &'static str,
    pub detail: String,
}

fn pass(code: &'static str, detail: impl Into<String>) -> Judgement {
    Judgement {
        verdict: Verdict::Pass,
        code,
        detail: detail.into(),
    }
}

fn fail(code: &'static str, detail: impl Into<String>) -> Judgement {
    Judgement {
        verdict: Verdict::Fail,
        code,
        detail: detail.into(),
    }
}

/// One probed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressReport {
    pub address: SocketAddr,
    pub banner: Option<String>,
    /// EHLO keywords before STARTTLS.
    pub ehlo: Vec<String>,
    pub stage: Stage,
    pub tls: Option<TlsProbe>,
    #[serde(flatten)]
    pub judgement: Judgement,
}

/// One MX host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MxCheck {
    pub host: String,
    pub preference: u16,
    /// What the policy requires (`dane (names)`, `pkix (names)`, `skip: reason`, ...).
    pub requirement: String,
    /// Whether the host matches the MTA-STS policy's `mx` patterns (`None`: no policy).
    pub mta_sts_mx_match: Option<bool>,
    pub addresses: Vec<AddressReport>,
    #[serde(flatten)]
    pub judgement: Judgement,
}

/// The whole report (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub domain: String,
    pub level: String,
    pub source: String,
    pub min_tls_version: String,
    pub mta_sts: Option<mxgate_policy::explain::StsReport>,
    pub mx: Vec<MxCheck>,
    /// At least one MX passes: the effective policy would deliver now.
    pub deliverable: bool,
}

/// The verdict for one address under `requirement`, from what the probe saw. Pure.
pub fn judge(requirement: &TlsRequirement, stage: &Stage, tls: Option<&TlsProbe>) -> Judgement {
    let tls_text = |t: &TlsProbe| format!("{} {}", t.version, t.cipher);
    match stage {
        Stage::ConnectFailed(e) => return fail("connect-failed", e.clone()),
        Stage::GreetingRejected(e) => return fail("greeting-rejected", e.clone()),
        Stage::EhloFailed(e) => return fail("ehlo-failed", e.clone()),
        _ => {}
    }
    match requirement {
        TlsRequirement::Cleartext => pass("cleartext", "policy none: STARTTLS is never used"),
        TlsRequirement::Opportunistic => match (stage, tls) {
            (Stage::TlsEstablished, Some(t)) => pass("tls-opportunistic", tls_text(t)),
            (Stage::StartTlsNotOffered, _) => {
                pass("cleartext", "STARTTLS not offered: delivered in cleartext")
            }
            (other, _) => pass(
                "cleartext-fallback",
                format!(
                    "{}: delivery retries in cleartext on a new connection",
                    stage_text(other)
                ),
            ),
        },
        TlsRequirement::Encrypt | TlsRequirement::Pkix { .. } | TlsRequirement::Dane { .. } => {
            // docs/policy.md: at `encrypt` and above, stripping STARTTLS, a refusal or a
            // failed handshake defers; it never leads to cleartext.
            let t = match (stage, tls) {
                (Stage::TlsEstablished, Some(t)) => t,
                (Stage::StartTlsNotOffered, _) => {
                    return fail("starttls-missing", "STARTTLS not offered, TLS is required")
                }
                (Stage::StartTlsRefused(r), _) => return fail("starttls-refused", r.clone()),
                (Stage::StartTlsInjection, _) => {
                    return fail("starttls-injection", stage_text(stage))
                }
                (other, _) => return fail("handshake-failed", stage_text(other)),
            };
            match requirement {
                TlsRequirement::Pkix { .. } if !t.pkix.ok => {
                    fail("pkix-invalid", t.pkix.detail.clone())
                }
                TlsRequirement::Pkix { .. } => {
                    pass("tls-pkix", format!("{}, {}", tls_text(t), t.pkix.detail))
                }
                TlsRequirement::Dane { .. } => match &t.dane {
                    Some(d) if d.ok => pass("tls-dane", format!("{}, {}", tls_text(t), d.detail)),
                    Some(d) => fail("dane-mismatch", d.detail.clone()),
                    None => fail("dane-mismatch", "no TLSA records to match"),
                },
                _ => pass("tls-encrypt", tls_text(t)),
            }
        }
    }
}

/// An MX passes when any address passes (delivery tries them in order).
pub fn judge_mx(plan: &MxPlan, addresses: &[AddressReport]) -> Judgement {
    if let Err(why) = &plan.requirement {
        return Judgement {
            verdict: Verdict::Skip,
            code: "policy-skip",
            detail: why.to_string(),
        };
    }
    if let Some(ok) = addresses
        .iter()
        .find(|a| a.judgement.verdict == Verdict::Pass)
    {
        return Judgement {
            detail: format!("{}: {}", ok.address, ok.judgement.detail),
            ..ok.judgement.clone()
        };
    }
    match addresses.last() {
        Some(last) => Judgement {
            detail: format!("{}: {}", last.address, last.judgement.detail),
            ..last.judgement.clone()
        },
        None => fail("no-address", "the host has no address"),
    }
}

pub(crate) fn stage_text(stage: &Stage) -> String {
    match stage {
        Stage::ConnectFailed(e) => format!("connect failed: {e}"),
        Stage::GreetingRejected(e) => format!("greeting rejected: {e}"),
        Stage::EhloFailed(e) => format!("EHLO failed: {e}"),
        Stage::StartTlsNotOffered => "STARTTLS not offered".into(),
        Stage::StartTlsRefused(r) => format!("STARTTLS refused: {r}"),
        Stage::StartTlsInjection => {
            "server sent data after the STARTTLS reply before the handshake".into()
        }
        Stage::HandshakeFailed(e) => format!("TLS handshake failed: {e}"),
        Stage::TlsEstablished => "TLS established".into(),
    }
}

fn requirement_text(plan: &MxPlan) -> String {
    match &plan.requirement {
        Ok(TlsRequirement::Cleartext) => "none".into(),
        Ok(TlsRequirement::Opportunistic) => "may".into(),
        Ok(TlsRequirement::Encrypt) => "encrypt".into(),
        Ok(TlsRequirement::Pkix { names }) => format!("pkix ({})", names.join(", ")),
        Ok(TlsRequirement::Dane { names, .. }) => format!("dane ({})", names.join(", ")),
        Err(why) => format!("skip: {why}"),
    }
}

/// Subject, SANs, issuer and dates of a DER certificate; `None` if it does not parse.
pub fn cert_info(der: &[u8], now_unix: i64) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    Some(format!("IP:{}", ip_text(ip)))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let validity = cert.validity();
    Some(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        not_before: rfc3339(validity.not_before.timestamp()),
        not_after: rfc3339(validity.not_after.timestamp()),
        expired: validity.not_after.timestamp() < now_unix,
    })
}

/// RFC 3339 UTC (`2026-12-04T02:10:30Z`) of a Unix time.
pub fn rfc3339(unix: i64) -> String {
    UtcDateTime::from_unix(unix).rfc3339()
}

fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .map(|b| std::net::Ipv4Addr::from(b).to_string())
            .unwrap_or_default(),
        16 => <[u8; 16]>::try_from(bytes)
            .map(|b| std::net::Ipv6Addr::from(b).to_string())
            .unwrap_or_default(),
        _ => "?".into(),
    }
}

/// PKIX: a chain to the configured roots, valid for any of `names`.
fn check_pkix(
    verifier: &WebPkiServerVerifier,
    chain: &[CertificateDer<'static>],
    names: &[String],
) -> ChainCheck {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return ChainCheck {
            ok: false,
            detail: "no certificate presented".into(),
        };
    };
    let mut last = String::from("no reference name");
    for name in names {
        let Ok(sn) = ServerName::try_from(name.clone()) else {
            continue;
        };
        match verifier.verify_server_cert(leaf, intermediates, &sn, &[], UnixTime::now()) {
            Ok(_) => {
                return ChainCheck {
                    ok: true,
                    detail: format!("valid for {name}"),
                }
            }
            Err(rustls::Error::InvalidCertificate(ce)) => {
                let (_, words) = mxgate_delivery::drive::certificate_problem(&ce);
                last = format!("not valid for {}: {words}", names.join(", "));
            }
            Err(e) => last = format!("not valid for {}: {e}", names.join(", ")),
        }
    }
    ChainCheck {
        ok: false,
        detail: last,
    }
}

/// Everything the probe of one address needs.
struct Prober {
    engine: Arc<PolicyEngine>,
    pkix: Arc<WebPkiServerVerifier>,
    hostname: String,
    port: u16,
    connect_timeout: Duration,
    command_timeout: Duration,
    min_tls_version: TlsVersion,
}

impl Prober {
    async fn probe(&self, plan: &MxPlan, addr: std::net::IpAddr) -> AddressReport {
        let address = SocketAddr::new(addr, self.port);
        let requirement = plan
            .requirement
            .clone()
            .unwrap_or(TlsRequirement::Opportunistic);
        let mut report = AddressReport {
            address,
            banner: None,
            ehlo: Vec::new(),
            stage: Stage::TlsEstablished,
            tls: None,
            judgement: pass("", ""),
        };
        report.stage = self.converse(plan, &requirement, &mut report).await;
        report.judgement = judge(&requirement, &report.stage, report.tls.as_ref());
        report
    }

    /// Connects, then drives the same [`ClientSession`] as delivery in probe mode
    /// (greeting, EHLO, STARTTLS, EHLO again, QUIT; never `MAIL`). The handshake
    /// accepts any certificate but keeps the chain, which is judged offline below.
    async fn converse(
        &self,
        plan: &MxPlan,
        requirement: &TlsRequirement,
        report: &mut AddressReport,
    ) -> Stage {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(report.address))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Stage::ConnectFailed(e.to_string()),
                Err(_) => {
                    return Stage::ConnectFailed(format!(
                        "timed out after {}s",
                        self.connect_timeout.as_secs()
                    ))
                }
            };
        let conn = Conn::new(SmtpStream::Plain(stream), self.command_timeout);
        let peer = Peer {
            helo_name: self.hostname.clone(),
            mx_host: plan.host.clone(),
            relay: format!(
                "{}[{}]:{}",
                plan.host,
                report.address.ip(),
                report.address.port()
            ),
            policy_label: "check".into(),
        };
        let setup = TlsSetup {
            config: Some(
                self.engine
                    .client_config(&TlsRequirement::Encrypt, self.min_tls_version),
            ),
            sni: drive::sni(requirement, &plan.host),
            requirement: requirement.clone(),
            mx_host: plan.host.clone(),
        };
        // Probe mode always asks for TLS: the verdict for `may` and `none` is judged
        // from what the server offers, not by skipping the handshake.
        let mut machine = ClientSession::fresh(peer, TlsRequirement::Encrypt, false, None);
        let first = machine.start();
        let (end, conn) = drive::drive(&mut machine, first, conn, &setup).await;
        report.banner = machine.banner().map(reply_text);
        report.ehlo = machine.ehlo_keywords().to_vec();
        let stage = match end {
            End::Probed => Stage::TlsEstablished,
            End::Failed(e) => return failed_stage(machine.phase(), &e),
            End::Transacted { .. } | End::RetryCleartext { .. } | End::Stale => {
                return Stage::HandshakeFailed("the probe ended unexpectedly".into())
            }
        };
        let (Some(facts), Some(conn)) = (machine.tls(), conn) else {
            return Stage::HandshakeFailed("no TLS session".into());
        };
        let SmtpStream::Tls(tls) = conn.get_ref() else {
            return Stage::HandshakeFailed("no TLS session".into());
        };
        let chain: Vec<CertificateDer<'static>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let pkix_names = match requirement {
            TlsRequirement::Pkix { names } => names.clone(),
            _ => vec![plan.host.clone()],
        };
        let now = crate::clock::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        report.tls = Some(TlsProbe {
            version: facts.version.unwrap_or("?").to_string(),
            cipher: facts.cipher.clone().unwrap_or_else(|| "?".into()),
            sni: setup.sni.clone(),
            chain: chain.iter().filter_map(|c| cert_info(c, now)).collect(),
            pkix: check_pkix(&self.pkix, &chain, &pkix_names),
            dane: match requirement {
                TlsRequirement::Dane { tlsa, names } => Some(
                    match mxgate_policy::dane::match_chain(tlsa, &chain, names, UnixTime::now()) {
                        Ok(auth) => ChainCheck {
                            ok: true,
                            detail: auth.as_str().to_string(),
                        },
                        Err(e) => ChainCheck {
                            ok: false,
                            detail: e.to_string(),
                        },
                    },
                ),
                _ => None,
            },
        });
        stage
    }
}

/// Where a probe that ended early stopped, from the failure kind and the phase.
fn failed_stage(phase: Phase, e: &SessionError) -> Stage {
    let (kind, text) = match e {
        SessionError::Unreachable { failure, .. } => (failure.kind, failure.diagnostic.clone()),
        SessionError::TlsPolicy { failure, .. } => (failure.kind, failure.message.clone()),
    };
    match (kind, phase) {
        (FailureKind::StarttlsNotOffered, _) => Stage::StartTlsNotOffered,
        (FailureKind::StarttlsRefused, _) => Stage::StartTlsRefused(text),
        (FailureKind::ResponseInjection, _) => Stage::StartTlsInjection,
        (FailureKind::GreetingRejected, _) | (_, Phase::Greeting) => Stage::GreetingRejected(text),
        (FailureKind::HeloRejected, _) | (_, Phase::Ehlo) => Stage::EhloFailed(text),
        (_, Phase::StartTls) => Stage::StartTlsRefused(text),
        (_, Phase::EhloAfterTls) => Stage::HandshakeFailed(format!("EHLO after TLS: {text}")),
        (_, Phase::Handshake | Phase::Transaction) => Stage::HandshakeFailed(text),
    }
}

fn reply_text(r: &mxgate_smtp::reply::Reply) -> String {
    mxgate_delivery::decide::bounded(&format!("{} {}", r.code, r.lines.join(" / ")))
}

/// `mxgate check DOMAIN [--json]`.
pub fn check(config: Config, domain: &str, json: bool) -> Result<ExitCode, CliError> {
    let config = Arc::new(config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let dns = Arc::new(
            DnsClient::new(&config.dns).map_err(|e| CliError::Startup(format!("dns: {e}")))?,
        );
        crate::inspect::resolver_self_test(&dns).await;
        let engine = Arc::new(
            PolicyEngine::new(config.clone(), dns)
                .map_err(|e| CliError::Startup(format!("policy: {e}")))?,
        );
        let (plan, explanation) = match engine.plan(domain).await {
            Ok(plan) => (
                plan,
                Some(
                    engine
                        .explain(domain, mxgate_policy::CacheWrite::ReadOnly)
                        .await,
                ),
            ),
            Err(e) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"domain": domain, "error": e.to_string(),
                            "permanent": e.is_permanent(), "deliverable": false})
                    );
                } else {
                    println!("{domain}: {e}\nresult: not deliverable");
                }
                return Ok(ExitCode::from(1));
            }
        };
        let roots = mxgate_policy::tls::load_roots(&config.delivery.ca_file)
            .map_err(|e| CliError::Startup(e.to_string()))?;
        let pkix = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            mxgate_policy::tls::provider(),
        )
        .build()
        .map_err(|e| CliError::Startup(format!("PKIX verifier: {e}")))?;
        let prober = Prober {
            engine,
            pkix,
            hostname: config.server.hostname.clone(),
            port: config.delivery.smtp_port,
            connect_timeout: config.delivery.connect_timeout,
            command_timeout: config.delivery.command_timeout.min(Duration::from_secs(60)),
            min_tls_version: plan.min_tls_version,
        };
        let report = run_probe(&prober, &plan, explanation.as_ref()).await;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report)
                    .map_err(|e| CliError::Startup(e.to_string()))?
            );
        } else {
            print!("{}", report_text(&report));
        }
        Ok(if report.deliverable {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

async fn run_probe(
    prober: &Prober,
    plan: &mxgate_policy::DeliveryPlan,
    explanation: Option<&Explanation>,
) -> CheckReport {
    let sts = explanation.and_then(|e| e.mta_sts.clone());
    let mut mx = Vec::new();
    for p in &plan.mx {
        let mut addresses = Vec::new();
        if p.requirement.is_ok() {
            for addr in &p.addrs {
                addresses.push(prober.probe(p, *addr).await);
            }
        }
        let judgement = judge_mx(p, &addresses);
        mx.push(MxCheck {
            host: p.host.clone(),
            preference: p.preference,
            requirement: requirement_text(p),
            mta_sts_mx_match: sts.as_ref().map(|s| {
                s.mx.iter()
                    .any(|pat| mxgate_policy::sts::mx_pattern_matches(pat, &p.host))
            }),
            addresses,
            judgement,
        });
    }
    CheckReport {
        domain: plan.domain.clone(),
        level: plan.level.as_str().to_string(),
        source: plan.source.as_str().to_string(),
        min_tls_version: plan.min_tls_version.as_str().to_string(),
        mta_sts: sts,
        deliverable: mx.iter().any(|m| m.judgement.verdict == Verdict::Pass),
        mx,
    }
}

#[path = "check_text.rs"]
mod text;
pub use text::report_text;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "check_tests.rs"]
mod tests;
