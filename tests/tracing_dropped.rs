//! A collector that never answers must not slow or fail a decision: spans queue up to
//! `[tracing] queue_capacity`, the rest are dropped and counted, and every call is
//! answered as it would be without tracing.
//!
//! One test in this binary: the subscriber and its exporter are the process's own.

mod common;

use std::time::{Duration, Instant};

use cedar_pdp::{
    Config,
    config::{LogFormat, TracingConfig},
    telemetry,
};
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// A collector that takes each export and never answers it.
struct Stuck;

#[tonic::async_trait]
impl TraceService for Stuck {
    async fn export(
        &self,
        _request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_collector_costs_dropped_spans_never_an_answer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Stuck))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let tracing = TracingConfig {
        otlp_endpoint: Some(format!("http://{collector_addr}")),
        queue_capacity: 8,
        ..TracingConfig::default()
    };
    let export = telemetry::init(LogFormat::Text, "warn", &tracing)
        .expect("the subscriber installs")
        .expect("a collector is configured");
    let server = TestServer::start_with(Config {
        policies: example_policies(),
        ..Config::default()
    })
    .await;
    let mut client = server.client().await;

    // Far more spans than the queue holds, while the exporter waits on the collector.
    let started = Instant::now();
    for _ in 0..300 {
        let answer = client
            .is_authorized(bob_reads_roadmap())
            .await
            .expect("answered")
            .into_inner();
        assert!(is_allow(&answer));
    }
    let took = started.elapsed();
    let (_, metrics) = http_get(server.metrics_addr, "/metrics").await;
    let dropped = metric(&metrics, "cedar_pdp_trace_spans_dropped_total").unwrap();
    // Each call makes two spans (the call and its decision); at most queue_capacity of
    // them wait (queued, or in the batch the exporter holds), the others are dropped.
    assert!(
        dropped >= 592.0,
        "dropped {dropped} of 600 spans\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "cedar_pdp_trace_spans_exported_total"),
        Some(0.0)
    );
    // Liveness, not speed: had a call waited on the stuck export, 300 of them would take
    // minutes (an export waits 10 s before it gives up).
    assert!(took < Duration::from_secs(10), "300 calls took {took:?}");
    server.stop().await;
    // Shutting down does not wait on the stuck collector for longer than asked.
    let stopping = Instant::now();
    export.shutdown(Duration::from_millis(200));
    assert!(stopping.elapsed() < Duration::from_secs(5));
}
