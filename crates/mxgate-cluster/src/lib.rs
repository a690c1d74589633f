//! Several mxgate instances behaving as one (docs/scaling.md): with
//! `[cluster] redis = "redis://HOST:PORT/DB"` they share their MTA-STS policies through
//! Redis, so a policy fetched by one instance protects the others at once, even while
//! the policy host is down, and their TLS-RPT counters, so that each domain gets one
//! report per period with every instance's sessions in it.
//!
//! [`Cluster`] holds one Redis connection (a `redis` crate `ConnectionManager`, which
//! reconnects by itself) and a health task that pings Redis every
//! [`HEALTH_INTERVAL`] and publishes `mxgate_cluster_up` (0/1). [`policy`] is the
//! shared MTA-STS cache on top of it, [`tlsrpt`] the shared TLS-RPT counters and the
//! election of the instance that reports. Every Redis call is bounded by
//! [`OPERATION_TIMEOUT`]; when Redis is down or slow the instance goes on with its local
//! cache: Redis never blocks a delivery for longer than that and never weakens a policy.
//!
//! This crate decides no policy and builds no report, and nothing is shared when
//! `cluster.redis` is empty.

pub mod policy;
pub mod tlsrpt;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

/// Gauge: 1 while Redis answers, else 0.
pub const METRIC_UP: &str = "mxgate_cluster_up";

/// Upper bound of one Redis command, as seen by a lookup.
pub const OPERATION_TIMEOUT: Duration = Duration::from_millis(250);
/// Upper bound of one connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often Redis is pinged (so `mxgate_cluster_up` follows within 30 s).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// `cluster.redis` is not a Redis URL.
#[derive(Debug, thiserror::Error)]
#[error("cluster.redis: {0}")]
pub struct ClusterError(#[from] redis::RedisError);

/// The connection to the shared Redis.
pub struct Cluster {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
}

impl Cluster {
    /// Parses the URL; connects later, in [`Cluster::run`], so that a Redis that is
    /// down at start does not keep mxgate from starting.
    pub fn new(url: &str) -> Result<Arc<Cluster>, ClusterError> {
        metrics::describe_gauge!(METRIC_UP, "1 while the shared Redis answers, else 0");
        metrics::gauge!(METRIC_UP).set(0.0);
        Ok(Arc::new(Cluster {
            client: redis::Client::open(url)?,
            connection: Mutex::new(None),
        }))
    }

    /// The connection, if one was established (cheap clone of a shared handle).
    fn connection(&self) -> Option<ConnectionManager> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `command` on the shared connection within [`OPERATION_TIMEOUT`]; `None`
    /// when there is no connection, Redis fails or is too slow.
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Option<T> {
        let mut con = self.connection()?;
        match tokio::time::timeout(OPERATION_TIMEOUT, command.query_async::<T>(&mut con)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cluster: redis command failed");
                None
            }
            Err(_) => {
                tracing::debug!(timeout = ?OPERATION_TIMEOUT, "cluster: redis command timed out");
                None
            }
        }
    }

    /// Runs a Lua script as [`Cluster::query`] does.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        let mut con = self.connection()?;
        match tokio::time::timeout(OPERATION_TIMEOUT, script.invoke_async::<T>(&mut con)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cluster: redis script failed");
                None
            }
            Err(_) => None,
        }
    }

    /// Keeps the connection up and `mxgate_cluster_up` current until `shutdown`.
    /// Logs each change between reachable and unreachable once.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut up: Option<bool> = None;
        loop {
            let now_up = self.check().await;
            if up != Some(now_up) {
                if now_up {
                    tracing::info!("cluster: redis reachable, MTA-STS policies are shared");
                } else {
                    tracing::warn!(
                        "cluster: redis unreachable, going on with the local cache (nothing is downgraded)"
                    );
                }
                up = Some(now_up);
            }
            metrics::gauge!(METRIC_UP).set(if now_up { 1.0 } else { 0.0 });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            }
        }
    }

    /// Connects if needed, then `PING`: whether Redis answers now.
    pub async fn check(&self) -> bool {
        if self.connection().is_none() {
            let connect = ConnectionManager::new(self.client.clone());
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok(manager)) => {
                    *self
                        .connection
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(manager);
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cluster: redis connection failed");
                    return false;
                }
                Err(_) => return false,
            }
        }
        self.query::<String>(&redis::cmd("PING"))
            .await
            .is_some_and(|pong| pong == "PONG")
    }
}
