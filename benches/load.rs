//! Throughput under load against the real server over loopback: many calls in flight on
//! a few connections, for a fixed time per case, every answer checked (gRPC status and
//! decision). The cases, under the same load settings:
//! - `grpc.health.v1.Health/Check`: gRPC itself, the floor a decision is measured against;
//! - `IsAuthorized`: one decision a call (bob reads a document of the example set);
//! - `BatchIsAuthorized` with 100 items: decisions per second against unary calls'.
//!
//! Client and server share the machine (and, here, the process), so the figures are for
//! comparing the cases with each other, not absolute capacity.
//!
//! Run: `cargo bench --bench load` (optionally `-- <seconds per case>`, default 5).

mod support;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use cedar_pdp::{
    policy::{LoadOptions, PolicyStore},
    proto::cedarpdp::v1 as pb,
};
use support::*;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Connections the load is spread over, and calls in flight on each.
const CONNECTIONS: usize = 4;
const IN_FLIGHT_PER_CONNECTION: usize = 16;
/// Items of the batch case.
const BATCH: usize = 100;

/// One case's outcome: calls done, decisions made, and sorted call latencies.
struct Outcome {
    calls: usize,
    decisions: usize,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// Runs `call` from every task until `seconds` pass; `call` returns the decisions it made
/// (and panics on a wrong answer).
fn run<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    channels: &[Channel],
    seconds: u64,
    call: F,
) -> Outcome
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = usize> + Send,
{
    let call = Arc::new(call);
    let stop = Arc::new(AtomicBool::new(false));
    runtime.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = channels
            .iter()
            .flat_map(|channel| std::iter::repeat_n(channel.clone(), IN_FLIGHT_PER_CONNECTION))
            .map(|channel| {
                let (call, stop) = (call.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut latencies, mut decisions) = (Vec::new(), 0);
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        decisions += call(channel.clone()).await;
                        latencies.push(start.elapsed());
                    }
                    (latencies, decisions)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut outcome = Outcome {
            calls: 0,
            decisions: 0,
            latencies: Vec::new(),
            elapsed: Duration::ZERO,
        };
        for task in tasks {
            let (latencies, decisions) = task.await.expect("no wrong answer");
            outcome.calls += latencies.len();
            outcome.decisions += decisions;
            outcome.latencies.extend(latencies);
        }
        outcome.elapsed = started.elapsed();
        outcome.latencies.sort_unstable();
        outcome
    })
}

fn main() {
    let seconds = iterations_arg(5) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let (store, _) = PolicyStore::open(&dir, LoadOptions::default()).expect("the example set");
    let addr = serve(&runtime, Arc::new(store));
    let channels: Vec<Channel> = (0..CONNECTIONS)
        .map(|_| {
            runtime.block_on(async {
                Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .expect("connects to the benchmark server")
            })
        })
        .collect();
    let bob_reads = request(
        ("Platform::User", "bob"),
        ("Platform::Action", "read"),
        ("Platform::Document", "acme-roadmap-q3"),
    );

    let health = run(&runtime, &channels, seconds, |channel| async move {
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .expect("health answers")
            .into_inner()
            .status;
        assert_eq!(status, 1, "SERVING");
        0
    });
    let unary = {
        let request = bob_reads.clone();
        run(&runtime, &channels, seconds, move |channel| {
            let request = request.clone();
            async move {
                let answer = pb::authorizer_client::AuthorizerClient::new(channel)
                    .is_authorized(request)
                    .await
                    .expect("IsAuthorized answers")
                    .into_inner();
                assert_eq!(answer.decision, pb::Decision::Allow as i32);
                1
            }
        })
    };
    let batch = {
        let item = pb::BatchItem {
            principal: bob_reads.principal.clone(),
            action: bob_reads.action.clone(),
            resource: bob_reads.resource.clone(),
            ..Default::default()
        };
        let request = pb::BatchIsAuthorizedRequest {
            items: vec![item; BATCH],
            ..Default::default()
        };
        run(&runtime, &channels, seconds, move |channel| {
            let request = request.clone();
            async move {
                let answer = pb::authorizer_client::AuthorizerClient::new(channel)
                    .batch_is_authorized(request)
                    .await
                    .expect("BatchIsAuthorized answers")
                    .into_inner();
                assert_eq!(answer.results.len(), BATCH);
                assert!(
                    answer
                        .results
                        .iter()
                        .all(|r| r.decision == pb::Decision::Allow as i32)
                );
                BATCH
            }
        })
    };

    println!(
        "{seconds} s per case, {CONNECTIONS} connections x {IN_FLIGHT_PER_CONNECTION} calls in flight, example policy set"
    );
    println!(
        "{:<32} {:>10} {:>12} {:>9} {:>9} {:>9}",
        "case", "calls/s", "decisions/s", "p50 µs", "p90 µs", "p99 µs"
    );
    let rate = |n: usize, o: &Outcome| n as f64 / o.elapsed.as_secs_f64();
    for (name, o) in [
        ("Health/Check", &health),
        ("IsAuthorized", &unary),
        ("BatchIsAuthorized (100 items)", &batch),
    ] {
        let us = |q: f64| at(&o.latencies, q).as_secs_f64() * 1e6;
        println!(
            "{:<32} {:>10.0} {:>12.0} {:>9.0} {:>9.0} {:>9.0}",
            name,
            rate(o.calls, o),
            rate(o.decisions, o),
            us(0.5),
            us(0.9),
            us(0.99)
        );
    }
    println!(
        "IsAuthorized calls/s / Health calls/s = {:.2}; batch decisions/s / unary decisions/s = {:.2}",
        rate(unary.calls, &unary) / rate(health.calls, &health),
        rate(batch.decisions, &batch) / rate(unary.decisions, &unary)
    );
}
