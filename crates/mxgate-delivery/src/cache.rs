//! [`SessionCache`]: idle SMTP sessions kept after a clean transaction, for the next job
//! that dials the same MX address under the same TLS requirement (like Postfix's
//! `smtp_connection_cache_on_demand`).
//!
//! A session is found again only under its exact [`SessionKey`]: the address dialled,
//! the MX host name (SNI and certificate name), the [`TlsRequirement`] value, the
//! minimum TLS version and the trust generation. A session negotiated for one
//! requirement therefore never serves a different or stricter one, and a cleartext
//! session never serves a TLS-required job.
//!
//! The trust generation names the TLS client configuration a session's certificate was
//! verified against (trust roots: webpki-roots and `delivery.ca_file`); a SIGHUP reload
//! starts a new one (docs/operations.md, "Reload"). Once a key of a newer generation
//! is seen, every idle session of an older one is closed (`QUIT`), and a session of an
//! older generation that finishes later is closed instead of parked: a certificate
//! accepted under the old roots is never trusted again under the new ones.
//!
//! Bounds: at most `max_total` idle sessions overall and `max_per_address` per address;
//! adding beyond either closes the oldest. An idle session lives at most the idle
//! timeout ([`IDLE_TIMEOUT`], 5 s by default): a timer task closes it then, and `take`
//! also skips (and closes) expired ones it meets. Closing is `QUIT` in a spawned task,
//! never under the lock.
//!
//! Not here: checking that a cached session still works (`RSET` before reuse, in
//! `reuse`), deciding which sessions may be cached (`transaction`), or permits: idle
//! sessions hold no semaphore permit.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use mxgate_config::TlsVersion;
use mxgate_policy::TlsRequirement;
use tokio::time::Instant;

/// How long an idle session is kept. Postfix uses 2 s (`smtp_connection_cache_time_limit`);
/// 5 s lets a queue run's next message or a quick retry find the session, yet stays far
/// below the 5-minute server idle timeout of RFC 5321 §4.5.3.2.7.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a cached session was negotiated for; reuse needs an exact match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub addr: SocketAddr,
    pub mx_host: String,
    pub requirement: TlsRequirement,
    pub min_tls_version: TlsVersion,
    /// The trust configuration the session was verified under (see the module
    /// documentation); larger is newer.
    pub trust_generation: u64,
}

/// An idle session the cache can close.
pub trait Idle: Send + 'static {
    /// Ends the session politely (`QUIT`), best effort.
    fn close(self) -> impl Future<Output = ()> + Send;
}

struct Entry<T> {
    id: u64,
    key: SessionKey,
    since: Instant,
    session: T,
}

struct Inner<T> {
    by_addr: HashMap<SocketAddr, Vec<Entry<T>>>,
    total: usize,
    next_id: u64,
    /// The newest trust generation of any key seen so far.
    generation: u64,
}

impl<T> Inner<T> {
    /// Notes `generation`; when it is newer than any seen so far, removes and returns
    /// every session of an older one.
    fn retire_older(&mut self, generation: u64) -> Vec<Entry<T>> {
        if generation <= self.generation {
            return Vec::new();
        }
        self.generation = generation;
        let mut retired = Vec::new();
        for list in self.by_addr.values_mut() {
            let (keep, old): (Vec<_>, Vec<_>) = std::mem::take(list)
                .into_iter()
                .partition(|e| e.key.trust_generation >= generation);
            *list = keep;
            retired.extend(old);
        }
        self.by_addr.retain(|_, list| !list.is_empty());
        self.total -= retired.len();
        retired
    }
}

/// Bounded cache of idle sessions; see the module documentation.
pub struct SessionCache<T: Idle> {
    inner: Arc<Mutex<Inner<T>>>,
    max_total: usize,
    max_per_address: usize,
    idle_timeout: Duration,
}

impl<T: Idle> SessionCache<T> {
    pub fn new(max_total: usize, max_per_address: usize, idle_timeout: Duration) -> Self {
        SessionCache {
            inner: Arc::new(Mutex::new(Inner {
                by_addr: HashMap::new(),
                total: 0,
                next_id: 0,
                generation: 0,
            })),
            max_total,
            max_per_address: max_per_address.min(max_total),
            idle_timeout,
        }
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Idle sessions held now.
    pub fn len(&self) -> usize {
        self.lock().total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most recently parked live session for exactly `key`, removed from the cache.
    /// A `key` of a newer trust generation first closes every older session.
    pub fn take(&self, key: &SessionKey) -> Option<T> {
        let mut closing = Vec::new();
        let found = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            closing.extend(inner.retire_older(key.trust_generation));
            let timeout = self.idle_timeout;
            let mut found = None;
            if let Some(list) = inner.by_addr.get_mut(&key.addr) {
                let (live, dead): (Vec<_>, Vec<_>) = std::mem::take(list)
                    .into_iter()
                    .partition(|e| e.since.elapsed() < timeout);
                *list = live;
                inner.total -= dead.len();
                closing.extend(dead);
                found = list
                    .iter()
                    .rposition(|e| e.key == *key)
                    .map(|i| list.remove(i));
                if found.is_some() {
                    inner.total -= 1;
                }
                if list.is_empty() {
                    inner.by_addr.remove(&key.addr);
                }
            }
            found
        };
        close_all(closing.into_iter().map(|e| e.session));
        found.map(|e| e.session)
    }

    /// Parks `session` under `key`, closing the oldest sessions beyond the bounds, and
    /// arms its idle timer. A session of an older trust generation than one already
    /// seen is closed instead. Needs a Tokio runtime.
    pub fn put(&self, key: SessionKey, session: T) {
        if self.max_total == 0 {
            close_all([session]);
            return;
        }
        let addr = key.addr;
        let mut evicted = Vec::new();
        let retired;
        let id = {
            let mut inner = self.lock();
            retired = inner.retire_older(key.trust_generation);
            if key.trust_generation < inner.generation {
                // Verified under trust roots a reload has replaced.
                drop(inner);
                close_all([session]);
                return;
            }
            let id = inner.next_id;
            inner.next_id += 1;
            let list = inner.by_addr.entry(addr).or_default();
            list.push(Entry {
                id,
                key,
                since: Instant::now(),
                session,
            });
            while list.len() > self.max_per_address {
                evicted.push(list.remove(0));
            }
            inner.total = inner.total + 1 - evicted.len();
            while inner.total > self.max_total {
                let Some(oldest) = oldest_addr(&inner.by_addr) else {
                    break;
                };
                if let Some(list) = inner.by_addr.get_mut(&oldest) {
                    evicted.push(list.remove(0));
                    if list.is_empty() {
                        inner.by_addr.remove(&oldest);
                    }
                }
                inner.total -= 1;
            }
            id
        };
        close_all(retired.into_iter().chain(evicted).map(|e| e.session));
        let weak = Arc::downgrade(&self.inner);
        let deadline = Instant::now() + self.idle_timeout;
        tokio::spawn(expire(weak, addr, id, deadline));
    }

    /// Closes every idle session now (e.g. at shutdown) and waits for the `QUIT`s.
    pub async fn close_idle(&self) {
        let all: Vec<Entry<T>> = {
            let mut inner = self.lock();
            inner.total = 0;
            inner.by_addr.drain().flat_map(|(_, list)| list).collect()
        };
        for entry in all {
            entry.session.close().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The address whose first (oldest) entry is the oldest of all.
fn oldest_addr<T>(by_addr: &HashMap<SocketAddr, Vec<Entry<T>>>) -> Option<SocketAddr> {
    by_addr
        .iter()
        .filter_map(|(addr, list)| list.first().map(|e| (e.since, e.id, *addr)))
        .min_by_key(|(since, id, _)| (*since, *id))
        .map(|(_, _, addr)| addr)
}

fn close_all<T: Idle>(sessions: impl IntoIterator<Item = T>) {
    for session in sessions {
        tokio::spawn(session.close());
    }
}

/// The idle timer of one parked session: at `deadline`, closes it if still parked.
async fn expire<T: Idle>(
    inner: Weak<Mutex<Inner<T>>>,
    addr: SocketAddr,
    id: u64,
    deadline: Instant,
) {
    tokio::time::sleep_until(deadline).await;
    let Some(inner) = inner.upgrade() else {
        return;
    };
    let entry = {
        let mut guard = inner.lock().unwrap_or_else(|e| e.into_inner());
        let guard = &mut *guard;
        let Some(list) = guard.by_addr.get_mut(&addr) else {
            return;
        };
        let Some(pos) = list.iter().position(|e| e.id == id) else {
            return;
        };
        let entry = list.remove(pos);
        if list.is_empty() {
            guard.by_addr.remove(&addr);
        }
        guard.total -= 1;
        entry
    };
    entry.session.close().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    struct Fake {
        id: u32,
        closed: mpsc::UnboundedSender<u32>,
    }

    impl Idle for Fake {
        async fn close(self) {
            let _ = self.closed.send(self.id);
        }
    }

    fn key(port: u16, requirement: TlsRequirement) -> SessionKey {
        SessionKey {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            mx_host: "mx.test".into(),
            requirement,
            min_tls_version: TlsVersion::Tls12,
            trust_generation: 0,
        }
    }

    fn at_generation(mut key: SessionKey, generation: u64) -> SessionKey {
        key.trust_generation = generation;
        key
    }

    fn pkix() -> TlsRequirement {
        TlsRequirement::Pkix {
            names: vec!["mx.test".into()],
        }
    }

    fn setup() -> (mpsc::UnboundedSender<u32>, mpsc::UnboundedReceiver<u32>) {
        mpsc::unbounded_channel()
    }

    async fn closed_now(rx: &mut mpsc::UnboundedReceiver<u32>) -> Vec<u32> {
        // Let the spawned close tasks run.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let mut out = Vec::new();
        while let Ok(id) = rx.try_recv() {
            out.push(id);
        }
        out.sort();
        out
    }

    #[tokio::test]
    async fn only_the_exact_key_finds_a_session() {
        let (tx, mut rx) = setup();
        let cache = SessionCache::new(10, 10, IDLE_TIMEOUT);
        let k = key(25, TlsRequirement::Opportunistic);
        cache.put(k.clone(), Fake { id: 1, closed: tx });
        let mut other_host = k.clone();
        other_host.mx_host = "mx2.test".into();
        let mut other_version = k.clone();
        other_version.min_tls_version = TlsVersion::Tls13;
        let misses = [
            key(26, TlsRequirement::Opportunistic),
            key(25, TlsRequirement::Encrypt),
            key(25, TlsRequirement::Cleartext),
            key(
                25,
                TlsRequirement::Pkix {
                    names: vec!["mx.test".into()],
                },
            ),
            other_host,
            other_version,
        ];
        for miss in &misses {
            assert!(cache.take(miss).is_none(), "{miss:?}");
        }
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.take(&k).map(|f| f.id), Some(1));
        assert!(cache.take(&k).is_none(), "taken sessions leave the cache");
        assert!(cache.is_empty());
        assert!(closed_now(&mut rx).await.is_empty());
    }

    #[tokio::test]
    async fn newest_session_is_reused_first() {
        let (tx, _rx) = setup();
        let cache = SessionCache::new(10, 10, IDLE_TIMEOUT);
        let k = key(25, TlsRequirement::Cleartext);
        for id in 1..=2 {
            let closed = tx.clone();
            cache.put(k.clone(), Fake { id, closed });
        }
        assert_eq!(cache.take(&k).map(|f| f.id), Some(2));
        assert_eq!(cache.take(&k).map(|f| f.id), Some(1));
    }

    #[tokio::test]
    async fn per_address_bound_closes_the_oldest() {
        let (tx, mut rx) = setup();
        let cache = SessionCache::new(10, 2, IDLE_TIMEOUT);
        let k = key(25, TlsRequirement::Encrypt);
        for id in 1..=3 {
            cache.put(
                k.clone(),
                Fake {
                    id,
                    closed: tx.clone(),
                },
            );
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(closed_now(&mut rx).await, vec![1]);
        // Another address has its own allowance.
        cache.put(key(26, TlsRequirement::Encrypt), Fake { id: 4, closed: tx });
        assert_eq!(cache.len(), 3);
        assert!(closed_now(&mut rx).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn total_bound_closes_the_oldest_anywhere() {
        let (tx, mut rx) = setup();
        let cache = SessionCache::new(2, 2, IDLE_TIMEOUT);
        for id in 1..=3u32 {
            let port = 24 + id as u16;
            cache.put(
                key(port, TlsRequirement::Cleartext),
                Fake {
                    id,
                    closed: tx.clone(),
                },
            );
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(closed_now(&mut rx).await, vec![1]);
        assert!(cache.take(&key(25, TlsRequirement::Cleartext)).is_none());
        assert!(cache.take(&key(27, TlsRequirement::Cleartext)).is_some());
    }

    #[tokio::test]
    async fn a_zero_bound_caches_nothing() {
        let (tx, mut rx) = setup();
        let cache = SessionCache::new(0, 4, IDLE_TIMEOUT);
        let k = key(25, TlsRequirement::Cleartext);
        cache.put(k.clone(), Fake { id: 7, closed: tx });
        assert!(cache.take(&k).is_none());
        assert_eq!(closed_now(&mut rx).await, vec![7]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_are_closed_after_the_timeout() {
        let (tx, mut rx) = setup();
        let cache = SessionCache::new(10, 10, Duration::from_secs(5));
        let k = key(25, TlsRequirement::Opportunistic);
        cache.put(
            k.clone(),
            Fake {
                id: 1,
                closed: tx.clone(),
            },
        );
        tokio::time::advance(Duration::from_millis(4_900)).await;
        assert!(closed_now(&mut rx).await.is_empty(), "closed too early");
        let again = cache.take(&k).unwrap();
        cache.put(k.clone(), again);
        // The timer restarts when a session is parked again.
        tokio::time::advance(Duration::from_millis(4_900)).await;
        assert!(closed_now(&mut rx).await.is_empty());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(closed_now(&mut rx).await, vec![1]);
        assert!(cache.is_empty());
        assert!(cache.take(&k).is_none());
    }

    #[tokio::test]
    async fn a_newer_trust_generation_closes_every_older_session() {
        let (tx, mut rx) = setup();
        let cache = SessionCache::new(10, 10, IDLE_TIMEOUT);
        let here = key(25, pkix());
        let elsewhere = key(26, TlsRequirement::Cleartext);
        cache.put(
            here.clone(),
            Fake {
                id: 1,
                closed: tx.clone(),
            },
        );
        cache.put(elsewhere.clone(), Fake { id: 2, closed: tx });
        // The first job after a reload: nothing verified under the old roots serves
        // it, and every old session, at any address, is closed.
        assert!(cache.take(&at_generation(here.clone(), 1)).is_none());
        assert_eq!(closed_now(&mut rx).await, vec![1, 2]);
        assert!(cache.is_empty());
        assert!(cache.take(&here).is_none());
        assert!(cache.take(&elsewhere).is_none());
    }

    #[tokio::test]
    async fn a_session_of_an_older_generation_is_closed_not_parked() {
        let (tx, mut rx) = setup();
        let cache = SessionCache::new(10, 10, IDLE_TIMEOUT);
        let old = key(25, pkix());
        let new = at_generation(old.clone(), 1);
        cache.put(
            new.clone(),
            Fake {
                id: 1,
                closed: tx.clone(),
            },
        );
        // A job that began before the reload finishes after it.
        cache.put(old.clone(), Fake { id: 2, closed: tx });
        assert_eq!(closed_now(&mut rx).await, vec![2]);
        assert_eq!(cache.len(), 1);
        assert!(
            cache.take(&old).is_none(),
            "an old job finds no new session"
        );
        assert!(closed_now(&mut rx).await.is_empty());
        assert_eq!(cache.take(&new).map(|f| f.id), Some(1));
    }

    #[tokio::test]
    async fn sessions_of_the_current_generation_survive_a_put_of_it() {
        let (tx, mut rx) = setup();
        let cache = SessionCache::new(10, 10, IDLE_TIMEOUT);
        let a = at_generation(key(25, pkix()), 3);
        let b = at_generation(key(26, pkix()), 3);
        cache.put(
            a.clone(),
            Fake {
                id: 1,
                closed: tx.clone(),
            },
        );
        cache.put(b.clone(), Fake { id: 2, closed: tx });
        assert!(closed_now(&mut rx).await.is_empty());
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.take(&a).map(|f| f.id), Some(1));
        assert_eq!(cache.take(&b).map(|f| f.id), Some(2));
    }

    #[tokio::test]
    async fn close_idle_closes_everything() {
        let (tx, mut rx) = setup();
        let cache = SessionCache::new(10, 10, IDLE_TIMEOUT);
        cache.put(
            key(25, TlsRequirement::Cleartext),
            Fake {
                id: 1,
                closed: tx.clone(),
            },
        );
        cache.put(key(26, TlsRequirement::Encrypt), Fake { id: 2, closed: tx });
        cache.close_idle().await;
        assert!(cache.is_empty());
        assert_eq!(closed_now(&mut rx).await, vec![1, 2]);
    }
}
