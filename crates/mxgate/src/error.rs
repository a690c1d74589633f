//! The error that ends a command with a message (exit status 2).

/// An error that ends the command with a message.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("configuration: {0}")]
    Config(#[from] mxgate_config::ConfigError),
    #[error("{0}")]
    Startup(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
