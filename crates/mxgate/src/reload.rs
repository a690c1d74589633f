//! A policy engine that SIGHUP can replace while deliveries keep running.
//!
//! Delivery holds one [`ReloadablePolicy`]; each `plan` call uses the engine current at
//! that moment, so a changed `[policy.domains]` entry applies to the next delivery.
//! A new engine starts with an empty in-memory MTA-STS cache and reads the persistent
//! one from `policy.cache_path` again, so no policy is lost across a reload.
//!
//! Every engine has a trust generation, one more than the engine it replaced: it loaded
//! the trust roots (`delivery.ca_file`) afresh, so idle SMTP sessions verified under an
//! older engine are closed rather than reused (`mxgate_delivery::cache`). The engine
//! and its generation are swapped together, so a TLS configuration is never paired with
//! another engine's generation.

use std::future::Future;
use std::sync::{Arc, RwLock};

use mxgate_config::{Level, TlsVersion};
use mxgate_delivery::Planner;
use mxgate_policy::{DeliveryPlan, PlanError, PolicyEngine, TlsRequirement};

pub struct ReloadablePolicy {
    current: RwLock<Current>,
}

/// The engine in force and its trust generation.
#[derive(Clone)]
struct Current {
    engine: Arc<PolicyEngine>,
    generation: u64,
}

impl ReloadablePolicy {
    pub fn new(engine: PolicyEngine) -> Self {
        ReloadablePolicy {
            current: RwLock::new(Current {
                engine: Arc::new(engine),
                generation: 0,
            }),
        }
    }

    pub fn current(&self) -> Arc<PolicyEngine> {
        self.snapshot().engine
    }

    fn snapshot(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Puts `engine` in force under the next trust generation.
    pub fn replace(&self, engine: PolicyEngine) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = Current {
            engine: Arc::new(engine),
            generation: current.generation + 1,
        };
    }
}

impl mxgate_socketmap::PolicyLookup for ReloadablePolicy {
    type Engine = PolicyEngine;
    fn current(&self) -> Arc<PolicyEngine> {
        ReloadablePolicy::current(self)
    }
}

impl Planner for ReloadablePolicy {
    fn plan(&self, domain: &str) -> impl Future<Output = Result<DeliveryPlan, PlanError>> + Send {
        let engine = self.current();
        let domain = domain.to_string();
        async move { engine.plan(&domain).await }
    }

    fn client_config(
        &self,
        requirement: &TlsRequirement,
        min_tls_version: TlsVersion,
    ) -> Arc<rustls::ClientConfig> {
        self.current().client_config(requirement, min_tls_version)
    }

    fn min_tls_version(&self) -> TlsVersion {
        self.current().min_tls_version()
    }

    fn tls_required_no_floor(&self) -> Option<Level> {
        self.current().tls_required_no_floor()
    }

    fn pkix_verifier(&self) -> Option<Arc<dyn rustls::client::danger::ServerCertVerifier>> {
        Some(self.current().pkix_verifier())
    }

    fn trust_generation(&self) -> u64 {
        self.snapshot().generation
    }

    fn client_config_with_generation(
        &self,
        requirement: &TlsRequirement,
        min_tls_version: TlsVersion,
    ) -> (Arc<rustls::ClientConfig>, u64) {
        let Current { engine, generation } = self.snapshot();
        (
            engine.client_config(requirement, min_tls_version),
            generation,
        )
    }
}
