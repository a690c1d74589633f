//! Typed configuration of mxgate (etc/mxgate.toml).
//!
//! Every key of `etc/mxgate.toml` is a field here. Parsing goes through the `config`
//! crate (TOML file, optional), then serde into these structs with
//! `deny_unknown_fields`, then [`Config::validate`] for cross-field rules. Every error
//! names the key it is about.
//!
//! This crate does not read DNS, open sockets or touch the spool: it only turns a file
//! into values the other crates trust.

mod duration;
mod level;
mod load;

pub use duration::parse_duration;
pub use level::{Level, OnTlsFailure, TlsVersion};
pub use load::ConfigError;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU16, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub listener: ListenerConfig,
    pub queue: QueueConfig,
    pub delivery: DeliveryConfig,
    pub dns: DnsConfig,
    pub policy: PolicyConfig,
    pub metrics: MetricsConfig,
    pub control: ControlConfig,
    pub tlsrpt: TlsRptConfig,
    pub socketmap: SocketmapConfig,
    pub cluster: ClusterConfig,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Used in the banner, EHLO, `Received:` and as the DSN reporting MTA.
    pub hostname: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: default_hostname(),
        }
    }
}

fn default_hostname() -> String {
    std::fs::read_to_string("/etc/mailname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `[listener]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    pub listen: Vec<SocketAddr>,
    pub allowed_clients: Vec<IpNet>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// How long the listener waits for the next command (RFC 5321 §4.5.3.2.7: 5 minutes).
    #[serde(deserialize_with = "duration::deserialize")]
    pub command_timeout: Duration,
    /// How long the listener waits for the next chunk of DATA (RFC 5321 §4.5.3.2.6: 3 minutes).
    #[serde(deserialize_with = "duration::deserialize")]
    pub data_timeout: Duration,
    /// Concurrent sessions; further connections get `421`.
    pub max_sessions: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 10025))],
            allowed_clients: vec![
                "127.0.0.0/8".parse().expect("literal CIDR"),
                "::1/128".parse().expect("literal CIDR"),
            ],
            max_message_size: 52_428_800,
            max_recipients: 1000,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            max_sessions: 1000,
        }
    }
}

/// `[queue]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    pub path: PathBuf,
    #[serde(deserialize_with = "duration::deserialize_vec")]
    pub retry_intervals: Vec<Duration>,
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_age: Duration,
    /// Optional `host:port` that receives DSNs; empty = deliver DSNs like any message.
    pub bounce_relay: String,
    /// Send one "delayed" DSN after this long; `None` (the default, or `""`) = never.
    #[serde(deserialize_with = "duration::deserialize_opt")]
    pub delay_warning: Option<Duration>,
    /// Bytes of message bodies kept in memory from the `250` to their first delivery
    /// attempt; beyond it, bodies are read back from the spool.
    pub memory_budget: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            path: PathBuf::from("/var/lib/mxgate/queue"),
            retry_intervals: ["1m", "5m", "15m", "30m", "1h", "2h", "4h"]
                .iter()
                .map(|s| parse_duration(s).expect("literal duration"))
                .collect(),
            max_age: Duration::from_secs(5 * 86400),
            bounce_relay: String::new(),
            delay_warning: None,
            memory_budget: 268_435_456,
        }
    }
}

/// `[delivery]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub smtp_port: u16,
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect_timeout: Duration,
    /// Timeout for each command reply once connected (RFC 5321 §4.5.3.2 gives 5 min; we
    /// use one value for all commands and 10 minutes for the final `.`).
    #[serde(deserialize_with = "duration::deserialize")]
    pub command_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_domain: usize,
    /// At most this many MX addresses are dialled in one delivery attempt (Postfix's
    /// `smtp_mx_address_limit`).
    pub mx_address_limit: NonZeroUsize,
    /// At most this many sessions that completed EHLO (and TLS where used) in one
    /// delivery attempt (Postfix's `smtp_mx_session_limit`).
    pub mx_session_limit: NonZeroUsize,
    /// Extra PEM roots added to the built-in roots.
    pub ca_file: PathBuf,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            smtp_port: 25,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            max_connections: 200,
            max_connections_per_domain: 20,
            mx_address_limit: NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN),
            mx_session_limit: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
            ca_file: PathBuf::new(),
        }
    }
}

/// `[dns]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// `ip:port` (or a bare IP, port 53) list; empty = `/etc/resolv.conf`.
    #[serde(deserialize_with = "deserialize_nameservers")]
    pub nameservers: Vec<SocketAddr>,
    pub dnssec: DnssecMode,
    /// File of DNSKEY records (zone-file syntax); empty = the IANA root anchors.
    pub trust_anchor: PathBuf,
    #[serde(deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// `"NAME TYPE"` looked up by the resolver self-test (docs/operations.md), like
    /// Postfix's `dnssec_probe`.
    pub dnssec_probe: String,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            dnssec: DnssecMode::Validate,
            trust_anchor: PathBuf::new(),
            timeout: Duration::from_secs(5),
            dnssec_probe: ". NS".into(),
        }
    }
}

/// Record types the resolver self-test may ask for.
pub const DNSSEC_PROBE_TYPES: [&str; 7] = ["NS", "SOA", "A", "AAAA", "MX", "TXT", "DNSKEY"];

impl DnsConfig {
    /// `dns.dnssec_probe` as (name, type); `None` if it is not `"NAME TYPE"` with a
    /// type of [`DNSSEC_PROBE_TYPES`].
    pub fn probe(&self) -> Option<(&str, &str)> {
        let mut words = self.dnssec_probe.split_whitespace();
        let (name, rtype) = (words.next()?, words.next()?);
        if words.next().is_some() {
            return None;
        }
        DNSSEC_PROBE_TYPES
            .iter()
            .find(|t| t.eq_ignore_ascii_case(rtype))
            .map(|t| (name, *t))
    }
}

/// `"127.0.0.53"`, `"127.0.0.53:5353"`, `"::1"` or `"[::1]:53"`: a bare address means
/// port 53, as in resolv.conf.
fn deserialize_nameservers<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<SocketAddr>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| parse_nameserver(s).map_err(serde::de::Error::custom))
        .collect()
}

/// One `dns.nameservers` entry (see [`DnsConfig::nameservers`]).
pub fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "{s:?} is not an IP address or \"ip:port\" (\"[v6]:port\" for IPv6)"
    ))
}

/// `dns.dnssec`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DnssecMode {
    /// In-process validation from the trust anchor.
    Validate,
    /// Trust the AD bit of a validating resolver on loopback.
    TrustAd,
    /// No DNSSEC, hence no DANE.
    Off,
}

/// `[policy]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub default: Level,
    pub fallback: Level,
    pub min_tls_version: TlsVersion,
    pub on_tls_failure: OnTlsFailure,
    pub mta_sts_port: u16,
    pub cache_path: PathBuf,
    /// Total time allowed for one MTA-STS policy fetch (RFC 8461 §3.3 suggests a minute).
    #[serde(deserialize_with = "duration::deserialize")]
    pub mta_sts_timeout: Duration,
    /// What a message's `TLS-Required: No` header does (RFC 8689 §5).
    pub tls_required_header: TlsRequiredHeader,
    /// A stricter level checked on every session but never enforced (docs/policy.md,
    /// "Shadow levels"); `""` = none.
    #[serde(deserialize_with = "level::deserialize_optional_level")]
    pub shadow: Option<Level>,
    pub domains: BTreeMap<String, DomainPolicy>,
}

/// `policy.tls_required_header`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TlsRequiredHeader {
    /// `TLS-Required: No` lowers levels learned from DNS (MTA-STS, DANE) to at most
    /// `may`; levels the operator configured still apply.
    #[default]
    Honor,
    /// The header changes nothing.
    Ignore,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default: Level::Auto,
            fallback: Level::May,
            min_tls_version: TlsVersion::Tls12,
            on_tls_failure: OnTlsFailure::Defer,
            mta_sts_port: 443,
            cache_path: PathBuf::from("/var/lib/mxgate/policy"),
            mta_sts_timeout: Duration::from_secs(60),
            tls_required_header: TlsRequiredHeader::Honor,
            shadow: None,
            domains: BTreeMap::new(),
        }
    }
}

/// One entry of `[policy.domains]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DomainPolicy {
    pub level: Level,
    /// Names accepted in the MX certificate at `verify` instead of the MX host name.
    #[serde(default, rename = "match")]
    pub match_names: Vec<String>,
    #[serde(default)]
    pub min_tls_version: Option<TlsVersion>,
    #[serde(default)]
    pub on_tls_failure: Option<OnTlsFailure>,
    /// The domain's shadow level (absent or `""`: `policy.shadow`).
    #[serde(default, deserialize_with = "level::deserialize_optional_level")]
    pub shadow: Option<Level>,
}

impl PolicyConfig {
    /// The shadow level for `domain`: its entry's `shadow`, else `policy.shadow`.
    pub fn shadow_for(&self, domain: &str) -> Option<Level> {
        match self.domain_entry(domain) {
            Some((_, e)) if e.shadow.is_some() => e.shadow,
            _ => self.shadow,
        }
    }

    /// The `[policy.domains]` entry for `domain`: an exact match first, then the
    /// nearest leading-dot parent (`.example.org` matches `a.b.example.org`, not
    /// `example.org` itself), as Postfix's `smtp_tls_policy_maps` does.
    pub fn domain_entry(&self, domain: &str) -> Option<(&str, &DomainPolicy)> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if let Some((k, v)) = self.domains.get_key_value(domain.as_str()) {
            return Some((k.as_str(), v));
        }
        let mut rest = domain.as_str();
        while let Some(pos) = rest.find('.') {
            let parent = &rest[pos..];
            if let Some((k, v)) = self.domains.get_key_value(parent) {
                return Some((k.as_str(), v));
            }
            rest = &rest[pos + 1..];
        }
        None
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Empty string disables the endpoint.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9325".to_string(),
        }
    }
}

/// `[socketmap]`: the policy server for Postfix's `smtp_tls_policy_maps`
/// (docs/postfix.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SocketmapConfig {
    /// `"ip:port"` to serve socketmap lookups on; empty = off.
    pub listen: String,
    /// A connection without a request for this long is closed. Postfix closes its own
    /// idle socketmap connections after 10 s, so the default leaves that to Postfix.
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle_timeout: Duration,
}

impl Default for SocketmapConfig {
    fn default() -> Self {
        SocketmapConfig {
            listen: String::new(),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl SocketmapConfig {
    /// The listen address, `None` when the server is off. Validation has checked it.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// `[cluster]`: several instances sharing MTA-STS policies (docs/scaling.md).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT/DB`; empty = nothing shared.
    pub redis: String,
}

/// `[control]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from("/run/mxgate/control.sock"),
        }
    }
}

/// `[tlsrpt]`: SMTP TLS Reporting (RFC 8460), see docs/tlsrpt.md.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsRptConfig {
    /// Count sessions and send reports (only to domains that publish a record).
    pub enabled: bool,
    /// `organization-name`; empty = `server.hostname`.
    pub organization_name: String,
    /// `contact-info`; empty = `postmaster@` + `server.hostname`.
    pub contact_info: String,
    /// Report mails' `From:` and envelope sender; empty = `noreply-tlsrpt@` +
    /// `server.hostname`.
    pub from: String,
    /// Reporting period (RFC 8460 §4.1: a UTC day); aligned to UTC midnight.
    #[serde(deserialize_with = "duration::deserialize")]
    pub period: Duration,
    /// Reports of a closed period go out spread over this window.
    #[serde(deserialize_with = "duration::deserialize")]
    pub send_delay: Duration,
    /// Where the counters are kept across restarts.
    pub path: PathBuf,
    /// How often the counters are saved (at most 60 s; also on SIGTERM).
    #[serde(deserialize_with = "duration::deserialize")]
    pub flush_interval: Duration,
    /// DKIM signing domain (`d=`); empty = report mails unsigned.
    pub dkim_domain: String,
    /// DKIM selector (`s=`).
    pub dkim_selector: String,
    /// PEM private key file (RSA or Ed25519).
    pub dkim_key: PathBuf,
    /// Optional `host:port` that report mails go to instead of the rua domain's MX.
    pub relay: String,
}

impl Default for TlsRptConfig {
    fn default() -> Self {
        TlsRptConfig {
            enabled: true,
            organization_name: String::new(),
            contact_info: String::new(),
            from: String::new(),
            period: Duration::from_secs(86400),
            send_delay: Duration::from_secs(3600),
            path: PathBuf::from("/var/lib/mxgate/tlsrpt"),
            flush_interval: Duration::from_secs(60),
            dkim_domain: String::new(),
            dkim_selector: String::new(),
            dkim_key: PathBuf::new(),
            relay: String::new(),
        }
    }
}

impl TlsRptConfig {
    /// `organization_name` or its default.
    pub fn organization(&self, hostname: &str) -> String {
        non_empty_or(&self.organization_name, || hostname.to_string())
    }

    /// `contact_info` or its default.
    pub fn contact(&self, hostname: &str) -> String {
        non_empty_or(&self.contact_info, || format!("postmaster@{hostname}"))
    }

    /// `from` or its default.
    pub fn sender(&self, hostname: &str) -> String {
        non_empty_or(&self.from, || format!("noreply-tlsrpt@{hostname}"))
    }

    /// Whether report mails are DKIM-signed in process.
    pub fn signs(&self) -> bool {
        !self.dkim_domain.is_empty()
    }
}

fn non_empty_or(s: &str, default: impl FnOnce() -> String) -> String {
    if s.trim().is_empty() {
        default()
    } else {
        s.trim().to_string()
    }
}

/// A `host:port` (`queue.bounce_relay`), parsed once: the host without brackets
/// (`[::1]:25` → `::1`), a non-zero port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: NonZeroU16,
}

impl HostPort {
    /// `None` unless `s` is `host:port` with a non-empty host and a port 1–65535.
    pub fn parse(s: &str) -> Option<HostPort> {
        let (host, port) = s.rsplit_once(':')?;
        let port = NonZeroU16::new(port.parse::<u16>().ok()?)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return None;
        }
        Some(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

#[cfg(test)]
mod host_port_tests {
    use super::HostPort;

    #[test]
    fn host_port_parses_once() {
        let hp = HostPort::parse("[::1]:2525").map(|h| (h.host, h.port.get()));
        assert_eq!(hp, Some(("::1".to_string(), 2525)));
        let hp = HostPort::parse("relay.example:25").map(|h| (h.host, h.port.get()));
        assert_eq!(hp, Some(("relay.example".to_string(), 25)));
        for bad in [
            "",
            "relay",
            ":25",
            "relay:0",
            "relay:x",
            "[]:25",
            "relay:70000",
        ] {
            assert_eq!(HostPort::parse(bad), None, "{bad}");
        }
    }
}
