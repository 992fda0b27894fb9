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

use std::path::PathBuf;

use cedar_pdp::proto::cedarpdp::v1 as pb;
use support::{load::*, *};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Items of the batch case.
const BATCH: usize = 100;

/// Calls in flight per connection in the flood cases, and the lower limit they meet.
const FLOOD_PER_CONNECTION: usize = 8 * IN_FLIGHT_PER_CONNECTION;
const FLOOD_LIMIT: usize = 64;

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
