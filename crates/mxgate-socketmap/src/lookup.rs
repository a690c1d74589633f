//! One socketmap request → one [`Reply`], through the policy engine.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mxgate_config::Config;
use mxgate_policy::{DeliveryPlan, PlanError};

use crate::answer::{answer_domain, answer_parent, Configured, Reply};
use crate::query::{classify, parse_query, Key};

/// What the server needs from the policy engine: its plan, and the configuration it
/// was built from (both from the same engine, so a SIGHUP reload applies to the next
/// request as a whole).
pub trait PolicyLookup: Send + Sync + 'static {
    /// The engine in force for one request.
    type Engine: PolicyEngineView;
    fn current(&self) -> Arc<Self::Engine>;
}

/// One engine: the plan of a domain (mxgate-policy's one decision function) and the
/// configuration that plan was made with.
pub trait PolicyEngineView: Send + Sync + 'static {
    fn plan(&self, domain: &str) -> impl Future<Output = Result<DeliveryPlan, PlanError>> + Send;
    fn config(&self) -> &Config;
}

impl PolicyEngineView for mxgate_policy::PolicyEngine {
    fn plan(&self, domain: &str) -> impl Future<Output = Result<DeliveryPlan, PlanError>> + Send {
        mxgate_policy::PolicyEngine::plan(self, domain)
    }

    fn config(&self) -> &Config {
        mxgate_policy::PolicyEngine::config(self)
    }
}

/// Answers one request payload. A request that is not `name key` gets `PERM`; keys
/// that are not domains (`[host]:port`, paths) get `NOTFOUND `; a plan that takes
/// longer than `deadline` gets `TEMP`.
pub async fn answer_request<E: PolicyEngineView>(
    engine: &E,
    payload: &[u8],
    deadline: Duration,
) -> Reply {
    let query = match parse_query(payload) {
        Ok(q) => q,
        Err(e) => return Reply::Perm(e.to_string()),
    };
    let policy = &engine.config().policy;
    match classify(query.key) {
        Key::Other => Reply::NotFound,
        Key::Parent(parent) => answer_parent(policy.domains.get(&parent), policy.min_tls_version),
        Key::Domain(domain) => {
            let match_names: Vec<String> = policy
                .domain_entry(&domain)
                .map(|(_, e)| {
                    e.match_names
                        .iter()
                        .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
                        .collect()
                })
                .unwrap_or_default();
            let Ok(plan) = tokio::time::timeout(deadline, engine.plan(&domain)).await else {
                return Reply::Temp(format!(
                    "policy lookup for {domain} took longer than {deadline:?}"
                ));
            };
            answer_domain(
                &plan,
                &Configured {
                    match_names: &match_names,
                },
            )
        }
    }
}
