//! Telemetry: logging setup here, Prometheus metrics in [`metrics`].
//!
//! Logs are `tracing` events as JSON lines (the default for `serve`) or as text, filtered
//! by `RUST_LOG` when set, else by the configured level.

pub mod audit;
pub mod metrics;
mod throttle;

pub use crate::config::{AuditOptions, AuditSink};
pub use audit::AuditLog;
pub use metrics::Metrics;
pub use throttle::OncePerSecond;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. A filter that does not parse is an error naming it.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => EnvFilter::try_new(&from_env)
            .map_err(|e| format!("RUST_LOG={from_env:?} is not a valid filter: {e}"))?,
        _ => EnvFilter::try_new(level)
            .map_err(|e| format!("log level {level:?} is not a valid filter: {e}"))?,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    installed.map_err(|e| format!("cannot install the log subscriber: {e}"))
}
