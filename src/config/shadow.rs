//! The `[shadow]` table: a second policy directory every decision (or a sampled share) is
//! also decided against, off the request path, to see what a candidate policy change
//! would do to live traffic before it is served. Off unless a directory is named.

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

/// The `[shadow]` table of [`super::Settings`]; every key optional.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowSettings {
    /// A candidate policy directory decided alongside the live one, never answering
    /// (loaded, validated and hot-reloaded like `--policies`).
    #[arg(
        id = "shadow_policies",
        long = "shadow-policies",
        env = "CEDAR_PDP_SHADOW_POLICIES",
        value_name = "DIR"
    )]
    pub policies: Option<PathBuf>,
    /// Share of calls also decided by the shadow set (0–1).
    #[arg(
        id = "shadow_sample_rate",
        long = "shadow-sample-rate",
        env = "CEDAR_PDP_SHADOW_SAMPLE_RATE",
        value_name = "R"
    )]
    pub sample_rate: Option<f64>,
    /// Shadow decisions that may wait for the shadow thread before new ones are dropped
    /// (and counted).
    #[arg(
        id = "shadow_queue_capacity",
        long = "shadow-queue-capacity",
        env = "CEDAR_PDP_SHADOW_QUEUE_CAPACITY",
        value_name = "N"
    )]
    pub queue_capacity: Option<usize>,
}

/// The resolved `[shadow]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    /// The candidate directory; `None`: no shadow evaluation.
    pub policies: Option<PathBuf>,
    /// Share of calls also decided by the shadow set.
    pub sample_rate: f64,
    /// Shadow decisions waiting at most.
    pub queue_capacity: usize,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self {
            policies: None,
            sample_rate: 1.0,
            queue_capacity: 1024,
        }
    }
}

impl ShadowConfig {
    /// Folds `upper` over `lower` over the defaults.
    pub fn from_layers(lower: ShadowSettings, upper: ShadowSettings) -> Self {
        let d = Self::default();
        Self {
            policies: upper
                .policies
                .or(lower.policies)
                .filter(|p| !p.as_os_str().is_empty()),
            sample_rate: upper
                .sample_rate
                .or(lower.sample_rate)
                .unwrap_or(d.sample_rate),
            queue_capacity: upper
                .queue_capacity
                .or(lower.queue_capacity)
                .unwrap_or(d.queue_capacity),
        }
    }

    /// The first setting that would quietly do the wrong thing, as `(key, message)`.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return Some((
                "shadow.sample_rate",
                format!("{} is not between 0 and 1", self.sample_rate),
            ));
        }
        if self.queue_capacity == 0 {
            return Some((
                "shadow.queue_capacity",
                "must be at least 1 (0 would drop every shadow decision)".into(),
            ));
        }
        None
    }
}
