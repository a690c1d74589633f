//! A policy engine that SIGHUP can replace while deliveries keep running.
//!
//! Delivery holds one [`ReloadablePolicy`]; each `plan` call uses the engine current at
//! that moment, so a changed `[policy.domains]` entry applies to the next delivery.
//! A new engine starts with an empty in-memory MTA-STS cache and reads the persistent
//! one from `policy.cache_path` again, so no policy is lost across a reload.

use std::future::Future;
use std::sync::{Arc, RwLock};

use mxgate_config::TlsVersion;
use mxgate_delivery::Planner;
use mxgate_policy::{DeliveryPlan, PlanError, PolicyEngine, TlsRequirement};

pub struct ReloadablePolicy {
    current: RwLock<Arc<PolicyEngine>>,
}

impl ReloadablePolicy {
    pub fn new(engine: PolicyEngine) -> Self {
        ReloadablePolicy {
            current: RwLock::new(Arc::new(engine)),
        }
    }

    pub fn current(&self) -> Arc<PolicyEngine> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn replace(&self, engine: PolicyEngine) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(engine);
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

    fn honours_tls_required_no(&self) -> bool {
        self.current().honours_tls_required_no()
    }

    fn pkix_verifier(&self) -> Option<Arc<dyn rustls::client::danger::ServerCertVerifier>> {
        Some(self.current().pkix_verifier())
    }
}
