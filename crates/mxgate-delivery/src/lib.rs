//! SMTP client of mxgate: delivers one [`DeliveryJob`] (the recipients of one message in
//! one domain) to the domain's MX hosts under the TLS policy the policy engine decides
//! (docs/policy.md, docs/operations.md).
//!
//! For each job: ask the [`Planner`] (the [`PolicyEngine`]) for a [`DeliveryPlan`]; a
//! permanent plan error fails every recipient (null MX `5.1.10`, no such domain
//! `5.1.2`), a temporary one defers them (`4.4.3`). Then dial each MX of the plan in
//! order, each of its addresses in order, on the plan's port (`delivery.smtp_port` as the
//! planning engine read it, the port whose TLSA records were looked up: RFC 7672
//! §2.2.3; so a reload that changes the port changes both at once), within
//! `max_connections` and `max_connections_per_domain`, and run one SMTP session per
//! address (new, or reused from the [`SessionCache`]) until every recipient has an outcome. Recipients
//! left without one are deferred with the reasons gathered on the way (TLS policy
//! failures are `4.7.4`/`4.7.5`, or `5.7.x` with `on_tls_failure = "bounce"`).
//!
//! Sessions are reused ([`cache`]): after a clean transaction the session is parked,
//! without its permits, for at most [`cache::IDLE_TIMEOUT`]; the next job dialling the
//! same address under the same TLS requirement, minimum version, MX name and trust
//! generation ([`Planner::trust_generation`]: a reload that may have changed the trust
//! roots retires every session verified under the old ones) sends `RSET` and runs its
//! transaction there. A dead cached session is dropped and the job
//! dials afresh. At most `max_connections` sessions are idle in total, and at most
//! `max_connections_per_domain` per address.
//!
//! Each attempt logs one `key=value` line (tracing, info; `conn=new|reused|none` last)
//! and counts the metrics of docs/operations.md (`mxgate_tls_connections_total` once per new
//! TLS connection).
//!
//! Not here: choosing the TLS level or verifying certificates (`mxgate-policy` builds
//! the verifier), retry scheduling and DSNs (`mxgate-queue`), SMTP parsing
//! (`mxgate-smtp`).

mod attempt;
pub mod cache;
mod clock;
pub mod conn;
pub mod decide;
pub mod drive;
mod facts;
pub mod machine;
pub mod report;
pub mod reuse;
pub mod session;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mxgate_config::{DeliveryConfig, Level, OnTlsFailure, TlsVersion};
use mxgate_policy::{DeliveryPlan, PlanError, PolicyEngine, SkipReason, TlsRequirement};
use mxgate_queue::{
    DeliveryFailure, DeliveryJob, FailureKind, Outcome, RecipientOutcome, Transport,
};
use mxgate_smtp::{log_quoted, LogValue};
use rustls::ClientConfig;
use tokio::sync::Semaphore;

pub use cache::{SessionCache, SessionKey};
pub use decide::TlsPolicyFailure;
pub use report::{SessionFailure, SessionReport, SessionSink};
pub use reuse::IdleSession;
pub use session::{
    deliver_to_address, SessionError, SessionParams, ShadowCheck, ShadowVerdict, TlsFacts,
    Transacted,
};

use attempt::Finished;
use decide::{leftover_outcome, local_failure, plan_outcome, skip_kind, status};

/// What delivery needs from the policy engine; implemented by [`PolicyEngine`] (tests
/// may plug in a fixed plan).
pub trait Planner: Send + Sync + 'static {
    fn plan(&self, domain: &str) -> impl Future<Output = Result<DeliveryPlan, PlanError>> + Send;
    fn client_config(
        &self,
        requirement: &TlsRequirement,
        min_tls_version: TlsVersion,
    ) -> Arc<ClientConfig>;
    /// The global `policy.min_tls_version`, for the bounce relay.
    fn min_tls_version(&self) -> TlsVersion {
        TlsVersion::Tls12
    }
    /// What `TLS-Required: No` (RFC 8689 §5) lowers a DNS-learned plan to (`may`, or
    /// a stricter `policy.fallback`); `None` when the header is ignored
    /// (`policy.tls_required_header`).
    fn tls_required_no_floor(&self) -> Option<Level> {
        Some(Level::May)
    }

    /// The PKIX verifier of the trust roots, to judge shadow requirements (`None`: no
    /// shadow checks).
    fn pkix_verifier(&self) -> Option<Arc<dyn rustls::client::danger::ServerCertVerifier>> {
        None
    }

    /// Names the trust configuration [`Planner::client_config`] builds from (trust
    /// roots: webpki-roots and `delivery.ca_file`); it grows whenever that may have
    /// changed (a SIGHUP reload, docs/operations.md). A cached session serves only jobs
    /// of the generation it was verified under ([`cache`]).
    fn trust_generation(&self) -> u64 {
        0
    }

    /// [`Planner::client_config`] and the [`Planner::trust_generation`] it was built
    /// under. A planner that can change both overrides this to read them at once; this
    /// default reads the generation first, so a reload in between can only label a
    /// session older than it is (which makes it unusable, never wrongly usable).
    fn client_config_with_generation(
        &self,
        requirement: &TlsRequirement,
        min_tls_version: TlsVersion,
    ) -> (Arc<ClientConfig>, u64) {
        let generation = self.trust_generation();
        (self.client_config(requirement, min_tls_version), generation)
    }
}

impl Planner for PolicyEngine {
    fn plan(&self, domain: &str) -> impl Future<Output = Result<DeliveryPlan, PlanError>> + Send {
        PolicyEngine::plan(self, domain)
    }

    fn client_config(
        &self,
        requirement: &TlsRequirement,
        min_tls_version: TlsVersion,
    ) -> Arc<ClientConfig> {
        PolicyEngine::client_config(self, requirement, min_tls_version)
    }

    fn min_tls_version(&self) -> TlsVersion {
        PolicyEngine::min_tls_version(self)
    }

    fn tls_required_no_floor(&self) -> Option<Level> {
        PolicyEngine::tls_required_no_floor(self)
    }

    fn pkix_verifier(&self) -> Option<Arc<dyn rustls::client::danger::ServerCertVerifier>> {
        Some(PolicyEngine::pkix_verifier(self))
    }
}

/// The [`Transport`] that delivers to destination MX hosts.
pub struct Delivery<P: Planner = PolicyEngine> {
    settings: DeliveryConfig,
    policy: Arc<P>,
    hostname: String,
    global: Arc<Semaphore>,
    per_domain: Mutex<HashMap<String, Arc<Semaphore>>>,
    cache: SessionCache<IdleSession>,
    sink: Option<Arc<dyn SessionSink>>,
}

/// How a job's session was obtained, for the `conn=` log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnKind {
    New,
    Reused,
}

impl ConnKind {
    fn as_str(self) -> &'static str {
        match self {
            ConnKind::New => "new",
            ConnKind::Reused => "reused",
        }
    }
}

impl<P: Planner> Delivery<P> {
    /// `hostname` is our EHLO name (`server.hostname`).
    pub fn new(settings: DeliveryConfig, policy: Arc<P>, hostname: String) -> Self {
        Delivery::with_idle_timeout(settings, policy, hostname, cache::IDLE_TIMEOUT)
    }

    /// [`Delivery::new`] with another idle-session lifetime (tests; `ZERO` disables
    /// reuse).
    #[doc(hidden)]
    pub fn with_idle_timeout(
        settings: DeliveryConfig,
        policy: Arc<P>,
        hostname: String,
        idle_timeout: Duration,
    ) -> Self {
        let max_idle = if idle_timeout.is_zero() {
            0
        } else {
            settings.max_connections.max(1)
        };
        Delivery {
            global: Arc::new(Semaphore::new(settings.max_connections.max(1))),
            cache: SessionCache::new(
                max_idle,
                settings.max_connections_per_domain.max(1),
                idle_timeout,
            ),
            settings,
            policy,
            hostname,
            per_domain: Mutex::new(HashMap::new()),
            sink: None,
        }
    }

    /// Hands a [`SessionReport`] to `sink` after every session (TLS-RPT, shadow
    /// checks).
    pub fn with_session_sink(mut self, sink: Arc<dyn SessionSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Idle sessions kept for reuse right now.
    pub fn idle_sessions(&self) -> usize {
        self.cache.len()
    }

    /// Closes every idle session (`QUIT`), e.g. at shutdown.
    pub async fn close_idle_sessions(&self) {
        self.cache.close_idle().await;
    }

    /// One job's session at `params.addr`: a cached one under `key` if one still
    /// answers `RSET`, else a new connection. A clean ending parks the session again.
    async fn session(
        &self,
        key: SessionKey,
        params: &SessionParams,
        job: &DeliveryJob,
        recipients: &[usize],
    ) -> (
        Result<Transacted, SessionError>,
        ConnKind,
        Option<std::net::IpAddr>,
        bool,
    ) {
        // Each failed probe costs at most a round trip (or the probe timeout); a
        // server that lost one session has usually lost them all, so stop early.
        let mut tries = 0;
        let mut found: Option<Finished> = None;
        while tries < MAX_REUSE_TRIES {
            let Some(idle) = self.cache.take(&key) else {
                break;
            };
            tries += 1;
            if let Some(finished) = reuse::deliver_reused(idle, params, job, recipients).await {
                found = Some(finished);
                break;
            }
        }
        let (finished, kind) = match found {
            Some(finished) => (finished, ConnKind::Reused),
            None => (
                session::deliver_fresh(params, job, recipients).await,
                ConnKind::New,
            ),
        };
        if let Some(idle) = finished.idle {
            self.cache.put(key, idle);
        }
        (finished.result, kind, finished.local_ip, finished.greeted)
    }

    fn domain_semaphore(&self, domain: &str) -> Arc<Semaphore> {
        let mut map = self.per_domain.lock().unwrap_or_else(|e| e.into_inner());
        // Forget idle domains so the map does not grow without bound.
        let max = self.settings.max_connections_per_domain.max(1);
        map.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < max);
        map.entry(domain.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(max)))
            .clone()
    }

    async fn deliver_job(&self, job: DeliveryJob) -> Vec<RecipientOutcome> {
        let start = clock::instant();
        if let Some(relay) = job.relay.clone() {
            return self.deliver_via_relay(&job, &relay, start).await;
        }
        let plan = match (
            self.policy.plan(&job.domain).await,
            self.policy.tls_required_no_floor(),
        ) {
            // RFC 8689 §5: "TLS-Required: No" asks that DNS-learned TLS policies be
            // ignored; the plan says which levels that may lower, never below `floor`.
            (Ok(plan), Some(floor)) if report::tls_required_no(&job.message) => {
                plan.lowered_for_tls_required_no(floor)
            }
            (Ok(plan), _) => plan,
            (Err(e), _) => {
                let outcome = plan_outcome(&e);
                let outcomes = all(&job.recipients, &outcome);
                let log = AttemptLog::new(&job, None, "-", start);
                log.emit(&outcomes, "none", &TlsFacts::default(), "none", "none");
                return outcomes;
            }
        };
        let domain_sem = self.domain_semaphore(&job.domain);
        // Per-domain first, so a busy domain does not hold global slots while waiting.
        let Ok(_domain_permit) = domain_sem.acquire_owned().await else {
            return all(
                &job.recipients,
                &Outcome::Deferred(local_failure(
                    FailureKind::Local,
                    status::LOCAL,
                    None,
                    "shutting down",
                )),
            );
        };
        let Ok(_global_permit) = self.global.clone().acquire_owned().await else {
            return all(
                &job.recipients,
                &Outcome::Deferred(local_failure(
                    FailureKind::Local,
                    status::LOCAL,
                    None,
                    "shutting down",
                )),
            );
        };
        self.follow_plan(&job, &plan, start, true).await
    }

    /// `queue.bounce_relay`: the queue's own DSNs go to one fixed `host:port` (e.g. the
    /// local Postfix), with opportunistic STARTTLS and no MX lookup. The destination's
    /// TLS policy does not apply: the relay, not mxgate, delivers onwards.
    async fn deliver_via_relay(
        &self,
        job: &DeliveryJob,
        relay: &str,
        start: Instant,
    ) -> Vec<RecipientOutcome> {
        let resolved: Vec<SocketAddr> = match tokio::net::lookup_host(relay).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => {
                tracing::warn!(id = %job.id, relay, error = %e, "queue.bounce_relay cannot be resolved");
                Vec::new()
            }
        };
        let Some(port) = resolved.first().map(SocketAddr::port) else {
            let failure = local_failure(
                FailureKind::ConnectFailed,
                status::NO_ANSWER,
                None,
                format!("queue.bounce_relay {relay}: cannot resolve"),
            );
            let outcomes = all(&job.recipients, &Outcome::Deferred(failure));
            AttemptLog::new(job, Some(Level::May), "config", start).emit(
                &outcomes,
                relay,
                &TlsFacts::default(),
                "none",
                "none",
            );
            return outcomes;
        };
        let host = mxgate_config::HostPort::parse(relay)
            .map(|hp| hp.host)
            .unwrap_or_else(|| relay.to_string());
        let plan = DeliveryPlan {
            domain: job.domain.clone(),
            level: Level::May,
            source: mxgate_policy::PolicySource::Config,
            configured: Level::May,
            min_tls_version: self.policy.min_tls_version(),
            on_tls_failure: OnTlsFailure::Defer,
            port,
            mta_sts_failure: None,
            mx: vec![mxgate_policy::MxPlan {
                host,
                preference: 0,
                addrs: resolved.iter().map(SocketAddr::ip).collect(),
                requirement: Ok(TlsRequirement::Opportunistic),
                shadow: None,
            }],
        };
        // The relay is not the destination's MX: nothing to report about its TLS.
        self.follow_plan(job, &plan, start, false).await
    }

    async fn follow_plan(
        &self,
        job: &DeliveryJob,
        plan: &DeliveryPlan,
        start: Instant,
        report_sessions: bool,
    ) -> Vec<RecipientOutcome> {
        let log = AttemptLog::new(job, Some(plan.level), plan.source.as_str(), start);
        let mut pending: Vec<usize> = job.recipients.clone();
        let mut done: Vec<RecipientOutcome> = Vec::new();
        let mut tls_reasons: Vec<TlsPolicyFailure> = Vec::new();
        let mut other_failure: Option<DeliveryFailure> = None;
        let mut tried: HashSet<SocketAddr> = HashSet::new();
        let mut greeted = 0usize;
        let reporter = Reporter {
            sink: self.sink.as_deref().filter(|_| report_sessions),
            plan,
            is_tls_report: self.sink.is_some() && report::is_tls_report(&job.message),
        };
        'mx: for mx in &plan.mx {
            let requirement = match &mx.requirement {
                Ok(r) => r.clone(),
                Err(reason) => {
                    reporter.skipped(&mx.host, skip_kind(reason), reason);
                    count_tls_policy_failure(plan.level, "policy_excluded");
                    tls_reasons.push(TlsPolicyFailure {
                        kind: skip_kind(reason),
                        message: reason.to_string(),
                    });
                    continue;
                }
            };
            let (tls_config, trust_generation) = match requirement {
                TlsRequirement::Cleartext => (None, self.policy.trust_generation()),
                _ => {
                    let (config, generation) = self
                        .policy
                        .client_config_with_generation(&requirement, plan.min_tls_version);
                    (Some(config), generation)
                }
            };
            for ip in &mx.addrs {
                let addr = SocketAddr::new(*ip, plan.port);
                // An address listed twice (two MX names, one host) is dialled once: a
                // session there either decided or may already have delivered.
                if !tried.insert(addr) {
                    continue;
                }
                if tried.len() > self.settings.mx_address_limit.get()
                    || greeted >= self.settings.mx_session_limit.get()
                {
                    tracing::info!(id = %job.id, domain = %plan.domain,
                        addresses = tried.len() - 1, sessions = greeted,
                        "delivery.mx_address_limit or delivery.mx_session_limit reached; the rest waits for the next attempt");
                    break 'mx;
                }
                let key = SessionKey {
                    addr,
                    mx_host: mx.host.clone(),
                    requirement: requirement.clone(),
                    min_tls_version: plan.min_tls_version,
                    trust_generation,
                };
                let params = SessionParams {
                    helo_name: self.hostname.clone(),
                    mx_host: mx.host.clone(),
                    addr,
                    requirement: requirement.clone(),
                    tls_config: tls_config.clone(),
                    policy_label: reason_label(plan.level, &requirement).to_string(),
                    connect_timeout: self.settings.connect_timeout,
                    command_timeout: self.settings.command_timeout,
                    shadow: mx
                        .shadow
                        .clone()
                        .zip(self.policy.pkix_verifier())
                        .map(|(requirement, pkix)| ShadowCheck { requirement, pkix }),
                };
                let (result, kind, local_ip, was_greeted) =
                    self.session(key, &params, job, &pending).await;
                greeted += usize::from(was_greeted);
                reporter.session(&params, local_ip, &result);
                match result {
                    Ok(mut report) => {
                        report.tls.shadow = attempt::shadow_verdict(&params, &report.tls);
                        let auth = report.tls.auth;
                        if let Some(ShadowVerdict {
                            level,
                            result: Err(failure),
                        }) = &report.tls.shadow
                        {
                            metrics::counter!("mxgate_shadow_failures_total",
                                "level" => metric_policy(*level), "reason" => failure.as_str())
                            .increment(1);
                        }
                        if let (Some(version), ConnKind::New) = (report.tls.version, kind) {
                            metrics::counter!("mxgate_tls_connections_total",
                                "version" => version,
                                "cipher" => report.tls.cipher.clone().unwrap_or_default(),
                                "auth" => auth)
                            .increment(1);
                        }
                        log.emit(
                            &report.outcomes,
                            &report.relay,
                            &report.tls,
                            auth,
                            kind.as_str(),
                        );
                        pending.retain(|i| !report.outcomes.iter().any(|o| o.index == *i));
                        done.extend(report.outcomes);
                        if pending.is_empty() {
                            break 'mx;
                        }
                    }
                    Err(SessionError::TlsPolicy { relay, failure }) => {
                        count_tls_policy_failure(plan.level, failure.reason());
                        tracing::info!(id = %job.id, relay = %relay, "TLS policy not met: {}", failure.message);
                        tls_reasons.push(failure);
                    }
                    Err(SessionError::Unreachable { relay, failure }) => {
                        // RFC 1047: the server may have taken the message; Postfix logs
                        // the same words. The address is in `tried`: never again in
                        // this attempt. The next address or MX may be tried.
                        if failure.kind == FailureKind::LostAfterData {
                            tracing::warn!(id = %job.id, relay = %relay, "{}", failure.diagnostic);
                        } else {
                            tracing::info!(id = %job.id, relay = %relay, "{}", failure.diagnostic);
                        }
                        other_failure = Some(failure);
                    }
                }
            }
        }
        if !pending.is_empty() {
            let outcome = leftover_outcome(plan, &tls_reasons, other_failure);
            let left = all(&pending, &outcome);
            log.emit(&left, "none", &TlsFacts::default(), "none", "none");
            done.extend(left);
        }
        done
    }
}

impl<P: Planner> Transport for Delivery<P> {
    fn deliver(&self, job: DeliveryJob) -> impl Future<Output = Vec<RecipientOutcome>> + Send {
        self.deliver_job(job)
    }
}

/// Builds and hands out the [`SessionReport`]s of one attempt.
struct Reporter<'a> {
    sink: Option<&'a dyn SessionSink>,
    plan: &'a DeliveryPlan,
    is_tls_report: bool,
}

impl Reporter<'_> {
    fn base(&self, mx_host: &str) -> SessionReport {
        SessionReport {
            domain: self.plan.domain.clone(),
            level: self.plan.level,
            source: self.plan.source,
            mx_host: mx_host.to_string(),
            mx_addr: None,
            local_addr: None,
            requirement: None,
            tls: None,
            mta_sts_failure: self.plan.mta_sts_failure.as_ref().map(|e| SessionFailure {
                kind: decide::sts_fetch_kind(e.class()),
                reason: decide::bounded(&format!("mta-sts: {e}")),
            }),
            result: Ok(()),
            is_tls_report: self.is_tls_report,
        }
    }

    /// An MX host the plan does not dial.
    fn skipped(&self, mx_host: &str, kind: FailureKind, reason: &SkipReason) {
        let Some(sink) = self.sink else { return };
        let mut report = self.base(mx_host);
        report.result = Err(SessionFailure {
            kind,
            reason: decide::bounded(&reason.to_string()),
        });
        sink.session(&report);
    }

    /// One session at `params.addr`.
    fn session(
        &self,
        params: &SessionParams,
        local_ip: Option<std::net::IpAddr>,
        result: &Result<Transacted, SessionError>,
    ) {
        let Some(sink) = self.sink else { return };
        let mut report = self.base(&params.mx_host);
        report.mx_addr = Some(params.addr.ip());
        report.local_addr = local_ip;
        report.requirement = Some(params.requirement.clone());
        match result {
            Ok(t) => {
                report.tls = t.tls.version.is_some().then(|| t.tls.clone());
            }
            Err(SessionError::TlsPolicy { failure, .. }) => {
                report.result = Err(SessionFailure {
                    kind: failure.kind,
                    reason: decide::bounded(&failure.message),
                });
            }
            Err(SessionError::Unreachable { failure, .. }) => {
                report.result = Err(SessionFailure {
                    kind: failure.kind,
                    reason: failure.diagnostic.clone(),
                });
            }
        }
        sink.session(&report);
    }
}

/// Cached sessions tried (and found dead) before a job dials afresh.
const MAX_REUSE_TRIES: usize = 2;

/// The level word that opens a TLS failure reason (`encrypt: ...`, `mta-sts enforce: ...`).
fn reason_label(level: Level, requirement: &TlsRequirement) -> &'static str {
    match (level, requirement) {
        // RFC 8461 §5: only an `enforce` policy makes TLS mandatory; MTA-STS delivery
        // under a PKIX requirement is enforce mode.
        (Level::MtaSts, TlsRequirement::Pkix { .. }) => "mta-sts enforce",
        (level, _) => level.as_str(),
    }
}

fn all(indices: &[usize], outcome: &Outcome) -> Vec<RecipientOutcome> {
    indices
        .iter()
        .map(|&index| RecipientOutcome {
            index,
            outcome: outcome.clone(),
        })
        .collect()
}

/// The `policy=` label: one of `none|may|encrypt|verify|mta-sts|dane` (docs/operations.md;
/// `unknown` when no level was decided).
fn metric_policy(level: Level) -> &'static str {
    match level {
        Level::DaneOnly | Level::Dane => "dane",
        Level::Auto => "may",
        other => other.as_str(),
    }
}

fn count_tls_policy_failure(level: Level, reason: &'static str) {
    metrics::counter!("mxgate_tls_policy_failures_total", "policy" => metric_policy(level), "reason" => reason)
        .increment(1);
}

/// Emits the per-attempt log line and the delivery counters.
struct AttemptLog<'a> {
    job: &'a DeliveryJob,
    /// The metric label (`dane` for `dane-only`, docs/operations.md).
    policy: &'static str,
    /// The level's name for people (`dane-only` stays `dane-only`).
    policy_name: &'static str,
    source: &'a str,
    start: Instant,
}

impl<'a> AttemptLog<'a> {
    /// `level`: the level applied, `None` when none could be decided (`unknown`).
    fn new(job: &'a DeliveryJob, level: Option<Level>, source: &'a str, start: Instant) -> Self {
        AttemptLog {
            job,
            policy: level.map_or("unknown", metric_policy),
            policy_name: match level {
                None => "unknown",
                Some(Level::Auto) => "may",
                Some(l) => l.as_str(),
            },
            source,
            start,
        }
    }

    fn emit(
        &self,
        outcomes: &[RecipientOutcome],
        relay: &str,
        tls: &TlsFacts,
        auth: &str,
        conn: &str,
    ) {
        let tls_label = tls.version.unwrap_or("none");
        let delay = self.start.elapsed().as_secs_f64();
        metrics::histogram!("mxgate_delivery_duration_seconds").record(delay);
        for status in ["sent", "deferred", "bounced"] {
            let group: Vec<&RecipientOutcome> = outcomes
                .iter()
                .filter(|o| status_word(&o.outcome) == status)
                .collect();
            let Some(first) = group.first() else { continue };
            let outcome_label = match status {
                "sent" => "delivered",
                other => other,
            };
            metrics::counter!("mxgate_deliveries_total",
                "outcome" => outcome_label, "policy" => self.policy, "tls" => tls_label)
            .increment(group.len() as u64);
            let to: Vec<String> = group
                .iter()
                .map(|o| {
                    let address = self
                        .job
                        .envelope
                        .recipients
                        .get(o.index)
                        .map(|r| r.address.as_str())
                        .unwrap_or("?");
                    format!("<{}>", LogValue(address))
                })
                .collect();
            let (reply, dsn) = match &first.outcome {
                Outcome::Delivered { reply, .. } => (reply.as_str(), "2.0.0".to_string()),
                Outcome::Deferred(f) | Outcome::Failed(f) => {
                    (f.diagnostic.as_str(), f.status.to_string())
                }
            };
            let from = format!("<{}>", LogValue(&self.job.envelope.sender));
            let to = to.join(",");
            let cipher = tls.cipher.as_deref().unwrap_or("none");
            let trust = postfix_trust_word(tls.version.is_some(), auth);
            // Real fields, so `--log-format json` carries each as its own key. In text they
            // print as `key=value` in this order; `reply`, a `&str`, prints quoted. Values
            // from outside are escaped first (LogValue, log_quoted): none can end its
            // field or forge another in either format.
            let reply = log_quoted(reply);
            let delay = format!("{delay:.2}");
            macro_rules! line {
                ($($shadow:tt)*) => {
                    tracing::info!(
                        id = %self.job.id,
                        from = %from,
                        to = %to,
                        relay = %relay,
                        policy = %self.policy_name,
                        source = %self.source,
                        tls = %tls_label,
                        cipher = %cipher,
                        auth = %auth,
                        trust = %trust,
                        status = %status,
                        dsn = %dsn,
                        reply = reply.as_str(),
                        delay = %delay,
                        conn = %conn
                        $($shadow)*
                    )
                };
            }
            // `shadow=LEVEL:ok|LEVEL:REASON` only when a shadow level is configured.
            match tls.shadow.as_ref().map(|v| v.log_word()) {
                Some(shadow) => line!(, shadow = %shadow),
                None => line!(),
            }
        }
    }
}

/// The word Postfix logs for the same session ("Verified TLS connection established
/// to ..."), so grep habits carry over: `Verified` when the server was authenticated
/// (PKIX chain and name, or DANE), `Untrusted` for TLS without authentication, `none`
/// in cleartext. (Postfix's `Trusted` — a valid chain with the wrong name — never
/// happens here: mxgate either requires the name or verifies nothing.)
fn postfix_trust_word(tls: bool, auth: &str) -> &'static str {
    match (tls, auth) {
        (false, _) => "none",
        (true, "none") => "Untrusted",
        (true, _) => "Verified",
    }
}

fn status_word(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered { .. } => "sent",
        Outcome::Deferred(_) => "deferred",
        Outcome::Failed(_) => "bounced",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mxgate_config::Level;
    use mxgate_policy::{MxPlan, PolicySource};
    use mxgate_queue::QueueId;
    use mxgate_smtp::{Envelope, Recipient};
    use std::time::Duration;

    struct OneMx;

    impl Planner for OneMx {
        async fn plan(&self, domain: &str) -> Result<DeliveryPlan, PlanError> {
            Ok(DeliveryPlan {
                domain: domain.to_string(),
                level: Level::None,
                source: PolicySource::Config,
                configured: Level::None,
                min_tls_version: TlsVersion::Tls12,
                on_tls_failure: OnTlsFailure::Defer,
                port: 1,
                mta_sts_failure: None,
                mx: vec![MxPlan {
                    host: "mx.test".into(),
                    preference: 0,
                    // Nothing listens on 127.0.0.2:1: refused at once.
                    addrs: vec!["127.0.0.2".parse().unwrap()],
                    requirement: Ok(TlsRequirement::Cleartext),
                    shadow: None,
                }],
            })
        }
        fn client_config(&self, _: &TlsRequirement, _: TlsVersion) -> Arc<ClientConfig> {
            unreachable!("cleartext needs no TLS configuration")
        }
    }

    fn job() -> DeliveryJob {
        DeliveryJob {
            id: QueueId("T1".into()),
            envelope: Arc::new(Envelope {
                sender: "a@b.test".into(),
                body: Default::default(),
                smtputf8: false,
                ret: None,
                envid: None,
                recipients: vec![Recipient {
                    address: "r@dest.test".into(),
                    notify: None,
                    orcpt: None,
                }],
            }),
            domain: "dest.test".into(),
            recipients: vec![0],
            message: bytes::Bytes::from_static(b"x\r\n"),
            attempt: 1,
            relay: None,
        }
    }

    #[tokio::test]
    async fn per_domain_limit_holds_back_a_second_connection() {
        let settings = DeliveryConfig {
            max_connections_per_domain: 1,
            ..DeliveryConfig::default()
        };
        let delivery = Delivery::new(settings, Arc::new(OneMx), "relay.test".into());
        let slot = delivery.domain_semaphore("dest.test");
        let held = slot.clone().acquire_owned().await.unwrap();
        let mut attempt = std::pin::pin!(delivery.deliver(job()));
        // Asserting that nothing happens needs a bound; 200 ms is ample on loopback.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut attempt)
                .await
                .is_err()
        );
        drop(held);
        let out = attempt.await;
        assert!(
            matches!(&out[0].outcome, Outcome::Deferred(f) if f.status == "4.4.1"),
            "{out:?}"
        );
        // Another domain is not held back by this one.
        assert_eq!(
            delivery.domain_semaphore("other.test").available_permits(),
            1
        );
    }

    #[test]
    fn metric_policy_labels_are_the_contract_set() {
        for level in Level::ALL {
            assert!(["none", "may", "encrypt", "verify", "mta-sts", "dane"]
                .contains(&metric_policy(level)));
        }
    }
}
