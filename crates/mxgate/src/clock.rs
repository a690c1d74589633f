//! The crate's only reads of the system clock. `clippy.toml` disallows
//! `std::time::SystemTime::now` and `std::time::Instant::now` everywhere else
//! (ARCHITECTURE.md, "Tool-enforced rules"), so that time stays injectable in one place
//! and tests stay deterministic.

use std::time::SystemTime;

/// Now, on the wall clock.
// The one sanctioned read of the wall clock in this crate.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> SystemTime {
    SystemTime::now()
}
