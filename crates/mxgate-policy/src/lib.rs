//! TLS policy of mxgate (docs/policy.md): for each destination domain, which MX hosts may
//! be dialled and what each TLS session must prove.
//!
//! Delivery asks [`PolicyEngine::plan`] once per domain and attempt, dials the MX hosts
//! of the [`DeliveryPlan`] in order, builds each TLS session from
//! [`PolicyEngine::client_config`], and after the handshake asks
//! [`tls::authenticated_by`] (pure) what the session proved (log field `auth=`).
//!
//! Layout: [`decide`] is the pure decision core (one function, one RFC-cited arm per
//! case); [`auth`] names how a session was authenticated; [`dane`] matches TLSA
//! records and chains (pure); [`verify`] holds the rustls certificate verifiers;
//! [`tls`] builds rustls configurations (roots, versions, the verifier per
//! requirement); [`sts`] parses, fetches and stores MTA-STS policies; the engine
//! (`engine.rs`) gathers the facts through mxgate-dns and calls the core; [`explain`]
//! is the `mxgate policy DOMAIN --json` report; [`evaluate`] judges an established
//! session against a requirement it was not built for (shadow levels, MTA-STS testing).
//!
//! This crate does not speak SMTP, open SMTP connections, or count deliveries.

pub mod auth;
mod clock;
pub mod dane;
pub mod decide;
mod engine;
pub mod evaluate;
pub mod explain;
mod plan;
pub mod reason;
pub mod sts;
pub mod tls;
pub mod verify;

pub use auth::Auth;
pub use engine::{PolicyEngine, PolicyInitError};
pub use evaluate::{evaluate, RequirementFailure, SessionFacts};
pub use explain::Explanation;
pub use mxgate_config::{Level, OnTlsFailure, TlsVersion};
pub use plan::{DeliveryPlan, MxPlan, PolicySource, ShadowRequirement, TlsRequirement, TlsaRecord};
pub use reason::{LookupFailure, PlanError, SkipReason};
pub use sts::store::CacheWrite;
pub use verify::DaneVerifier;
