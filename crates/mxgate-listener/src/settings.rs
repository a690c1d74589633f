//! What the listener needs from the configuration, in one value.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use mxgate_config::{Config, ListenerConfig};

/// `[listener]` plus `server.hostname`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSettings {
    pub listen: Vec<SocketAddr>,
    pub allowed_clients: Vec<IpNet>,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    pub max_sessions: usize,
    /// Banner, EHLO and `Received:` name.
    pub hostname: String,
}

impl ListenerSettings {
    pub fn new(listener: &ListenerConfig, hostname: &str) -> Self {
        ListenerSettings {
            listen: listener.listen.clone(),
            allowed_clients: listener.allowed_clients.clone(),
            max_message_size: listener.max_message_size,
            max_recipients: listener.max_recipients,
            command_timeout: listener.command_timeout,
            data_timeout: listener.data_timeout,
            max_sessions: listener.max_sessions,
            hostname: hostname.to_string(),
        }
    }

    pub fn from_config(config: &Config) -> Self {
        Self::new(&config.listener, &config.server.hostname)
    }

    /// Whether `ip` may use the listener. IPv4-mapped IPv6 addresses are compared as
    /// IPv4.
    pub fn is_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allowed_clients.iter().any(|net| net.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_clients() {
        let mut s = ListenerSettings::new(&ListenerConfig::default(), "relay.example");
        assert!(s.is_allowed("127.0.0.1".parse().unwrap()));
        assert!(s.is_allowed("::1".parse().unwrap()));
        assert!(s.is_allowed("::ffff:127.0.0.5".parse().unwrap()));
        assert!(!s.is_allowed("192.0.2.1".parse().unwrap()));
        s.allowed_clients = vec![];
        assert!(!s.is_allowed("127.0.0.1".parse().unwrap()));
    }
}
