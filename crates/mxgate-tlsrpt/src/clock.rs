//! The crate's only reads of the system clock. `clippy.toml` disallows
//! `std::time::SystemTime::now` and `std::time::Instant::now` everywhere else
//! (ARCHITECTURE.md, "Tool-enforced rules"), so that time stays injectable in one place
//! and tests stay deterministic. Calendar arithmetic on the values is in `time`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Now, unix seconds (0 before the epoch).
// The one sanctioned read of the wall clock in this crate.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now, on the monotonic clock.
// The one sanctioned read of the monotonic clock in this crate.
#[allow(clippy::disallowed_methods)]
pub(crate) fn instant() -> Instant {
    Instant::now()
}
