//! The command line's shape (clap): subcommands and their arguments. Running them is
//! `dispatch.rs`; their error is `error.rs`.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use mxgate_config::Config;

use crate::error::CliError;

/// Policy-enforcing outbound SMTP relay: MTA-STS, DANE and per-domain TLS levels.
#[derive(Debug, Parser)]
#[command(name = "mxgate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate the configuration and exit (0 = valid).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the effective TLS policy of a domain and why; exit 1 if mail to it would
    /// be deferred or bounced. Read-only unless --refresh.
    Policy {
        domain: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Store a freshly fetched MTA-STS policy in policy.cache_path.
        #[arg(long)]
        refresh: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Live TLS probe of every MX of a domain (never sends MAIL); exit 1 if the
    /// effective policy would defer.
    Check {
        domain: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// TLS reports (RFC 8460) of a running mxgate (through `control.socket`).
    Tlsrpt {
        #[command(subcommand)]
        action: TlsRptAction,
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        socket: SocketArg,
    },
    /// Operate on the queue of a running mxgate (through `control.socket`).
    Queue {
        #[command(subcommand)]
        action: QueueAction,
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        socket: SocketArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// List queued messages with their recipients' states.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one message.
    Show { id: String },
    /// Retry deferred recipients now (of one message, or of all).
    Flush { id: Option<String> },
    /// Remove a message without notifying anyone.
    Delete { id: String },
    /// Give up on a message's pending recipients and send the DSN.
    Bounce { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TlsRptAction {
    /// The counts gathered so far in this period, per policy domain and policy, and
    /// the reports waiting to be sent.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Close the current reporting period now and send its reports at once.
    Send,
}

/// `--config PATH`, else `$MXGATE_CONFIG`, else built-in defaults.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Configuration file (TOML). Default: $MXGATE_CONFIG, else built-in defaults.
    #[arg(long, short = 'c', env = "MXGATE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn path(&self) -> Option<&Path> {
        self.config.as_deref().filter(|p| !p.as_os_str().is_empty())
    }

    pub fn load(&self) -> Result<Config, mxgate_config::ConfigError> {
        Config::load(self.path())
    }
}

/// `--socket PATH` of the commands that talk to a running daemon.
#[derive(Debug, clap::Args)]
pub struct SocketArg {
    /// The daemon's control socket; skips the configuration file entirely.
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
}

impl SocketArg {
    /// `--socket`, else `control.socket` of the file: only that key is read, so a file
    /// that no longer validates only earns a warning.
    pub fn resolve(&self, config: &ConfigArg) -> Result<PathBuf, CliError> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        let (socket, warning) = Config::control_socket_only(config.path())?;
        if let Some(w) = warning {
            eprintln!(
                "mxgate: warning: the configuration does not validate ({w}); this command \
                 uses only control.socket = {}",
                socket.display()
            );
        }
        Ok(socket)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
