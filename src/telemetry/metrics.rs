//! Prometheus metrics: every metric name in one place, each series registered with its
//! HELP text when [`Metrics`] is built, so a dashboard or an alert finds it (at 0) from
//! start-up on.
//!
//! [`Metrics`] owns its own registry rather than installing a process-wide recorder: two
//! servers in one process (the integration tests) keep separate counts, and the hot path
//! bumps a pre-registered handle instead of looking a name up. The `/metrics` endpoint
//! renders it with [`Metrics::render`].

use std::{
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use metrics::{Counter, Gauge, Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::policy::Snapshot;

/// `policy_reloads_total{result}`: rebuilds of the policy directory by outcome.
pub const POLICY_RELOADS: &str = "cedar_pdp_policy_reloads_total";
/// `policy_last_reload_success_timestamp_seconds`: when a rebuild last succeeded.
pub const POLICY_LAST_RELOAD_SUCCESS: &str =
    "cedar_pdp_policy_last_reload_success_timestamp_seconds";
/// `policy_last_reload_successful`: 1 if the latest rebuild succeeded, 0 if it failed.
pub const POLICY_LAST_RELOAD_SUCCESSFUL: &str = "cedar_pdp_policy_last_reload_successful";
/// `policies_loaded`: policies in the serving snapshot.
pub const POLICIES_LOADED: &str = "cedar_pdp_policies_loaded";
/// `entities_loaded`: entities in the serving snapshot's `entities.json`.
pub const ENTITIES_LOADED: &str = "cedar_pdp_entities_loaded";
/// `policy_info{version}`: 1 for the serving version, 0 for versions it replaced.
pub const POLICY_INFO: &str = "cedar_pdp_policy_info";

/// The `result` label of [`POLICY_RELOADS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    /// The directory was valid (its content may or may not have changed).
    Success,
    /// The directory was invalid or unreadable; the last good snapshot kept serving.
    Failure,
}

impl ReloadResult {
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// The service's metrics; cheap to clone, every clone counts into the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    reload_success: Counter,
    reload_failure: Counter,
    last_success: Gauge,
    last_successful: Gauge,
    policies_loaded: Gauge,
    entities_loaded: Gauge,
    /// The serving version's `policy_info` series, set to 0 when a new version replaces
    /// it. A std mutex: held for two gauge writes, never across an await.
    serving_info: Mutex<Option<Gauge>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a metric handle comes from: the recorder, with the source location metrics needs.
fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()))
}

impl Metrics {
    /// A fresh registry with every series registered and described.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let describe_counter = |name: &'static str, help: &'static str| {
            recorder.describe_counter(name.into(), None, SharedString::const_str(help));
        };
        let describe_gauge = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_gauge(name.into(), unit, SharedString::const_str(help));
        };
        describe_counter(
            POLICY_RELOADS,
            "Rebuilds of the policy directory, by result (success or failure).",
        );
        describe_gauge(
            POLICY_LAST_RELOAD_SUCCESS,
            Some(Unit::Seconds),
            "Unix time of the last rebuild that found the policy directory valid.",
        );
        describe_gauge(
            POLICY_LAST_RELOAD_SUCCESSFUL,
            None,
            "1 if the latest rebuild of the policy directory succeeded, 0 if it failed.",
        );
        describe_gauge(
            POLICIES_LOADED,
            None,
            "Policies in the snapshot being served.",
        );
        describe_gauge(
            ENTITIES_LOADED,
            None,
            "Entities in the served snapshot's entities.json.",
        );
        describe_gauge(
            POLICY_INFO,
            None,
            "1 for the policy version being served, 0 for versions it replaced.",
        );
        let counter = |name: &'static str, labels: Vec<Label>| {
            recorder.register_counter(&Key::from_parts(name, labels), &metadata())
        };
        let gauge =
            |name: &'static str| recorder.register_gauge(&Key::from_name(name), &metadata());
        let reload = |result: ReloadResult| {
            let counter = counter(POLICY_RELOADS, vec![Label::new("result", result.label())]);
            counter.absolute(0);
            counter
        };
        let inner = Inner {
            reload_success: reload(ReloadResult::Success),
            reload_failure: reload(ReloadResult::Failure),
            last_success: gauge(POLICY_LAST_RELOAD_SUCCESS),
            last_successful: gauge(POLICY_LAST_RELOAD_SUCCESSFUL),
            policies_loaded: gauge(POLICIES_LOADED),
            entities_loaded: gauge(ENTITIES_LOADED),
            serving_info: Mutex::new(None),
            handle,
            recorder,
        };
        inner.last_successful.set(1.0);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The registry in the Prometheus text format, as `/metrics` serves it.
    pub fn render(&self) -> String {
        self.inner.handle.render()
    }

    /// Housekeeping the exporter needs now and then (folding histogram samples); the
    /// `/metrics` endpoint runs it on a timer.
    pub fn run_upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    /// Records `snapshot` as the one serving: its counts and its `policy_info` series.
    /// Called at start-up and after every swap.
    pub fn serving(&self, snapshot: &Snapshot) {
        let inner = &self.inner;
        inner.policies_loaded.set(snapshot.policy_count() as f64);
        inner.entities_loaded.set(snapshot.entity_count() as f64);
        let key = Key::from_parts(
            POLICY_INFO,
            vec![Label::new("version", snapshot.version().to_owned())],
        );
        let info = inner.recorder.register_gauge(&key, &metadata());
        let mut serving = inner.serving_info.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = serving.take() {
            old.set(0.0);
        }
        info.set(1.0);
        *serving = Some(info);
    }

    /// Counts one rebuild of the policy directory and its result.
    pub fn reloaded(&self, result: ReloadResult) {
        let inner = &self.inner;
        match result {
            ReloadResult::Success => {
                inner.reload_success.increment(1);
                inner.last_success.set(unix_seconds(SystemTime::now()));
                inner.last_successful.set(1.0);
            }
            ReloadResult::Failure => {
                inner.reload_failure.increment(1);
                inner.last_successful.set(0.0);
            }
        }
    }

    /// Records the snapshot loaded at start-up: serving, and a success at its load time.
    pub fn started(&self, snapshot: &Snapshot) {
        self.serving(snapshot);
        self.inner
            .last_success
            .set(unix_seconds(snapshot.loaded_at()));
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

#[cfg(test)]
mod tests;
