//! The Prometheus endpoint (docs/operations.md): `GET /metrics` on `metrics.listen`.
//!
//! The metrics themselves are recorded where the events happen (listener, queue,
//! delivery, policy) with the `metrics` macros; this module installs the exporter and
//! gives every metric its help text, which says what to alert on.

use std::net::SocketAddr;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::error::CliError;

/// Starts the HTTP listener (inside the current tokio runtime) and registers the help
/// texts. An empty `listen` disables the endpoint.
pub fn install(listen: &str) -> Result<Option<SocketAddr>, CliError> {
    if listen.trim().is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| CliError::Startup(format!("metrics.listen {listen:?}: {e}")))?;
    // Bind first so that a busy port is a clear startup error, not a log line.
    std::net::TcpListener::bind(addr)
        .map_err(|e| CliError::Startup(format!("metrics.listen {addr}: {e}")))?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("mxgate_delivery_duration_seconds".into()),
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
        )
        .map_err(|e| CliError::Startup(format!("metrics: {e}")))?
        .install()
        .map_err(|e| CliError::Startup(format!("metrics.listen {addr}: {e}")))?;
    describe();
    Ok(Some(addr))
}

fn describe() {
    describe_counter!(
        "mxgate_messages_received_total",
        "Messages accepted from the local MTA and stored durably (answered 250)."
    );
    describe_counter!(
        "mxgate_deliveries_total",
        "Delivery outcomes per recipient by policy level and TLS version. Alert on a rising share of outcome=\"deferred\" or any outcome=\"bounced\" with policy other than none/may."
    );
    describe_counter!(
        "mxgate_tls_connections_total",
        "Established outbound TLS sessions by version, cipher and how the server was authenticated. A rise of auth=\"none\" where you expect pkix/dane means verification is not happening."
    );
    describe_counter!(
        "mxgate_tls_policy_failures_total",
        "Connections that did not meet the required TLS level, by policy and reason. Any increase is an attack, a misconfigured destination, or a policy error: alert on it."
    );
    describe_gauge!(
        "mxgate_queue_messages",
        "Messages in the queue by state. Alert when state=\"deferred\" keeps growing."
    );
    describe_gauge!(
        "mxgate_queue_oldest_seconds",
        Unit::Seconds,
        "Age of the oldest queued message. Alert when it approaches queue.max_age (mail is about to bounce)."
    );
    describe_counter!(
        "mxgate_mta_sts_fetches_total",
        "MTA-STS policy fetches by result. Alert on a rising error share: enforce domains defer once their cached policy expires."
    );
    describe_counter!(
        "mxgate_policy_cache_lookups_total",
        "Policy cache lookups by result (hit|miss)."
    );
    describe_counter!(
        "mxgate_dane_lookups_total",
        "DANE (TLSA) results per MX host looked at: ok (usable TLSA), unusable, not-applicable, insecure, tempfail. Alert on tempfail: DNSSEC failures defer mail."
    );
    describe_counter!(
        "mxgate_tls_handshake_failures_total",
        "Failed outbound TLS handshakes by reason, at every level (at may they fall back to cleartext). A rise at may points at an attacker or broken servers."
    );
    describe_gauge!(
        "mxgate_dnssec_resolver_ok",
        "1 while the resolver self-test (dns.dnssec_probe, every 5 minutes) passes, else 0; absent under dns.dnssec = \"off\". Alert on 0: mail that needs DNSSEC is deferred with \"resolver does not validate DNSSEC\"."
    );
    describe_counter!(
        "mxgate_shadow_failures_total",
        "Sessions that met the applied level but would have failed the configured shadow level, by shadow level and reason. Watch it before enforcing a stricter level."
    );
    describe_histogram!(
        "mxgate_delivery_duration_seconds",
        Unit::Seconds,
        "Time of one delivery attempt to a destination domain, from plan to final reply."
    );
}
