//! Traces: each call's span continues the caller's W3C trace (`traceparent` /
//! `tracestate`), and, when a collector is configured, spans leave the process over OTLP.
//!
//! Export never touches a decision's path beyond handing a finished span to a bounded
//! queue: a thread of its own drains it in batches to the collector. When the queue is
//! full (a slow or unreachable collector) a span is dropped and counted, and a batch the
//! collector refuses is counted as dropped too (`cedar_pdp_trace_spans_dropped_total`).
//! Spans exported are `call` (one per RPC), `decide` (the decision: its outcome,
//! determining policies, policy version and the number of policies evaluated) and
//! `reload`. With no collector the layer is not installed at all, and `decide` and
//! `reload`, debug-level spans, cost nothing.

use std::{
    hash::{BuildHasher as _, RandomState},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, TextMapPropagator as _},
    trace::{Link, SpanContext, SpanKind, TraceContextExt as _, TraceId, TracerProvider as _},
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    propagation::TraceContextPropagator,
    trace::{
        SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample, Span, SpanData,
        SpanExporter as _, SpanProcessor,
    },
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::TracingConfig;

/// Whether spans are exported (the layer is installed): only then is a caller's trace
/// context read.
static EXPORTING: AtomicBool = AtomicBool::new(false);
/// Spans lost: the queue was full, or the collector refused or never answered their
/// batch.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Spans the collector took.
static EXPORTED: AtomicU64 = AtomicU64::new(0);

/// Most spans in one export request.
const MAX_BATCH: usize = 512;
/// Longest a finished span waits in the queue before its batch is sent.
const SEND_EVERY: Duration = Duration::from_secs(1);
/// Longest one export request may take before its spans count as dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Spans lost so far (queue full, or refused by the collector).
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Spans the collector took so far.
pub fn exported() -> u64 {
    EXPORTED.load(Ordering::Relaxed)
}

/// Whether spans leave the process.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Makes `span` a child of the caller's span, read by `header` (`traceparent`,
/// `tracestate`) from the call's metadata or headers; nothing unless exporting. A
/// malformed `traceparent` is ignored (the span starts a trace of its own), never an
/// error: tracing must not refuse a call.
pub fn continue_trace<'h>(span: &tracing::Span, header: impl Fn(&str) -> Option<&'h str>) {
    if !exporting() {
        return;
    }
    struct Headers<'h> {
        parent: Option<&'h str>,
        state: Option<&'h str>,
    }
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => self.parent,
                "tracestate" => self.state,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    // A `traceparent` is 55 characters (version 00; later versions may add fields); a
    // `tracestate` of 32 entries fits in 8 KiB. Anything longer, or not printable ASCII, is
    // not read at all: parsing and keeping it would cost what the caller chose.
    let printable = |value: &&str| value.bytes().all(|b| (0x20..0x7f).contains(&b));
    let headers = Headers {
        parent: header("traceparent").filter(|v| v.len() <= 256 && printable(v)),
        state: header("tracestate").filter(|v| v.len() <= 8192 && printable(v)),
    };
    if headers.parent.is_none() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&headers);
    if opentelemetry::trace::TraceContextExt::span(&parent)
        .span_context()
        .is_valid()
    {
        let _ = span.set_parent(parent);
    }
}

/// The trace export of a running process; [`Export::shutdown`] sends what is queued.
#[derive(Debug)]
pub struct Export {
    provider: SdkTracerProvider,
}

impl Export {
    /// Sends the spans still queued (waiting at most `within`) and stops the exporter.
    pub fn shutdown(self, within: Duration) {
        let _ = self.provider.shutdown_with_timeout(within);
        EXPORTING.store(false, Ordering::Relaxed);
    }
}

/// The tracer provider `config` asks for and the layer that feeds it, or `None` when no
/// collector is configured. The exporter's thread starts here.
pub fn export(
    config: &TracingConfig,
) -> Result<Option<(Export, opentelemetry_sdk::trace::SdkTracer)>, String> {
    if !config.exporting() {
        return Ok(None);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Ok(protocol) = std::env::var(name)
            && !protocol.is_empty()
            && protocol != "grpc"
        {
            return Err(format!(
                "{name}={protocol:?}: cedar-pdp exports traces over OTLP/gRPC only; set it to \
                 \"grpc\" or leave it unset, and point the endpoint at the collector's gRPC \
                 port (4317)"
            ));
        }
    }
    let processor = Queue::start(config)?;
    let mut builder = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource());
    if std::env::var("OTEL_TRACES_SAMPLER").is_err() {
        builder = builder.with_sampler(OwnDraw::new(config.sample_ratio));
    }
    let provider = builder.build();
    let tracer = provider.tracer("cedar-pdp");
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Some((Export { provider }, tracer)))
}

/// Samples where a trace enters this process (a root span, or one under a caller's
/// remote span) by a draw of its own at `ratio`, and spans under a local parent as their
/// parent is: a caller's sampled flag and trace id (both the caller's to choose) neither
/// force every call of theirs into the export nor keep them out of it. A deployment that
/// trusts its callers' sampling sets `OTEL_TRACES_SAMPLER=parentbased_always_on`.
#[derive(Debug, Clone)]
struct OwnDraw {
    ratio: f64,
    random: RandomState,
    draws: Arc<AtomicU64>,
}

impl OwnDraw {
    fn new(ratio: f64) -> Self {
        Self {
            ratio,
            random: RandomState::new(),
            draws: Arc::new(AtomicU64::new(0)),
        }
    }

    /// One draw: whether to keep a trace entering here.
    fn keep(&self) -> bool {
        if self.ratio >= 1.0 {
            return true;
        }
        if self.ratio <= 0.0 {
            return false;
        }
        let draw = self
            .random
            .hash_one(self.draws.fetch_add(1, Ordering::Relaxed));
        #[allow(clippy::cast_precision_loss)] // a fraction: 53 bits are plenty
        let fraction = (draw >> 11) as f64 / (1u64 << 53) as f64;
        fraction < self.ratio
    }
}

impl ShouldSample for OwnDraw {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        _trace_id: TraceId,
        _name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let parent = parent_context
            .map(|cx| cx.span().span_context().clone())
            .filter(SpanContext::is_valid);
        let sampled = match &parent {
            Some(local) if !local.is_remote() => local.is_sampled(),
            _ => self.keep(),
        };
        SamplingResult {
            decision: if sampled {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: parent.map(|p| p.trace_state().clone()).unwrap_or_default(),
        }
    }
}

/// Who the spans are from: `service.name` is `cedar-pdp` unless `OTEL_SERVICE_NAME` says
/// otherwise (`OTEL_RESOURCE_ATTRIBUTES` adds to it).
fn resource() -> Resource {
    let resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.is_empty()) {
        resource.build()
    } else {
        resource.with_service_name("cedar-pdp").build()
    }
}

/// What the export thread is told.
enum Message {
    Span(Box<SpanData>),
    /// Send what is queued, then answer.
    Flush(SyncSender<()>),
}

/// A span processor that queues finished spans for a thread of its own, dropping (and
/// counting) them when the queue is full: a span's end never waits.
#[derive(Debug)]
struct Queue {
    sender: SyncSender<Message>,
    /// Spans handed over and not yet sent (queued, or in the batch being formed or sent).
    pending: Arc<AtomicUsize>,
    capacity: usize,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Queue {
    fn start(config: &TracingConfig) -> Result<Self, String> {
        // Room for every span that may be pending, and the flush messages.
        let (sender, receiver) = mpsc::sync_channel(config.queue_capacity + 16);
        let pending = Arc::new(AtomicUsize::new(0));
        let sent = pending.clone();
        let endpoint = config.otlp_endpoint.clone();
        // The exporter is built on the thread's own runtime, which its connection needs.
        let (ready, started) = mpsc::sync_channel::<Result<(), String>>(1);
        let thread = std::thread::Builder::new()
            .name("trace-export".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(format!("cannot start the trace exporter: {e}")));
                        return;
                    }
                };
                let exporter = runtime.block_on(async {
                    let mut builder = SpanExporter::builder()
                        .with_tonic()
                        .with_timeout(EXPORT_TIMEOUT);
                    if let Some(endpoint) = endpoint {
                        builder = builder.with_endpoint(endpoint);
                    }
                    builder.build()
                });
                let mut exporter = match exporter {
                    Ok(exporter) => exporter,
                    Err(e) => {
                        let _ = ready.send(Err(format!("the OTLP trace exporter: {e}")));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                exporter.set_resource(&resource());
                drain(&runtime, &exporter, &receiver, &sent);
                let _ = exporter.shutdown();
            })
            .map_err(|e| format!("cannot start the trace exporter: {e}"))?;
        match started.recv() {
            Ok(Ok(())) => Ok(Self {
                sender,
                pending,
                capacity: config.queue_capacity,
                thread: Mutex::new(Some(thread)),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the trace exporter did not start".to_owned()),
        }
    }
}

/// The export thread: batches of at most [`MAX_BATCH`] spans, sent when full or
/// [`SEND_EVERY`] after their first span, until every sender is gone.
fn drain(
    runtime: &tokio::runtime::Runtime,
    exporter: &SpanExporter,
    receiver: &Receiver<Message>,
    pending: &AtomicUsize,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
    let mut due: Option<Instant> = None;
    loop {
        let message = match due {
            None => receiver.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(due) => receiver.recv_timeout(due.saturating_duration_since(Instant::now())),
        };
        let mut flushed = None;
        let stop = match message {
            Ok(Message::Span(span)) => {
                batch.push(*span);
                due.get_or_insert_with(|| Instant::now() + SEND_EVERY);
                false
            }
            Ok(Message::Flush(answer)) => {
                flushed = Some(answer);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        let send_now = stop
            || flushed.is_some()
            || batch.len() >= MAX_BATCH
            || due.is_some_and(|due| Instant::now() >= due);
        if send_now && !batch.is_empty() {
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
            let n = spans.len();
            match runtime.block_on(exporter.export(spans)) {
                Ok(()) => EXPORTED.fetch_add(n as u64, Ordering::Relaxed),
                Err(_) => DROPPED.fetch_add(n as u64, Ordering::Relaxed),
            };
            pending.fetch_sub(n, Ordering::Relaxed);
        }
        if send_now {
            due = None;
        }
        if let Some(answer) = flushed {
            let _ = answer.send(());
        }
        if stop {
            return;
        }
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        // At most `capacity` spans wait for export, counting the batch in the exporter's
        // hands: a stuck collector costs spans, never memory or a wait.
        if self.pending.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.sender.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (answer, answered) = mpsc::sync_channel(1);
        self.sender
            .send(Message::Flush(answer))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        answered
            .recv_timeout(EXPORT_TIMEOUT)
            .map_err(|_| OTelSdkError::Timeout(EXPORT_TIMEOUT))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Flush, then let the thread go: it ends when the provider drops its sender.
        let (answer, answered) = mpsc::sync_channel(1);
        if self.sender.try_send(Message::Flush(answer)).is_ok() {
            let _ = answered.recv_timeout(timeout);
        }
        if let Ok(mut thread) = self.thread.lock() {
            drop(thread.take());
        }
        Ok(())
    }
}
