//! Decision latency on the example policy set, in one run so the figures compare:
//! the engine alone (typed context, JSON context, with a request entity), a full
//! IsAuthorized round trip over loopback gRPC, and the same question asked as Envoy asks
//! it, through ext_authz `Check` (mapping included).
//!
//! Run: `cargo bench --bench decision` (optionally `-- <iterations>`, default 20000).
//! Prints median and p99 per case and each case's median as a ratio of the first.

mod support;

use std::{path::PathBuf, sync::Arc, time::Duration};

use cedar_pdp::proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use cedar_pdp::{
    engine::{ContextInput, Engine, EngineOptions, EntitiesInput},
    policy::{LoadOptions, PolicyStore},
};
use support::*;

fn main() {
    let iterations = iterations_arg(20_000);
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let (store, _) =
        PolicyStore::open(&dir, LoadOptions::default()).expect("example policies load");
    let store = Arc::new(store);
    let snapshot = store.current();
    let engine = Engine::new(EngineOptions::default());

    // One engine decision, as a call makes it: merge entities, then decide; bob may read.
    let decide = |entities: EntitiesInput, context: ContextInput| {
        let decision = engine
            .decide(&snapshot, entities, bob_reads(context))
            .unwrap();
        assert!(decision.allowed());
    };
    let mut results: Vec<(&str, Vec<Duration>)> = Vec::new();
    results.push((
        "engine, typed context",
        measure(iterations, || {
            decide(EntitiesInput::None, ContextInput::Value(bob_context()))
        }),
    ));
    results.push((
        "engine, JSON context",
        measure(iterations, || {
            let json = r#"{"mfa": true, "source_ip": "10.1.2.3"}"#.to_owned();
            decide(EntitiesInput::None, ContextInput::Json(json));
        }),
    ));
    results.push((
        "engine, 1 request entity",
        measure(iterations, || {
            let bob = acme_user("bob", vec![uid(r#"Platform::Group::"acme-engineering""#)]);
            decide(
                EntitiesInput::Typed(vec![bob]),
                ContextInput::Value(bob_context()),
            );
        }),
    ));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (addr, _) = serve(&runtime, config(&dir));
    let mut client = client(&runtime, addr);
    let request = request(
        ("Platform::User", "bob"),
        ("Platform::Action", "read"),
        ("Platform::Document", "acme-roadmap-q3"),
    );
    let grpc = grpc_samples(&runtime, &mut client, &request, true, iterations);
    results.push(("gRPC IsAuthorized, loopback", grpc));

    // The same with every decision audited to a file, context allow-listed.
    let audit_dir = tempfile::tempdir().unwrap();
    let mut audited_config = config(&dir);
    audited_config.audit = cedar_pdp::config::AuditOptions {
        sink: cedar_pdp::config::AuditSink::File(audit_dir.path().join("audit.jsonl")),
        context_keys: vec!["mfa".to_owned()],
        ..Default::default()
    };
    let (addr, _) = serve(&runtime, audited_config);
    let mut audited = support::client(&runtime, addr);
    let grpc_audited = grpc_samples(&runtime, &mut audited, &request, true, iterations);
    results.push(("gRPC IsAuthorized, every decision audited", grpc_audited));

    // The same question as Envoy asks it: a JWT subject, a route template, the mapped
    // context (method, path, host, source_ip, headers, params).
    let config = ext_authz_config(&dir);
    let (addr, _) = serve(&runtime, config);
    let check = check_request("bob", "/projects/acme-roadmap/docs/acme-roadmap-q3");
    let mut envoy = runtime.block_on(async {
        AuthorizationClient::connect(format!("http://{addr}"))
            .await
            .expect("connects to the benchmark server")
    });
    let ext_authz = runtime.block_on(async {
        let mut samples = Vec::with_capacity(iterations);
        for i in 0..iterations + iterations / 10 {
            let start = std::time::Instant::now();
            let response = envoy.check(check.clone()).await.expect("the call succeeds");
            let elapsed = start.elapsed();
            assert_eq!(response.get_ref().status.as_ref().map(|s| s.code), Some(0));
            if i >= iterations / 10 {
                samples.push(elapsed);
            }
        }
        samples.sort_unstable();
        samples
    });
    results.push(("gRPC ext_authz Check, loopback", ext_authz));

    println!("{iterations} iterations per case, example policy set (19 policies, 40 entities)");
    print_table(&results);
}
