//! The `[tracing]` table: OpenTelemetry trace export over OTLP (gRPC), off unless an
//! endpoint is set here or in the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables, with a sampling ratio and a bound on the
//! spans waiting for export.

use clap::Args;
use serde::Deserialize;

/// The standard variables that name a collector (the traces one first).
pub const OTLP_ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The `[tracing]` table of [`super::Settings`]; every key optional.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingSettings {
    /// OTLP/gRPC collector traces are exported to (e.g. `http://otel-collector:4317`);
    /// unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`, and
    /// with none of them no trace leaves the process.
    #[arg(
        id = "tracing_otlp_endpoint",
        long = "otlp-endpoint",
        env = "CEDAR_PDP_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,
    /// Share of calls whose spans are kept (0–1), drawn by the server where a trace enters
    /// it (a caller's sampled flag does not choose); `OTEL_TRACES_SAMPLER` wins when set.
    #[arg(
        id = "tracing_sample_ratio",
        long = "trace-sample-ratio",
        env = "CEDAR_PDP_TRACE_SAMPLE_RATIO",
        value_name = "R"
    )]
    pub sample_ratio: Option<f64>,
    /// Spans waiting for export before new ones are dropped (and counted).
    #[arg(
        id = "tracing_queue_capacity",
        long = "trace-queue-capacity",
        env = "CEDAR_PDP_TRACE_QUEUE_CAPACITY",
        value_name = "N"
    )]
    pub queue_capacity: Option<usize>,
}

/// The resolved `[tracing]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The collector named in the config file or by flag; `None`: the standard variables
    /// decide (see [`TracingConfig::exporting`]).
    pub otlp_endpoint: Option<String>,
    /// Share of root traces sampled.
    pub sample_ratio: f64,
    /// Spans waiting for export at most.
    pub queue_capacity: usize,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            queue_capacity: 2048,
        }
    }
}

impl TracingConfig {
    /// Folds `upper` over `lower` over the defaults.
    pub fn from_layers(lower: TracingSettings, upper: TracingSettings) -> Self {
        let d = Self::default();
        Self {
            otlp_endpoint: upper
                .otlp_endpoint
                .or(lower.otlp_endpoint)
                .filter(|e| !e.is_empty()),
            sample_ratio: upper
                .sample_ratio
                .or(lower.sample_ratio)
                .unwrap_or(d.sample_ratio),
            queue_capacity: upper
                .queue_capacity
                .or(lower.queue_capacity)
                .unwrap_or(d.queue_capacity),
        }
    }

    /// Whether traces are exported: an endpoint is configured, here or in the
    /// environment.
    pub fn exporting(&self) -> bool {
        self.otlp_endpoint.is_some()
            || OTLP_ENDPOINT_VARIABLES
                .iter()
                .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()))
    }

    /// The first setting that would quietly do the wrong thing, as `(key, message)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Some((
                "tracing.sample_ratio",
                format!("{} is not between 0 and 1", self.sample_ratio),
            ));
        }
        if self.queue_capacity == 0 {
            return Some((
                "tracing.queue_capacity",
                "must be at least 1 (0 would drop every span)".into(),
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Some((
                "tracing.otlp_endpoint",
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
        None
    }
}
