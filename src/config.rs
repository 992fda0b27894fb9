//! The one [`Config`] of the server, layered: built-in defaults < config file (TOML) <
//! environment (`CEDAR_PDP_*`) < command-line flags.
//!
//! [`Settings`] is one layer: every field optional, readable both from TOML (serde) and
//! from flags with an environment twin (clap), so a setting is declared exactly once.
//! [`Config::resolve`] folds the layers into plain values that the rest of the crate takes
//! as arguments; nothing reads configuration from globals.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, ValueEnum, builder::BoolishValueParser};
use serde::Deserialize;

pub mod authzen;
pub mod ext_authz;
pub mod otel;
pub mod shadow;

pub use authzen::{AuthzenConfig, AuthzenSettings};
pub use ext_authz::ExtAuthzSettings;
pub use otel::{TracingConfig, TracingSettings};
pub use shadow::{ShadowConfig, ShadowSettings};

/// What to do with policies that fail validation against the schema at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PolicyValidation {
    /// Run Cedar's validator in strict mode and refuse a set that fails it.
    #[default]
    Strict,
    /// Load the set anyway and log each problem as a warning.
    Warn,
    /// Do not validate policies against the schema.
    Off,
}

/// What a `forbid` policy whose evaluation errors does to the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnForbidError {
    /// The decision is DENY, with the erroring forbid among its determining policies: a
    /// guardrail that cannot be evaluated holds (fail closed).
    #[default]
    Deny,
    /// Cedar's own semantics: the erroring forbid is left out, as if it were not
    /// satisfied (for conformance tests, and for those who accept that risk).
    Skip,
}

/// What a call may do with the entities it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RequestEntities {
    /// Add entities the policy directory does not hold; one with a stored entity's uid
    /// (or an Action entity) is refused: the stored entities are the truth.
    #[default]
    Add,
    /// Replace stored entities (and send Action entities) for the call only: Cedar's
    /// test-harness behaviour, for callers trusted with it.
    Replace,
    /// Refuse calls that send entities.
    Off,
}

/// The files TLS is read from: the server's own chain and key, and the CA that client
/// certificates must chain to (mutual TLS) if set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the first certificate.
    pub key: PathBuf,
    /// PEM CA certificates for client certificates; `None` serves TLS without client
    /// authentication.
    pub client_ca: Option<PathBuf>,
}

/// Which certificate name a caller identity is: a URI SAN (a SPIFFE id) or a DNS SAN.
/// The two never look alike (a URI has a scheme and a `:`, a DNS name has neither), so a
/// listed identity matches only names of its own kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// `scheme:rest`, e.g. `spiffe://acme.example/ns/edge/sa/gateway`.
    Uri,
    /// A host name, e.g. `gateway.acme.example`.
    Dns,
}

impl IdentityKind {
    /// The kind of `text`, or `None` when it is neither a URI nor a DNS name.
    pub fn of(text: &str) -> Option<Self> {
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        if let Some((scheme, rest)) = text.split_once(':') {
            let mut chars = scheme.chars();
            let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
            return (scheme_ok && !rest.is_empty()).then_some(Self::Uri);
        }
        let label = |l: &str| {
            (1..=63).contains(&l.len())
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        (text.len() <= 253 && text.split('.').all(label)).then_some(Self::Dns)
    }
}

/// Whether the `presented` certificate name is the `listed` caller identity: URIs exactly,
/// DNS names ignoring case, and never a name of one kind as an identity of the other.
pub fn same_caller(listed: &str, presented: &str) -> bool {
    match (IdentityKind::of(listed), IdentityKind::of(presented)) {
        (Some(IdentityKind::Uri), Some(IdentityKind::Uri)) => listed == presented,
        (Some(IdentityKind::Dns), Some(IdentityKind::Dns)) => {
            listed.eq_ignore_ascii_case(presented)
        }
        _ => false,
    }
}

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    /// Nowhere: no records are made.
    Off,
    /// Standard output, interleaved (line by line) with the logs.
    Stdout,
    /// Appended to this file.
    File(PathBuf),
}

impl From<&str> for AuditSink {
    /// `off` (or empty), `stdout` (or `-`), or any other text as a file path.
    fn from(text: &str) -> Self {
        match text {
            "off" | "" => Self::Off,
            "stdout" | "-" => Self::Stdout,
            path => Self::File(PathBuf::from(path)),
        }
    }
}

/// How the audit log behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditOptions {
    /// Where records go.
    pub sink: AuditSink,
    /// Share of allows written, from 0 (none) to 1 (all); denies are always written.
    pub allow_sample_rate: f64,
    /// Context keys whose values may be written; all others are left out.
    pub context_keys: Vec<String>,
    /// Records that may wait for the writer before new ones are dropped.
    pub queue_capacity: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            sink: AuditSink::Stdout,
            allow_sample_rate: 1.0,
            context_keys: Vec::new(),
            queue_capacity: 10_000,
        }
    }
}

/// How `serve` writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    #[default]
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

/// One layer of settings; `None` means "not set here, ask the layer below".
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Policy directory to serve.
    #[arg(long, env = "CEDAR_PDP_POLICIES", value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// Address the gRPC server listens on.
    #[arg(long, env = "CEDAR_PDP_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address the Prometheus `/metrics` endpoint listens on.
    #[arg(long, env = "CEDAR_PDP_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Reload when files in the policy directory change (false: only on SIGHUP).
    #[arg(long, env = "CEDAR_PDP_WATCH", value_name = "BOOL",
          value_parser = BoolishValueParser::new())]
    pub watch: Option<bool>,
    /// Seconds between re-reads of the policy directory that back up the file watcher
    /// (content hashes; nothing parsed unless it changed); 0 turns them off.
    #[arg(
        long,
        env = "CEDAR_PDP_RESCAN_INTERVAL_SECONDS",
        value_name = "SECONDS"
    )]
    pub rescan_interval_seconds: Option<u64>,
    /// Policy validation against the schema at load: strict, warn or off.
    #[arg(long, env = "CEDAR_PDP_POLICY_VALIDATION", value_name = "MODE")]
    pub policy_validation: Option<PolicyValidation>,
    /// Validate requests against the schema, when one is loaded.
    #[arg(long, env = "CEDAR_PDP_VALIDATE_REQUESTS", value_name = "BOOL",
          value_parser = BoolishValueParser::new())]
    pub validate_requests: Option<bool>,
    /// What a forbid whose evaluation errors does: deny (the decision is DENY) or skip
    /// (Cedar's semantics: it is left out).
    #[arg(long, env = "CEDAR_PDP_ON_FORBID_ERROR", value_name = "MODE")]
    pub on_forbid_error: Option<OnForbidError>,
    /// What calls may do with the entities they send: add (entities the store does not
    /// hold), replace (stored ones, for the call only) or off (none).
    #[arg(long, env = "CEDAR_PDP_REQUEST_ENTITIES", value_name = "MODE")]
    pub request_entities: Option<RequestEntities>,
    /// Log format: json or text.
    #[arg(long, env = "CEDAR_PDP_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter in `RUST_LOG` syntax, e.g. `info` or `cedar_pdp=debug`.
    #[arg(long, env = "CEDAR_PDP_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Seconds to let calls in flight finish after SIGTERM or Ctrl-C.
    #[arg(long, env = "CEDAR_PDP_SHUTDOWN_GRACE_SECONDS", value_name = "SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// Seconds to keep answering after SIGTERM while reporting NOT_SERVING, so load
    /// balancers and meshes stop sending before the port closes.
    #[arg(long, env = "CEDAR_PDP_DRAIN_SECONDS", value_name = "SECONDS")]
    pub drain_seconds: Option<u64>,
    /// Series of `cedar_pdp_policy_decisions_total` at most: policies past it (in id
    /// order) are counted under `policy_id="other"`.
    #[arg(long, env = "CEDAR_PDP_POLICY_METRICS_MAX_SERIES", value_name = "N")]
    pub policy_metrics_max_series: Option<usize>,
    /// Limits on what one call may ask for.
    #[command(flatten)]
    pub limits: LimitSettings,
    /// The decision log.
    #[command(flatten)]
    pub audit: AuditSettings,
    /// How Envoy's ext_authz `Check` maps to Cedar (config file only: it is structured).
    #[arg(skip)]
    pub ext_authz: Option<Box<ExtAuthzSettings>>,
    /// The AuthZEN 1.0 HTTP/JSON API.
    #[command(flatten)]
    pub authzen: AuthzenSettings,
    /// OpenTelemetry trace export.
    #[command(flatten)]
    pub tracing: TracingSettings,
    /// A shadow policy set, decided alongside the live one off the request path.
    #[command(flatten)]
    pub shadow: ShadowSettings,
    /// TLS and mutual TLS on the gRPC port, and which callers may use which API.
    #[command(flatten)]
    pub tls: TlsSettings,
}

/// The `[tls]` table of [`Settings`]: files are named here, their contents never are.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain of the gRPC port (turns TLS on; needs --tls-key).
    #[arg(long = "tls-cert", env = "CEDAR_PDP_TLS_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long = "tls-key", env = "CEDAR_PDP_TLS_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to (turns mTLS on).
    #[arg(
        long = "tls-client-ca",
        env = "CEDAR_PDP_TLS_CLIENT_CA",
        value_name = "FILE"
    )]
    pub client_ca: Option<PathBuf>,
    /// Caller identities (SPIFFE URI or DNS name of a client certificate) allowed to use
    /// cedarpdp.v1.Authorizer (comma-separated; unset: any verified client).
    #[arg(
        long = "tls-authorizer-callers",
        env = "CEDAR_PDP_TLS_AUTHORIZER_CALLERS",
        value_name = "IDS",
        value_delimiter = ','
    )]
    pub authorizer_callers: Option<Vec<String>>,
    /// Caller identities allowed to use Envoy's ext_authz Check (comma-separated; unset:
    /// any verified client).
    #[arg(
        long = "tls-ext-authz-callers",
        env = "CEDAR_PDP_TLS_EXT_AUTHZ_CALLERS",
        value_name = "IDS",
        value_delimiter = ','
    )]
    pub ext_authz_callers: Option<Vec<String>>,
    /// Caller identities allowed to use the AuthZEN API (comma-separated; unset: any
    /// verified client).
    #[arg(
        long = "tls-authzen-callers",
        env = "CEDAR_PDP_TLS_AUTHZEN_CALLERS",
        value_name = "IDS",
        value_delimiter = ','
    )]
    pub authzen_callers: Option<Vec<String>>,
    /// With `request_entities = "replace"`: the only caller identities whose entities
    /// replace stored ones (comma-separated); other callers' entities are taken as with
    /// `add`. Unset: every caller's.
    #[arg(
        long = "tls-request-entities-replace-callers",
        env = "CEDAR_PDP_TLS_REQUEST_ENTITIES_REPLACE_CALLERS",
        value_name = "IDS",
        value_delimiter = ','
    )]
    pub request_entities_replace_callers: Option<Vec<String>>,
}

/// Resolved TLS: the files, and the callers each API admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Where the certificate, key and client CA are read from.
    pub files: TlsFiles,
    /// Identities that may call `cedarpdp.v1.Authorizer`; `None`: any verified client.
    pub authorizer_callers: Option<Vec<String>>,
    /// Identities that may call ext_authz `Check`; `None`: any verified client.
    pub ext_authz_callers: Option<Vec<String>>,
    /// Identities that may call the AuthZEN API; `None`: any verified client.
    pub authzen_callers: Option<Vec<String>>,
    /// With `request_entities = "replace"`: the identities whose entities replace stored
    /// ones; `None`: every caller's.
    pub request_entities_replace_callers: Option<Vec<String>>,
}

/// The `[audit]` table of [`Settings`].
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Where decision records go: stdout, off, or a file path to append to.
    #[arg(long = "audit-sink", env = "CEDAR_PDP_AUDIT_SINK", value_name = "SINK")]
    pub sink: Option<String>,
    /// Share of allows recorded, 0 to 1 (denies are always recorded).
    #[arg(
        long = "audit-allow-sample-rate",
        env = "CEDAR_PDP_AUDIT_ALLOW_SAMPLE_RATE",
        value_name = "RATE"
    )]
    pub allow_sample_rate: Option<f64>,
    /// Context keys whose values may be recorded (comma-separated); others never are.
    #[arg(
        long = "audit-context-keys",
        env = "CEDAR_PDP_AUDIT_CONTEXT_KEYS",
        value_name = "KEYS",
        value_delimiter = ','
    )]
    pub context_keys: Option<Vec<String>>,
    /// Records that may wait for the writer before new ones are dropped (and counted).
    #[arg(
        long = "audit-queue-capacity",
        env = "CEDAR_PDP_AUDIT_QUEUE_CAPACITY",
        value_name = "N"
    )]
    pub queue_capacity: Option<usize>,
}

/// The `[limits]` table of [`Settings`].
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest gRPC message accepted, in bytes.
    #[arg(long, env = "CEDAR_PDP_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Most entities one call may send.
    #[arg(long, env = "CEDAR_PDP_MAX_REQUEST_ENTITIES", value_name = "N")]
    pub max_request_entities: Option<usize>,
    /// Most items in one BatchIsAuthorized call.
    #[arg(long, env = "CEDAR_PDP_MAX_BATCH_ITEMS", value_name = "N")]
    pub max_batch_items: Option<usize>,
    /// Deepest nesting of sets and records in a value (typed or JSON).
    #[arg(long, env = "CEDAR_PDP_MAX_VALUE_DEPTH", value_name = "N")]
    pub max_value_depth: Option<usize>,
    /// Longest parent chain among the entities of one call, or of `entities.json`.
    #[arg(long, env = "CEDAR_PDP_MAX_ANCESTOR_DEPTH", value_name = "N")]
    pub max_ancestor_depth: Option<usize>,
    /// Most parent edges among the entities of one call.
    #[arg(long, env = "CEDAR_PDP_MAX_REQUEST_PARENT_EDGES", value_name = "N")]
    pub max_request_parent_edges: Option<usize>,
    /// Most steps working out the ancestors of one call's entities may take (each
    /// ancestor reached through each parent edge counts one).
    #[arg(long, env = "CEDAR_PDP_MAX_REQUEST_ANCESTOR_CLOSURE", value_name = "N")]
    pub max_request_ancestor_closure: Option<usize>,
    /// Most parent edges in `entities.json`.
    #[arg(long, env = "CEDAR_PDP_MAX_STORE_PARENT_EDGES", value_name = "N")]
    pub max_store_parent_edges: Option<usize>,
    /// Most steps working out the ancestors of `entities.json`'s entities may take.
    #[arg(long, env = "CEDAR_PDP_MAX_STORE_ANCESTOR_CLOSURE", value_name = "N")]
    pub max_store_ancestor_closure: Option<usize>,
    /// Longest string in a request: an entity type or id, a string value, a record key,
    /// an extension argument (in bytes; in JSON fields, as written).
    #[arg(long, env = "CEDAR_PDP_MAX_STRING_BYTES", value_name = "BYTES")]
    pub max_string_bytes: Option<usize>,
    /// Most entities `entities.json` may hold.
    #[arg(long, env = "CEDAR_PDP_MAX_STORE_ENTITIES", value_name = "N")]
    pub max_store_entities: Option<usize>,
    /// Largest file read from the policy directory (a policy file, the schema,
    /// `entities.json`), in bytes.
    #[arg(long, env = "CEDAR_PDP_MAX_POLICY_FILE_BYTES", value_name = "BYTES")]
    pub max_policy_file_bytes: Option<u64>,
    /// Longest a call may take, in milliseconds.
    #[arg(long, env = "CEDAR_PDP_REQUEST_TIMEOUT_MS", value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// Most gRPC connections open at once; more are closed as they arrive.
    #[arg(long, env = "CEDAR_PDP_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most calls in flight on one connection (HTTP/2 concurrent streams); more are
    /// refused with REFUSED_STREAM, which clients retry.
    #[arg(long, env = "CEDAR_PDP_MAX_CONCURRENT_STREAMS", value_name = "N")]
    pub max_concurrent_streams: Option<usize>,
    /// Most decision calls in flight across all connections, queued ones included; more
    /// are refused at once with RESOURCE_EXHAUSTED (ext_authz: a 503 deny).
    #[arg(long, env = "CEDAR_PDP_MAX_CONCURRENT_CALLS", value_name = "N")]
    pub max_concurrent_calls: Option<usize>,
    /// Threads decisions run on, off the async workers: at most this many calls decide
    /// at once, the rest wait (within their deadline) [default: one per CPU].
    #[arg(long, env = "CEDAR_PDP_DECISION_THREADS", value_name = "N")]
    pub decision_threads: Option<usize>,
    /// Most decisions kept for reuse (per policy version; a call that sends no entities,
    /// asking what was asked before, is answered without evaluating); 0 keeps none.
    #[arg(long, env = "CEDAR_PDP_DECISION_CACHE_ENTRIES", value_name = "N")]
    pub decision_cache_entries: Option<usize>,
}

/// Largest `decision_cache_entries` accepted: about 450 MiB a version if every entry held
/// the most an entry can.
pub const MAX_DECISION_CACHE_ENTRIES: usize = 100_000;

/// Resolved limits, each with a safe default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most entities one call may send.
    pub max_request_entities: usize,
    /// Most items in one batch call.
    pub max_batch_items: usize,
    /// Deepest nesting of sets and records in one value.
    pub max_value_depth: usize,
    /// Longest parent chain among the entities of one call or of `entities.json`.
    pub max_ancestor_depth: usize,
    /// Most parent edges among the entities of one call.
    pub max_request_parent_edges: usize,
    /// Most steps working out the ancestors of one call's entities may take.
    pub max_request_ancestor_closure: usize,
    /// Most parent edges in `entities.json`.
    pub max_store_parent_edges: usize,
    /// Most steps working out the ancestors of `entities.json`'s entities may take.
    pub max_store_ancestor_closure: usize,
    /// Longest string in a request, in bytes.
    pub max_string_bytes: usize,
    /// Most entities `entities.json` may hold.
    pub max_store_entities: usize,
    /// Largest file read from the policy directory, in bytes.
    pub max_policy_file_bytes: u64,
    /// Longest a call may take.
    pub request_timeout: Duration,
    /// Most gRPC connections open at once.
    pub max_connections: usize,
    /// Most calls in flight on one connection.
    pub max_concurrent_streams: usize,
    /// Most decision calls in flight at once, across all connections.
    pub max_concurrent_calls: usize,
    /// Threads decisions run on; at most this many calls decide at once.
    pub decision_threads: usize,
    /// Most decisions kept for reuse per policy version; 0 keeps none.
    pub decision_cache_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_request_entities: 500,
            max_batch_items: 1_000,
            max_value_depth: 32,
            max_ancestor_depth: 64,
            max_request_parent_edges: 2_000,
            max_request_ancestor_closure: 5_000,
            max_store_parent_edges: 10_000_000,
            max_store_ancestor_closure: 20_000_000,
            max_string_bytes: 64 * 1024,
            max_store_entities: 1_000_000,
            max_policy_file_bytes: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            max_concurrent_streams: 100,
            max_concurrent_calls: 1_000,
            decision_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            decision_cache_entries: 4_096,
        }
    }
}

/// Everything `serve` needs, resolved from all layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Policy directory to serve.
    pub policies: PathBuf,
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Address the Prometheus `/metrics` endpoint listens on.
    pub metrics_listen: SocketAddr,
    /// Reload on file-system events (else only on SIGHUP).
    pub watch: bool,
    /// How often the policy directory is read again whatever events say (`None`: never).
    pub rescan_interval: Option<Duration>,
    /// Policy validation at load.
    pub policy_validation: PolicyValidation,
    /// Validate requests against the schema when one is loaded.
    pub validate_requests: bool,
    /// What a forbid whose evaluation errors does to the decision.
    pub on_forbid_error: OnForbidError,
    /// What calls may do with the entities they send.
    pub request_entities: RequestEntities,
    /// Log format for `serve`.
    pub log_format: LogFormat,
    /// Log filter (`RUST_LOG` syntax); `RUST_LOG` itself wins when set.
    pub log_level: String,
    /// How long calls in flight may run on after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long the server keeps answering after a shutdown signal, reporting
    /// NOT_SERVING, before it stops taking new calls.
    pub drain: Duration,
    /// Series of the per-policy decision counter at most (the rest count as `other`).
    pub policy_metrics_max_series: usize,
    /// Limits on what one call may ask for.
    pub limits: Limits,
    /// The decision log.
    pub audit: AuditOptions,
    /// How Envoy's ext_authz `Check` maps to Cedar; compiled (and so checked) once, when
    /// the server starts.
    pub ext_authz: ExtAuthzSettings,
    /// The AuthZEN 1.0 HTTP/JSON API (off unless it has an address).
    pub authzen: AuthzenConfig,
    /// OpenTelemetry trace export (off unless a collector is named).
    pub tracing: TracingConfig,
    /// The shadow policy set (off unless a directory is named).
    pub shadow: ShadowConfig,
    /// TLS on the gRPC port (and the AuthZEN port); `None` is plaintext.
    pub tls: Option<TlsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            policies: PathBuf::from("policies"),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            watch: true,
            rescan_interval: Some(Duration::from_secs(30)),
            policy_validation: PolicyValidation::Strict,
            validate_requests: true,
            on_forbid_error: OnForbidError::Deny,
            request_entities: RequestEntities::Add,
            log_format: LogFormat::Json,
            log_level: "info".to_owned(),
            shutdown_grace: Duration::from_secs(10),
            drain: Duration::ZERO,
            policy_metrics_max_series: 500,
            limits: Limits::default(),
            audit: AuditOptions::default(),
            ext_authz: ExtAuthzSettings::default(),
            authzen: AuthzenConfig::default(),
            tracing: TracingConfig::default(),
            shadow: ShadowConfig::default(),
            tls: None,
        }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A setting has a value that cannot work.
    #[error("{key}: {message}")]
    Invalid {
        /// The setting, as its config key (`audit.allow_sample_rate`,
        /// `ext_authz.routes[1].path`).
        key: String,
        /// What is wrong with its value.
        message: String,
    },
    /// The file is not valid TOML for [`Settings`]; the message carries line and column.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
}

impl Config {
    /// Folds the config file at `file` (if any) under the environment-and-flags layer.
    pub fn resolve(file: Option<&Path>, overrides: Settings) -> Result<Self, ConfigError> {
        let from_file = match file {
            Some(path) => Settings::from_toml_file(path)?,
            None => Settings::default(),
        };
        let config = Self::from_layers(from_file, overrides)?;
        config.check()?;
        Ok(config)
    }

    /// Refuses values that would quietly do the wrong thing.
    pub fn check(&self) -> Result<(), ConfigError> {
        let rate = self.audit.allow_sample_rate;
        if !(0.0..=1.0).contains(&rate) {
            return Err(ConfigError::Invalid {
                key: "audit.allow_sample_rate".to_owned(),
                message: format!("{rate} is not a share between 0 and 1"),
            });
        }
        if self.audit.queue_capacity == 0 {
            return Err(ConfigError::Invalid {
                key: "audit.queue_capacity".to_owned(),
                message: "must be at least 1 (0 would drop every record)".to_owned(),
            });
        }
        let at_least_one = [
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_concurrent_streams",
                self.limits.max_concurrent_streams,
            ),
            (
                "limits.max_concurrent_calls",
                self.limits.max_concurrent_calls,
            ),
            ("limits.max_string_bytes", self.limits.max_string_bytes),
            ("limits.decision_threads", self.limits.decision_threads),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, n)| *n == 0) {
            return Err(ConfigError::Invalid {
                key: (*key).to_owned(),
                message: "must be at least 1 (0 would refuse every call)".to_owned(),
            });
        }
        if self.limits.decision_cache_entries > MAX_DECISION_CACHE_ENTRIES {
            return Err(ConfigError::Invalid {
                key: "limits.decision_cache_entries".to_owned(),
                message: format!(
                    "must be at most {MAX_DECISION_CACHE_ENTRIES} (each entry may take about 4.5 KiB)"
                ),
            });
        }
        if self.limits.request_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "limits.request_timeout_ms".to_owned(),
                message: "must be at least 1 (0 would time out every call)".to_owned(),
            });
        }
        if let Some(tls) = &self.tls
            && tls.request_entities_replace_callers.is_some()
            && self.request_entities != RequestEntities::Replace
        {
            return Err(ConfigError::Invalid {
                key: "tls.request_entities_replace_callers".to_owned(),
                message: "has no meaning unless request_entities = \"replace\"".to_owned(),
            });
        }
        if let Some((key, message)) = self
            .authzen
            .problem()
            .or_else(|| self.tracing.problem())
            .or_else(|| self.shadow.problem())
        {
            return Err(ConfigError::Invalid {
                key: key.to_owned(),
                message,
            });
        }
        if let Some(tls) = &self.tls {
            let lists = [
                ("tls.authorizer_callers", &tls.authorizer_callers),
                ("tls.ext_authz_callers", &tls.ext_authz_callers),
                ("tls.authzen_callers", &tls.authzen_callers),
                (
                    "tls.request_entities_replace_callers",
                    &tls.request_entities_replace_callers,
                ),
            ];
            for (key, list) in lists {
                let Some(list) = list else { continue };
                if tls.files.client_ca.is_none() {
                    return Err(ConfigError::Invalid {
                        key: key.to_owned(),
                        message: "needs tls.client_ca: without client certificates there \
                                  is no caller identity to check"
                            .to_owned(),
                    });
                }
                if let Some(bad) = list.iter().find(|id| IdentityKind::of(id).is_none()) {
                    return Err(ConfigError::Invalid {
                        key: key.to_owned(),
                        message: format!(
                            "{bad:?} is not an identity (a URI such as spiffe://…, matched \
                             against URI SANs, or a DNS name, matched against DNS SANs)"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Folds `upper` over `lower` over the defaults; a half-given TLS setup is an error.
    pub fn from_layers(lower: Settings, upper: Settings) -> Result<Self, ConfigError> {
        let d = Config::default();
        let (lo, up, dl) = (lower.limits, upper.limits, d.limits);
        let (la, ua, da) = (lower.audit, upper.audit, d.audit);
        let (lt, ut) = (lower.tls, upper.tls);
        let cert = ut.cert.or(lt.cert);
        let key = ut.key.or(lt.key);
        let client_ca = ut.client_ca.or(lt.client_ca);
        let authorizer_callers = ut.authorizer_callers.or(lt.authorizer_callers);
        let ext_authz_callers = ut.ext_authz_callers.or(lt.ext_authz_callers);
        let authzen_callers = ut.authzen_callers.or(lt.authzen_callers);
        let request_entities_replace_callers = ut
            .request_entities_replace_callers
            .or(lt.request_entities_replace_callers);
        let tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(TlsConfig {
                files: TlsFiles {
                    cert,
                    key,
                    client_ca,
                },
                authorizer_callers,
                ext_authz_callers,
                authzen_callers,
                request_entities_replace_callers,
            }),
            (cert, key) => {
                // Half a TLS setup is a mistake, never a quiet fallback to plaintext.
                let stray = [
                    ("tls.cert", cert.is_some()),
                    ("tls.key", key.is_some()),
                    ("tls.client_ca", client_ca.is_some()),
                    ("tls.authorizer_callers", authorizer_callers.is_some()),
                    ("tls.ext_authz_callers", ext_authz_callers.is_some()),
                    ("tls.authzen_callers", authzen_callers.is_some()),
                    (
                        "tls.request_entities_replace_callers",
                        request_entities_replace_callers.is_some(),
                    ),
                ];
                if let Some((key, _)) = stray.into_iter().find(|(_, set)| *set) {
                    return Err(ConfigError::Invalid {
                        key: key.to_owned(),
                        message: "needs both tls.cert and tls.key (TLS is off without them)"
                            .to_owned(),
                    });
                }
                None
            }
        };
        Ok(Self {
            policies: pick(upper.policies, lower.policies, d.policies),
            listen: pick(upper.listen, lower.listen, d.listen),
            metrics_listen: pick(upper.metrics_listen, lower.metrics_listen, d.metrics_listen),
            watch: pick(upper.watch, lower.watch, d.watch),
            rescan_interval: match upper
                .rescan_interval_seconds
                .or(lower.rescan_interval_seconds)
            {
                Some(0) => None,
                Some(seconds) => Some(Duration::from_secs(seconds)),
                None => d.rescan_interval,
            },
            policy_validation: pick(
                upper.policy_validation,
                lower.policy_validation,
                d.policy_validation,
            ),
            validate_requests: pick(
                upper.validate_requests,
                lower.validate_requests,
                d.validate_requests,
            ),
            on_forbid_error: pick(
                upper.on_forbid_error,
                lower.on_forbid_error,
                d.on_forbid_error,
            ),
            request_entities: pick(
                upper.request_entities,
                lower.request_entities,
                d.request_entities,
            ),
            log_format: pick(upper.log_format, lower.log_format, d.log_format),
            log_level: pick(upper.log_level, lower.log_level, d.log_level),
            shutdown_grace: upper
                .shutdown_grace_seconds
                .or(lower.shutdown_grace_seconds)
                .map_or(d.shutdown_grace, Duration::from_secs),
            drain: upper
                .drain_seconds
                .or(lower.drain_seconds)
                .map_or(d.drain, Duration::from_secs),
            policy_metrics_max_series: pick(
                upper.policy_metrics_max_series,
                lower.policy_metrics_max_series,
                d.policy_metrics_max_series,
            ),
            limits: Limits {
                max_message_bytes: pick(
                    up.max_message_bytes,
                    lo.max_message_bytes,
                    dl.max_message_bytes,
                ),
                max_request_entities: pick(
                    up.max_request_entities,
                    lo.max_request_entities,
                    dl.max_request_entities,
                ),
                max_batch_items: pick(up.max_batch_items, lo.max_batch_items, dl.max_batch_items),
                max_value_depth: pick(up.max_value_depth, lo.max_value_depth, dl.max_value_depth),
                max_ancestor_depth: pick(
                    up.max_ancestor_depth,
                    lo.max_ancestor_depth,
                    dl.max_ancestor_depth,
                ),
                max_request_parent_edges: pick(
                    up.max_request_parent_edges,
                    lo.max_request_parent_edges,
                    dl.max_request_parent_edges,
                ),
                max_request_ancestor_closure: pick(
                    up.max_request_ancestor_closure,
                    lo.max_request_ancestor_closure,
                    dl.max_request_ancestor_closure,
                ),
                max_store_parent_edges: pick(
                    up.max_store_parent_edges,
                    lo.max_store_parent_edges,
                    dl.max_store_parent_edges,
                ),
                max_store_ancestor_closure: pick(
                    up.max_store_ancestor_closure,
                    lo.max_store_ancestor_closure,
                    dl.max_store_ancestor_closure,
                ),
                max_string_bytes: pick(
                    up.max_string_bytes,
                    lo.max_string_bytes,
                    dl.max_string_bytes,
                ),
                max_store_entities: pick(
                    up.max_store_entities,
                    lo.max_store_entities,
                    dl.max_store_entities,
                ),
                max_policy_file_bytes: pick(
                    up.max_policy_file_bytes,
                    lo.max_policy_file_bytes,
                    dl.max_policy_file_bytes,
                ),
                request_timeout: up
                    .request_timeout_ms
                    .or(lo.request_timeout_ms)
                    .map_or(dl.request_timeout, Duration::from_millis),
                max_connections: pick(up.max_connections, lo.max_connections, dl.max_connections),
                max_concurrent_streams: pick(
                    up.max_concurrent_streams,
                    lo.max_concurrent_streams,
                    dl.max_concurrent_streams,
                ),
                max_concurrent_calls: pick(
                    up.max_concurrent_calls,
                    lo.max_concurrent_calls,
                    dl.max_concurrent_calls,
                ),
                decision_threads: pick(
                    up.decision_threads,
                    lo.decision_threads,
                    dl.decision_threads,
                ),
                decision_cache_entries: pick(
                    up.decision_cache_entries,
                    lo.decision_cache_entries,
                    dl.decision_cache_entries,
                ),
            },
            audit: AuditOptions {
                sink: ua
                    .sink
                    .or(la.sink)
                    .map_or(da.sink, |text| AuditSink::from(text.as_str())),
                allow_sample_rate: pick(
                    ua.allow_sample_rate,
                    la.allow_sample_rate,
                    da.allow_sample_rate,
                ),
                context_keys: pick(ua.context_keys, la.context_keys, da.context_keys),
                queue_capacity: pick(ua.queue_capacity, la.queue_capacity, da.queue_capacity),
            },
            ext_authz: upper
                .ext_authz
                .or(lower.ext_authz)
                .map_or(d.ext_authz, |settings| *settings),
            authzen: AuthzenConfig::from_layers(lower.authzen, upper.authzen),
            tracing: TracingConfig::from_layers(lower.tracing, upper.tracing),
            shadow: ShadowConfig::from_layers(lower.shadow, upper.shadow),
            tls,
        })
    }
}

/// The upper layer's value if set, else the lower's, else the default.
fn pick<T>(upper: Option<T>, lower: Option<T>, default: T) -> T {
    upper.or(lower).unwrap_or(default)
}

impl Settings {
    /// Reads one layer from a TOML file; unknown keys are an error, not ignored.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
