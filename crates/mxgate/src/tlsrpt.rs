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
        let Some(mapped) = map_report(report, sts.as_ref(), pkix.as_ref()) else {
            return;
        };
        if let Some(kind) = mapped.testing_failure {
            // RFC 8461 §5: a testing policy is not enforced, but its failures are
            // reported (metric with the reason enforce would have failed on, log line,
            // TLS-RPT).
            metrics::counter!("mxgate_tls_policy_failures_total",
                "policy" => "mta-sts", "reason" => mxgate_delivery::decide::metric_reason(kind))
            .increment(1);
            tracing::info!(
                domain = %report.domain,
                mx = %report.mx_host,
                result = kind.tls_rpt_result().unwrap_or_default(),
                "mta-sts testing: policy not met (delivered anyway, reported)"
            );
        }
        let record = mapped.record;
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
    ResultType::parse(kind.tls_rpt_result()?)
}

/// A session report as TLS-RPT sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// What is counted into the report.
    pub record: SessionRecord,
    /// MTA-STS `testing` (RFC 8461 §5): what `enforce` would have failed this delivered
    /// session on (for the failure metric and the log line).
    pub testing_failure: Option<FailureKind>,
}

/// One session report as a TLS-RPT record; `None` for what is not reported.
pub fn map_report(
    report: &SessionReport,
    sts: Option<&MtaStsPolicy>,
    pkix: &dyn rustls::client::danger::ServerCertVerifier,
) -> Option<Mapped> {
    let detail = |kind: FailureKind, reason: String| -> Option<FailureDetail> {
        Some(FailureDetail {
            sending_mta_ip: report.local_addr,
            receiving_mx_hostname: Some(report.mx_host.clone()),
            receiving_ip: report.mx_addr,
            failure_reason_code: Some(kind.as_str().to_string()),
            additional_information: Some(reason),
            ..FailureDetail::new(result_type(kind)?)
        })
    };
    let counted = |record: SessionRecord, testing_failure| {
        Some(Mapped {
            record,
            testing_failure,
        })
    };
    // RFC 8460 §4.3.2.2: the domain announces an MTA-STS policy (RFC 8461 §3.1) that
    // could not be fetched, was invalid, or whose host failed PKIX validation. The
    // session ran under the fallback (RFC 8461 §5), but it was meant to be held to that
    // policy: it is an `sts` failure of that result type, whatever it achieved itself.
    // The policy block names no policy string nor mx patterns: none was obtained.
    if let Some(sts_failure) = &report.mta_sts_failure {
        if let Err(failure) = &report.result {
            // Sessions that failed for reasons that say nothing about TLS are not
            // counted, here as everywhere.
            result_type(failure.kind)?;
        }
        let d = detail(sts_failure.kind, sts_failure.reason.clone())?;
        return counted(
            SessionRecord {
                policy_domain: report.domain.clone(),
                policy: Policy::sts_unavailable(),
                result: SessionResult::Failure(d),
            },
            None,
        );
    }
    let mut testing_failure = None;
    let result = match &report.result {
        Ok(()) => match sts {
            // RFC 8461 §5 testing mode: delivered, but an MX outside the policy is a
            // failure to report.
            Some(p) if p.mode == MtaStsMode::Testing && !p.mx_matches(&report.mx_host) => {
                let kind = FailureKind::StsMxNotListed;
                testing_failure = Some(kind);
                SessionResult::Failure(detail(
                    kind,
                    format!("mta-sts testing: {} matches no mx pattern", report.mx_host),
                )?)
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
                        let kind = testing_kind(why);
                        testing_failure = Some(kind);
                        SessionResult::Failure(detail(kind, format!("mta-sts testing: {why}"))?)
                    }
                }
            }
            _ => SessionResult::Success,
        },
        Err(failure) => SessionResult::Failure(detail(failure.kind, failure.reason.clone())?),
    };
    counted(
        SessionRecord {
            policy_domain: report.domain.clone(),
            policy: policy_of(report, sts),
            result,
        },
        testing_failure,
    )
}

/// The failure kind an `enforce` policy would have failed a session on (RFC 8461 §4.2:
/// TLS, a certificate chaining to a trusted root, valid now and for the MX host name):
/// the same kinds, hence result types and metric reasons, as an enforced failure.
fn testing_kind(why: mxgate_policy::RequirementFailure) -> FailureKind {
    use mxgate_policy::RequirementFailure as F;
    match why {
        F::NoTls => FailureKind::StarttlsNotOffered,
        F::CertificateExpired => FailureKind::CertificateExpired,
        F::NoCertificate | F::CertificateNotTrusted => FailureKind::CertificateNotTrusted,
        F::CertificateHostMismatch => FailureKind::CertificateHostMismatch,
        F::MxNotInPolicy => FailureKind::StsMxNotListed,
        // Not reachable for a PKIX requirement; a validation failure if ever.
        F::TlsaMismatch | F::NoTlsa | F::DnsFailure => FailureKind::CertificateInvalid,
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
    crate::clock::now()
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mxgate_config::Level;
    use mxgate_delivery::SessionFailure;
    use mxgate_policy::RequirementFailure;

    fn pkix() -> Arc<rustls::client::WebPkiServerVerifier> {
        let roots = mxgate_policy::tls::load_roots(std::path::Path::new("")).unwrap();
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            mxgate_policy::tls::provider(),
        )
        .build()
        .unwrap()
    }

    fn report(source: PolicySource, result: Result<(), SessionFailure>) -> SessionReport {
        SessionReport {
            domain: "dest.example".into(),
            level: Level::May,
            source,
            mx_host: "mx.dest.example".into(),
            mx_addr: Some("192.0.2.25".parse().unwrap()),
            local_addr: Some("198.51.100.1".parse().unwrap()),
            requirement: Some(TlsRequirement::Opportunistic),
            tls: None,
            mta_sts_failure: None,
            result,
            is_tls_report: false,
        }
    }

    fn failed(kind: FailureKind) -> Result<(), SessionFailure> {
        Err(SessionFailure {
            kind,
            reason: format!("{} happened", kind.as_str()),
        })
    }

    /// RFC 8460 §4.3.2.2: every counted session to a domain whose announced policy could
    /// not be obtained is an `sts` failure of the policy failure's result type.
    #[test]
    fn unobtainable_sts_policies_map_to_their_result_types() {
        let pkix = pkix();
        for (kind, want) in [
            (FailureKind::StsPolicyFetch, ResultType::StsPolicyFetchError),
            (FailureKind::StsPolicyInvalid, ResultType::StsPolicyInvalid),
            (FailureKind::StsWebpkiInvalid, ResultType::StsWebpkiInvalid),
        ] {
            let sts_failure = SessionFailure {
                kind,
                reason: "mta-sts: policy fetch: HTTP status 404 (only 200 is accepted)".into(),
            };
            // Delivered under the fallback, or failed on TLS under it: the same failure.
            for result in [Ok(()), failed(FailureKind::StarttlsNotOffered)] {
                let mut r = report(PolicySource::Fallback, result);
                r.mta_sts_failure = Some(sts_failure.clone());
                let mapped = map_report(&r, None, pkix.as_ref()).unwrap();
                assert_eq!(mapped.testing_failure, None);
                assert_eq!(mapped.record.policy, Policy::sts_unavailable());
                assert_eq!(mapped.record.policy_domain, "dest.example");
                let SessionResult::Failure(d) = mapped.record.result else {
                    panic!("{kind:?}: a failure");
                };
                assert_eq!(d.result_type, want);
                assert_eq!(d.failure_reason_code.as_deref(), Some(kind.as_str()));
                assert_eq!(d.additional_information, Some(sts_failure.reason.clone()));
                assert_eq!(d.receiving_mx_hostname.as_deref(), Some("mx.dest.example"));
                assert_eq!(d.receiving_ip, r.mx_addr);
                assert_eq!(d.sending_mta_ip, r.local_addr);
            }
            // A session that failed for a reason that says nothing about TLS: not counted.
            let mut r = report(PolicySource::Fallback, failed(FailureKind::ConnectFailed));
            r.mta_sts_failure = Some(sts_failure);
            assert_eq!(map_report(&r, None, pkix.as_ref()), None);
        }
        // Without the failure the same session is a no-policy-found success.
        let mapped = map_report(&report(PolicySource::Fallback, Ok(())), None, pkix.as_ref());
        let record = mapped.unwrap().record;
        assert_eq!(record.policy, Policy::no_policy_found());
        assert_eq!(record.result, SessionResult::Success);
    }

    /// RFC 8461 §5 testing: what enforce would have failed on, with the result type and
    /// the metric reason of an enforced failure.
    #[test]
    fn testing_failures_carry_what_enforce_would_have_failed_on() {
        let rows = [
            (
                RequirementFailure::NoTls,
                "starttls-not-supported",
                "starttls_not_offered",
            ),
            (
                RequirementFailure::NoCertificate,
                "certificate-not-trusted",
                "certificate_invalid",
            ),
            (
                RequirementFailure::CertificateNotTrusted,
                "certificate-not-trusted",
                "certificate_invalid",
            ),
            (
                RequirementFailure::CertificateExpired,
                "certificate-expired",
                "certificate_invalid",
            ),
            (
                RequirementFailure::CertificateHostMismatch,
                "certificate-host-mismatch",
                "certificate_invalid",
            ),
            (
                RequirementFailure::MxNotInPolicy,
                "validation-failure",
                "policy_excluded",
            ),
        ];
        for (why, result, reason) in rows {
            let kind = testing_kind(why);
            assert_eq!(kind.tls_rpt_result(), Some(result), "{why:?}");
            assert_eq!(
                mxgate_delivery::decide::metric_reason(kind),
                reason,
                "{why:?}"
            );
        }

        let pkix = pkix();
        let testing = |mx: &str| MtaStsPolicy {
            mode: MtaStsMode::Testing,
            mx: vec![mx.into()],
            max_age: 86400,
        };
        // A cleartext session to a listed MX: enforce would have wanted TLS.
        let r = report(PolicySource::MtaSts, Ok(()));
        let policy = testing("mx.dest.example");
        let mapped = map_report(&r, Some(&policy), pkix.as_ref()).unwrap();
        assert_eq!(
            mapped.testing_failure,
            Some(FailureKind::StarttlsNotOffered)
        );
        let SessionResult::Failure(d) = mapped.record.result else {
            panic!("a failure");
        };
        assert_eq!(d.result_type, ResultType::StarttlsNotSupported);
        assert_eq!(
            d.failure_reason_code.as_deref(),
            Some("starttls-not-offered")
        );
        assert_eq!(
            mapped.record.policy.policy_type,
            mxgate_tlsrpt::PolicyType::Sts
        );
        // An MX outside the policy.
        let policy = testing("*.elsewhere.example");
        let mapped = map_report(&r, Some(&policy), pkix.as_ref()).unwrap();
        assert_eq!(mapped.testing_failure, Some(FailureKind::StsMxNotListed));
        let SessionResult::Failure(d) = mapped.record.result else {
            panic!("a failure");
        };
        assert_eq!(d.result_type, ResultType::ValidationFailure);
        assert_eq!(d.failure_reason_code.as_deref(), Some("sts-mx-not-listed"));
        // Enforce: a failure is the session's own, never a testing one.
        let enforce = MtaStsPolicy {
            mode: MtaStsMode::Enforce,
            ..testing("mx.dest.example")
        };
        let r = report(
            PolicySource::MtaSts,
            failed(FailureKind::CertificateNotTrusted),
        );
        let mapped = map_report(&r, Some(&enforce), pkix.as_ref()).unwrap();
        assert_eq!(mapped.testing_failure, None);
        assert!(matches!(
            mapped.record.result,
            SessionResult::Failure(FailureDetail {
                result_type: ResultType::CertificateNotTrusted,
                ..
            })
        ));
    }
}
