//! What exporting traces costs a decision: the same `IsAuthorized` load against three
//! servers (the release binary, each a process of its own since a process has one trace
//! exporter), one with no collector, one exporting 1% of traces and one exporting all of
//! them to an in-process OTLP collector that counts what it receives. The three cases
//! run in turns of one second (see `support::load::interleave`); decisions per second are
//! compared with the first.
//!
//! Run: `cargo bench --bench tracing` (optionally `-- <seconds per case>`, default 5).

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use support::{load::*, *};
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

/// A collector that counts the spans it is sent.
#[derive(Clone, Default)]
struct Counting {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Counting {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let n: usize = request
            .into_inner()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

fn main() {
    let seconds = iterations_arg(5) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let collector = Counting::default();
    let collector_addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(collector.clone()))
                .serve_with_incoming(TcpIncoming::from(listener)),
        );
        addr
    });
    let endpoint = format!("--otlp-endpoint=http://{collector_addr}");
    let cases = [
        ("export off", vec![]),
        (
            "export on, 1% sampled",
            vec![endpoint.clone(), "--trace-sample-ratio=0.01".to_owned()],
        ),
        (
            "export on, 100% sampled",
            vec![endpoint.clone(), "--trace-sample-ratio=1".to_owned()],
        ),
    ];
    let servers: Vec<(Served, Vec<tonic::transport::Channel>)> = cases
        .iter()
        .map(|(_, extra)| {
            let addr = free_port();
            let served = Served::start(addr, free_port(), extra);
            (served, connect(&runtime, addr))
        })
        .collect();
    let bob_reads = request(
        ("Platform::User", "bob"),
        ("Platform::Action", "read"),
        ("Platform::Document", "acme-roadmap-q3"),
    );
    let channels: Vec<&[tonic::transport::Channel]> =
        servers.iter().map(|(_, c)| c.as_slice()).collect();
    let outcomes = interleave_is_authorized(&runtime, &channels, &bob_reads, seconds);
    // Let the exporters send what they hold.
    std::thread::sleep(Duration::from_secs(2));

    println!(
        "{:<28} {:>12} {:>9} {:>9} {:>10}",
        "case", "decisions/s", "p50 µs", "p99 µs", "x rate"
    );
    let base = outcomes[0].decisions as f64 / outcomes[0].elapsed.as_secs_f64();
    for ((name, _), outcome) in cases.iter().zip(&outcomes) {
        let rate = outcome.decisions as f64 / outcome.elapsed.as_secs_f64();
        println!(
            "{:<28} {:>12.0} {:>9.1} {:>9.1} {:>10.2}",
            name,
            rate,
            at(&outcome.latencies, 0.5).as_secs_f64() * 1e6,
            at(&outcome.latencies, 0.99).as_secs_f64() * 1e6,
            rate / base
        );
    }
    let total: usize = outcomes[1..].iter().map(|o| o.calls).sum();
    println!(
        "spans received by the collector: {} (for {} calls traced at 1% and 100%; two spans a \
         sampled call)",
        collector.spans.load(Ordering::Relaxed),
        total
    );
    drop(servers);
}
