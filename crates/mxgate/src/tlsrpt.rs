//! Wiring of TLS reporting (RFC 8460, docs/tlsrpt.md): maps delivery's session events
//! into `mxgate-tlsrpt` records, discovers `_smtp._tls` records through mxgate's own
//! resolver, and hands report mails to mxgate's queue (or `tlsrpt.relay`).
//!
//! Neither `mxgate-delivery` nor `mxgate-tlsrpt` knows the other; the mapping of
//! delivery's typed failures onto RFC 8460 §4.3 result types is here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mxgate_config::Config;
use mxgate_delivery::{Delivery, SessionReport, SessionSink};
use mxgate_dns::DnsClient;
use mxgate_policy::sts::{MtaStsMode, MtaStsPolicy};
use mxgate_policy::{PolicySource, TlsRequirement};
use mxgate_queue::{DeliveryJob, FailureKind, MessageStore, Outcome, Queue, QueueId, Transport};
use mxgate_smtp::{Envelope, Notify, Recipient};
use mxgate_tlsrpt::{
    Discover, DiscoverError, FailureDetail, MailSink, Policy, ResultType, SessionRecord,
    SessionResult, SharedCounters, SubmitError, Submitter, TlsRpt, TxtAnswer,
};

use crate::reload::ReloadablePolicy;

/// Counts delivery sessions into TLS reports.
pub struct TlsRptSink {
    pub handle: TlsRpt,
    pub policy: Arc<ReloadablePolicy>,
}

impl SessionSink for TlsRptSink {
    fn session(&self, report: &SessionReport) {
        // RFC 8460 §5.3 / no report loops: sessions carrying a report are not counted.
        if report.is_tls_report {
            return;
        }
        let sts = if report.source == PolicySource::MtaSts {
            self.policy.current().cached_mta_sts(&report.domain)
        } else {
            None
        };
        let engine = self.policy.current();
        let pkix = engine.pkix_verifier();
        let Some(record) = map_report(report, sts.as_ref(), pkix.as_ref()) else {
            return;
        };
        if let (SessionResult::Failure(detail), Some(p)) = (&record.result, &sts) {
            if p.mode == MtaStsMode::Testing {
                // RFC 8461 §5: a testing policy is not enforced, but its failures are
                // reported (metric, log line, TLS-RPT).
                metrics::counter!("mxgate_tls_policy_failures_total",
                    "policy" => "mta-sts", "reason" => "testing")
                .increment(1);
                tracing::info!(
                    domain = %report.domain,
                    mx = %report.mx_host,
                    result = detail.result_type.as_str(),
                    "mta-sts testing: policy not met (delivered anyway, reported)"
                );
            }
        }
        self.handle.record(record);
    }
}

/// The policy the session was held to, as RFC 8460 §4.4 describes it.
fn policy_of(report: &SessionReport, sts: Option<&MtaStsPolicy>) -> Policy {
    if let Some(TlsRequirement::Dane { tlsa, .. }) = &report.requirement {
        let records = tlsa
            .iter()
            .map(|t| {
                let hex: String = t.data.iter().map(|b| format!("{b:02x}")).collect();
                format!("{} {} {} {hex}", t.usage, t.selector, t.matching)
            })
            .collect();
        return Policy::tlsa(&report.mx_host, records);
    }
    if report.source == PolicySource::Dane {
        // The MX was not dialled (e.g. its TLSA lookup failed).
        return Policy::tlsa(&report.mx_host, Vec::new());
    }
    match sts {
        Some(p) if p.mode != MtaStsMode::None => {
            let mut body = format!("version: STSv1\nmode: {}\n", p.mode.as_str());
            for mx in &p.mx {
                body.push_str(&format!("mx: {mx}\n"));
            }
            body.push_str(&format!("max_age: {}\n", p.max_age));
            Policy::sts(&body)
        }
        _ => Policy::no_policy_found(),
    }
}

/// RFC 8460 §4.3 result type of a failure kind; `None` for failures that say nothing
/// about TLS (a refused connection, a rejected recipient): those sessions are not
/// counted.
fn result_type(kind: FailureKind) -> Option<ResultType> {
    let tag = kind.tls_rpt_result()?;
    ResultType::ALL.into_iter().find(|r| r.as_str() == tag)
}

/// One session report as a TLS-RPT record; `None` for what is not reported.
pub fn map_report(
    report: &SessionReport,
    sts: Option<&MtaStsPolicy>,
    pkix: &dyn rustls::client::danger::ServerCertVerifier,
) -> Option<SessionRecord> {
    let detail = |result_type: ResultType| FailureDetail {
        sending_mta_ip: report.local_addr,
        receiving_mx_hostname: Some(report.mx_host.clone()),
        receiving_ip: report.mx_addr,
        ..FailureDetail::new(result_type)
    };
    let result = match &report.result {
        Ok(()) => match sts {
            // RFC 8461 §5 testing mode: delivered, but an MX outside the policy is a
            // failure to report.
            Some(p) if p.mode == MtaStsMode::Testing && !p.mx_matches(&report.mx_host) => {
                let mut d = detail(ResultType::ValidationFailure);
                d.failure_reason_code = Some(FailureKind::StsMxNotListed.as_str().into());
                d.additional_information = Some(format!(
                    "mta-sts testing: {} matches no mx pattern",
                    report.mx_host
                ));
                SessionResult::Failure(d)
            }
            // RFC 8461 §5: in testing mode the certificate is still checked as enforce
            // would, on the same session (the mail was delivered as `may`).
            Some(p) if p.mode == MtaStsMode::Testing => {
                let chain = report.tls.as_ref().map_or(&[][..], |t| &t.peer_chain[..]);
                let facts = mxgate_policy::SessionFacts {
                    tls: report.tls.is_some(),
                    peer_chain: chain,
                    now: rustls::pki_types::UnixTime::now(),
                };
                let enforce = TlsRequirement::Pkix {
                    names: vec![report.mx_host.clone()],
                };
                match mxgate_policy::evaluate(&enforce, &facts, pkix) {
                    Ok(_) => SessionResult::Success,
                    Err(why) => {
                        let mut d = detail(testing_result_type(why));
                        d.failure_reason_code = Some(why.as_str().to_string());
                        d.additional_information = Some(format!("mta-sts testing: {why}"));
                        SessionResult::Failure(d)
                    }
                }
            }
            _ => SessionResult::Success,
        },
        Err(failure) => {
            let mut d = detail(result_type(failure.kind)?);
            d.failure_reason_code = Some(failure.kind.as_str().to_string());
            d.additional_information = Some(failure.reason.clone());
            SessionResult::Failure(d)
        }
    };
    Some(SessionRecord {
        policy_domain: report.domain.clone(),
        policy: policy_of(report, sts),
        result,
    })
}

/// RFC 8460 §4.3 result type of what an enforce policy would have failed on.
fn testing_result_type(why: mxgate_policy::RequirementFailure) -> ResultType {
    use mxgate_policy::RequirementFailure as F;
    match why {
        F::NoTls => ResultType::StarttlsNotSupported,
        F::CertificateExpired => ResultType::CertificateExpired,
        F::CertificateNotTrusted => ResultType::CertificateNotTrusted,
        F::CertificateHostMismatch => ResultType::CertificateHostMismatch,
        _ => ResultType::ValidationFailure,
    }
}

/// `_smtp._tls` lookups through mxgate's resolver, with the answer's TTL.
pub struct DnsDiscover(pub Arc<DnsClient>);

impl Discover for DnsDiscover {
    async fn txt(&self, name: &str) -> Result<TxtAnswer, DiscoverError> {
        match self.0.txt_with_ttl(name).await {
            Ok((answer, ttl)) => Ok(TxtAnswer {
                records: answer.records().to_vec(),
                // No record: ask again in an hour.
                ttl: ttl.unwrap_or(Duration::from_secs(3600)),
            }),
            Err(e) => Err(DiscoverError(e.to_string())),
        }
    }
}

/// Report mails go into mxgate's queue like DSNs (durable, retried, delivered under the
/// destination's policy — lowered by `TLS-Required: No`), or to `tlsrpt.relay`.
pub struct QueueMail {
    pub queue: Arc<Queue>,
    pub delivery: Arc<Delivery<ReloadablePolicy>>,
    pub relay: Option<String>,
}

impl MailSink for QueueMail {
    async fn submit(&self, from: &str, to: &str, message: Vec<u8>) -> Result<(), SubmitError> {
        let envelope = Envelope {
            sender: from.to_string(),
            body: Default::default(),
            smtputf8: false,
            ret: None,
            envid: None,
            recipients: vec![Recipient {
                address: to.to_string(),
                // A report that cannot be delivered is retried within the next period;
                // a DSN to the no-reply sender would help nobody.
                notify: Some(Notify::NEVER),
                orcpt: None,
            }],
        };
        let Some(relay) = &self.relay else {
            return self
                .queue
                .store(envelope, Bytes::from(message))
                .await
                .map(|_| ())
                .map_err(|e| SubmitError(e.to_string()));
        };
        let domain = to
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_ascii_lowercase();
        let job = DeliveryJob {
            id: QueueId(format!("TLSRPT{:08X}", rand_id())),
            envelope: Arc::new(envelope),
            domain,
            recipients: vec![0],
            message: Bytes::from(message),
            attempt: 1,
            relay: Some(relay.clone()),
        };
        let outcome = self.delivery.deliver(job).await;
        match outcome.first().map(|o| &o.outcome) {
            Some(Outcome::Delivered { .. }) => Ok(()),
            Some(Outcome::Deferred(f)) | Some(Outcome::Failed(f)) => Err(SubmitError(format!(
                "tlsrpt.relay {relay}: {}",
                f.diagnostic
            ))),
            None => Err(SubmitError(format!("tlsrpt.relay {relay}: no outcome"))),
        }
    }
}

fn rand_id() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Why the TLS-RPT service cannot be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("tlsrpt.dkim_key: {0}")]
    Dkim(#[from] mxgate_tlsrpt::DkimError),
    #[error("delivery.ca_file: {0}")]
    Roots(#[from] mxgate_policy::tls::RootsError),
    #[error("policy.min_tls_version: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the HTTPS client for report addresses: {0}")]
    Http(#[from] reqwest::Error),
}

/// The service settings from the configuration; `shared`: the cluster's counters.
pub fn settings(
    config: &Config,
    dns: Arc<DnsClient>,
    shared: Option<Arc<dyn SharedCounters>>,
) -> Result<mxgate_tlsrpt::Settings, SettingsError> {
    let t = &config.tlsrpt;
    let host = &config.server.hostname;
    let dkim = if t.signs() {
        Some(Arc::new(mxgate_tlsrpt::DkimSigner::load(
            &t.dkim_domain,
            &t.dkim_selector,
            &t.dkim_key,
        )?))
    } else {
        None
    };
    let roots = mxgate_policy::tls::load_roots(&config.delivery.ca_file)?;
    let tls = rustls::ClientConfig::builder_with_provider(mxgate_policy::tls::provider())
        .with_protocol_versions(mxgate_policy::tls::protocol_versions(
            config.policy.min_tls_version,
        ))?
        .with_root_certificates(Arc::new(roots))
        .with_no_client_auth();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        // Host names of `https:` report addresses resolve through mxgate's resolver.
        .dns_resolver(Arc::new(mxgate_policy::sts::fetch::DnsResolve(dns)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    Ok(mxgate_tlsrpt::Settings {
        path: t.path.clone(),
        period: t.period,
        send_delay: t.send_delay,
        flush_interval: t.flush_interval,
        submitter: Submitter {
            organization_name: t.organization(host),
            contact_info: t.contact(host),
            domain: host.clone(),
        },
        from: t.sender(host),
        dkim,
        http,
        shared,
    })
}
