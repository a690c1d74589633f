//! Runs the parsed subcommand.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::error::CliError;

pub fn dispatch(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Run { config, log_format } => {
            crate::logging::init(log_format);
            let loaded = config.load()?;
            crate::run::run(loaded, config.path().map(Path::to_path_buf))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy {
            domain,
            json,
            refresh,
            config,
        } => {
            let write = if refresh {
                mxgate_policy::CacheWrite::Store
            } else {
                mxgate_policy::CacheWrite::ReadOnly
            };
            crate::inspect::policy(config.load()?, &domain, json, write)
        }
        Command::Check {
            domain,
            json,
            config,
        } => crate::check::check(config.load()?, &domain, json),
        Command::Queue {
            action,
            config,
            socket,
        } => crate::inspect::queue(&socket.resolve(&config)?, action),
        Command::Tlsrpt {
            action,
            config,
            socket,
        } => crate::inspect::tlsrpt(&socket.resolve(&config)?, action),
        Command::CheckConfig { config } => {
            let loaded = config.load()?;
            match config.path() {
                Some(p) => println!("{}: configuration is valid", p.display()),
                None => println!("built-in defaults: configuration is valid"),
            }
            let _ = loaded;
            Ok(ExitCode::SUCCESS)
        }
    }
}
