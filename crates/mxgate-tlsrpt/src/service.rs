//! The TLS-RPT task: counts sessions handed over by [`TlsRpt::record`] (an `mpsc`
//! send, nothing more on the delivery path), saves the state at least every
//! `flush_interval` and on shutdown, closes each period, and sends its reports —
//! `https:` by POST (RFC 8460 §5.4), `mailto:` through a [`MailSink`] (mxgate's own
//! queue, or `tlsrpt.relay`) — spread over `send_delay`, retried with back-off until
//! the end of the next period.
//!
//! Discovery (`_smtp._tls` TXT, RFC 8460 §3) goes through a [`Discover`] (mxgate's
//! resolver, in the binary) and is cached for the record's TTL.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::{self, now_unix};
use crate::dkim::DkimSigner;
use crate::mail::{self, MailInput};
use crate::model::{SessionRecord, SessionResult};
use crate::record::{parse_records, record_name, Destination, RecordError};
use crate::report::{self, Report, Submitter};
use crate::shared::SharedCounters;
use crate::sharing;
use crate::store::{self, backoff, PendingReport, State};
use crate::time::rfc3339;

/// How the service is set up (from `[tlsrpt]`).
#[derive(Clone)]
pub struct Settings {
    pub path: PathBuf,
    pub period: Duration,
    pub send_delay: Duration,
    pub flush_interval: Duration,
    pub submitter: Submitter,
    /// `From:` and envelope sender of report mails.
    pub from: String,
    pub dkim: Option<Arc<DkimSigner>>,
    /// The HTTPS client for `https:` destinations (the normal TLS roots plus
    /// `delivery.ca_file`).
    pub http: reqwest::Client,
    /// Counters shared with other instances (`[cluster]`, docs/scaling.md); `None`:
    /// this instance reports what it counted.
    pub shared: Option<Arc<dyn SharedCounters>>,
}

/// A TXT answer with its TTL; no record (NXDOMAIN, NODATA) is an empty list.
pub struct TxtAnswer {
    pub records: Vec<String>,
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DiscoverError(pub String);

/// Looks up TXT records (implemented by the binary over mxgate-dns).
pub trait Discover: Send + Sync + 'static {
    fn txt(&self, name: &str) -> impl Future<Output = Result<TxtAnswer, DiscoverError>> + Send;
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SubmitError(pub String);

/// Takes a report mail for delivery (the binary: mxgate's queue or `tlsrpt.relay`).
/// Resolves once the mail is safely handed over.
pub trait MailSink: Send + Sync + 'static {
    fn submit(
        &self,
        from: &str,
        to: &str,
        message: Vec<u8>,
    ) -> impl Future<Output = Result<(), SubmitError>> + Send;
}

/// The service is gone (shut down).
#[derive(Debug, thiserror::Error)]
#[error("the TLS-RPT service is not running")]
pub struct Gone;

/// The running service's handle; cheap to clone.
#[derive(Clone)]
pub struct TlsRpt {
    tx: mpsc::Sender<Command>,
}

enum Command {
    Record(Box<SessionRecord>),
    List(oneshot::Sender<ListView>),
    SendNow(oneshot::Sender<SendSummary>),
}

/// Sessions buffered between delivery and the task before new ones are dropped (with
/// a warning): far more than a busy relay makes between two scheduler turns.
const CHANNEL: usize = 65_536;

impl TlsRpt {
    /// Counts one delivery session. Never blocks; the caller has already left out
    /// sessions that carried a report (no report loops).
    pub fn record(&self, record: SessionRecord) {
        let result = match record.result {
            SessionResult::Success => "success",
            SessionResult::Failure(_) => "failure",
        };
        metrics::counter!("mxgate_tlsrpt_sessions_total",
            "policy_type" => record.policy.policy_type.as_str(), "result" => result)
        .increment(1);
        if self.tx.try_send(Command::Record(Box::new(record))).is_err() {
            tracing::warn!("TLS-RPT: session not counted (service busy or stopped)");
        }
    }

    /// What has been counted in the open period, and the reports waiting to go out.
    pub async fn list(&self) -> Result<ListView, Gone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::List(tx)).await.map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    /// Closes the open period now and sends every due report at once (no spread);
    /// resolves when every attempt has finished.
    pub async fn send_now(&self) -> Result<SendSummary, Gone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::SendNow(tx)).await.map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }
}

/// `mxgate tlsrpt list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListView {
    pub period_start: String,
    pub period_end: String,
    /// One RFC 8460 §4.4 report per policy domain, as it would be sent now.
    pub domains: Vec<Report>,
    pub pending: Vec<PendingView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PendingView {
    pub policy_domain: String,
    pub report_id: String,
    pub period_start: String,
    pub period_end: String,
    pub next_try: String,
    pub attempts: u32,
    pub sent_to: Vec<String>,
}

/// `mxgate tlsrpt send`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SendSummary {
    pub results: Vec<SendResultView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SendResultView {
    pub policy_domain: String,
    pub report_id: String,
    /// `mailto:…`/`https:…`, or empty when no record was found.
    pub destination: String,
    /// `sent`, `failed`, `no-record`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("tlsrpt.path {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tlsrpt.path: {0}")]
    Load(#[from] store::LoadError),
}

/// Starts the task; it runs until `shutdown`, then saves and ends.
pub fn start<D: Discover, M: MailSink>(
    settings: Settings,
    discover: Arc<D>,
    mail: Arc<M>,
    shutdown: CancellationToken,
) -> Result<(TlsRpt, tokio::task::JoinHandle<()>), StartError> {
    store::prepare_dir(&settings.path).map_err(|source| StartError::Dir {
        path: settings.path.clone(),
        source,
    })?;
    let mut state = match store::load(&settings.path) {
        Ok(Some(state)) => state,
        Ok(None) => State::new(now_unix(), settings.period),
        Err(e @ store::LoadError::Corrupt { .. }) => {
            tracing::error!(error = %e, "TLS-RPT state unreadable; starting a new period");
            State::new(now_unix(), settings.period)
        }
        Err(e) => return Err(e.into()),
    };
    state.sharing = settings.shared.is_some();
    if !state.sharing {
        // Shared before, alone now: everything counted is this instance's to report.
        state.current.unshared = Default::default();
        for p in &mut state.pending {
            p.shared = None;
        }
    }
    let (tx, rx) = mpsc::channel(CHANNEL);
    let ctx = Arc::new(Ctx {
        settings,
        discover,
        mail,
        cache: Mutex::new(HashMap::new()),
    });
    let task = tokio::spawn(run(ctx, state, rx, shutdown));
    Ok((TlsRpt { tx }, task))
}

/// Policy domain → its report addresses (`None`: no record) and until when that holds.
type DiscoveryCache = HashMap<String, (Option<Vec<Destination>>, Instant)>;

struct Ctx<D, M> {
    settings: Settings,
    discover: Arc<D>,
    mail: Arc<M>,
    cache: Mutex<DiscoveryCache>,
}

/// What one send of one pending report achieved.
struct Attempted {
    report_id: String,
    newly_sent: Vec<Destination>,
    /// `false`: no TLSRPT record, drop the report.
    has_record: bool,
    all_done: bool,
    views: Vec<SendResultView>,
}

async fn run<D: Discover, M: MailSink>(
    ctx: Arc<Ctx<D, M>>,
    mut state: State,
    mut rx: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let s = ctx.settings.clone();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Attempted>();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut dirty = false;
    let mut flush = tokio::time::interval(s.flush_interval.max(Duration::from_millis(100)));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wait = state.next_event().saturating_sub(now_unix());
        // Whole seconds: an event at second N is handled once N has begun.
        let wake = tokio::time::sleep(Duration::from_secs(wait).max(Duration::from_millis(200)));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                while let Ok(cmd) = rx.try_recv() {
                    if let Command::Record(r) = cmd {
                        state.record(*r, now_unix(), s.period, s.send_delay, &s.submitter.domain);
                    }
                }
                persist(&s.path, &state).await;
                return;
            }
            Some(done) = done_rx.recv() => {
                in_flight.remove(&done.report_id);
                apply(&mut state, done, now_unix(), s.period);
                persist(&s.path, &state).await;
                dirty = false;
            }
            cmd = rx.recv() => match cmd {
                None => {
                    persist(&s.path, &state).await;
                    return;
                }
                Some(Command::Record(r)) => {
                    state.record(*r, now_unix(), s.period, s.send_delay, &s.submitter.domain);
                    dirty = true;
                }
                Some(Command::List(reply)) => {
                    let _ = reply.send(list_view(&state, &s.submitter));
                }
                Some(Command::SendNow(reply)) => {
                    let now = now_unix();
                    state.close(now, s.period, Duration::ZERO, &s.submitter.domain);
                    for p in &mut state.pending {
                        p.next_try = p.next_try.min(now);
                    }
                    if let Some(shared) = &s.shared {
                        sharing::resolve_due(&mut state, shared.as_ref(), now, s.period, s.send_delay).await;
                    }
                    persist(&s.path, &state).await;
                    dirty = false;
                    let batch = take_due(&state, &mut in_flight, now);
                    let ctx = ctx.clone();
                    let done_tx = done_tx.clone();
                    tokio::spawn(async move {
                        let mut summary = SendSummary::default();
                        let attempts = batch.into_iter().map(|p| send_report(ctx.clone(), p));
                        for done in futures_join(attempts).await {
                            summary.results.extend(done.views.iter().cloned());
                            let _ = done_tx.send(done);
                        }
                        let _ = reply.send(summary);
                    });
                }
            },
            _ = flush.tick() => {
                if let Some(shared) = &s.shared {
                    if !state.current.unshared.is_empty()
                        && sharing::share_open(&mut state, shared.as_ref(), s.period, s.send_delay).await
                    {
                        dirty = true;
                    }
                }
                if dirty {
                    persist(&s.path, &state).await;
                    dirty = false;
                }
            }
            _ = wake => {
                let now = now_unix();
                if now >= state.current.end {
                    state.close(now, s.period, s.send_delay, &s.submitter.domain);
                    persist(&s.path, &state).await;
                    dirty = false;
                }
                if let Some(shared) = &s.shared {
                    if sharing::resolve_due(&mut state, shared.as_ref(), now, s.period, s.send_delay).await {
                        persist(&s.path, &state).await;
                        dirty = false;
                    }
                }
                for p in take_due(&state, &mut in_flight, now) {
                    let ctx = ctx.clone();
                    let done_tx = done_tx.clone();
                    tokio::spawn(async move {
                        let _ = done_tx.send(send_report(ctx, p).await);
                    });
                }
            }
        }
    }
}

/// Runs the futures concurrently and returns their outputs.
async fn futures_join<F: Future<Output = Attempted> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<Attempted> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        if let Ok(a) = h.await {
            out.push(a);
        }
    }
    out
}

fn take_due(state: &State, in_flight: &mut HashSet<String>, now: u64) -> Vec<PendingReport> {
    state
        .due(now)
        .into_iter()
        .filter_map(|i| {
            let p = &state.pending[i];
            in_flight.insert(p.report_id.clone()).then(|| p.clone())
        })
        .collect()
}

/// Records what a send achieved: finished reports leave, others back off.
fn apply(state: &mut State, done: Attempted, now: u64, period: Duration) {
    let Some(i) = state
        .pending
        .iter()
        .position(|p| p.report_id == done.report_id)
    else {
        return;
    };
    let p = &mut state.pending[i];
    p.sent_to.extend(done.newly_sent);
    if !done.has_record || done.all_done {
        state.pending.remove(i);
        return;
    }
    p.attempts += 1;
    p.next_try = now + backoff(p.attempts - 1, period);
    if p.next_try > p.give_up_at {
        tracing::warn!(domain = %p.policy_domain, report_id = %p.report_id, attempts = p.attempts,
            "TLS-RPT: giving up on this report; not every address took it");
        state.pending.remove(i);
    }
}

async fn persist(dir: &std::path::Path, state: &State) {
    let dir = dir.to_path_buf();
    let state = state.clone();
    let result = tokio::task::spawn_blocking(move || store::save(&dir, &state)).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "TLS-RPT: cannot save the counters"),
        Err(e) => tracing::error!(error = %e, "TLS-RPT: save task failed"),
    }
}

fn list_view(state: &State, submitter: &Submitter) -> ListView {
    ListView {
        period_start: rfc3339(state.current.start),
        period_end: rfc3339(state.current.end),
        domains: state
            .current
            .tally
            .domains
            .iter()
            .map(|(domain, policies)| {
                report::build(
                    submitter,
                    domain,
                    state.current.start,
                    state.current.end,
                    "(assigned when the period closes)",
                    policies,
                )
            })
            .collect(),
        pending: state
            .pending
            .iter()
            .map(|p| PendingView {
                policy_domain: p.policy_domain.clone(),
                report_id: p.report_id.clone(),
                period_start: rfc3339(p.period_start),
                period_end: rfc3339(p.period_end),
                next_try: rfc3339(p.next_try),
                attempts: p.attempts,
                sent_to: p.sent_to.iter().map(|d| d.to_string()).collect(),
            })
            .collect(),
    }
}

impl<D: Discover, M: MailSink> Ctx<D, M> {
    /// The domain's report addresses; `Ok(None)` when it publishes no usable record.
    async fn destinations(&self, domain: &str) -> Result<Option<Vec<Destination>>, DiscoverError> {
        if let Some((cached, until)) = self.lock_cache().get(domain) {
            if *until > clock::instant() {
                return Ok(cached.clone());
            }
        }
        let answer = self.discover.txt(&record_name(domain)).await?;
        let parsed = match parse_records(&answer.records) {
            Ok(r) => Some(r.rua),
            Err(RecordError::None) => None,
            Err(e) => {
                tracing::info!(domain, error = %e, "TLS-RPT: no usable record, no report");
                None
            }
        };
        let ttl = answer.ttl.min(Duration::from_secs(86400));
        self.lock_cache()
            .insert(domain.to_string(), (parsed.clone(), clock::instant() + ttl));
        Ok(parsed)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, DiscoveryCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn send_report<D: Discover, M: MailSink>(ctx: Arc<Ctx<D, M>>, p: PendingReport) -> Attempted {
    let s = &ctx.settings;
    let mut done = Attempted {
        report_id: p.report_id.clone(),
        newly_sent: Vec::new(),
        has_record: true,
        all_done: false,
        views: Vec::new(),
    };
    let view = |destination: String, result: &'static str, error: Option<String>| SendResultView {
        policy_domain: p.policy_domain.clone(),
        report_id: p.report_id.clone(),
        destination,
        result,
        error,
    };
    let destinations = match ctx.destinations(&p.policy_domain).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            done.has_record = false;
            done.views.push(view(String::new(), "no-record", None));
            return done;
        }
        Err(e) => {
            tracing::info!(domain = %p.policy_domain, error = %e, "TLS-RPT: record lookup failed; will retry");
            done.views
                .push(view(String::new(), "failed", Some(e.to_string())));
            return done;
        }
    };
    let report = report::build(
        &s.submitter,
        &p.policy_domain,
        p.period_start,
        p.period_end,
        &p.report_id,
        &p.policies,
    );
    let gz = report::gzip_json(&report);
    let mut failed = false;
    for dest in destinations.iter().filter(|d| !p.sent_to.contains(d)) {
        let result = match dest {
            Destination::Https(url) => post(&s.http, url, &gz).await.map_err(SendError::Post),
            Destination::Mailto(addr) => {
                let now = now_unix();
                let message = mail::build(&MailInput {
                    submitter: &s.submitter,
                    from: &s.from,
                    to: addr,
                    policy_domain: &p.policy_domain,
                    report: &report,
                    gzip: &gz,
                    period_start: p.period_start,
                    period_end: p.period_end,
                    now,
                });
                let message = match &s.dkim {
                    Some(signer) => signer.sign(&message, now),
                    None => message,
                };
                ctx.mail
                    .submit(&s.from, addr, message)
                    .await
                    .map_err(SendError::Mail)
            }
        };
        let label = match &result {
            Ok(()) => "sent",
            Err(_) => "failed",
        };
        metrics::counter!("mxgate_tlsrpt_reports_total", "via" => dest.via(), "result" => label)
            .increment(1);
        match result {
            Ok(()) => {
                tracing::info!(domain = %p.policy_domain, report_id = %p.report_id, to = %dest, "TLS-RPT report sent");
                done.newly_sent.push(dest.clone());
                done.views.push(view(dest.to_string(), "sent", None));
            }
            Err(e) => {
                tracing::warn!(domain = %p.policy_domain, report_id = %p.report_id, to = %dest, error = %e, "TLS-RPT report not sent; will retry");
                failed = true;
                done.views
                    .push(view(dest.to_string(), "failed", Some(e.to_string())));
            }
        }
    }
    done.all_done = !failed;
    done
}

/// Why one address did not take a report.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error(transparent)]
    Post(PostError),
    #[error(transparent)]
    Mail(SubmitError),
}

/// Why an `https:` report was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// No HTTP response (connection, TLS, timeout); the text has the whole cause chain.
    #[error("{}", chain(.0))]
    Request(reqwest::Error),
    /// The collector answered, but not with a 2xx.
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
}

/// An error and its sources, `: `-separated (reqwest's own text omits the cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// RFC 8460 §5.4: "The report is submitted as the body of an HTTP POST request
/// ... Content-Type: application/tlsrpt+gzip"; any 2xx is success.
async fn post(http: &reqwest::Client, url: &str, body: &[u8]) -> Result<(), PostError> {
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/tlsrpt+gzip")
        .body(body.to_vec())
        .send()
        .await
        .map_err(PostError::Request)?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(PostError::Status(response.status()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::Policy;

    const DAY: Duration = Duration::from_secs(86400);

    fn state_with_report(now: u64) -> State {
        let mut s = State::new(now, DAY);
        s.record(
            SessionRecord {
                policy_domain: "d.example".into(),
                policy: Policy::no_policy_found(),
                result: SessionResult::Success,
            },
            now,
            DAY,
            Duration::ZERO,
            "relay.example",
        );
        s.close(now + 1, DAY, Duration::ZERO, "relay.example");
        s
    }

    fn attempted(s: &State, sent: Vec<Destination>, has_record: bool, all_done: bool) -> Attempted {
        Attempted {
            report_id: s.pending[0].report_id.clone(),
            newly_sent: sent,
            has_record,
            all_done,
            views: Vec::new(),
        }
    }

    #[test]
    fn a_partly_failed_send_backs_off_and_keeps_what_was_served() {
        let now = 1_000_000;
        let mut s = state_with_report(now);
        let mail = Destination::Mailto("r@d.example".into());
        let done = attempted(&s, vec![mail.clone()], true, false);
        apply(&mut s, done, now + 2, DAY);
        assert_eq!(s.pending.len(), 1);
        assert_eq!(s.pending[0].sent_to, vec![mail]);
        assert_eq!(s.pending[0].attempts, 1);
        assert_eq!(s.pending[0].next_try, now + 2 + 60);
        let done = attempted(&s, vec![], true, false);
        apply(&mut s, done, now + 100, DAY);
        assert_eq!(s.pending[0].next_try, now + 100 + 120, "back-off doubles");
        // Everything served: the report is done.
        let done = attempted(
            &s,
            vec![Destination::Https("https://c.example/r".into())],
            true,
            true,
        );
        apply(&mut s, done, now + 300, DAY);
        assert!(s.pending.is_empty());
    }

    #[test]
    fn no_record_drops_the_report_and_retries_end_with_the_next_period() {
        let now = 1_000_000;
        let mut s = state_with_report(now);
        let done = attempted(&s, vec![], false, false);
        apply(&mut s, done, now + 2, DAY);
        assert!(
            s.pending.is_empty(),
            "a domain without a record gets no report"
        );
        let mut s = state_with_report(now);
        let give_up = s.pending[0].give_up_at;
        let done = attempted(&s, vec![], true, false);
        apply(&mut s, done, give_up, DAY);
        assert!(s.pending.is_empty(), "given up after the next period");
    }
}
