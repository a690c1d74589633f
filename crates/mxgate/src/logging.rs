//! tracing to stderr, as text (`key=value`, the default) or JSON for log shippers.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` filter.
///
/// The resolver library's own events (raw DNS messages in warnings) are silenced unless
/// `RUST_LOG` names them: mxgate logs DNS problems itself, in one line of its own words
/// (the resolver self-test, the deferral reasons).
pub fn init(format: LogFormat) {
    let env = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_new(if env.trim().is_empty() { "info" } else { &env })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    if !env.contains("hickory") {
        for quiet in [
            "hickory_proto=off",
            "hickory_resolver=off",
            "hickory_net=off",
        ] {
            if let Ok(d) = quiet.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
