//! Loading and validating the configuration file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::{Config, DnssecMode, Level};

/// A configuration that cannot be used. The message always names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads `path` (TOML), or the built-in defaults when `path` is `None`, and
    /// validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let config = match path {
            None => Config::default(),
            Some(path) => {
                let file_error = |message: String| ConfigError::File {
                    path: path.to_path_buf(),
                    message,
                };
                if !path.is_file() {
                    return Err(file_error("no such file".into()));
                }
                let raw = config::Config::builder()
                    .add_source(
                        config::File::from(path)
                            .format(config::FileFormat::Toml)
                            .required(true),
                    )
                    .build()
                    .map_err(|e| file_error(e.to_string()))?;
                raw.try_deserialize::<Config>()
                    .map_err(|e| file_error(e.to_string()))?
            }
        };
        let config = config.normalised()?;
        config.validate()?;
        Ok(config)
    }

    /// Only `control.socket`, for the commands that talk to a running daemon (`queue`,
    /// `tlsrpt`): they must work while the rest of the file does not validate (an
    /// operator mid-edit, mid-incident). Returns the socket and, when the whole file
    /// is not valid, the error for a warning. Fails only when the file cannot be read
    /// as TOML or `control.socket` itself is not a string.
    pub fn control_socket_only(
        path: Option<&Path>,
    ) -> Result<(PathBuf, Option<ConfigError>), ConfigError> {
        let full_error = match Config::load(path) {
            Ok(c) => return Ok((c.control.socket, None)),
            Err(e) => e,
        };
        let Some(path) = path else {
            return Err(full_error);
        };
        let file_error = |message: String| ConfigError::File {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(file_error("no such file".into()));
        }
        let raw = config::Config::builder()
            .add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            )
            .build()
            .map_err(|e| file_error(e.to_string()))?;
        let socket = match raw.get_string("control.socket") {
            Ok(s) => PathBuf::from(s),
            Err(config::ConfigError::NotFound(_)) => crate::ControlConfig::default().socket,
            Err(e) => return Err(ConfigError::invalid("control.socket", e.to_string())),
        };
        Ok((socket, Some(full_error)))
    }

    /// Domain names are case-insensitive and may be written with a trailing dot
    /// (RFC 1035 §2.3.3): `[policy.domains]` keys and `match` names are stored
    /// lower-case without it. Two keys that become the same are an error.
    fn normalised(mut self) -> Result<Config, ConfigError> {
        let norm = |s: &str| s.trim_end_matches('.').to_ascii_lowercase();
        let mut domains = std::collections::BTreeMap::new();
        for (key, mut entry) in std::mem::take(&mut self.policy.domains) {
            entry.match_names = entry.match_names.iter().map(|n| norm(n)).collect();
            let lower = norm(&key);
            if domains.insert(lower.clone(), entry).is_some() {
                return Err(ConfigError::invalid(
                    format!("policy.domains.\"{key}\""),
                    format!("{lower:?} is listed twice"),
                ));
            }
        }
        self.policy.domains = domains;
        Ok(self)
    }

    fn validate_tlsrpt(&self) -> Result<(), ConfigError> {
        let t = &self.tlsrpt;
        if t.period < std::time::Duration::from_secs(1) {
            return Err(ConfigError::invalid("tlsrpt.period", "must be at least 1s"));
        }
        if t.flush_interval.is_zero() || t.flush_interval > std::time::Duration::from_secs(60) {
            return Err(ConfigError::invalid(
                "tlsrpt.flush_interval",
                "must be > 0 and at most 60s",
            ));
        }
        if t.path.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "tlsrpt.path",
                "must be a directory path",
            ));
        }
        if !t.relay.is_empty() && !is_host_port(&t.relay) {
            return Err(ConfigError::invalid(
                "tlsrpt.relay",
                "must be \"host:port\" or empty",
            ));
        }
        let from = t.sender(&self.server.hostname);
        if !from.contains('@') || from.contains(|c: char| c.is_whitespace() || c == '<' || c == '>')
        {
            return Err(ConfigError::invalid(
                "tlsrpt.from",
                "must be an address local@domain",
            ));
        }
        let dkim = [
            ("tlsrpt.dkim_domain", t.dkim_domain.is_empty()),
            ("tlsrpt.dkim_selector", t.dkim_selector.is_empty()),
            ("tlsrpt.dkim_key", t.dkim_key.as_os_str().is_empty()),
        ];
        if dkim.iter().any(|(_, empty)| !*empty) {
            if let Some((key, _)) = dkim.iter().find(|(_, empty)| *empty) {
                return Err(ConfigError::invalid(
                    *key,
                    "dkim_domain, dkim_selector and dkim_key are set together or not at all",
                ));
            }
            if !t.dkim_key.is_file() {
                return Err(ConfigError::invalid(
                    "tlsrpt.dkim_key",
                    format!("{}: no such file", t.dkim_key.display()),
                ));
            }
        }
        Ok(())
    }

    /// Parses a TOML document (used by tests and `check-config`).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|e| ConfigError::invalid("config", e.to_string()))?;
        let config = raw
            .try_deserialize::<Config>()
            .map_err(|e| ConfigError::invalid("config", e.to_string()))?;
        let config = config.normalised()?;
        config.validate()?;
        Ok(config)
    }

    /// Rules that span keys or that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.hostname.trim().is_empty()
            || self.server.hostname.contains(char::is_whitespace)
        {
            return Err(ConfigError::invalid(
                "server.hostname",
                "must be a host name",
            ));
        }
        if self.listener.listen.is_empty() {
            return Err(ConfigError::invalid(
                "listener.listen",
                "needs at least one address",
            ));
        }
        if self.listener.max_message_size == 0 {
            return Err(ConfigError::invalid(
                "listener.max_message_size",
                "must be > 0",
            ));
        }
        if self.listener.max_recipients == 0 {
            return Err(ConfigError::invalid(
                "listener.max_recipients",
                "must be > 0",
            ));
        }
        if self.queue.retry_intervals.is_empty() {
            return Err(ConfigError::invalid(
                "queue.retry_intervals",
                "needs at least one interval",
            ));
        }
        if self.queue.retry_intervals.iter().any(|d| d.is_zero()) {
            return Err(ConfigError::invalid(
                "queue.retry_intervals",
                "intervals must be > 0",
            ));
        }
        if self.queue.max_age.is_zero() {
            return Err(ConfigError::invalid("queue.max_age", "must be > 0"));
        }
        if !self.queue.bounce_relay.is_empty() && !is_host_port(&self.queue.bounce_relay) {
            return Err(ConfigError::invalid(
                "queue.bounce_relay",
                "must be \"host:port\" or empty",
            ));
        }
        if self.delivery.max_connections == 0 {
            return Err(ConfigError::invalid(
                "delivery.max_connections",
                "must be > 0",
            ));
        }
        if self.delivery.max_connections_per_domain == 0 {
            return Err(ConfigError::invalid(
                "delivery.max_connections_per_domain",
                "must be > 0",
            ));
        }
        if self.delivery.smtp_port == 0 {
            return Err(ConfigError::invalid("delivery.smtp_port", "must be > 0"));
        }
        if !self.delivery.ca_file.as_os_str().is_empty() && !self.delivery.ca_file.is_file() {
            return Err(ConfigError::invalid(
                "delivery.ca_file",
                format!("{}: no such file", self.delivery.ca_file.display()),
            ));
        }
        if !self.dns.trust_anchor.as_os_str().is_empty() && !self.dns.trust_anchor.is_file() {
            return Err(ConfigError::invalid(
                "dns.trust_anchor",
                format!("{}: no such file", self.dns.trust_anchor.display()),
            ));
        }
        self.validate_tlsrpt()?;
        if !self.socketmap.listen.is_empty() && self.socketmap.listen.parse::<SocketAddr>().is_err()
        {
            return Err(ConfigError::invalid(
                "socketmap.listen",
                "must be \"ip:port\" or empty",
            ));
        }
        if !self.cluster.redis.is_empty() && !self.cluster.redis.starts_with("redis://") {
            return Err(ConfigError::invalid(
                "cluster.redis",
                "must be a \"redis://HOST:PORT/DB\" URL or empty",
            ));
        }
        if self.socketmap.idle_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "socketmap.idle_timeout",
                "must be > 0",
            ));
        }
        if self.policy.mta_sts_port == 0 {
            return Err(ConfigError::invalid("policy.mta_sts_port", "must be > 0"));
        }
        if matches!(
            self.policy.fallback,
            Level::Auto | Level::MtaSts | Level::Dane | Level::DaneOnly
        ) {
            return Err(ConfigError::invalid(
                "policy.fallback",
                "must be one of none, may, encrypt, verify",
            ));
        }
        if self.dns.probe().is_none() {
            return Err(ConfigError::invalid(
                "dns.dnssec_probe",
                format!(
                    "must be \"NAME TYPE\" with TYPE one of {} (e.g. \". NS\")",
                    crate::DNSSEC_PROBE_TYPES.join(", ")
                ),
            ));
        }
        let dnssec_off = self.dns.dnssec == DnssecMode::Off;
        check_shadow("policy.shadow", self.policy.shadow, dnssec_off)?;
        if dnssec_off && self.policy.default.needs_dnssec() {
            return Err(ConfigError::invalid(
                "policy.default",
                format!(
                    "level {} needs DNSSEC, but dns.dnssec = \"off\"",
                    self.policy.default
                ),
            ));
        }
        for (domain, entry) in &self.policy.domains {
            let key = format!("policy.domains.\"{domain}\"");
            if !is_domain_key(domain) {
                return Err(ConfigError::invalid(
                    key,
                    "must be a domain name, optionally with a leading dot",
                ));
            }
            if dnssec_off && entry.level.needs_dnssec() {
                return Err(ConfigError::invalid(
                    format!("{key}.level"),
                    format!(
                        "level {} needs DNSSEC, but dns.dnssec = \"off\"",
                        entry.level
                    ),
                ));
            }
            check_shadow(&format!("{key}.shadow"), entry.shadow, dnssec_off)?;
            if !entry.match_names.is_empty() && entry.level != Level::Verify {
                return Err(ConfigError::invalid(
                    format!("{key}.match"),
                    "only applies to level \"verify\"",
                ));
            }
            if entry
                .match_names
                .iter()
                .any(|n| !is_domain_key(n) || n.starts_with('.') && n.len() < 2)
            {
                return Err(ConfigError::invalid(
                    format!("{key}.match"),
                    "must be host names",
                ));
            }
        }
        Ok(())
    }
}

/// A shadow level is a level that can fail: `encrypt` and stricter.
fn check_shadow(key: &str, shadow: Option<Level>, dnssec_off: bool) -> Result<(), ConfigError> {
    match shadow {
        None | Some(Level::Encrypt | Level::Verify | Level::MtaSts) => Ok(()),
        Some(level @ (Level::Dane | Level::DaneOnly)) if dnssec_off => Err(ConfigError::invalid(
            key,
            format!("level {level} needs DNSSEC, but dns.dnssec = \"off\""),
        )),
        Some(Level::Dane | Level::DaneOnly) => Ok(()),
        Some(level) => Err(ConfigError::invalid(
            key,
            format!(
                "{level} cannot fail, so it is no shadow level: use encrypt, verify, mta-sts, \
                 dane or dane-only"
            ),
        )),
    }
}

fn is_host_port(s: &str) -> bool {
    crate::HostPort::parse(s).is_some()
}

fn is_domain_key(s: &str) -> bool {
    let body = s.strip_prefix('.').unwrap_or(s);
    !body.is_empty()
        && body.len() <= 253
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OnTlsFailure, TlsVersion};
    use std::time::Duration;

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None).expect("defaults");
        assert_eq!(c.listener.listen[0].to_string(), "127.0.0.1:10025");
        assert_eq!(c.policy.default, Level::Auto);
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../../etc/mxgate.toml");
        let c = Config::from_toml_str(text).expect("etc/mxgate.toml must be valid");
        let e = &c.policy.domains[".example.org"];
        assert_eq!(e.level, Level::Encrypt);
        assert_eq!(e.min_tls_version, Some(TlsVersion::Tls13));
        assert_eq!(c.queue.max_age, Duration::from_secs(5 * 86400));
        assert_eq!(c.policy.on_tls_failure, OnTlsFailure::Defer);
    }

    fn err(text: &str) -> String {
        Config::from_toml_str(text)
            .expect_err("must fail")
            .to_string()
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err("[listener]\nbogus = 1\n").contains("bogus"));
        assert!(err("[nosuchsection]\nx = 1\n").contains("nosuchsection"));
        assert!(err("[queue]\nmax_age = \"soon\"\n").contains("max_age"));
        assert!(err("[policy]\ndefault = \"paranoid\"\n").contains("paranoid"));
        assert!(
            err("[policy.domains]\n\"Example.com\" = { level = \"may\" }\n\"example.com.\" = { level = \"none\" }\n")
                .contains("listed twice")
        );
        assert!(
            err("[policy.domains]\n\"a.example\" = { level = \"may\", match = [\"x\"] }\n")
                .contains("match")
        );
        assert!(
            err("[dns]\ndnssec = \"off\"\n[policy]\ndefault = \"dane\"\n")
                .contains("policy.default")
        );
        assert!(
            err("[listener]\nallowed_clients = [\"10.0.0.0/33\"]\n").contains("allowed_clients")
        );
        assert!(err("[queue]\nbounce_relay = \"nohost\"\n").contains("queue.bounce_relay"));
        assert!(err("[dns]\ndnssec_probe = \"example.com\"\n").contains("dns.dnssec_probe"));
        assert!(err("[policy]\nshadow = \"may\"\n").contains("policy.shadow"));
        assert!(err("[dns]\ndnssec = \"off\"\n[policy.domains]\n\"a.example\" = { level = \"may\", shadow = \"dane-only\" }\n")
            .contains("shadow"));
        assert!(err("[socketmap]\nlisten = \"localhost\"\n").contains("socketmap.listen"));
        assert!(err("[socketmap]\nport = 1\n").contains("port"));
        assert!(err("[cluster]\nredis = \"localhost:6379\"\n").contains("cluster.redis"));
    }

    #[test]
    fn control_socket_survives_an_invalid_file() {
        let dir = std::env::temp_dir().join(format!("mxgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bad.toml");
        std::fs::write(
            &path,
            "[queue]\nmax_age = \"soon\"\n[control]\nsocket = \"/tmp/x.sock\"\n",
        )
        .expect("write");
        let (socket, warning) = Config::control_socket_only(Some(&path)).expect("socket");
        assert_eq!(socket, PathBuf::from("/tmp/x.sock"));
        assert!(warning.expect("warning").to_string().contains("max_age"));
        std::fs::write(&path, "[queue\n").expect("write");
        assert!(Config::control_socket_only(Some(&path)).is_err());
        std::fs::write(&path, "[queue]\nmax_age = \"soon\"\n").expect("write");
        let (socket, _) = Config::control_socket_only(Some(&path)).expect("default socket");
        assert_eq!(socket, PathBuf::from("/run/mxgate/control.sock"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn postfix_level_words_get_a_helpful_error() {
        let e = err("[policy.domains]\n\"a.example\" = { level = \"secure\" }\n");
        assert!(
            e.contains("the levels are none, may, encrypt, verify"),
            "{e}"
        );
        assert!(e.contains("Postfix's name for \"verify\""), "{e}");
        assert!(!e.contains("variant"), "{e}");
    }

    #[test]
    fn nameservers_default_to_port_53_and_shadow_parses() {
        let c = Config::from_toml_str(
            "[dns]\nnameservers = [\"127.0.0.53\", \"::1\", \"127.0.0.1:5353\"]\n\
             [policy]\nshadow = \"verify\"\n\
             [policy.domains]\n\"a.example\" = { level = \"may\", shadow = \"dane-only\" }\n",
        )
        .expect("valid");
        let ns: Vec<String> = c.dns.nameservers.iter().map(ToString::to_string).collect();
        assert_eq!(ns, ["127.0.0.53:53", "[::1]:53", "127.0.0.1:5353"]);
        assert_eq!(c.policy.shadow_for("a.example"), Some(Level::DaneOnly));
        assert_eq!(c.policy.shadow_for("b.example"), Some(Level::Verify));
        assert_eq!(c.dns.probe(), Some((".", "NS")));
        assert!(err("[dns]\nnameservers = [\"resolver\"]\n").contains("nameservers"));
    }

    #[test]
    fn socketmap_is_off_by_default() {
        let c = Config::load(None).expect("defaults");
        assert_eq!(c.socketmap.listen_addr(), None);
        let c = Config::from_toml_str("[socketmap]\nlisten = \"127.0.0.1:8461\"\n").expect("valid");
        assert_eq!(
            c.socketmap.listen_addr(),
            Some(([127, 0, 0, 1], 8461).into())
        );
    }

    #[test]
    fn domain_keys_are_case_insensitive() {
        let c =
            Config::from_toml_str("[policy.domains]\n\"Example.COM.\" = { level = \"none\" }\n")
                .expect("valid");
        assert_eq!(
            c.policy.domain_entry("example.com").map(|e| e.1.level),
            Some(Level::None)
        );
        assert!(
            err("[policy.domains]\n\"bad_domain!\" = { level = \"none\" }\n")
                .contains("policy.domains")
        );
    }

    #[test]
    fn domain_entry_matches_exact_then_parents() {
        let c = Config::from_toml_str(
            "[policy.domains]\n\"example.org\" = { level = \"verify\" }\n\".example.org\" = { level = \"encrypt\" }\n",
        )
        .expect("valid");
        assert_eq!(
            c.policy.domain_entry("example.org").map(|e| e.1.level),
            Some(Level::Verify)
        );
        assert_eq!(
            c.policy.domain_entry("a.b.Example.org.").map(|e| e.1.level),
            Some(Level::Encrypt)
        );
        assert_eq!(c.policy.domain_entry("notexample.org"), None);
    }

    #[test]
    fn tlsrpt_section() {
        let c = Config::from_toml_str(
            "[server]\nhostname = \"relay.example\"\n[tlsrpt]\nperiod = \"10s\"\nsend_delay = \"0s\"\nrelay = \"127.0.0.1:25\"\n",
        )
        .expect("valid");
        assert_eq!(c.tlsrpt.period, Duration::from_secs(10));
        assert!(c.tlsrpt.enabled);
        assert_eq!(
            c.tlsrpt.sender("relay.example"),
            "noreply-tlsrpt@relay.example"
        );
        assert_eq!(
            c.tlsrpt.contact("relay.example"),
            "postmaster@relay.example"
        );
        assert_eq!(c.tlsrpt.organization("relay.example"), "relay.example");
        assert_eq!(Config::default().tlsrpt.period, Duration::from_secs(86400));
        assert!(err("[tlsrpt]\nperiod = \"0s\"\n").contains("tlsrpt.period"));
        assert!(err("[tlsrpt]\nflush_interval = \"5m\"\n").contains("tlsrpt.flush_interval"));
        assert!(err("[tlsrpt]\nrelay = \"x\"\n").contains("tlsrpt.relay"));
        assert!(err("[tlsrpt]\nfrom = \"nobody\"\n").contains("tlsrpt.from"));
        assert!(err("[tlsrpt]\ndkim_domain = \"relay.example\"\n").contains("tlsrpt.dkim_selector"));
        assert!(err(
            "[tlsrpt]\ndkim_domain = \"a\"\ndkim_selector = \"s\"\ndkim_key = \"/nonexistent\"\n"
        )
        .contains("tlsrpt.dkim_key"));
        assert!(err("[tlsrpt]\nbogus = 1\n").contains("bogus"));
    }
}
