//! `mxgate run`: build every part from the configuration and run until SIGTERM.

use std::path::PathBuf;

use mxgate_config::Config;

use crate::cli::CliError;

pub fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mxgate")
        .build()?;
    runtime.block_on(async move {
        let metrics_addr = crate::metrics_setup::install(&config.metrics.listen)?;
        tracing::info!(?metrics_addr, ?config_path, "mxgate starting");
        Ok(())
    })
}
