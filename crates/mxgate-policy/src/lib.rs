//! TLS policy of mxgate (contract §2): for each destination domain, which MX hosts may
//! be dialled and what each TLS session must prove.
//!
//! Delivery asks [`PolicyEngine::plan`] once per domain and attempt, dials the MX hosts
//! of the [`DeliveryPlan`] in order, and builds each TLS session from
//! [`PolicyEngine::client_config`]. This crate does not speak SMTP.

mod plan;

pub use mxgate_config::{Level, OnTlsFailure, TlsVersion};
pub use plan::{DeliveryPlan, MxPlan, PlanError, PolicyEngine, PolicySource, TlsRequirement, TlsaRecord};
