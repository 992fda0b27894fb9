//! Prometheus metrics: every metric name in one place, each series registered with its
//! HELP text when [`Metrics`] is built, so a dashboard or an alert finds it (at 0) from
//! start-up on.
//!
//! [`Metrics`] owns its own registry rather than installing a process-wide recorder: two
//! servers in one process (the integration tests) keep separate counts, and the hot path
//! bumps a pre-registered handle instead of looking a name up. The `/metrics` endpoint
//! renders it with [`Metrics::render`].

use std::{
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// `decisions_total{api,decision}`: decisions made; a batch counts one per item.
pub const DECISIONS: &str = "cedar_pdp_decisions_total";
/// `decisions_reused_total{api}`: decisions answered from the decision cache (the same
/// question asked before of the same policy version), not evaluated again; counted in
/// [`DECISIONS`] too.
pub const DECISIONS_REUSED: &str = "cedar_pdp_decisions_reused_total";
/// `decision_duration_seconds{api}`: time to answer a whole call.
pub const DECISION_DURATION: &str = "cedar_pdp_decision_duration_seconds";
/// `requests_rejected_total{api,reason}`: calls refused for bad input or a limit.
pub const REQUESTS_REJECTED: &str = "cedar_pdp_requests_rejected_total";
/// `audit_records_dropped_total`: audit records lost because the queue was full.
pub const AUDIT_DROPPED: &str = "cedar_pdp_audit_records_dropped_total";
/// `trace_spans_dropped_total`: spans lost on the way to the OTLP collector.
pub const TRACE_SPANS_DROPPED: &str = "cedar_pdp_trace_spans_dropped_total";
/// `trace_spans_exported_total`: spans the OTLP collector took.
pub const TRACE_SPANS_EXPORTED: &str = "cedar_pdp_trace_spans_exported_total";
/// `policy_reloads_total{result}`: rebuilds of the policy directory by outcome.
pub const POLICY_RELOADS: &str = "cedar_pdp_policy_reloads_total";
/// `policy_reload_failures_total{reason}`: failed rebuilds by what was wrong; a rebuild
/// with problems of several kinds counts once under each.
pub const POLICY_RELOAD_FAILURES: &str = "cedar_pdp_policy_reload_failures_total";
/// The `reason` label values of [`POLICY_RELOAD_FAILURES`] (the policy loader's problem
/// kinds).
pub const RELOAD_FAILURE_REASONS: [&str; 8] = [
    "io",
    "too_large",
    "parse",
    "schema",
    "validate",
    "entities",
    "unsettled",
    "other",
];
/// `policy_reload_duration_seconds`: time from the start of a rebuild's read to its
/// outcome (served, unchanged or refused).
pub const POLICY_RELOAD_DURATION: &str = "cedar_pdp_policy_reload_duration_seconds";
/// Bucket bounds of [`POLICY_RELOAD_DURATION`], in seconds: 1 ms to 2 min.
pub const RELOAD_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];
/// `policy_files_unserved_since_timestamp_seconds`: since when the policy directory on
/// disk has held something other than the serving set (the first rebuild that failed
/// since the last one that succeeded), 0 while it holds what is served.
pub const POLICY_FILES_UNSERVED_SINCE: &str =
    "cedar_pdp_policy_files_unserved_since_timestamp_seconds";
/// `policies_by_file{file}`: policies (and templates) the serving set has from each file.
pub const POLICIES_BY_FILE: &str = "cedar_pdp_policies_by_file";
/// `policy_last_reload_success_timestamp_seconds`: when a rebuild last succeeded.
pub const POLICY_LAST_RELOAD_SUCCESS: &str =
    "cedar_pdp_policy_last_reload_success_timestamp_seconds";
/// `policy_last_reload_successful`: 1 if the latest rebuild succeeded, 0 if it failed.
pub const POLICY_LAST_RELOAD_SUCCESSFUL: &str = "cedar_pdp_policy_last_reload_successful";
/// `policies_loaded`: policies in the serving snapshot.
pub const POLICIES_LOADED: &str = "cedar_pdp_policies_loaded";
/// `entities_loaded`: entities in the serving snapshot's `entities.json`.
pub const ENTITIES_LOADED: &str = "cedar_pdp_entities_loaded";
/// `calls_in_flight`: decision calls received and not yet answered, queued ones included;
/// refused past `max_concurrent_calls`.
pub const CALLS_IN_FLIGHT: &str = "cedar_pdp_calls_in_flight";
/// `forbid_errors_total{policy_id}`: decisions made DENY by a forbid whose evaluation
/// errored (`on_forbid_error = "deny"`), by the forbid's id. Ids come from the policy
/// files, so the series are as many as the forbids that ever errored since start-up.
pub const FORBID_ERRORS: &str = "cedar_pdp_forbid_errors_total";
/// `tls_reloads_total{result}`: re-reads of the gRPC port's TLS files (on a change or the
/// periodic check), by outcome: `changed` (new connections get the new files),
/// `unchanged`, or `failure` (unusable files; the previous ones keep serving).
pub const TLS_RELOADS: &str = "cedar_pdp_tls_reloads_total";
/// `policy_info{version}`: 1, labelled with the serving version; only that one series is
/// exported, so the label cannot pile up values as versions come and go.
pub const POLICY_INFO: &str = "cedar_pdp_policy_info";

/// Bucket bounds of [`DECISION_DURATION`], in seconds: 10 µs to 1 s, so both an
/// in-memory decision and a slow batch land in a bucket of their own.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The `api` label: which API answered. The values are fixed, so the label set is small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `cedarpdp.v1.Authorizer/IsAuthorized`.
    IsAuthorized,
    /// `cedarpdp.v1.Authorizer/BatchIsAuthorized`.
    Batch,
    /// Envoy's `envoy.service.auth.v3.Authorization/Check`.
    ExtAuthz,
    /// The AuthZEN 1.0 HTTP/JSON API (evaluation, evaluations and search).
    Authzen,
}

impl Api {
    const ALL: [Api; 4] = [Api::IsAuthorized, Api::Batch, Api::ExtAuthz, Api::Authzen];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::IsAuthorized => "is_authorized",
            Self::Batch => "batch",
            Self::ExtAuthz => "ext_authz",
            Self::Authzen => "authzen",
        }
    }
}

/// Why a request was refused before any policy decided it: the one list of reasons,
/// which the gRPC status, the ext_authz answer and the audit record derive from, and
/// the `reason` label of [`REQUESTS_REJECTED`] (its values are fixed, so the label set
/// is small).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Malformed input (INVALID_ARGUMENT).
    Invalid,
    /// Past a configured limit (RESOURCE_EXHAUSTED).
    Limit,
    /// No identifiable principal (ext_authz: UNAUTHENTICATED, HTTP 401). Common at an
    /// edge, so alerts on refusals leave it out.
    Unauthenticated,
    /// A verified client not on the API's caller allow-list (PERMISSION_DENIED).
    CallerNotAllowed,
    /// Shed because `max_concurrent_calls` were in flight (RESOURCE_EXHAUSTED; ext_authz:
    /// a 503 deny).
    Overloaded,
    /// Not answered within its deadline (DEADLINE_EXCEEDED; ext_authz: a 504 deny).
    Timeout,
    /// Deciding failed unexpectedly (a bug: INTERNAL; ext_authz: a 500 deny).
    Internal,
}

impl Reason {
    const ALL: [Reason; 7] = [
        Reason::Invalid,
        Reason::Limit,
        Reason::Unauthenticated,
        Reason::CallerNotAllowed,
        Reason::Overloaded,
        Reason::Timeout,
        Reason::Internal,
    ];

    /// The `reason` label value of [`REQUESTS_REJECTED`].
    pub fn label(self) -> &'static str {
        match self {
            Self::Invalid => "invalid_argument",
            Self::Limit => "limit_exceeded",
            Self::Unauthenticated => "unauthenticated",
            Self::CallerNotAllowed => "caller_not_allowed",
            Self::Overloaded => "overloaded",
            Self::Timeout => "deadline_exceeded",
            Self::Internal => "internal",
        }
    }

    /// The short word an ext_authz answer's metadata and an audit record's `refused`
    /// field use for it (kept as first released: access logs and audit queries read it).
    pub fn word(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Limit => "limit",
            Self::Unauthenticated => "unauthenticated",
            Self::CallerNotAllowed => "caller_not_allowed",
            Self::Overloaded => "overloaded",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
        }
    }
}

/// `policy_decisions_total{policy_id,decision}`: decisions each determining policy took
/// part in, since the serving snapshot was loaded. Rendered from the snapshot's own counts
/// (see [`Metrics::export_policy_usage`]), so a reload starts them again and a removed
/// policy leaves the scrape; policies without an `@id` are grouped by file and those past
/// `policy_metrics_max_series` counted as `other`.
pub const POLICY_DECISIONS: &str = "cedar_pdp_policy_decisions_total";
/// `shadow_decisions_total{api,live,shadow}`: calls decided by the shadow policy set too,
/// by what the live set answered and what the shadow set would have (`allow`, `deny`, or
/// `error` for a request refused).
pub const SHADOW_DECISIONS: &str = "cedar_pdp_shadow_decisions_total";
/// `shadow_disagreements_total{api}`: shadow decisions that differ from the live answer.
pub const SHADOW_DISAGREEMENTS: &str = "cedar_pdp_shadow_disagreements_total";
/// `shadow_dropped_total`: shadow decisions skipped because the shadow queue was full.
pub const SHADOW_DROPPED: &str = "cedar_pdp_shadow_dropped_total";
/// `shadow_records_skipped_total`: disagreements not written to the audit log because
/// the shadow thread had written its records for that second.
pub const SHADOW_RECORDS_SKIPPED: &str = "cedar_pdp_shadow_records_skipped_total";
/// `shadow_policy_reloads_total{result}`: rebuilds of the shadow policy directory.
pub const SHADOW_RELOADS: &str = "cedar_pdp_shadow_policy_reloads_total";
/// `shadow_policy_info{version}`: 1, labelled with the shadow set's version.
pub const SHADOW_INFO: &str = "cedar_pdp_shadow_policy_info";

/// An answer as the shadow metrics label it: `allow`, `deny`, or `error` (refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
    /// Refused before any policy decided (invalid for this policy set's schema, a limit).
    Error,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Allow, Outcome::Deny, Outcome::Error];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Error => "error",
        }
    }
}

/// Renders the per-policy decision counts of whatever snapshot serves, as
/// `(policy_id label, deny, allow)` series; installed by the server.
pub type PolicyUsageSource = Box<dyn Fn() -> Vec<(String, u64, u64)> + Send + Sync>;

/// Where the policies-by-file series come from on each scrape: (file, policies).
pub type PolicyFilesSource = Box<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

/// HELP text of [`POLICY_INFO`].
const POLICY_INFO_HELP: &str = "1, labelled with the policy version being served.";

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

/// What the metrics say about a policy set: told by whoever swaps one in, so that this
/// module needs nothing of the policy loader.
#[derive(Debug, Clone, Copy)]
pub struct PolicySetSummary<'a> {
    /// Its `policy_version`.
    pub version: &'a str,
    /// Static policies in it.
    pub policies: usize,
    /// Entities read from its `entities.json`.
    pub entities: usize,
    /// When it was built.
    pub loaded_at: SystemTime,
}

/// The `result` label of [`TLS_RELOADS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsReload {
    /// The files changed and new connections get them.
    Changed,
    /// The files hold what is already served.
    Unchanged,
    /// The files cannot be used; the previous ones keep serving.
    Failure,
}

impl TlsReload {
    const ALL: [TlsReload; 3] = [TlsReload::Changed, TlsReload::Unchanged, TlsReload::Failure];

    fn label(self) -> &'static str {
        match self {
            Self::Changed => "changed",
            Self::Unchanged => "unchanged",
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
    /// Kept to register series whose labels are known only later (policy ids).
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Per api: [deny, allow].
    decisions: [[Counter; 2]; 4],
    reused: [Counter; 4],
    durations: [Histogram; 4],
    /// Per api and reason.
    refused: [[Counter; Reason::ALL.len()]; Api::ALL.len()],
    audit_dropped: Counter,
    spans_dropped: Counter,
    spans_exported: Counter,
    reload_success: Counter,
    reload_failure: Counter,
    /// Per [`RELOAD_FAILURE_REASONS`].
    reload_failures: [Counter; RELOAD_FAILURE_REASONS.len()],
    reload_duration: Histogram,
    last_success: Gauge,
    last_successful: Gauge,
    tls_reloads: [Counter; TlsReload::ALL.len()],
    policies_loaded: Gauge,
    entities_loaded: Gauge,
    /// The count of decision calls in flight that the gRPC port's admission keeps (a
    /// plain atomic costs the hot path the least), copied into `in_flight_gauge` when
    /// rendered; unset until a server's admission hands it over.
    in_flight: OnceLock<Arc<AtomicUsize>>,
    in_flight_gauge: Gauge,
    /// The serving version, rendered as the one `policy_info` series. A std mutex: held
    /// for a string copy, never across an await.
    serving_version: Mutex<String>,
    /// Per api, live outcome and shadow outcome.
    shadow_decisions: [[[Counter; 3]; 3]; Api::ALL.len()],
    shadow_disagreements: [Counter; Api::ALL.len()],
    shadow_dropped: Counter,
    shadow_records_skipped: Counter,
    /// [success, failure].
    shadow_reloads: [Counter; 2],
    /// The shadow set's version, rendered as the one `shadow_policy_info` series; empty
    /// when there is no shadow set.
    shadow_version: Mutex<String>,
    /// Where `policy_decisions_total` is rendered from, once a server installs it.
    policy_usage: OnceLock<PolicyUsageSource>,
    policy_files: OnceLock<PolicyFilesSource>,
    /// Unix seconds of [`POLICY_FILES_UNSERVED_SINCE`] as `f64` bits (0: none).
    unserved_since: AtomicU64,
    unserved_since_gauge: Gauge,
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
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(DECISION_DURATION.to_owned()),
                &DURATION_BUCKETS,
            )
            .expect("the duration buckets are a valid, non-empty list")
            .set_buckets_for_metric(
                Matcher::Full(POLICY_RELOAD_DURATION.to_owned()),
                &RELOAD_BUCKETS,
            )
            .expect("the reload buckets are a valid, non-empty list")
            .build_recorder();
        let handle = recorder.handle();
        let describe_counter = |name: &'static str, help: &'static str| {
            recorder.describe_counter(name.into(), None, SharedString::const_str(help));
        };
        let describe_gauge = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_gauge(name.into(), unit, SharedString::const_str(help));
        };
        describe_counter(
            DECISIONS,
            "Decisions made, by API and decision (allow or deny); a batch counts one per item.",
        );
        describe_counter(
            DECISIONS_REUSED,
            "Decisions answered from the decision cache (the same question asked before of the same policy version), by API; counted in decisions_total too.",
        );
        recorder.describe_histogram(
            DECISION_DURATION.into(),
            Some(Unit::Seconds),
            SharedString::const_str("Time to answer a whole call, by API."),
        );
        describe_counter(
            REQUESTS_REJECTED,
            "Calls refused, by API and reason (invalid_argument, limit_exceeded, caller_not_allowed, overloaded past max_concurrent_calls, deadline_exceeded, internal for an unexpected failure, or unauthenticated for ext_authz checks with no identifiable principal).",
        );
        describe_counter(
            AUDIT_DROPPED,
            "Audit records dropped because the audit queue was full or the sink refused them.",
        );
        describe_counter(
            TRACE_SPANS_DROPPED,
            "Trace spans dropped: the export queue was full (a slow or unreachable collector), or the collector refused or did not answer their batch.",
        );
        describe_counter(TRACE_SPANS_EXPORTED, "Trace spans the OTLP collector took.");
        describe_counter(
            FORBID_ERRORS,
            "Decisions made DENY by a forbid whose evaluation errored (on_forbid_error = deny), by the forbid's policy id.",
        );
        describe_counter(
            SHADOW_DECISIONS,
            "Calls decided by the shadow policy set too, by the live answer and the shadow set's (allow, deny, or error for a request it refused).",
        );
        describe_counter(
            SHADOW_DISAGREEMENTS,
            "Shadow decisions that differ from the live answer (each one written to the audit log), by API.",
        );
        describe_counter(
            SHADOW_DROPPED,
            "Shadow decisions skipped because the shadow queue was full; the live answer is never delayed for one.",
        );
        describe_counter(
            SHADOW_RECORDS_SKIPPED,
            "Shadow disagreements counted but not written to the audit log: past 100 records a second, so that they cannot crowd out live decision records.",
        );
        describe_counter(
            SHADOW_RELOADS,
            "Rebuilds of the shadow policy directory, by result (success or failure).",
        );
        describe_counter(
            TLS_RELOADS,
            "Re-reads of the gRPC port's TLS files, by result: changed (new connections get the new files), unchanged, or failure (unusable files; the previous ones keep serving).",
        );
        describe_counter(
            POLICY_RELOAD_FAILURES,
            "Failed rebuilds of the policy directory, by reason: io (unreadable), too_large, parse, schema, validate, entities, unsettled (did not hold still), other; a rebuild with several kinds of problem counts under each.",
        );
        recorder.describe_histogram(
            POLICY_RELOAD_DURATION.into(),
            Some(Unit::Seconds),
            SharedString::const_str(
                "Time from the start of a policy rebuild's read to its outcome (served, unchanged or refused).",
            ),
        );
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
            POLICY_FILES_UNSERVED_SINCE,
            Some(Unit::Seconds),
            "Unix time since which the policy directory has held something other than the serving set (the first failed rebuild since the last successful one), 0 while it holds what is served.",
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
            CALLS_IN_FLIGHT,
            None,
            "Decision calls received and not yet answered, queued ones included.",
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
        let zero = |counter: Counter| {
            counter.absolute(0);
            counter
        };
        let api = |api: Api| Label::new("api", api.label());
        let decisions = Api::ALL.map(|a| {
            ["deny", "allow"]
                .map(|d| zero(counter(DECISIONS, vec![api(a), Label::new("decision", d)])))
        });
        let reused = Api::ALL.map(|a| zero(counter(DECISIONS_REUSED, vec![api(a)])));
        let durations = Api::ALL.map(|a| {
            recorder.register_histogram(
                &Key::from_parts(DECISION_DURATION, vec![api(a)]),
                &metadata(),
            )
        });
        let refused = Api::ALL.map(|a| {
            Reason::ALL.map(|r| {
                zero(counter(
                    REQUESTS_REJECTED,
                    vec![api(a), Label::new("reason", r.label())],
                ))
            })
        });
        let shadow_decisions = Api::ALL.map(|a| {
            Outcome::ALL.map(|live| {
                Outcome::ALL.map(|shadow| {
                    zero(counter(
                        SHADOW_DECISIONS,
                        vec![
                            api(a),
                            Label::new("live", live.label()),
                            Label::new("shadow", shadow.label()),
                        ],
                    ))
                })
            })
        });
        let shadow_disagreements =
            Api::ALL.map(|a| zero(counter(SHADOW_DISAGREEMENTS, vec![api(a)])));
        let shadow_reloads = [ReloadResult::Success, ReloadResult::Failure].map(|r| {
            zero(counter(
                SHADOW_RELOADS,
                vec![Label::new("result", r.label())],
            ))
        });
        let inner = Inner {
            reused,
            shadow_decisions,
            shadow_disagreements,
            shadow_dropped: zero(counter(SHADOW_DROPPED, vec![])),
            shadow_records_skipped: zero(counter(SHADOW_RECORDS_SKIPPED, vec![])),
            shadow_reloads,
            shadow_version: Mutex::new(String::new()),
            policy_usage: OnceLock::new(),
            policy_files: OnceLock::new(),
            unserved_since: AtomicU64::new(0),
            unserved_since_gauge: {
                let gauge = gauge(POLICY_FILES_UNSERVED_SINCE);
                gauge.set(0.0);
                gauge
            },
            decisions,
            durations,
            refused,
            audit_dropped: zero(counter(AUDIT_DROPPED, vec![])),
            spans_dropped: zero(counter(TRACE_SPANS_DROPPED, vec![])),
            spans_exported: zero(counter(TRACE_SPANS_EXPORTED, vec![])),
            reload_failures: RELOAD_FAILURE_REASONS.map(|reason| {
                zero(counter(
                    POLICY_RELOAD_FAILURES,
                    vec![Label::new("reason", reason)],
                ))
            }),
            reload_duration: recorder
                .register_histogram(&Key::from_name(POLICY_RELOAD_DURATION), &metadata()),
            reload_success: reload(ReloadResult::Success),
            reload_failure: reload(ReloadResult::Failure),
            last_success: gauge(POLICY_LAST_RELOAD_SUCCESS),
            tls_reloads: TlsReload::ALL
                .map(|r| zero(counter(TLS_RELOADS, vec![Label::new("result", r.label())]))),
            last_successful: gauge(POLICY_LAST_RELOAD_SUCCESSFUL),
            policies_loaded: gauge(POLICIES_LOADED),
            entities_loaded: gauge(ENTITIES_LOADED),
            in_flight: OnceLock::new(),
            in_flight_gauge: gauge(CALLS_IN_FLIGHT),
            serving_version: Mutex::new(String::new()),
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
        if let Some(in_flight) = self.inner.in_flight.get() {
            #[allow(clippy::cast_precision_loss)] // a count of calls is far below 2^52
            let in_flight = in_flight.load(Ordering::Relaxed) as f64;
            self.inner.in_flight_gauge.set(in_flight);
        }
        // The trace exporter counts in plain atomics (it is not this registry's).
        self.inner.spans_dropped.absolute(super::trace::dropped());
        self.inner.spans_exported.absolute(super::trace::exported());
        let mut text = self.inner.handle.render();
        let version = self
            .inner
            .serving_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !version.is_empty() {
            // Rendered here rather than registered: the registry keeps every series it
            // was ever given, and a version that stopped serving should disappear.
            text.push_str(&format!(
                "# HELP {POLICY_INFO} {POLICY_INFO_HELP}\n# TYPE {POLICY_INFO} gauge\n{POLICY_INFO}{{version=\"{version}\"}} 1\n\n"
            ));
        }
        let shadow = self
            .inner
            .shadow_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !shadow.is_empty() {
            text.push_str(&format!(
                "# HELP {SHADOW_INFO} {SHADOW_INFO_HELP}\n# TYPE {SHADOW_INFO} gauge\n{SHADOW_INFO}{{version=\"{shadow}\"}} 1\n\n"
            ));
        }
        if let Some(source) = self.inner.policy_usage.get() {
            render_policy_decisions(&mut text, &source());
        }
        if let Some(source) = self.inner.policy_files.get() {
            render_policy_files(&mut text, &source());
        }
        text
    }

    /// Renders `policies_by_file` from `source` on every scrape, like
    /// [`Metrics::export_policy_usage`]: a removed file's series leaves the scrape.
    pub fn export_policy_files(&self, source: PolicyFilesSource) {
        let _ = self.inner.policy_files.set(source);
    }

    /// Renders `policy_decisions_total` from `source` on every scrape: the counts belong
    /// to the serving snapshot, so they cannot outlive it in the registry. The first
    /// source installed is the one rendered.
    pub fn export_policy_usage(&self, source: PolicyUsageSource) {
        let _ = self.inner.policy_usage.set(source);
    }

    /// Counts one shadow decision on `api`: what the live set answered, what the shadow
    /// set would have.
    pub fn shadow_decided(&self, api: Api, live: Outcome, shadow: Outcome) {
        let inner = &self.inner;
        inner.shadow_decisions[api as usize][live as usize][shadow as usize].increment(1);
        if live != shadow {
            inner.shadow_disagreements[api as usize].increment(1);
        }
    }

    /// Counts one shadow decision skipped for want of queue space.
    pub fn shadow_dropped(&self) {
        self.inner.shadow_dropped.increment(1);
    }

    /// Counts one disagreement not written to the audit log (past the records a second).
    pub fn shadow_record_skipped(&self) {
        self.inner.shadow_records_skipped.increment(1);
    }

    /// Counts one rebuild of the shadow directory.
    pub fn shadow_reloaded(&self, result: ReloadResult) {
        self.inner.shadow_reloads[result as usize].increment(1);
    }

    /// Records `version` as the shadow set's (its `shadow_policy_info` series).
    pub fn shadow_serving(&self, version: &str) {
        *self
            .inner
            .shadow_version
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = version.to_owned();
    }

    /// Housekeeping the exporter needs now and then (folding histogram samples); the
    /// `/metrics` endpoint runs it on a timer.
    pub fn run_upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    /// Exports `calls` as [`CALLS_IN_FLIGHT`]: the count of decision calls in flight that
    /// the gRPC port's admission keeps. The first count handed over is the one rendered.
    pub fn export_calls_in_flight(&self, calls: Arc<AtomicUsize>) {
        let _ = self.inner.in_flight.set(calls);
    }

    /// Counts one decision (`reused` when answered from the decision cache).
    pub fn decided(&self, api: Api, allowed: bool, reused: bool) {
        self.inner.decisions[api as usize][usize::from(allowed)].increment(1);
        if reused {
            self.inner.reused[api as usize].increment(1);
        }
    }

    /// Records how long a whole call took.
    pub fn call_took(&self, api: Api, took: Duration) {
        self.inner.durations[api as usize].record(took.as_secs_f64());
    }

    /// Counts one refused call.
    pub fn refused(&self, api: Api, reason: Reason) {
        self.inner.refused[api as usize][reason as usize].increment(1);
    }

    /// Counts one audit record dropped for want of queue space.
    pub fn audit_dropped(&self) {
        self.audit_dropped_n(1);
    }

    /// Counts `n` audit records lost (the sink refused them).
    pub fn audit_dropped_n(&self, n: u64) {
        self.inner.audit_dropped.increment(n);
    }

    /// Records `set` as the policy set serving: its counts and its `policy_info` series.
    /// Called at start-up and after every swap.
    pub fn serving(&self, set: &PolicySetSummary<'_>) {
        let inner = &self.inner;
        inner.policies_loaded.set(set.policies as f64);
        inner.entities_loaded.set(set.entities as f64);
        *inner
            .serving_version
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = set.version.to_owned();
    }

    /// Counts one decision made DENY by the forbid `policy_id` erroring.
    pub fn forbid_errored(&self, policy_id: &str) {
        let labels = vec![Label::new("policy_id", policy_id.to_owned())];
        self.inner
            .recorder
            .register_counter(&Key::from_parts(FORBID_ERRORS, labels), &metadata())
            .increment(1);
    }

    /// Counts one re-read of the TLS files and its result.
    pub fn tls_reloaded(&self, result: TlsReload) {
        self.inner.tls_reloads[result as usize].increment(1);
    }

    /// Counts one rebuild of the policy directory and its result.
    pub fn reloaded(&self, result: ReloadResult) {
        let inner = &self.inner;
        match result {
            ReloadResult::Success => {
                inner.reload_success.increment(1);
                inner.last_success.set(unix_seconds(SystemTime::now()));
                inner.last_successful.set(1.0);
                inner.unserved_since.store(0, Ordering::Relaxed);
                inner.unserved_since_gauge.set(0.0);
            }
            ReloadResult::Failure => {
                inner.reload_failure.increment(1);
                inner.last_successful.set(0.0);
                let now = unix_seconds(SystemTime::now());
                let first = inner
                    .unserved_since
                    .compare_exchange(0, now.to_bits(), Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
                if first {
                    inner.unserved_since_gauge.set(now);
                }
            }
        }
    }

    /// Counts one failed rebuild under `reason` (one of [`RELOAD_FAILURE_REASONS`]; any
    /// other counts as `other`).
    pub fn reload_failed_for(&self, reason: &str) {
        let at = RELOAD_FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(RELOAD_FAILURE_REASONS.len() - 1);
        self.inner.reload_failures[at].increment(1);
    }

    /// Records how long one rebuild took.
    pub fn reload_took(&self, took: Duration) {
        self.inner.reload_duration.record(took.as_secs_f64());
    }

    /// Records the policy set loaded at start-up: serving, and a success at its load time.
    pub fn started(&self, set: &PolicySetSummary<'_>) {
        self.serving(set);
        self.inner.last_success.set(unix_seconds(set.loaded_at));
    }
}

/// HELP text of [`SHADOW_INFO`].
const SHADOW_INFO_HELP: &str = "1, labelled with the shadow policy set's version.";

/// HELP text of [`POLICY_DECISIONS`].
const POLICY_DECISIONS_HELP: &str = "Decisions each determining policy took part in since the serving policy set was loaded, by policy id (policies without an @id grouped by file as <file>.*; those past policy_metrics_max_series as other) and decision.";

/// Appends the `policy_decisions_total` family: each series with both decisions, so that
/// a dashboard finds every policy at 0 from the reload on.
fn render_policy_decisions(text: &mut String, series: &[(String, u64, u64)]) {
    use std::fmt::Write as _;
    if series.is_empty() {
        return;
    }
    let _ = write!(
        text,
        "# HELP {POLICY_DECISIONS} {POLICY_DECISIONS_HELP}\n# TYPE {POLICY_DECISIONS} counter\n"
    );
    for (id, deny, allow) in series {
        let id = escape_label(id);
        let _ = writeln!(
            text,
            "{POLICY_DECISIONS}{{policy_id=\"{id}\",decision=\"allow\"}} {allow}"
        );
        let _ = writeln!(
            text,
            "{POLICY_DECISIONS}{{policy_id=\"{id}\",decision=\"deny\"}} {deny}"
        );
    }
    text.push('\n');
}

/// HELP text of [`POLICIES_BY_FILE`].
const POLICIES_BY_FILE_HELP: &str = "Policies and templates the serving policy set has from each file (past policy_metrics_max_series files, the rest add up under other).";

/// Appends the `policies_by_file` family.
fn render_policy_files(text: &mut String, series: &[(String, u64)]) {
    use std::fmt::Write as _;
    if series.is_empty() {
        return;
    }
    let _ = write!(
        text,
        "# HELP {POLICIES_BY_FILE} {POLICIES_BY_FILE_HELP}\n# TYPE {POLICIES_BY_FILE} gauge\n"
    );
    for (file, count) in series {
        let file = escape_label(file);
        let _ = writeln!(text, "{POLICIES_BY_FILE}{{file=\"{file}\"}} {count}");
    }
    text.push('\n');
}

/// `value` as a Prometheus label value: backslash, double quote and newline escaped
/// (policy ids are written by people, and `@id` takes any string).
fn escape_label(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

#[cfg(test)]
mod tests;
