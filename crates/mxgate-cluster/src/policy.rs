//! The shared MTA-STS policy cache on Redis: one key per domain,
//! `mxgate:mta-sts:DOMAIN`, holding the policy as JSON and expiring with the policy
//! (`fetched_at + max_age`, RFC 8461 §3.2). A write keeps the newer `fetched_at`
//! (atomically, in a Lua script), so instances that fetched at different times converge
//! on the latest policy.

use std::sync::Arc;

use mxgate_policy::sts::shared::{SharedFuture, SharedPolicyCache};
use mxgate_policy::sts::store::now_unix;
use mxgate_policy::sts::CachedPolicy;

use crate::Cluster;

/// Sets `KEYS[1]` to `ARGV[1]` with expiry `ARGV[3]` ms unless the stored policy's
/// `fetched_at` is at least `ARGV[2]`. Returns 1 when written.
const PUT_IF_NEWER: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok and type(decoded) == 'table' and tonumber(decoded['fetched_at'])
     and tonumber(decoded['fetched_at']) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
"#;

fn key(domain: &str) -> String {
    format!("mxgate:mta-sts:{domain}")
}

/// [`SharedPolicyCache`] on the cluster's Redis.
pub struct RedisPolicyCache {
    cluster: Arc<Cluster>,
    script: redis::Script,
}

impl RedisPolicyCache {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        RedisPolicyCache {
            cluster,
            script: redis::Script::new(PUT_IF_NEWER),
        }
    }
}

impl SharedPolicyCache for RedisPolicyCache {
    fn get<'a>(&'a self, domain: &'a str) -> SharedFuture<'a, Option<CachedPolicy>> {
        Box::pin(async move {
            let read = self
                .cluster
                .query::<Option<String>>(redis::cmd("GET").arg(key(domain)))
                .await;
            let (label, policy) = match read {
                None => ("unavailable", None),
                Some(None) => ("miss", None),
                Some(Some(json)) => match serde_json::from_str::<CachedPolicy>(&json) {
                    Ok(p) if p.domain == domain => ("hit", Some(p)),
                    _ => {
                        tracing::warn!(domain, "cluster: unusable shared MTA-STS policy, ignored");
                        ("invalid", None)
                    }
                },
            };
            metrics::counter!("mxgate_cluster_policy_reads_total", "result" => label).increment(1);
            policy
        })
    }

    fn put<'a>(&'a self, policy: &'a CachedPolicy) -> SharedFuture<'a, ()> {
        Box::pin(async move {
            let now = now_unix();
            let ttl_ms = policy.expires_at().saturating_sub(now).saturating_mul(1000);
            if ttl_ms == 0 {
                return;
            }
            let Ok(json) = serde_json::to_string(policy) else {
                return;
            };
            let mut invocation = self.script.prepare_invoke();
            invocation
                .key(key(&policy.domain))
                .arg(json)
                .arg(policy.fetched_at)
                .arg(ttl_ms);
            if self.cluster.invoke::<i64>(&invocation).await.is_none() {
                tracing::debug!(domain = %policy.domain, "cluster: policy not shared (redis unavailable)");
            }
        })
    }
}
