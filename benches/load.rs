//! Throughput under load against the real server over loopback: many calls in flight on
//! a few connections, for a fixed time per case, every answer checked (gRPC status and
//! decision). The cases, under the same load settings:
//! - `grpc.health.v1.Health/Check`: gRPC itself, the floor a decision is measured against;
//! - `IsAuthorized`: one decision a call (bob reads a document of the example set);
//! - `BatchIsAuthorized` with 100 items: decisions per second against unary calls'.
//!
//! Then a flood: 8 times as many `IsAuthorized` calls in flight, against a server with the
//! default `max_concurrent_calls` of 1000 (nothing is shed) and one whose limit is 64: the
//! latency of the calls answered, and how many were shed with RESOURCE_EXHAUSTED. Shed
//! calls are retried at once by the benchmark's clients, the worst case for the server.
//!
//! Client and server share the machine (and, here, the process), so the figures are for
//! comparing the cases with each other, not absolute capacity. The cases that are
//! compared run in turns of one second each (see [`interleave`]), so that a busy moment
//! of a shared machine does not land on one case alone.
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

use cedar_pdp::proto::cedarpdp::v1 as pb;
use support::*;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Connections the load is spread over, and calls in flight on each.
const CONNECTIONS: usize = 4;
const IN_FLIGHT_PER_CONNECTION: usize = 16;
/// Items of the batch case.
const BATCH: usize = 100;

/// Calls in flight per connection in the flood cases, and the lower limit they meet.
const FLOOD_PER_CONNECTION: usize = 8 * IN_FLIGHT_PER_CONNECTION;
const FLOOD_LIMIT: usize = 64;

/// One case's outcome: calls answered, decisions made, calls shed, and sorted latencies
/// of the answered calls.
struct Outcome {
    calls: usize,
    decisions: usize,
    shed: usize,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Outcome {
    fn empty() -> Self {
        Self {
            calls: 0,
            decisions: 0,
            shed: 0,
            latencies: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// Adds another round of the same case.
    fn add(&mut self, round: Outcome) {
        self.calls += round.calls;
        self.decisions += round.decisions;
        self.shed += round.shed;
        self.latencies.extend(round.latencies);
        self.latencies.sort_unstable();
        self.elapsed += round.elapsed;
    }
}

/// Runs each case for one second in turn, `seconds` times over, and adds up each case's
/// rounds: the shared machine's slow and fast moments then fall on every case alike, so
/// the ratios between cases hold still from run to run far better than with each case
/// run once for the whole time.
fn interleave(seconds: u64, cases: &[&dyn Fn(u64) -> Outcome]) -> Vec<Outcome> {
    let mut totals: Vec<Outcome> = cases.iter().map(|_| Outcome::empty()).collect();
    for _ in 0..seconds {
        for (case, total) in cases.iter().zip(&mut totals) {
            total.add(case(1));
        }
    }
    totals
}

/// Runs `call` from `in_flight` tasks per channel until `seconds` pass; `call` returns
/// the decisions it made, or `None` for a call shed with RESOURCE_EXHAUSTED (and panics
/// on a wrong answer).
fn run<F, Fut>(
    runtime: &tokio::runtime::Runtime,
    channels: &[Channel],
    in_flight: usize,
    seconds: u64,
    call: F,
) -> Outcome
where
    F: Fn(Channel) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<usize>> + Send,
{
    let call = Arc::new(call);
    let stop = Arc::new(AtomicBool::new(false));
    runtime.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = channels
            .iter()
            .flat_map(|channel| std::iter::repeat_n(channel.clone(), in_flight))
            .map(|channel| {
                let (call, stop) = (call.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut latencies, mut decisions, mut shed) = (Vec::new(), 0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        match call(channel.clone()).await {
                            Some(n) => {
                                decisions += n;
                                latencies.push(start.elapsed());
                            }
                            None => shed += 1,
                        }
                    }
                    (latencies, decisions, shed)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut outcome = Outcome {
            calls: 0,
            decisions: 0,
            shed: 0,
            latencies: Vec::new(),
            elapsed: Duration::ZERO,
        };
        for task in tasks {
            let (latencies, decisions, shed) = task.await.expect("no wrong answer");
            outcome.calls += latencies.len();
            outcome.decisions += decisions;
            outcome.shed += shed;
            outcome.latencies.extend(latencies);
        }
        outcome.elapsed = started.elapsed();
        outcome.latencies.sort_unstable();
        outcome
    })
}

/// [`CONNECTIONS`] connections to `addr`.
fn connect(runtime: &tokio::runtime::Runtime, addr: std::net::SocketAddr) -> Vec<Channel> {
    (0..CONNECTIONS)
        .map(|_| {
            runtime.block_on(async {
                Channel::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .expect("connects to the benchmark server")
            })
        })
        .collect()
}

/// One `IsAuthorized` call of `request`: `Some(1)` for its allow, `None` if shed.
async fn is_authorized(channel: Channel, request: pb::IsAuthorizedRequest) -> Option<usize> {
    match pb::authorizer_client::AuthorizerClient::new(channel)
        .is_authorized(request)
        .await
    {
        Ok(answer) => {
            assert_eq!(answer.into_inner().decision, pb::Decision::Allow as i32);
            Some(1)
        }
        Err(status) if status.code() == tonic::Code::ResourceExhausted => None,
        Err(status) => panic!("IsAuthorized failed: {status:?}"),
    }
}

fn main() {
    let seconds = iterations_arg(5) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let (addr, _) = serve(&runtime, config(&dir));
    let channels = connect(&runtime, addr);
    let bob_reads = request(
        ("Platform::User", "bob"),
        ("Platform::Action", "read"),
        ("Platform::Document", "acme-roadmap-q3"),
    );

    let health = |seconds| {
        run(
            &runtime,
            &channels,
            IN_FLIGHT_PER_CONNECTION,
            seconds,
            |channel| async move {
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await
                    .expect("health answers")
                    .into_inner()
                    .status;
                assert_eq!(status, 1, "SERVING");
                Some(0)
            },
        )
    };
    let unary = |seconds| {
        let request = bob_reads.clone();
        run(
            &runtime,
            &channels,
            IN_FLIGHT_PER_CONNECTION,
            seconds,
            move |channel| is_authorized(channel, request.clone()),
        )
    };
    let batch = |seconds| {
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
        run(
            &runtime,
            &channels,
            IN_FLIGHT_PER_CONNECTION,
            seconds,
            move |channel| {
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
                    Some(BATCH)
                }
            },
        )
    };

    let flood = |limit: usize| {
        let mut config = config(&dir);
        config.limits.max_concurrent_calls = limit;
        let (addr, _) = serve(&runtime, config);
        connect(&runtime, addr)
    };
    let flood_channels = [
        flood(cedar_pdp::config::Limits::default().max_concurrent_calls),
        flood(FLOOD_LIMIT),
    ];
    let flood_run = |channels: &[Channel], seconds| {
        let request = bob_reads.clone();
        run(
            &runtime,
            channels,
            FLOOD_PER_CONNECTION,
            seconds,
            move |channel| is_authorized(channel, request.clone()),
        )
    };
    let flood_default = |seconds| flood_run(&flood_channels[0], seconds);
    let flood_limited = |seconds| flood_run(&flood_channels[1], seconds);
    let mut outcomes = interleave(seconds, &[&health, &unary, &batch]).into_iter();
    let (health, unary, batch) = (
        outcomes.next().unwrap(),
        outcomes.next().unwrap(),
        outcomes.next().unwrap(),
    );
    let mut outcomes = interleave(seconds, &[&flood_default, &flood_limited]).into_iter();
    let (flood_default, flood_limited) = (outcomes.next().unwrap(), outcomes.next().unwrap());

    println!(
        "{seconds} s per case in 1 s rounds taken in turn, {CONNECTIONS} connections x {IN_FLIGHT_PER_CONNECTION} calls in flight ({FLOOD_PER_CONNECTION} in the floods), example policy set"
    );
    println!(
        "{:<36} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "case", "calls/s", "decisions/s", "shed/s", "p50 µs", "p90 µs", "p99 µs"
    );
    let rate = |n: usize, o: &Outcome| n as f64 / o.elapsed.as_secs_f64();
    let limited = format!("IsAuthorized flood, limit {FLOOD_LIMIT}");
    for (name, o) in [
        ("Health/Check", &health),
        ("IsAuthorized", &unary),
        ("BatchIsAuthorized (100 items)", &batch),
        ("IsAuthorized flood, limit 1000", &flood_default),
        (limited.as_str(), &flood_limited),
    ] {
        let us = |q: f64| at(&o.latencies, q).as_secs_f64() * 1e6;
        println!(
            "{:<36} {:>10.0} {:>12.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            name,
            rate(o.calls, o),
            rate(o.decisions, o),
            rate(o.shed, o),
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
    let p99 = |o: &Outcome| at(&o.latencies, 0.99).as_secs_f64();
    println!(
        "flood: p99 of answered calls with limit {FLOOD_LIMIT} / with limit 1000 = {:.2}; shed {:.0}% of calls",
        p99(&flood_limited) / p99(&flood_default),
        100.0 * flood_limited.shed as f64 / (flood_limited.shed + flood_limited.calls) as f64
    );
}
