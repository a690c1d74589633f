//! The crate's only read of the system clock. `clippy.toml` disallows
//! `std::time::SystemTime::now` and `std::time::Instant::now` everywhere else
//! (ARCHITECTURE.md, "Tool-enforced rules"), so that time stays injectable in one place
//! and tests stay deterministic. The MTA-STS store and the engine take the current
//! time as a parameter; only their callers at the edge read it here.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, unix seconds (0 before the epoch).
// The one sanctioned read of the wall clock in this crate.
#[allow(clippy::disallowed_methods)]
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
