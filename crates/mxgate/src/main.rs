//! `mxgate`: the command line (docs/operations.md).
//!
//! `run` wires the crates together (listener → queue → delivery, with the policy
//! engine beside delivery), installs the metrics endpoint, handles signals and tells
//! systemd when it is ready. The other commands are clients: they read the
//! configuration, ask DNS / the control socket, print and exit.

mod check;
mod cli;
mod clock;
mod control;
mod dispatch;
mod error;
mod inspect;
mod logging;
#[cfg(test)]
mod manpage;
mod metrics_setup;
mod reload;
mod run;
mod tlsrpt;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match dispatch::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mxgate: {e}");
            ExitCode::from(2)
        }
    }
}
