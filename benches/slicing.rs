//! Decision cost against policy-set size, with and without slicing: the engine alone
//! (no gRPC), on multi-tenant sets of 10, 1,000 and 100,000 policies whose scopes are
//! spread over as many users and 1,000 tenants' folders, plus two unconstrained
//! forbids every request must see. Each case asks the same question: may user `u7`
//! read a document of its tenant.
//!
//! Run: `cargo bench --bench slicing` (optionally `-- <iterations>`, default 20000; the
//! whole-set cases on large sets run a hundredth as many).

mod support;

use cedar_pdp::{
    engine::{Engine, EngineOptions, EntitiesInput},
    policy::{LoadOptions, PolicyStore},
};
use support::*;

fn main() {
    let iterations = iterations_arg(20_000);
    let mut results = Vec::new();
    for n in [10, 1_000, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        tenant_dir(dir.path(), n);
        let (store, _) =
            PolicyStore::open(dir.path(), LoadOptions::default()).expect("the generated set loads");
        let snapshot = store.current();
        for slice in [true, false] {
            let engine = Engine::new(EngineOptions {
                slice_policies: slice,
                ..EngineOptions::default()
            });
            let decision = engine
                .decide(&snapshot, EntitiesInput::None, u7_writes_d7())
                .unwrap();
            assert!(decision.allowed(), "{n} policies: u7 writes d7");
            assert_eq!(decision.determining_policies(), ["p7"]);
            let runs = if !slice && n > 1_000 {
                (iterations / 100).max(20)
            } else {
                iterations
            };
            let samples = measure(runs, || {
                let decision = engine
                    .decide(&snapshot, EntitiesInput::None, u7_writes_d7())
                    .unwrap();
                std::hint::black_box(decision);
            });
            let name = format!(
                "{n} policies, {}",
                if slice { "sliced" } else { "whole set" }
            );
            results.push((name, samples));
        }
    }
    println!("{iterations} iterations per case (whole set on 100,000: a hundredth)");
    print_table(&results);
}
