//! A cache of MTA-STS policies shared by several mxgate instances (docs/scaling.md).
//!
//! The store consults it when its own copy cannot answer (none, expired or due for a
//! refresh) and writes every policy it fetches to it; the newer `fetched_at` wins on
//! both sides, and a policy read from it is kept in the local cache too. An
//! implementation bounds every call by its own short timeout and reports failure as
//! "nothing there": a slow or dead shared cache never blocks a lookup for long and
//! never weakens what the local cache says. No implementation lives in this crate.

use std::future::Future;
use std::pin::Pin;

use super::CachedPolicy;

/// A future returned by a [`SharedPolicyCache`].
pub type SharedFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// MTA-STS policies shared between instances.
pub trait SharedPolicyCache: Send + Sync {
    /// The shared policy of `domain`, if one is there and reachable in time.
    fn get<'a>(&'a self, domain: &'a str) -> SharedFuture<'a, Option<CachedPolicy>>;
    /// Offers a freshly fetched policy; kept unless a newer one is there already.
    fn put<'a>(&'a self, policy: &'a CachedPolicy) -> SharedFuture<'a, ()>;
}
