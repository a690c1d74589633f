//! The MTA-STS policy store (RFC 8461 §5.1): a dashmap in front of one JSON file per
//! domain under `policy.cache_path`, so policies survive restarts.
//!
//! Rules: refetch when the TXT `id` changes; keep an unexpired policy when the TXT
//! lookup or the refresh fails; refresh proactively once a per-domain share (50–75 %,
//! spread by a hash of the domain) of `max_age` has passed; remember domains without a
//! policy with a growing back-off. A corrupt cache file is logged and ignored. The store
//! does not decide delivery and never holds a map guard across an `.await` (clippy.toml's
//! `await-holding-invalid-types` makes that an error; ARCHITECTURE.md, "Tool-enforced
//! rules").

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dashmap::DashMap;

use super::fetch::{FetchError, StsSource, TxtOutcome};
use super::shared::SharedPolicyCache;
use super::CachedPolicy;
use crate::decide::StsState;

#[derive(Debug, Clone)]
enum Entry {
    /// A policy; no refetch is tried before `retry_after` (unix seconds) after a
    /// failed one, so a dead policy server does not stall every lookup.
    Policy(CachedPolicy, u64),
    /// No policy: do not ask again before `until`; `backoff` seconds next time.
    Negative { until: u64, backoff: u64 },
    /// The TXT record announced policy `id` but it could not be fetched and nothing
    /// valid is cached: the same `id` is not fetched again before `until` (the lookup
    /// answers with `error` meanwhile); a new `id` is fetched at once.
    Unavailable {
        id: String,
        error: FetchError,
        until: u64,
        backoff: u64,
    },
}

/// Negative caching (no policy, or an announced policy that cannot be fetched): first
/// 5 minutes, doubling up to 1 hour.
const NEG_MIN: u64 = 300;
const NEG_MAX: u64 = 3600;

/// Upper bound of in-memory entries. Most destinations publish no policy, so the
/// negative entries would otherwise grow with every domain ever mailed: past the
/// bound, expired negative entries are pruned, then all negative ones (forgetting a
/// "no policy" costs one TXT lookup; policies themselves are never dropped here).
const MAX_ENTRIES: usize = 50_000;

/// What [`PolicyStore::lookup`] found, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsLookup {
    pub state: StsState,
    pub cached: Option<CachedPolicy>,
}

/// Whether a lookup may write a fetched policy to `policy.cache_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheWrite {
    /// The daemon: fetched policies are stored (RFC 8461 §5.1).
    Store,
    /// `mxgate policy` without `--refresh`: look, fetch if needed, store nothing.
    ReadOnly,
}

/// MTA-STS policies by domain.
pub struct PolicyStore {
    dir: PathBuf,
    mem: DashMap<String, Entry>,
    source: Arc<dyn StsSource>,
    shared: Option<Arc<dyn SharedPolicyCache>>,
}

pub use crate::clock::now_unix;

impl PolicyStore {
    pub fn new(dir: PathBuf, source: Arc<dyn StsSource>) -> PolicyStore {
        PolicyStore {
            dir,
            mem: DashMap::new(),
            source,
            shared: None,
        }
    }

    /// Shares policies with other instances through `shared` (docs/scaling.md).
    pub fn set_shared(&mut self, shared: Arc<dyn SharedPolicyCache>) {
        self.shared = Some(shared);
    }

    /// The newer of the local copy and the shared one (by `fetched_at`), asked only
    /// when the local copy cannot answer by itself; a shared policy that wins is kept
    /// locally (memory and disk).
    async fn with_shared(
        &self,
        domain: &str,
        local: Option<CachedPolicy>,
        now: u64,
    ) -> Option<CachedPolicy> {
        let Some(shared) = &self.shared else {
            return local;
        };
        if local.as_ref().is_some_and(|p| now < p.refresh_at()) {
            return local;
        }
        let remote = shared
            .get(domain)
            .await
            .filter(|p| p.domain == domain && p.is_fresh(now));
        match (local, remote) {
            (Some(l), Some(r)) if r.fetched_at <= l.fetched_at => Some(l),
            (_, Some(r)) => {
                self.save(&r);
                self.mem
                    .insert(domain.to_string(), Entry::Policy(r.clone(), 0));
                Some(r)
            }
            (local, None) => local,
        }
    }

    fn path_for(&self, domain: &str) -> Option<PathBuf> {
        // Domain names become file names: only LDH labels and dots, never a path.
        let ok = !domain.is_empty()
            && !domain.starts_with('.')
            && domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        ok.then(|| self.dir.join(format!("{domain}.json")))
    }

    fn load(&self, domain: &str) -> Option<CachedPolicy> {
        let path = self.path_for(domain)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "mta-sts cache: unreadable, ignored");
                return None;
            }
        };
        match serde_json::from_slice::<CachedPolicy>(&bytes) {
            Ok(p) if p.domain == domain => Some(p),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "mta-sts cache: file is for another domain, ignored");
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "mta-sts cache: corrupt file, ignored");
                None
            }
        }
    }

    fn save(&self, p: &CachedPolicy) {
        let Some(path) = self.path_for(&p.domain) else {
            return;
        };
        if let Err(e) = write_atomic(&self.dir, &path, p) {
            tracing::warn!(path = %path.display(), error = %e, "mta-sts cache: write failed");
        }
    }

    /// Keeps the in-memory map under [`MAX_ENTRIES`] (call with no guard held).
    fn prune(&self, now: u64) {
        if self.mem.len() < MAX_ENTRIES {
            return;
        }
        self.mem.retain(|_, e| match e {
            Entry::Negative { until, .. } | Entry::Unavailable { until, .. } => *until > now,
            Entry::Policy(..) => true,
        });
        if self.mem.len() >= MAX_ENTRIES {
            self.mem.retain(|_, e| matches!(e, Entry::Policy(..)));
        }
    }

    /// Remembers that announced policy `id` of `domain` could not be fetched, with a
    /// back-off that doubles while the same id keeps failing. Never replaces a policy
    /// another lookup stored meanwhile (an expired one is replaced).
    fn remember_unavailable(
        &self,
        domain: &str,
        id: &str,
        error: &FetchError,
        now: u64,
        before: Option<(String, FetchError, u64, u64)>,
    ) {
        let backoff = before
            .filter(|(uid, ..)| uid == id)
            .map(|(.., b)| (b * 2).min(NEG_MAX))
            .unwrap_or(NEG_MIN);
        self.prune(now);
        let entry = Entry::Unavailable {
            id: id.to_string(),
            error: error.clone(),
            until: now.saturating_add(backoff),
            backoff,
        };
        self.mem
            .entry(domain.to_string())
            .and_modify(|e| {
                // An expired policy is no policy (RFC 8461 §5.1); a fresh one wins.
                if !matches!(e, Entry::Policy(p, _) if p.is_fresh(now)) {
                    *e = entry.clone();
                }
            })
            .or_insert(entry);
    }

    /// Entries in memory (policies and negative answers).
    pub fn entries(&self) -> usize {
        self.mem.len()
    }

    /// The cached policy for `domain`, memory first, then disk (no network).
    pub fn cached(&self, domain: &str) -> Option<CachedPolicy> {
        self.cached_at(domain, now_unix())
    }

    /// [`PolicyStore::cached`] at `now` (unix seconds), the time the lookup runs at.
    fn cached_at(&self, domain: &str, now: u64) -> Option<CachedPolicy> {
        if let Some(e) = self.mem.get(domain) {
            if let Entry::Policy(p, _) = e.value() {
                return Some(p.clone());
            }
        }
        let p = self.load(domain)?;
        // A remembered fetch failure stays (its back-off): the disk copy it was about
        // is returned, and only a fresh one could answer instead.
        let entry = Entry::Policy(p.clone(), 0);
        self.mem
            .entry(domain.to_string())
            .and_modify(|e| {
                if !matches!(e, Entry::Unavailable { .. }) || p.is_fresh(now) {
                    *e = entry.clone();
                }
            })
            .or_insert(entry);
        Some(p)
    }

    /// The MTA-STS state of `domain` at `now` (unix seconds), fetching as needed.
    pub async fn lookup(&self, domain: &str, now: u64) -> StsLookup {
        self.lookup_with(domain, now, CacheWrite::Store).await
    }

    /// As [`PolicyStore::lookup`]; with [`CacheWrite::ReadOnly`] nothing is written.
    pub async fn lookup_with(&self, domain: &str, now: u64, write: CacheWrite) -> StsLookup {
        let negative = self.mem.get(domain).and_then(|e| match e.value() {
            Entry::Negative { until, backoff } => Some((*until, *backoff)),
            Entry::Policy(..) | Entry::Unavailable { .. } => None,
        });
        let retry_after = self.mem.get(domain).map_or(0, |e| match e.value() {
            Entry::Policy(_, t) => *t,
            Entry::Negative { .. } | Entry::Unavailable { .. } => 0,
        });
        let unavailable = self.mem.get(domain).and_then(|e| match e.value() {
            Entry::Unavailable {
                id,
                error,
                until,
                backoff,
            } => Some((id.clone(), error.clone(), *until, *backoff)),
            Entry::Policy(..) | Entry::Negative { .. } => None,
        });
        if let Some((until, _)) = negative {
            if now < until {
                metrics::counter!("mxgate_policy_cache_lookups_total", "result" => "hit")
                    .increment(1);
                return StsLookup {
                    state: StsState::Absent,
                    cached: None,
                };
            }
        }
        let local = self.cached_at(domain, now).filter(|p| p.is_fresh(now));
        let cached = self.with_shared(domain, local, now).await;
        let result = if cached.as_ref().is_some_and(|p| now < p.refresh_at()) {
            "hit"
        } else {
            "miss"
        };
        metrics::counter!("mxgate_policy_cache_lookups_total", "result" => result).increment(1);

        let txt = self.source.txt(domain).await;
        match (txt, cached) {
            (TxtOutcome::Id(id), Some(c))
                if (c.id == id && now < c.refresh_at()) || now < retry_after =>
            {
                found(c)
            }
            // The same announced policy failed to fetch a moment ago: do not stall
            // every delivery on a dead policy host (RFC 8461 §5 lets delivery go on as
            // though there were no policy; the failure is still reported).
            (TxtOutcome::Id(id), None)
                if unavailable
                    .as_ref()
                    .is_some_and(|(uid, _, until, _)| *uid == id && now < *until) =>
            {
                let error = unavailable.map(|(_, e, _, _)| e);
                StsLookup {
                    state: error.map_or(StsState::Absent, StsState::Unavailable),
                    cached: None,
                }
            }
            (TxtOutcome::Id(id), cached) => {
                // RFC 8461 §5.1 (paraphrased): a TXT id that differs from the cached one
                // means a new policy must be fetched; proactive refresh also lands here.
                match self.source.fetch(domain).await {
                    Ok(policy) => {
                        metrics::counter!("mxgate_mta_sts_fetches_total", "result" => "ok")
                            .increment(1);
                        let c = CachedPolicy {
                            domain: domain.to_string(),
                            id,
                            policy,
                            fetched_at: now,
                        };
                        if write == CacheWrite::ReadOnly {
                            return found(c);
                        }
                        self.save(&c);
                        self.mem
                            .insert(domain.to_string(), Entry::Policy(c.clone(), 0));
                        if let Some(shared) = &self.shared {
                            shared.put(&c).await;
                        }
                        found(c)
                    }
                    Err(e) => {
                        metrics::counter!("mxgate_mta_sts_fetches_total", "result" => e.label())
                            .increment(1);
                        tracing::warn!(domain, error = %e, "mta-sts: policy fetch failed");
                        match cached {
                            // RFC 8461 §5.1: an unexpired cached policy stays in force
                            // when a refresh fails; retry in a tenth of max_age (1 min
                            // to 1 h).
                            Some(c) => {
                                let wait = (c.policy.max_age / 10).clamp(60, 3600);
                                self.mem.insert(
                                    domain.to_string(),
                                    Entry::Policy(c.clone(), now.saturating_add(wait)),
                                );
                                found(c)
                            }
                            // RFC 8461 §5: "If a valid TXT record is found but no policy
                            // can be fetched via HTTPS (for any reason), and there is no
                            // valid (non-expired) previously cached policy, senders MUST
                            // continue with delivery as though the domain has not
                            // implemented MTA-STS." The failure is kept: TLS
                            // reports say it (RFC 8460 §4.3.2.2); the same id is not
                            // fetched again within a growing back-off.
                            None => {
                                if write == CacheWrite::Store {
                                    self.remember_unavailable(domain, &id, &e, now, unavailable);
                                }
                                StsLookup {
                                    state: StsState::Unavailable(e),
                                    cached: None,
                                }
                            }
                        }
                    }
                }
            }
            // RFC 8461 §5.1: a cached, unexpired policy is used even when the TXT record
            // has gone or cannot be looked up (a downgrade attacker could remove it).
            (TxtOutcome::NoPolicy | TxtOutcome::Failed(_), Some(c)) => found(c),
            (TxtOutcome::NoPolicy, None) => {
                let backoff = negative
                    .map(|(_, b)| (b * 2).min(NEG_MAX))
                    .unwrap_or(NEG_MIN);
                let until = now.saturating_add(backoff);
                self.prune(now);
                // Never replace a policy another lookup stored meanwhile (RFC 8461 §5.1:
                // a missing TXT record must not hide an unexpired policy).
                self.mem
                    .entry(domain.to_string())
                    .and_modify(|e| {
                        if !matches!(e, Entry::Policy(..)) {
                            *e = Entry::Negative { until, backoff };
                        }
                    })
                    .or_insert(Entry::Negative { until, backoff });
                StsLookup {
                    state: StsState::Absent,
                    cached: None,
                }
            }
            (TxtOutcome::Failed(why), None) => {
                tracing::info!(domain, error = %why, "mta-sts: TXT lookup failed, no cached policy");
                StsLookup {
                    state: StsState::Absent,
                    cached: None,
                }
            }
        }
    }
}

fn found(c: CachedPolicy) -> StsLookup {
    StsLookup {
        state: StsState::Policy(c.policy.clone()),
        cached: Some(c),
    }
}

/// temp file, fsync, rename, fsync the directory. The directory is 0700 and the files
/// 0600 whatever the umask: which domains we send to is private.
fn write_atomic(dir: &Path, path: &Path, p: &CachedPolicy) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let json = serde_json::to_vec_pretty(p).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sts::fetch::{BoxFut, FetchError};
    use crate::sts::{MtaStsMode, MtaStsPolicy};
    use std::sync::Mutex;

    /// A scripted source: TXT answer and fetch result per call, counting fetches.
    struct Fake {
        txt: Mutex<TxtOutcome>,
        fetch: Mutex<Result<MtaStsPolicy, FetchError>>,
        fetches: Mutex<u32>,
    }

    impl StsSource for Fake {
        fn txt(&self, _d: &str) -> BoxFut<'_, TxtOutcome> {
            let t = self.txt.lock().unwrap().clone();
            Box::pin(async move { t })
        }
        fn fetch(&self, _d: &str) -> BoxFut<'_, Result<MtaStsPolicy, FetchError>> {
            *self.fetches.lock().unwrap() += 1;
            let r = self.fetch.lock().unwrap().clone();
            Box::pin(async move { r })
        }
    }

    fn policy(max_age: u64) -> MtaStsPolicy {
        MtaStsPolicy {
            mode: MtaStsMode::Enforce,
            mx: vec!["mx.example.com".into()],
            max_age,
        }
    }

    fn fake(txt: TxtOutcome, fetch: Result<MtaStsPolicy, FetchError>) -> Arc<Fake> {
        Arc::new(Fake {
            txt: Mutex::new(txt),
            fetch: Mutex::new(fetch),
            fetches: Mutex::new(0),
        })
    }

    fn enforce(l: &StsLookup) -> bool {
        matches!(&l.state, StsState::Policy(p) if p.mode == MtaStsMode::Enforce)
    }

    #[tokio::test]
    async fn fetch_cache_survives_restart_and_outage() {
        let dir = tempfile::tempdir().unwrap();
        let src = fake(TxtOutcome::Id("1".into()), Ok(policy(86400)));
        let store = PolicyStore::new(dir.path().into(), src.clone());
        assert!(enforce(&store.lookup("example.com", 1000).await));
        // Same id, before the refresh point: no new fetch.
        assert!(enforce(&store.lookup("example.com", 2000).await));
        assert_eq!(*src.fetches.lock().unwrap(), 1);
        assert!(dir.path().join("example.com.json").exists());

        // "Restart" with the HTTPS server down and the TXT record stripped.
        let down = fake(TxtOutcome::NoPolicy, Err(FetchError::Timeout));
        let store2 = PolicyStore::new(dir.path().into(), down.clone());
        assert!(enforce(&store2.lookup("example.com", 3000).await));
        // TXT present with a new id, fetch fails: the old policy stays.
        *down.txt.lock().unwrap() = TxtOutcome::Id("2".into());
        assert!(enforce(&store2.lookup("example.com", 4000).await));
        assert_eq!(*down.fetches.lock().unwrap(), 1);
        // After expiry, nothing is left but the failure (for TLS reports).
        let l = store2.lookup("example.com", 1000 + 86400).await;
        assert_eq!(l.state, StsState::Unavailable(FetchError::Timeout));
    }

    /// Another instance's view of the shared cache (the Redis one is tested end to end
    /// in tests/cluster.rs).
    #[derive(Default)]
    struct SharedMap(Mutex<std::collections::HashMap<String, CachedPolicy>>);

    impl SharedPolicyCache for SharedMap {
        fn get<'a>(
            &'a self,
            domain: &'a str,
        ) -> crate::sts::shared::SharedFuture<'a, Option<CachedPolicy>> {
            let p = self.0.lock().unwrap().get(domain).cloned();
            Box::pin(async move { p })
        }
        fn put<'a>(&'a self, p: &'a CachedPolicy) -> crate::sts::shared::SharedFuture<'a, ()> {
            let mut map = self.0.lock().unwrap();
            let newer = map
                .get(&p.domain)
                .is_none_or(|old| old.fetched_at < p.fetched_at);
            if newer {
                map.insert(p.domain.clone(), p.clone());
            }
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn a_policy_fetched_by_one_instance_protects_another() {
        let shared = Arc::new(SharedMap::default());
        let dir_a = tempfile::tempdir().unwrap();
        let mut a = PolicyStore::new(
            dir_a.path().into(),
            fake(TxtOutcome::Id("1".into()), Ok(policy(86400))),
        );
        a.set_shared(shared.clone());
        assert!(enforce(&a.lookup("example.com", 1000).await));
        assert_eq!(shared.0.lock().unwrap()["example.com"].fetched_at, 1000);

        // B never fetched it, and the policy host is down: the shared copy applies,
        // and B keeps it in its own cache (memory and disk).
        let dir_b = tempfile::tempdir().unwrap();
        let down = fake(TxtOutcome::Id("1".into()), Err(FetchError::Timeout));
        let mut b = PolicyStore::new(dir_b.path().into(), down.clone());
        b.set_shared(shared.clone());
        assert!(enforce(&b.lookup("example.com", 2000).await));
        assert_eq!(*down.fetches.lock().unwrap(), 0);
        assert!(dir_b.path().join("example.com.json").exists());
        shared.0.lock().unwrap().clear();
        assert!(enforce(&b.lookup("example.com", 3000).await));

        // Without the shared cache, the same B has no policy (RFC 8461 §5).
        let dir_c = tempfile::tempdir().unwrap();
        let c = PolicyStore::new(dir_c.path().into(), down.clone());
        assert_eq!(
            c.lookup("example.com", 2000).await.state,
            StsState::Unavailable(FetchError::Timeout)
        );
    }

    #[tokio::test]
    async fn the_newer_fetched_at_wins() {
        let shared = Arc::new(SharedMap::default());
        let dir = tempfile::tempdir().unwrap();
        let src = fake(TxtOutcome::Id("1".into()), Ok(policy(1000)));
        let mut store = PolicyStore::new(dir.path().into(), src.clone());
        store.set_shared(shared.clone());
        store.lookup("example.com", 100).await;
        // An older shared copy (another instance fetched before us) never replaces ours.
        let mut older = shared.0.lock().unwrap()["example.com"].clone();
        older.fetched_at = 50;
        older.policy.mode = MtaStsMode::Testing;
        shared.0.lock().unwrap().insert("example.com".into(), older);
        // Past our refresh point the store asks the shared cache, keeps its own newer
        // copy, then refreshes from the source.
        let l = store.lookup("example.com", 800).await;
        assert!(enforce(&l));
        assert_eq!(l.cached.as_ref().map(|c| c.fetched_at), Some(800));
        // Past our refresh point again (at most 75 % of max_age after 800), a newer
        // shared copy with the current id is taken instead of a fetch.
        let mut newer = l.cached.clone().unwrap();
        newer.fetched_at = 1400;
        newer.policy.mx = vec!["mx2.example.com".into()];
        shared.0.lock().unwrap().insert("example.com".into(), newer);
        let before = *src.fetches.lock().unwrap();
        let l = store.lookup("example.com", 1560).await;
        assert_eq!(l.cached.map(|c| c.fetched_at), Some(1400));
        assert_eq!(*src.fetches.lock().unwrap(), before);
    }

    #[tokio::test]
    async fn id_change_refetches() {
        let dir = tempfile::tempdir().unwrap();
        let src = fake(TxtOutcome::Id("a".into()), Ok(policy(86400)));
        let store = PolicyStore::new(dir.path().into(), src.clone());
        store.lookup("example.com", 10).await;
        *src.txt.lock().unwrap() = TxtOutcome::Id("b".into());
        let mut p = policy(86400);
        p.mode = MtaStsMode::Testing;
        *src.fetch.lock().unwrap() = Ok(p);
        let l = store.lookup("example.com", 20).await;
        assert!(matches!(l.state, StsState::Policy(ref p) if p.mode == MtaStsMode::Testing));
        assert_eq!(l.cached.unwrap().id, "b");
        assert_eq!(*src.fetches.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn proactive_refresh_before_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let src = fake(TxtOutcome::Id("a".into()), Ok(policy(1000)));
        let store = PolicyStore::new(dir.path().into(), src.clone());
        let first = store.lookup("example.com", 0).await.cached.unwrap();
        let at = first.refresh_at();
        assert!((500..=750).contains(&at), "refresh at {at}");
        store.lookup("example.com", at - 1).await;
        assert_eq!(*src.fetches.lock().unwrap(), 1);
        store.lookup("example.com", at).await;
        assert_eq!(*src.fetches.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn failed_refresh_is_not_retried_on_every_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let src = fake(TxtOutcome::Id("a".into()), Ok(policy(86400)));
        let store = PolicyStore::new(dir.path().into(), src.clone());
        store.lookup("example.com", 0).await;
        *src.txt.lock().unwrap() = TxtOutcome::Id("b".into());
        *src.fetch.lock().unwrap() = Err(FetchError::Timeout);
        assert!(enforce(&store.lookup("example.com", 100).await));
        assert!(enforce(&store.lookup("example.com", 200).await));
        assert_eq!(
            *src.fetches.lock().unwrap(),
            2,
            "retried within the back-off"
        );
        assert!(enforce(&store.lookup("example.com", 100 + 3600).await));
        assert_eq!(*src.fetches.lock().unwrap(), 3);
    }

    #[tokio::test]
    async fn negative_entries_are_bounded_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let src = fake(TxtOutcome::Id("p".into()), Ok(policy(86_400)));
        let store = PolicyStore::new(dir.path().into(), src.clone());
        assert!(enforce(&store.lookup("mx.example.com", 0).await));
        *src.txt.lock().unwrap() = TxtOutcome::NoPolicy;
        for i in 0..MAX_ENTRIES + 10 {
            store.lookup(&format!("d{i}.example"), 0).await;
        }
        // Every negative entry was still valid: all of them went, the policy stayed.
        assert!(store.entries() < MAX_ENTRIES, "{}", store.entries());
        assert!(store.cached("mx.example.com").is_some());
        for i in 0..MAX_ENTRIES {
            store.lookup(&format!("e{i}.example"), 10).await;
        }
        // Past their back-off, old negative entries are pruned first.
        store.lookup("late.example", NEG_MAX + 100).await;
        assert!(store.entries() < MAX_ENTRIES, "{}", store.entries());
        assert_eq!(
            store.lookup("late.example", NEG_MAX + 101).await.state,
            StsState::Absent
        );
        assert!(enforce(&store.lookup("mx.example.com", 200).await));
    }

    #[tokio::test]
    async fn negative_cache_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let src = fake(TxtOutcome::NoPolicy, Err(FetchError::Timeout));
        let store = PolicyStore::new(dir.path().into(), src.clone());
        assert_eq!(
            store.lookup("none.example", 0).await.state,
            StsState::Absent
        );
        // Within the back-off the TXT answer is not even asked: publish a policy now.
        *src.txt.lock().unwrap() = TxtOutcome::Id("x".into());
        *src.fetch.lock().unwrap() = Ok(policy(100));
        assert_eq!(
            store.lookup("none.example", NEG_MIN - 1).await.state,
            StsState::Absent
        );
        assert_eq!(*src.fetches.lock().unwrap(), 0);
        assert!(enforce(&store.lookup("none.example", NEG_MIN).await));
    }

    #[tokio::test]
    async fn an_announced_policy_that_cannot_be_fetched_backs_off_per_id() {
        let dir = tempfile::tempdir().unwrap();
        let src = fake(TxtOutcome::Id("a".into()), Err(FetchError::Timeout));
        let store = PolicyStore::new(dir.path().into(), src.clone());
        let fetches = || *src.fetches.lock().unwrap();
        let unavailable = StsState::Unavailable(FetchError::Timeout);
        assert_eq!(store.lookup("dead.example", 0).await.state, unavailable);
        assert_eq!(fetches(), 1);
        // Within the back-off the same id is not fetched again, and still reported.
        assert_eq!(
            store.lookup("dead.example", NEG_MIN - 1).await.state,
            unavailable
        );
        assert_eq!(fetches(), 1);
        // After it, fetched again; a second failure doubles the wait.
        assert_eq!(
            store.lookup("dead.example", NEG_MIN).await.state,
            unavailable
        );
        assert_eq!(fetches(), 2);
        assert_eq!(
            store.lookup("dead.example", 3 * NEG_MIN - 1).await.state,
            unavailable
        );
        assert_eq!(fetches(), 2);
        // A new id is a new policy: fetched at once.
        *src.txt.lock().unwrap() = TxtOutcome::Id("b".into());
        *src.fetch.lock().unwrap() = Ok(policy(1000));
        assert!(enforce(
            &store.lookup("dead.example", 3 * NEG_MIN - 1).await
        ));
        assert_eq!(fetches(), 3);
        // `mxgate policy` (read-only) never records the back-off.
        let ro = PolicyStore::new(
            dir.path().join("ro"),
            fake(TxtOutcome::Id("c".into()), Err(FetchError::Timeout)),
        );
        ro.lookup_with("x.example", 0, CacheWrite::ReadOnly).await;
        assert_eq!(ro.entries(), 0);
    }

    /// The common case of a dead policy host: the domain had a policy, it expired,
    /// and the refetch fails. The back-off holds there too.
    #[tokio::test]
    async fn an_expired_policy_whose_refetch_fails_backs_off_too() {
        let dir = tempfile::tempdir().unwrap();
        let src = fake(TxtOutcome::Id("a".into()), Ok(policy(100)));
        let store = PolicyStore::new(dir.path().into(), src.clone());
        assert!(enforce(&store.lookup("gone.example", 0).await));
        *src.fetch.lock().unwrap() = Err(FetchError::Timeout);
        let fetches = || *src.fetches.lock().unwrap();
        let unavailable = StsState::Unavailable(FetchError::Timeout);
        assert_eq!(store.lookup("gone.example", 200).await.state, unavailable);
        assert_eq!(fetches(), 2);
        assert_eq!(store.lookup("gone.example", 201).await.state, unavailable);
        assert_eq!(store.lookup("gone.example", 202).await.state, unavailable);
        assert_eq!(fetches(), 2, "fetched again within the back-off");
        // A restart (a new store over the same directory) starts afresh.
        let again = PolicyStore::new(dir.path().into(), src.clone());
        assert_eq!(again.lookup("gone.example", 203).await.state, unavailable);
        assert_eq!(fetches(), 3);
    }

    #[tokio::test]
    async fn corrupt_cache_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("example.com.json"), b"{not json").unwrap();
        let src = fake(TxtOutcome::NoPolicy, Err(FetchError::Timeout));
        let store = PolicyStore::new(dir.path().into(), src);
        assert_eq!(store.lookup("example.com", 5).await.state, StsState::Absent);
        assert!(store.path_for("../etc/passwd").is_none());
    }

    /// Re-runs this test in a child process whose shell set `umask 022` (the common
    /// default, under which plain `create` gives 0644/0755), then checks the modes there.
    #[tokio::test]
    async fn cache_files_are_private_under_umask_022() {
        use std::os::unix::fs::PermissionsExt;
        if std::env::var_os("MXGATE_UMASK_CHILD").is_none() {
            let exe = std::env::current_exe().unwrap();
            let out = std::process::Command::new("sh")
                .args(["-c", "umask 022 && exec \"$0\" \"$@\""])
                .arg(exe)
                .args([
                    "sts::store::tests::cache_files_are_private_under_umask_022",
                    "--exact",
                ])
                .env("MXGATE_UMASK_CHILD", "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "{text}");
            return;
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status.lines().any(|l| l == "Umask:\t0022"), "{status}");
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("policy");
        let store = PolicyStore::new(
            dir.clone(),
            fake(TxtOutcome::Id("1".into()), Ok(policy(86400))),
        );
        assert!(enforce(&store.lookup("example.com", 1000).await));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("example.com.json")), 0o600);
    }
}
