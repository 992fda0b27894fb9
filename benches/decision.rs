//! Decision latency on the example policy set, in one run so the figures compare:
//! the engine alone (typed context, JSON context, with a request entity) and a full
//! IsAuthorized round trip over loopback gRPC.
//!
//! Run: `cargo bench --bench decision` (optionally `-- <iterations>`, default 20000).
//! Prints median and p99 per case and each case's median as a ratio of the first.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use cedar_pdp::{
    Config, api,
    engine::{ContextInput, Engine, EngineOptions, EntitiesInput, EntityInput, Query},
    policy::{LoadOptions, PolicyStore},
    proto::cedarpdp::v1::{self as pb, authorizer_client::AuthorizerClient},
};
use cedar_policy::{Context, EntityUid, RestrictedExpression};

fn uid(text: &str) -> EntityUid {
    text.parse().expect("a valid uid")
}

fn query(context: ContextInput) -> Query {
    Query {
        principal: uid(r#"Platform::User::"bob""#),
        action: uid(r#"Platform::Action::"read""#),
        resource: uid(r#"Platform::Document::"acme-roadmap-q3""#),
        context,
    }
}

fn typed_context() -> Context {
    Context::from_pairs([
        ("mfa".to_owned(), RestrictedExpression::new_bool(true)),
        (
            "source_ip".to_owned(),
            RestrictedExpression::new_ip("10.1.2.3"),
        ),
    ])
    .unwrap()
}

/// Times `iterations` calls of `f` and returns the sorted per-call durations.
fn measure(iterations: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..iterations / 10 {
        f(); // warm-up
    }
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort_unstable();
    samples
}

fn at(samples: &[Duration], quantile: f64) -> Duration {
    samples[((samples.len() - 1) as f64 * quantile) as usize]
}

fn main() {
    let iterations: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let (store, _) =
        PolicyStore::open(&dir, LoadOptions::default()).expect("example policies load");
    let store = Arc::new(store);
    let snapshot = store.current();
    let engine = Engine::new(EngineOptions::default());

    let mut results: Vec<(&str, Vec<Duration>)> = Vec::new();
    results.push((
        "engine, typed context",
        measure(iterations, || {
            let entities = engine.entities(&snapshot, EntitiesInput::None).unwrap();
            let decision = engine
                .decide(
                    &snapshot,
                    &entities,
                    query(ContextInput::Value(typed_context())),
                )
                .unwrap();
            assert!(decision.allowed);
        }),
    ));
    results.push((
        "engine, JSON context",
        measure(iterations, || {
            let entities = engine.entities(&snapshot, EntitiesInput::None).unwrap();
            let json = r#"{"mfa": true, "source_ip": "10.1.2.3"}"#.to_owned();
            let decision = engine
                .decide(&snapshot, &entities, query(ContextInput::Json(json)))
                .unwrap();
            assert!(decision.allowed);
        }),
    ));
    results.push((
        "engine, 1 request entity",
        measure(iterations, || {
            let bob = EntityInput {
                uid: uid(r#"Platform::User::"bob""#),
                attrs: vec![
                    (
                        "tenant".to_owned(),
                        RestrictedExpression::new_entity_uid(uid(r#"Platform::Tenant::"acme""#)),
                    ),
                    (
                        "email".to_owned(),
                        RestrictedExpression::new_string("bob@acme.example".into()),
                    ),
                    (
                        "suspended".to_owned(),
                        RestrictedExpression::new_bool(false),
                    ),
                    (
                        "contractor".to_owned(),
                        RestrictedExpression::new_bool(false),
                    ),
                ],
                parents: vec![uid(r#"Platform::Group::"acme-engineering""#)],
                tags: vec![],
            };
            let entities = engine
                .entities(&snapshot, EntitiesInput::Typed(vec![bob]))
                .unwrap();
            let decision = engine
                .decide(
                    &snapshot,
                    &entities,
                    query(ContextInput::Value(typed_context())),
                )
                .unwrap();
            assert!(decision.allowed);
        }),
    ));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let grpc = runtime.block_on(async {
        let listeners = api::Listeners {
            grpc: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            metrics: tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listeners.grpc.local_addr().unwrap();
        let config = Config {
            policies: dir.clone(),
            ..Config::default()
        };
        let serving = store.clone();
        tokio::spawn(async move {
            let metrics = cedar_pdp::telemetry::Metrics::new();
            api::serve(&config, serving, metrics, listeners, std::future::pending()).await
        });
        let mut client = AuthorizerClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let request = pb::IsAuthorizedRequest {
            principal: Some(pb::EntityUid {
                r#type: "Platform::User".into(),
                id: "bob".into(),
            }),
            action: Some(pb::EntityUid {
                r#type: "Platform::Action".into(),
                id: "read".into(),
            }),
            resource: Some(pb::EntityUid {
                r#type: "Platform::Document".into(),
                id: "acme-roadmap-q3".into(),
            }),
            ..Default::default()
        };
        let mut samples = Vec::with_capacity(iterations);
        for i in 0..iterations + iterations / 10 {
            let start = Instant::now();
            let response = client
                .is_authorized(request.clone())
                .await
                .unwrap()
                .into_inner();
            let elapsed = start.elapsed();
            assert_eq!(response.decision, pb::Decision::Allow as i32);
            if i >= iterations / 10 {
                samples.push(elapsed);
            }
        }
        samples.sort_unstable();
        samples
    });
    results.push(("gRPC IsAuthorized, loopback", grpc));

    let base = at(&results[0].1, 0.5).as_secs_f64();
    println!("{iterations} iterations per case, example policy set (19 policies, 40 entities)");
    println!(
        "{:<30} {:>10} {:>10} {:>8}",
        "case", "p50 µs", "p99 µs", "x p50"
    );
    for (name, samples) in &results {
        let p50 = at(samples, 0.5);
        println!(
            "{:<30} {:>10.1} {:>10.1} {:>8.2}",
            name,
            p50.as_secs_f64() * 1e6,
            at(samples, 0.99).as_secs_f64() * 1e6,
            p50.as_secs_f64() / base
        );
    }
}
