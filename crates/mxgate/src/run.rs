//! `mxgate run`: build every part from the configuration and run until SIGTERM.
//!
//! Start order: metrics, DNS, cluster (Redis is connected in the background), policy, queue (recovers the spool), delivery, listener,
//! socketmap server (when `socketmap.listen` is set), control socket, then sd_notify
//! `READY=1`. Stop order on SIGTERM/SIGINT: stop
//! accepting (listener), let running deliveries finish within the grace period
//! (queue), exit. Everything acknowledged is on disk, so a stop at any point loses
//! nothing; an interrupted delivery is retried after restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mxgate_cluster::policy::RedisPolicyCache;
use mxgate_cluster::tlsrpt::RedisTlsRptCounters;
use mxgate_cluster::Cluster;
use mxgate_config::{Config, DeliveryConfig};
use mxgate_delivery::Delivery;
use mxgate_dns::DnsClient;
use mxgate_listener::{Listener, ListenerSettings};
use mxgate_policy::sts::shared::SharedPolicyCache;
use mxgate_policy::{PolicyEngine, PolicyInitError};
use mxgate_queue::{Queue, QueueSettings};
use mxgate_socketmap::{SocketmapServer, SocketmapSettings};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::error::CliError;
use crate::reload::ReloadablePolicy;

/// How long running deliveries may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mxgate")
        .build()?;
    runtime.block_on(run_async(config, config_path))
}

fn startup<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> CliError {
    move |e| CliError::Startup(format!("{what}: {e}"))
}

async fn run_async(config: Config, config_path: Option<PathBuf>) -> Result<(), CliError> {
    let metrics_addr = crate::metrics_setup::install(&config.metrics.listen)?;
    mxgate_listener::describe_metrics();
    mxgate_socketmap::describe_metrics();
    let config = Arc::new(config);

    let dns = Arc::new(DnsClient::new(&config.dns).map_err(startup("dns"))?);
    // Before anything is delivered, so the first deferrals already name the resolver.
    let mut resolver_ok = resolver_self_test(&dns, None).await;
    let cluster = match config.cluster.redis.as_str() {
        "" => None,
        url => Some(Cluster::new(url).map_err(startup("cluster"))?),
    };
    let shared = cluster
        .as_ref()
        .map(|c| Arc::new(RedisPolicyCache::new(c.clone())) as Arc<dyn SharedPolicyCache>);
    let engine = |config: Arc<Config>| {
        PolicyEngine::new(config, dns.clone()).map(|engine| match &shared {
            Some(shared) => engine.with_shared_cache(shared.clone()),
            None => engine,
        })
    };
    let policy = Arc::new(ReloadablePolicy::new(
        engine(config.clone()).map_err(startup("policy"))?,
    ));
    let queue = Queue::open(QueueSettings::from_config(&config))
        .await
        .map_err(startup("queue"))?;
    let shutdown = CancellationToken::new();
    // TLS reporting (RFC 8460): its own shutdown token, cancelled after the
    // deliveries have drained, so their last sessions are counted and saved.
    let tlsrpt_stop = CancellationToken::new();
    let mut delivery = Delivery::new(
        config.delivery.clone(),
        policy.clone(),
        config.server.hostname.clone(),
    );
    let tlsrpt = if config.tlsrpt.enabled {
        let counters = cluster.as_ref().map(|c| {
            Arc::new(RedisTlsRptCounters::new(c.clone())) as Arc<dyn mxgate_tlsrpt::SharedCounters>
        });
        Some(crate::tlsrpt::settings(&config, dns.clone(), counters).map_err(startup("tlsrpt"))?)
    } else {
        None
    };
    // `tlsrpt.relay` hand-off: a second client (the main one needs the TLS-RPT handle,
    // which needs this); relay sessions are never observed.
    let relay_delivery = Arc::new(Delivery::new(
        config.delivery.clone(),
        policy.clone(),
        config.server.hostname.clone(),
    ));
    let mut tlsrpt_task = None;
    let tlsrpt_handle = match tlsrpt {
        Some(settings) => {
            let mail = Arc::new(crate::tlsrpt::QueueMail {
                queue: queue.clone(),
                delivery: relay_delivery.clone(),
                relay: Some(config.tlsrpt.relay.clone()).filter(|r| !r.is_empty()),
            });
            let (handle, task) = mxgate_tlsrpt::start(
                settings,
                Arc::new(crate::tlsrpt::DnsDiscover(dns.clone())),
                mail,
                tlsrpt_stop.clone(),
            )
            .map_err(startup("tlsrpt"))?;
            delivery = delivery.with_session_sink(Arc::new(crate::tlsrpt::TlsRptSink {
                handle: handle.clone(),
                policy: policy.clone(),
            }));
            tlsrpt_task = Some(task);
            Some(handle)
        }
        None => None,
    };
    let delivery = Arc::new(delivery);
    let listener = Listener::bind(ListenerSettings::from_config(&config), queue.clone())
        .await
        .map_err(startup("listener.listen"))?;
    let socketmap = match config.socketmap.listen_addr() {
        Some(addr) => Some(
            SocketmapServer::bind(
                addr,
                SocketmapSettings {
                    idle_timeout: config.socketmap.idle_timeout,
                    ..SocketmapSettings::default()
                },
            )
            .await
            .map_err(startup("socketmap.listen"))?,
        ),
        None => None,
    };
    let control = crate::control::bind(&config.control.socket).map_err(|e| {
        CliError::Startup(format!(
            "control.socket {}: {e}",
            config.control.socket.display()
        ))
    })?;

    let mut tasks = tokio::task::JoinSet::new();
    let listen_addrs = listener.local_addrs()?;
    tasks.spawn(listener.run(shutdown.clone()));
    if let Some(cluster) = &cluster {
        tasks.spawn(cluster.clone().run(shutdown.clone()));
    }
    let socketmap_addr = match socketmap {
        Some(server) => {
            let addr = server.local_addr()?;
            tasks.spawn(server.run(policy.clone(), shutdown.clone()));
            Some(addr)
        }
        None => None,
    };
    tasks.spawn(queue.clone().run(delivery.clone(), shutdown.clone()));
    tasks.spawn(crate::control::serve(
        control,
        crate::control::Served {
            queue: queue.clone(),
            tlsrpt: tlsrpt_handle,
        },
        shutdown.clone(),
    ));

    let listen_text: Vec<String> = listen_addrs.iter().map(ToString::to_string).collect();
    tracing::info!(
        listen = %listen_text.join(","),
        socketmap = %socketmap_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        metrics = %metrics_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        config = %config_path
            .as_ref()
            .map_or_else(|| "built-in defaults".to_string(), |p| p.display().to_string()),
        queue = %config.queue.path.display(),
        "mxgate ready"
    );
    notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = watchdog_task(shutdown.clone());

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut probe = tokio::time::interval_at(
        tokio::time::Instant::now() + SELF_TEST_INTERVAL,
        SELF_TEST_INTERVAL,
    );
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => reload(&config_path, &config, &engine, &policy),
            _ = probe.tick() => resolver_ok = resolver_self_test(&dns, Some(resolver_ok)).await,
        }
    }

    tracing::info!("shutting down: no new mail accepted, finishing running deliveries");
    notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "deliveries still running at the end of the grace period; they will be retried after restart"
        );
        tasks.abort_all();
    }
    watchdog.abort();
    tlsrpt_stop.cancel();
    if let Some(task) = tlsrpt_task {
        // Saves the counters (the last sessions included) before exiting.
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    // Idle cached SMTP sessions get a polite QUIT.
    let _ = tokio::time::timeout(Duration::from_secs(5), delivery.close_idle_sessions()).await;
    let _ = std::fs::remove_file(&config.control.socket);
    tracing::info!("mxgate stopped");
    Ok(())
}

/// How often the resolver self-test runs after the one at start.
const SELF_TEST_INTERVAL: Duration = Duration::from_secs(300);

/// The resolver self-test (docs/operations.md): sets `mxgate_dnssec_resolver_ok` and
/// logs one line when the state changes (`before` = the previous result; `None` at
/// start). Returns whether it passed.
async fn resolver_self_test(dns: &DnsClient, before: Option<bool>) -> bool {
    use mxgate_dns::SelfTest;
    let result = dns.self_test().await;
    let ok = result.passed();
    if result != SelfTest::Skipped {
        metrics::gauge!("mxgate_dnssec_resolver_ok").set(if ok { 1.0 } else { 0.0 });
    }
    let changed = before != Some(ok);
    match &result {
        SelfTest::NotValidating { seen, fix } if changed => tracing::error!(
            "resolver self-test failed: {seen}; mail whose delivery needs DNSSEC is deferred \
             (\"resolver does not validate DNSSEC\") until it passes; fix: {fix}"
        ),
        SelfTest::LookupFailed { detail } if changed => tracing::error!(
            "resolver self-test failed: the probe dns.dnssec_probe could not be looked up: \
             {detail}; mail whose delivery needs DNSSEC is deferred until it passes"
        ),
        SelfTest::Validates if before == Some(false) => {
            tracing::info!("resolver self-test passes again: the resolver validates DNSSEC")
        }
        _ => {}
    }
    ok
}

/// SIGHUP: read the file again; an invalid file is logged and the old one stays.
fn reload(
    path: &Option<PathBuf>,
    running: &Config,
    engine: &impl Fn(Arc<Config>) -> Result<PolicyEngine, PolicyInitError>,
    policy: &ReloadablePolicy,
) {
    // systemd ≥ 253 wants the monotonic time right after RELOADING=1.
    match sd_notify::NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[sd_notify::NotifyState::Reloading, now]),
        Err(_) => notify(&[sd_notify::NotifyState::Reloading]),
    }
    match Config::load(path.as_deref()) {
        Err(e) => {
            tracing::error!(error = %e, "reload failed: configuration invalid, the running one stays in force")
        }
        Ok(new) => {
            let restart_keys = restart_only_changes(running, &new);
            if !restart_keys.is_empty() {
                tracing::warn!(keys = ?restart_keys, "these changes take effect only after a restart");
            }
            match engine(Arc::new(new)) {
                Ok(engine) => {
                    policy.replace(engine);
                    tracing::info!("configuration reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload failed: policy invalid, the running one stays in force")
                }
            }
        }
    }
    notify(&[sd_notify::NotifyState::Ready]);
}

/// Keys whose change needs a restart (sockets, the spool, the SMTP client's limits).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.listener != new.listener {
        keys.push("listener");
    }
    if old.queue != new.queue {
        keys.push("queue");
    }
    keys.extend(restart_only_delivery_changes(&old.delivery, &new.delivery));
    // The TLS-RPT service (and its HTTPS upload client, which trusts `delivery.ca_file`)
    // is built once at start.
    if old.tlsrpt != new.tlsrpt {
        keys.push("tlsrpt");
    }
    if new.tlsrpt.enabled && old.delivery.ca_file != new.delivery.ca_file {
        keys.push("delivery.ca_file (tlsrpt https uploads)");
    }
    if old.dns != new.dns {
        keys.push("dns");
    }
    if old.metrics != new.metrics {
        keys.push("metrics");
    }
    if old.cluster != new.cluster {
        keys.push("cluster");
    }
    if old.socketmap != new.socketmap {
        keys.push("socketmap");
    }
    if old.control != new.control {
        keys.push("control");
    }
    if old.server != new.server {
        keys.push("server");
    }
    keys
}

/// The `[delivery]` keys the running SMTP client holds. `smtp_port` and `ca_file` are
/// not among them: the policy engine, which a reload replaces, reads both. Its plan
/// names the port dialled, the one whose TLSA records it looked up (RFC 7672 §2.2.3),
/// and its TLS configurations verify against the roots it loaded; sessions verified
/// under the old roots are not reused (`mxgate_delivery::cache`).
fn restart_only_delivery_changes(old: &DeliveryConfig, new: &DeliveryConfig) -> Vec<&'static str> {
    // Exhaustive, so that a new key has to be sorted into one kind or the other.
    let DeliveryConfig {
        smtp_port: _,
        ca_file: _,
        connect_timeout,
        command_timeout,
        max_connections,
        max_connections_per_domain,
        mx_address_limit,
        mx_session_limit,
    } = old;
    [
        (
            "delivery.connect_timeout",
            *connect_timeout != new.connect_timeout,
        ),
        (
            "delivery.command_timeout",
            *command_timeout != new.command_timeout,
        ),
        (
            "delivery.max_connections",
            *max_connections != new.max_connections,
        ),
        (
            "delivery.max_connections_per_domain",
            *max_connections_per_domain != new.max_connections_per_domain,
        ),
        (
            "delivery.mx_address_limit",
            *mx_address_limit != new.mx_address_limit,
        ),
        (
            "delivery.mx_session_limit",
            *mx_session_limit != new.mx_session_limit,
        ),
    ]
    .into_iter()
    .filter_map(|(key, changed)| changed.then_some(key))
    .collect()
}

fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Pings the systemd watchdog at half its interval while the runtime is healthy.
fn watchdog_task(shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(interval) = sd_notify::watchdog_enabled() else {
            return;
        };
        let period = interval / 2;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => notify(&[sd_notify::NotifyState::Watchdog]),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_port_and_ca_file_reload_the_smtp_client_limits_need_a_restart() {
        let mut old = Config::default();
        old.tlsrpt.enabled = false;
        let mut new = old.clone();
        new.delivery.smtp_port = 2525;
        new.delivery.ca_file = "/etc/mxgate/other-ca.pem".into();
        assert!(restart_only_changes(&old, &new).is_empty());
        new.delivery.connect_timeout = Duration::from_secs(7);
        new.delivery.max_connections = 3;
        assert_eq!(
            restart_only_changes(&old, &new),
            ["delivery.connect_timeout", "delivery.max_connections"]
        );
    }

    #[test]
    fn tlsrpt_changes_and_its_upload_roots_need_a_restart() {
        let mut old = Config::default();
        old.tlsrpt.enabled = true;
        let mut new = old.clone();
        new.delivery.ca_file = "/etc/mxgate/other-ca.pem".into();
        assert_eq!(
            restart_only_changes(&old, &new),
            ["delivery.ca_file (tlsrpt https uploads)"]
        );
        new.tlsrpt.enabled = false;
        assert_eq!(restart_only_changes(&old, &new), ["tlsrpt"]);
    }
}
