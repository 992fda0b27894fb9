//! Throughput under load against the real server over loopback: many calls in flight on
//! a few connections, for a fixed time per case, every answer checked (gRPC status and
//! decision). The cases, under the same load settings:
//! - `grpc.health.v1.Health/Check`: gRPC itself, the floor a decision is measured against;
//! - `IsAuthorized`: one decision a call (bob reads a document of the example set), with
//!   the decision cache and without it;
//! - `IsAuthorized` on 10,000 policies, the calls rotating over 1,000 questions about
//!   1,000 stored users and documents (no one answer stands for the load), with the
//!   cache and without it;
//! - ext_authz `Check` as Envoy sends it (a verified JWT subject, a route template, the
//!   mapped context);
//! - `BatchIsAuthorized` with 100 items: decisions per second against unary calls';
//! - the shape sidecars send: 100 items with context sharing the call's entities (a
//!   document the store does not hold), as one batch and one call each.
//!
//! Then latency against load on the 10,000-policy set: the rotating calls sent at a fixed
//! rate (an open loop), at 10%, 50%, 75% and 90% of the rate the closed loop reached; the
//! p99 at each against the p50 at 10%.
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
        atomic::{AtomicUsize, Ordering},
    },
};

use cedar_pdp::proto::{
    cedarpdp::v1 as pb, envoy::service::auth::v3::authorization_client::AuthorizationClient,
};
use support::{load::*, *};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Items of the batch case.
const BATCH: usize = 100;

/// Policies of the rotating case's set ([`rotating_dir`]).
const LARGE: usize = 10_000;

/// Calls a second a closed-loop run answered.
fn rate_of(outcome: &Outcome) -> f64 {
    outcome.calls as f64 / outcome.elapsed.as_secs_f64()
}

/// One `IsAuthorized` call of `request`, checked to be `allow` or not: `Some(1)`, or
/// `None` if shed.
async fn decided(channel: Channel, request: pb::IsAuthorizedRequest, allow: bool) -> Option<usize> {
    match pb::authorizer_client::AuthorizerClient::new(channel)
        .is_authorized(request)
        .await
    {
        Ok(answer) => {
            let allowed = answer.into_inner().decision == pb::Decision::Allow as i32;
            assert_eq!(allowed, allow);
            Some(1)
        }
        Err(status) if status.code() == tonic::Code::ResourceExhausted => None,
        Err(status) => panic!("IsAuthorized failed: {status:?}"),
    }
}

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
    // The same servers without the decision cache: what it saves.
    let uncached = |dir: &std::path::Path| {
        let mut config = config(dir);
        config.limits.decision_cache_entries = 0;
        let (addr, _) = serve(&runtime, config);
        connect(&runtime, addr)
    };
    let channels_off = uncached(&dir);
    let (addr, _) = serve(&runtime, ext_authz_config(&dir));
    let envoy_channels = connect(&runtime, addr);
    let large = tempfile::tempdir().unwrap();
    rotating_dir(large.path(), LARGE);
    let (addr, _) = serve(&runtime, config(large.path()));
    let large_channels = connect(&runtime, addr);
    let large_channels_off = uncached(large.path());
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
    // Bob reads the roadmap, `in_flight` calls at a time on each of `channels`.
    let bob_reading = |channels: &[Channel], in_flight, seconds| {
        let request = bob_reads.clone();
        run(&runtime, channels, in_flight, seconds, move |channel| {
            is_authorized(channel, request.clone())
        })
    };
    let unary = |seconds| bob_reading(&channels, IN_FLIGHT_PER_CONNECTION, seconds);
    let unary_off = |seconds| bob_reading(&channels_off, IN_FLIGHT_PER_CONNECTION, seconds);
    let envoy = |seconds| {
        let check = check_request("bob", "/projects/acme-roadmap/docs/acme-roadmap-q3");
        run(
            &runtime,
            &envoy_channels,
            IN_FLIGHT_PER_CONNECTION,
            seconds,
            move |channel| {
                let check = check.clone();
                async move {
                    let answer = AuthorizationClient::new(channel)
                        .check(check)
                        .await
                        .expect("Check answers")
                        .into_inner();
                    assert_eq!(answer.status.map(|s| s.code), Some(0), "allowed");
                    Some(1)
                }
            },
        )
    };
    let rotating_on = |channels: &[Channel], seconds| {
        let next = Arc::new(AtomicUsize::new(0));
        run(
            &runtime,
            channels,
            IN_FLIGHT_PER_CONNECTION,
            seconds,
            move |channel| {
                let (request, allow) = rotating_question(next.fetch_add(1, Ordering::Relaxed));
                decided(channel, request, allow)
            },
        )
    };
    let rotating = |seconds| rotating_on(&large_channels, seconds);
    let rotating_off = |seconds| rotating_on(&large_channels_off, seconds);
    // What a sidecar sends: items with context, sharing the entities it knows (here a
    // new document in tenant t0): a batch of them, and the same items one call each.
    let incoming = vec![pb::Entity {
        uid: Some(pb::EntityUid {
            r#type: "Doc".into(),
            id: "incoming".into(),
        }),
        parents: vec![pb::EntityUid {
            r#type: "Tenant".into(),
            id: "t0".into(),
        }],
        ..Default::default()
    }];
    let items: Vec<(pb::IsAuthorizedRequest, bool)> = (0..BATCH)
        .map(|i| {
            let (mut request, _) = rotating_question(i);
            request.resource = incoming[0].uid.clone();
            request.entities = incoming.clone();
            // Only p0 is about tenant t0's documents, for u0.
            (request, i == 0)
        })
        .collect();
    let items = Arc::new(items);
    let shared_batch = |seconds| {
        let request = pb::BatchIsAuthorizedRequest {
            items: items
                .iter()
                .map(|(r, _)| pb::BatchItem {
                    principal: r.principal.clone(),
                    action: r.action.clone(),
                    resource: r.resource.clone(),
                    context: r.context.clone(),
                    ..Default::default()
                })
                .collect(),
            entities: incoming.clone(),
            ..Default::default()
        };
        let allowed: Vec<bool> = items.iter().map(|(_, allow)| *allow).collect();
        run(
            &runtime,
            &large_channels,
            IN_FLIGHT_PER_CONNECTION,
            seconds,
            move |channel| {
                let (request, allowed) = (request.clone(), allowed.clone());
                async move {
                    let answer = pb::authorizer_client::AuthorizerClient::new(channel)
                        .batch_is_authorized(request)
                        .await
                        .expect("BatchIsAuthorized answers")
                        .into_inner();
                    let got: Vec<bool> = answer
                        .results
                        .iter()
                        .map(|r| r.decision == pb::Decision::Allow as i32)
                        .collect();
                    assert_eq!(got, allowed);
                    Some(BATCH)
                }
            },
        )
    };
    let shared_unary = |seconds| {
        let (items, next) = (items.clone(), Arc::new(AtomicUsize::new(0)));
        run(
            &runtime,
            &large_channels,
            IN_FLIGHT_PER_CONNECTION,
            seconds,
            move |channel| {
                let (request, allow) = items[next.fetch_add(1, Ordering::Relaxed) % BATCH].clone();
                decided(channel, request, allow)
            },
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
    let flood_run =
        |channels: &[Channel], seconds| bob_reading(channels, FLOOD_PER_CONNECTION, seconds);
    let flood_default = |seconds| flood_run(&flood_channels[0], seconds);
    let flood_limited = |seconds| flood_run(&flood_channels[1], seconds);
    let cases: [&dyn Fn(u64) -> Outcome; 9] = [
        &health,
        &unary,
        &unary_off,
        &envoy,
        &rotating,
        &rotating_off,
        &batch,
        &shared_batch,
        &shared_unary,
    ];
    let mut outcomes = interleave(seconds, &cases).into_iter();
    let mut next = || outcomes.next().unwrap();
    let (health, unary, unary_off, envoy) = (next(), next(), next(), next());
    let (rotating, rotating_off) = (next(), next());
    let (batch, shared_batch, shared_unary) = (next(), next(), next());
    // Latency against load on the 10,000-policy set: calls sent at a fixed rate (an open
    // loop), at a tenth and at nine tenths of the rate the closed loop above reached.
    let most = rate_of(&rotating);
    let paced = |share: f64, seconds| {
        let next = Arc::new(AtomicUsize::new(0));
        run_paced(
            &runtime,
            &large_channels,
            share * most,
            seconds,
            move |channel| {
                let (request, allow) = rotating_question(next.fetch_add(1, Ordering::Relaxed));
                decided(channel, request, allow)
            },
        )
    };
    let light = paced(0.1, seconds);
    let half = paced(0.5, seconds);
    let three_quarters = paced(0.75, seconds);
    let heavy = paced(0.9, seconds);
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
    let rotating_name = format!("IsAuthorized, {LARGE} policies, rotating");
    let rotating_off_name = format!("{rotating_name}, no cache");
    for (name, o) in [
        ("Health/Check", &health),
        ("IsAuthorized", &unary),
        ("IsAuthorized, no cache", &unary_off),
        ("ext_authz Check (JWT subject, route)", &envoy),
        (rotating_name.as_str(), &rotating),
        (rotating_off_name.as_str(), &rotating_off),
        ("BatchIsAuthorized (100 items)", &batch),
        ("Batch, context + entities", &shared_batch),
        ("its items one a call", &shared_unary),
        ("rotating, paced at 10% of its rate", &light),
        ("rotating, paced at 50% of its rate", &half),
        ("rotating, paced at 75% of its rate", &three_quarters),
        ("rotating, paced at 90% of its rate", &heavy),
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
    let per_health = |o: &Outcome| rate(o.calls, o) / rate(health.calls, &health);
    println!(
        "ext_authz Check calls/s / Health calls/s = {:.2}",
        per_health(&envoy)
    );
    println!(
        "IsAuthorized calls/s / Health calls/s = {:.2} (no cache {:.2}); {LARGE} policies rotating over {ROTATING} questions: {:.2} (no cache {:.2})",
        per_health(&unary),
        per_health(&unary_off),
        per_health(&rotating),
        per_health(&rotating_off),
    );
    println!(
        "batch decisions/s / unary decisions/s = {:.2}; items with context sharing entities: {:.2}",
        rate(batch.decisions, &batch) / rate(unary.decisions, &unary),
        rate(shared_batch.decisions, &shared_batch) / rate(shared_unary.decisions, &shared_unary)
    );
    let p99 = |o: &Outcome| at(&o.latencies, 0.99).as_secs_f64();
    let low = at(&light.latencies, 0.5).as_secs_f64();
    println!(
        "paced, {LARGE} policies: p99 / p50 at 10% of the rate: at 50% {:.2}, at 75% {:.2}, at 90% {:.2}",
        p99(&half) / low,
        p99(&three_quarters) / low,
        p99(&heavy) / low
    );
    println!(
        "flood: p99 of answered calls with limit {FLOOD_LIMIT} / with limit 1000 = {:.2}; shed {:.0}% of calls",
        p99(&flood_limited) / p99(&flood_default),
        100.0 * flood_limited.shed as f64 / (flood_limited.shed + flood_limited.calls) as f64
    );
}
