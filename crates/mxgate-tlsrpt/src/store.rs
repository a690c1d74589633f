//! The counting store: the open period's tally and the closed periods' reports still
//! to be sent, as one versioned JSON file in `tlsrpt.path` (temp file, fsync, rename,
//! directory fsync; directory 0700, file 0600 whatever the umask).
//!
//! [`State`] is pure (the caller passes the time); [`load`] and [`save`] are the only
//! I/O. A crash loses at most what was counted since the last save.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{PolicyCounts, SessionRecord, Tally};
use crate::record::Destination;
use crate::report::new_report_id;
use crate::time::period_containing;

const STATE_VERSION: u32 = 1;
const STATE_FILE: &str = "state.json";

/// The open period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenPeriod {
    pub start: u64,
    pub end: u64,
    /// Every session this instance counted in the period.
    pub tally: Tally,
    /// With shared counters (docs/scaling.md): the part of `tally` not yet added to
    /// the shared store.
    #[serde(default)]
    pub unshared: Tally,
}

/// One report of a closed period: one policy domain, sent to every `rua` address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReport {
    pub policy_domain: String,
    pub period_start: u64,
    pub period_end: u64,
    /// Fixed when the period closes, so every address and every retry gets the same id.
    pub report_id: String,
    pub policies: Vec<PolicyCounts>,
    /// Addresses already served.
    pub sent_to: Vec<Destination>,
    /// Not before this time (the `send_delay` spread, then back-off).
    pub next_try: u64,
    pub attempts: u32,
    /// Given up after this time (the end of the following period).
    pub give_up_at: u64,
    /// With shared counters: `Some` until the shared store's election has decided who
    /// reports this domain and period, holding the part of `policies` not yet added
    /// to the shared store. `None`: `policies` is what this instance sends.
    #[serde(default)]
    pub shared: Option<Vec<PolicyCounts>>,
}

/// Everything persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// Names this instance in the shared store's elections (random, kept).
    #[serde(default = "new_instance_id")]
    pub instance: String,
    pub current: OpenPeriod,
    pub pending: Vec<PendingReport>,
    /// Counts are also shared with other instances (set by the service at start).
    #[serde(skip)]
    pub sharing: bool,
}

fn new_instance_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl State {
    pub fn new(now: u64, period: Duration) -> State {
        let (start, end) = period_containing(now, period);
        State {
            version: STATE_VERSION,
            instance: new_instance_id(),
            current: OpenPeriod {
                start,
                end,
                tally: Tally::default(),
                unshared: Tally::default(),
            },
            pending: Vec::new(),
            sharing: false,
        }
    }

    /// Counts a session into the period it happened in (closing the open one first if
    /// `now` is past its end).
    pub fn record(
        &mut self,
        record: SessionRecord,
        now: u64,
        period: Duration,
        spread: Duration,
        submitter: &str,
    ) {
        if now >= self.current.end {
            self.close(now, period, spread, submitter);
        }
        if self.sharing {
            self.current.unshared.record(record.clone());
        }
        self.current.tally.record(record);
    }

    /// Closes the open period: one pending report per policy domain, due at a random
    /// moment within `spread` from `now`; a new period containing `now` opens. With
    /// `spread` zero (`mxgate tlsrpt send`) the reports are due at once.
    pub fn close(&mut self, now: u64, period: Duration, spread: Duration, submitter: &str) {
        let natural_end = self.current.end;
        // `tlsrpt send` closes early: the report covers the period up to now, and the
        // rest of the period opens as a new one.
        let (end, next) = if now < natural_end {
            let end = now.max(self.current.start + 1);
            (end, (end, natural_end.max(end + 1)))
        } else {
            (natural_end, period_containing(now, period))
        };
        let start = self.current.start;
        let mut closed = std::mem::replace(
            &mut self.current,
            OpenPeriod {
                start: next.0,
                end: next.1,
                tally: Tally::default(),
                unshared: Tally::default(),
            },
        );
        let len = period.as_secs().max(1);
        for (domain, policies) in closed.tally.domains {
            let jitter = if spread.is_zero() {
                0
            } else {
                rand::random::<u64>() % spread.as_secs().max(1)
            };
            let shared = self
                .sharing
                .then(|| closed.unshared.domains.remove(&domain).unwrap_or_default());
            self.pending.push(PendingReport {
                report_id: new_report_id(start, &domain, submitter),
                policy_domain: domain,
                period_start: start,
                period_end: end,
                policies,
                sent_to: Vec::new(),
                next_try: now + jitter,
                attempts: 0,
                give_up_at: now + len.max(spread.as_secs()) + len,
                shared,
            });
        }
    }

    /// Indices of pending reports due at `now`.
    pub fn due(&self, now: u64) -> Vec<usize> {
        (0..self.pending.len())
            .filter(|&i| self.pending[i].next_try <= now)
            .collect()
    }

    /// The earliest moment something is due: a pending report or the period's end.
    pub fn next_event(&self) -> u64 {
        self.pending
            .iter()
            .map(|p| p.next_try)
            .chain(std::iter::once(self.current.end))
            .min()
            .unwrap_or(self.current.end)
    }
}

/// The retry delay after `attempts` failed tries: 1 min doubling to 4 h, but never
/// longer than a quarter of the period (so short test periods retry quickly).
pub fn backoff(attempts: u32, period: Duration) -> u64 {
    let base = 60u64.saturating_mul(1 << attempts.min(8));
    base.min(4 * 3600).min((period.as_secs() / 4).max(1))
}

/// Creates `dir` (0700) if needed and tightens it if it exists.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Why the state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: unreadable TLS-RPT state ({detail}); moved aside to {aside}")]
    Corrupt {
        path: PathBuf,
        detail: String,
        aside: PathBuf,
    },
}

/// Reads the state; `None` when there is none yet. A corrupt file is renamed aside
/// (nothing is deleted) and reported.
pub fn load(dir: &Path) -> Result<Option<State>, LoadError> {
    let path = state_path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(LoadError::Io { path, source }),
    };
    match serde_json::from_slice::<State>(&bytes) {
        Ok(state) if state.version == STATE_VERSION => Ok(Some(state)),
        other => {
            let detail = match other {
                Ok(s) => format!("version {}", s.version),
                Err(e) => e.to_string(),
            };
            let aside = dir.join(format!("state.json.corrupt-{}", crate::clock::now_unix()));
            fs::rename(&path, &aside).map_err(|source| LoadError::Io {
                path: path.clone(),
                source,
            })?;
            Err(LoadError::Corrupt {
                path,
                detail,
                aside,
            })
        }
    }
}

/// Writes the state durably: temp file (0600), fsync, rename, directory fsync.
pub fn save(dir: &Path, state: &State) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
    let tmp = dir.join("state.json.tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, state_path(dir))?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{Policy, SessionResult};

    const DAY: Duration = Duration::from_secs(86400);
    const T0: u64 = 1_459_468_800;

    fn rec(domain: &str) -> SessionRecord {
        SessionRecord {
            policy_domain: domain.into(),
            policy: Policy::no_policy_found(),
            result: SessionResult::Success,
        }
    }

    #[test]
    fn a_period_closes_into_one_report_per_domain() {
        let mut s = State::new(T0 + 5, DAY);
        assert_eq!((s.current.start, s.current.end), (T0, T0 + 86400));
        s.record(
            rec("a.example"),
            T0 + 10,
            DAY,
            Duration::from_secs(3600),
            "relay.example",
        );
        s.record(
            rec("b.example"),
            T0 + 20,
            DAY,
            Duration::from_secs(3600),
            "relay.example",
        );
        assert!(s.pending.is_empty());
        // The first session of the next day closes the day.
        s.record(
            rec("a.example"),
            T0 + 86400 + 3,
            DAY,
            Duration::from_secs(3600),
            "relay.example",
        );
        assert_eq!(s.pending.len(), 2);
        for p in &s.pending {
            assert_eq!((p.period_start, p.period_end), (T0, T0 + 86400));
            assert!(p.next_try >= T0 + 86403 && p.next_try < T0 + 86403 + 3600);
        }
        assert_ne!(s.pending[0].report_id, s.pending[1].report_id);
        assert_eq!(s.current.tally.sessions(), 1);
        assert_eq!(s.current.start, T0 + 86400);
    }

    #[test]
    fn sending_now_closes_early_without_spread() {
        let mut s = State::new(T0, DAY);
        s.record(rec("a.example"), T0 + 100, DAY, DAY, "r");
        s.close(T0 + 200, DAY, Duration::ZERO, "r");
        assert_eq!(s.pending.len(), 1);
        assert_eq!(
            (s.pending[0].period_start, s.pending[0].period_end),
            (T0, T0 + 200)
        );
        assert_eq!(s.due(T0 + 200), vec![0]);
        assert_eq!((s.current.start, s.current.end), (T0 + 200, T0 + 86400));
        assert_eq!(s.next_event(), T0 + 200);
        // Closing an empty period produces nothing.
        s.pending.clear();
        s.close(T0 + 300, DAY, Duration::ZERO, "r");
        assert!(s.pending.is_empty());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0, DAY), 60);
        assert_eq!(backoff(1, DAY), 120);
        assert_eq!(backoff(20, DAY), 4 * 3600);
        assert_eq!(backoff(3, Duration::from_secs(8)), 2);
    }

    #[test]
    fn state_survives_save_and_load_privately() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tlsrpt");
        // SAFETY-free umask change is not possible without libc; we check modes instead.
        prepare_dir(&dir).unwrap();
        assert!(load(&dir).unwrap().is_none());
        let mut s = State::new(T0, DAY);
        s.record(rec("a.example"), T0 + 1, DAY, DAY, "r");
        save(&dir, &s).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(s));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
        // A corrupt file is moved aside, not lost.
        fs::write(dir.join(STATE_FILE), b"{garbage").unwrap();
        assert!(matches!(load(&dir), Err(LoadError::Corrupt { .. })));
        assert!(load(&dir).unwrap().is_none());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }
}
