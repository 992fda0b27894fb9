//! Telemetry: logging and trace export setup here, Prometheus metrics in [`metrics`], the
//! decision log in [`audit`], OpenTelemetry spans in [`trace`].
//!
//! Logs are `tracing` events as JSON lines (the default for `serve`) or as text, filtered
//! by `RUST_LOG` when set, else by the configured level.

pub mod audit;
pub mod metrics;
mod throttle;
pub mod trace;

pub use crate::config::{AuditOptions, AuditSink};
pub use audit::AuditLog;
pub use metrics::Metrics;
pub use throttle::OncePerSecond;

use tracing_subscriber::{
    EnvFilter, Layer as _, filter::filter_fn, layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

use crate::config::{LogFormat, TracingConfig};

/// Installs the global subscriber: log lines as `format` at `level` (`RUST_LOG` wins),
/// and, when `tracing` names a collector, this crate's spans exported over OTLP (see
/// [`trace`]). A filter that does not parse, or an exporter that cannot start, is an
/// error naming it. The [`trace::Export`] returned sends what is queued when shut down.
pub fn init(
    format: LogFormat,
    level: &str,
    tracing: &TracingConfig,
) -> Result<Option<trace::Export>, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => EnvFilter::try_new(&from_env)
            .map_err(|e| format!("RUST_LOG={from_env:?} is not a valid filter: {e}"))?,
        _ => EnvFilter::try_new(level)
            .map_err(|e| format!("log level {level:?} is not a valid filter: {e}"))?,
    };
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_filter(filter).boxed(),
    };
    let (export, spans) = match trace::export(tracing)? {
        Some((export, tracer)) => {
            // Spans only (log events stay in the logs), this crate's, debug and up.
            // Only what the spans are about: no source locations, thread names, busy/idle
            // timings or context activation, each a cost on every span of every call.
            let spans = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_target(false)
                .with_context_activation(false)
                .with_filter(filter_fn(|meta| {
                    meta.is_span()
                        && meta.target().starts_with("cedar_pdp")
                        && *meta.level() <= tracing::Level::DEBUG
                }));
            (Some(export), Some(spans))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
    Ok(export)
}
