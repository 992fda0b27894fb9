//! The decision log: one JSON line per decision, written by a thread of its own so that
//! a slow disk or a full pipe never slows a decision.
//!
//! Calls hand records to a bounded queue and never wait: when the queue is full the
//! record is dropped and counted in `cedar_pdp_audit_records_dropped_total`. Denies are
//! always offered to the queue; allows only at the configured sample rate. Context values
//! are left out unless their key is on the allow-list, so credentials and tokens passed
//! in the context are never written.

use std::{
    fs::OpenOptions,
    hash::{BuildHasher as _, RandomState},
    io::{self, Write},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, SyncSender, TryRecvError},
    },
    thread,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::metrics::{Api, Metrics};
use crate::config::{AuditOptions, AuditSink};

/// One decision, as written. Built by the caller only when [`AuditLog::wants`] says so.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When the call was decided (RFC 3339, UTC).
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// Always `"decision"`, to tell audit lines from log lines on a shared stdout.
    pub kind: &'static str,
    /// The call's request id (its `x-request-id`, or one made up for it).
    pub request_id: String,
    /// The server's id of this decision (`<call's id>.<item>` for a batch item): the id
    /// the caller got with the answer.
    pub decision_id: String,
    /// Which API answered.
    #[serde(serialize_with = "api_label")]
    pub api: Api,
    /// The caller's verified identity (a TLS client certificate), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The caller's network address, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The item's position in a batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    /// `Type::"id"` of the principal.
    pub principal: String,
    /// `Type::"id"` of the action.
    pub action: String,
    /// `Type::"id"` of the resource.
    pub resource: String,
    /// `allow` or `deny`.
    #[serde(serialize_with = "decision_label")]
    pub allowed: bool,
    /// Ids of the policies that decided.
    pub determining_policies: Vec<String>,
    /// Policies that failed to evaluate, and why.
    pub errors: Vec<AuditError>,
    /// The policy set that decided.
    pub policy_version: String,
    /// Time to answer the whole call, in microseconds.
    #[serde(serialize_with = "micros")]
    pub latency: Duration,
    /// Why no policy was evaluated, for a call denied before any decision (ext_authz:
    /// `unauthenticated`, or `invalid: <field>`); absent for a decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Values of allow-listed context keys only.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub context: serde_json::Map<String, serde_json::Value>,
    /// `Type::"id"` of each entity the call sent with its request (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_entities: Vec<String>,
}

/// One search (AuthZEN's subject, resource or action search), as written: who asked which
/// entities may take part in what, and how much the page found. A search decides many
/// candidates; the record is one per call, always written (never sampled).
#[derive(Debug, Clone, Serialize)]
pub struct SearchRecord {
    /// When the page was answered (RFC 3339, UTC).
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// Always `"search"`: not a decision (tools that replay decisions skip it).
    pub kind: &'static str,
    /// The call's request id.
    pub request_id: String,
    /// The server's id of the call.
    pub decision_id: String,
    /// Which API answered.
    #[serde(serialize_with = "api_label")]
    pub api: Api,
    /// The caller's verified identity, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The caller's network address, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The side searched: `subject`, `resource` or `action`.
    pub searched: &'static str,
    /// `Type::"id"` of the principal, or the type searched.
    pub principal: String,
    /// `Type::"id"` of the action, or the action type searched.
    pub action: String,
    /// `Type::"id"` of the resource, or the type searched.
    pub resource: String,
    /// Results in this page.
    pub results: usize,
    /// Candidates evaluated for it.
    pub evaluated: usize,
    /// Whether the page has a next one.
    pub more: bool,
    /// The policy set that decided.
    pub policy_version: String,
    /// Time to answer the call, in microseconds.
    #[serde(serialize_with = "micros")]
    pub latency: Duration,
    /// Why the search was not answered (its reason and field), when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// One answer of a policy set in a [`ShadowRecord`].
#[derive(Debug, Clone, Serialize)]
pub struct ShadowAnswer {
    /// `allow`, `deny`, or `error` (the request was refused before any policy decided).
    pub decision: &'static str,
    /// Ids of the policies that decided.
    pub determining_policies: Vec<String>,
    /// Policies that failed to evaluate, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<AuditError>,
    /// Why the request was refused (its reason and field), for `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// The policy set that answered.
    pub policy_version: String,
}

/// A decision the shadow policy set would have made differently from the live one: both
/// answers, for the question as the decision's own record writes it (the same
/// allow-listed context only). Always written, never sampled.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowRecord {
    /// When the shadow set decided (RFC 3339, UTC).
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// Always `"shadow"`: not a decision the caller got (replay tools skip it).
    pub kind: &'static str,
    /// The call's request id.
    pub request_id: String,
    /// The id of the live decision it shadows.
    pub decision_id: String,
    /// Which API answered.
    #[serde(serialize_with = "api_label")]
    pub api: Api,
    /// The caller's verified identity, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The item's position in a call with many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    /// `Type::"id"` of the principal.
    pub principal: String,
    /// `Type::"id"` of the action.
    pub action: String,
    /// `Type::"id"` of the resource.
    pub resource: String,
    /// Values of allow-listed context keys only.
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub context: serde_json::Map<String, serde_json::Value>,
    /// `Type::"id"` of each entity the call sent with its request (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_entities: Vec<String>,
    /// What the caller got.
    pub live: ShadowAnswer,
    /// What the shadow set would have answered.
    pub shadow: ShadowAnswer,
}

/// A line of the audit log.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Entry {
    /// A decision (`"kind":"decision"`).
    Decision(Record),
    /// A search (`"kind":"search"`).
    Search(SearchRecord),
    /// A shadow disagreement (`"kind":"shadow"`).
    Shadow(Box<ShadowRecord>),
}

impl From<ShadowRecord> for Entry {
    fn from(record: ShadowRecord) -> Self {
        Self::Shadow(Box::new(record))
    }
}

impl From<Record> for Entry {
    fn from(record: Record) -> Self {
        Self::Decision(record)
    }
}

impl From<SearchRecord> for Entry {
    fn from(record: SearchRecord) -> Self {
        Self::Search(record)
    }
}

/// A policy that failed to evaluate.
#[derive(Debug, Clone, Serialize)]
pub struct AuditError {
    /// Its id.
    pub policy_id: String,
    /// What went wrong.
    pub message: String,
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*time))
}

fn api_label<S: serde::Serializer>(api: &Api, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(api.label())
}

fn decision_label<S: serde::Serializer>(allowed: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *allowed { "allow" } else { "deny" })
}

fn micros<S: serde::Serializer>(latency: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX))
}

/// The audit log: cheap to share; dropping the last handle flushes and stops the writer.
#[derive(Debug)]
pub struct AuditLog {
    queue: Option<SyncSender<Entry>>,
    writer: Option<thread::JoinHandle<()>>,
    /// Allows are kept when the request id hashes below this (out of `u64::MAX`).
    allow_below: u64,
    context_keys: Vec<String>,
    hasher: RandomState,
    /// Draws made for [`AuditLog::sample_allows`], hashed into a uniform sample.
    draws: AtomicU64,
    metrics: Metrics,
}

impl AuditLog {
    /// Opens the sink (a file is created or appended to) and starts the writer thread.
    pub fn start(options: &AuditOptions, metrics: Metrics) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = match &options.sink {
            AuditSink::Off => return Ok(Self::off(metrics)),
            AuditSink::Stdout => Box::new(io::stdout()),
            AuditSink::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
            ),
        };
        Self::with_writer(options, out, metrics)
    }

    /// An audit log that records nothing.
    pub fn off(metrics: Metrics) -> Self {
        Self {
            queue: None,
            writer: None,
            allow_below: 0,
            context_keys: Vec::new(),
            hasher: RandomState::new(),
            draws: AtomicU64::new(0),
            metrics,
        }
    }

    /// An audit log writing to `out` (tests use a writer of their own).
    pub fn with_writer(
        options: &AuditOptions,
        out: Box<dyn Write + Send>,
        metrics: Metrics,
    ) -> io::Result<Self> {
        let (queue, records) = mpsc::sync_channel::<Entry>(options.queue_capacity);
        let writer = thread::Builder::new()
            .name("audit-writer".to_owned())
            .spawn({
                let metrics = metrics.clone();
                move || write_records(&records, out, &metrics)
            })?;
        let rate = options.allow_sample_rate.clamp(0.0, 1.0);
        Ok(Self {
            queue: Some(queue),
            writer: Some(writer),
            allow_below: if rate >= 1.0 {
                u64::MAX
            } else {
                (rate * u64::MAX as f64) as u64
            },
            context_keys: options.context_keys.clone(),
            hasher: RandomState::new(),
            draws: AtomicU64::new(0),
            metrics,
        })
    }

    /// Whether records are made at all (denies always are, when it is on).
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Whether this call's allows are to be recorded: a fresh draw at the sample rate
    /// (denies are always recorded while the log is on).
    pub fn sample_allows(&self) -> bool {
        if !self.enabled() {
            return false;
        }
        self.allow_below == u64::MAX || {
            let draw = self.draws.fetch_add(1, Ordering::Relaxed);
            self.hasher.hash_one(draw) < self.allow_below
        }
    }

    /// The context keys whose values may be recorded.
    pub fn context_keys(&self) -> &[String] {
        &self.context_keys
    }

    /// Queues a record without waiting; a full queue drops it and counts the drop.
    pub fn submit(&self, record: impl Into<Entry>) {
        let Some(queue) = &self.queue else {
            return;
        };
        // Full, or the writer is gone: either way the record is lost, and counted.
        if queue.try_send(record.into()).is_err() {
            self.metrics.audit_dropped();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain what is left, flush and end.
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// How often the writer wakes to drain the queue. Waking on a timer rather than on each
/// record spares every call a thread wake-up; a record reaches the sink within this.
const WRITE_EVERY: Duration = Duration::from_millis(10);

/// The writer thread: every [`WRITE_EVERY`], one JSON line per queued record, written
/// and flushed as one batch; it ends once the queue is closed and drained. A batch the
/// sink refuses is lost and counted as dropped, and the failure logged once until the
/// sink works again.
fn write_records(
    records: &mpsc::Receiver<Entry>,
    mut out: Box<dyn Write + Send>,
    metrics: &Metrics,
) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut failing = false;
    loop {
        let mut count = 0u64;
        let closed = loop {
            match records.try_recv() {
                Ok(record) => {
                    if serde_json::to_writer(&mut batch, &record).is_ok() {
                        batch.push(b'\n');
                        count += 1;
                    }
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if count > 0 {
            match out.write_all(&batch).and_then(|()| out.flush()) {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("the audit log is writable again");
                }
                Ok(()) => {}
                Err(err) => {
                    metrics.audit_dropped_n(count);
                    if !failing {
                        failing = true;
                        tracing::error!(error = %err, "cannot write the audit log; records are dropped and counted until it works again");
                    }
                }
            }
            batch.clear();
        }
        if closed {
            return;
        }
        thread::sleep(WRITE_EVERY);
    }
}

/// A sink that keeps what is written, for tests that read the records back.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Collect(pub(crate) std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Collect {
    /// What has been written so far, as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[cfg(test)]
impl Write for Collect {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
