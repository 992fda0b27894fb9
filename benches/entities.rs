//! Decision cost against the size of the stored entity set (`entities.json`): 10, 1,000
//! and 100,000 stored users under 1,000 tenants, the engine alone, for a call that sends no
//! entities and for one that sends a new one, merged over the part of the store the call
//! can reach (as served) and, for reference, over the whole store.
//!
//! Run: `cargo bench --bench entities` (optionally `-- <iterations>`, default 5000; the
//! 100,000-entity case merged over the whole store runs a hundredth as many).

mod support;

use std::str::FromStr;

use cedar_pdp::{
    engine::{Engine, EngineOptions, EntitiesInput, EntityInput, SLICE_ENTITIES_OVER},
    policy::{LoadOptions, PolicyStore},
};
use cedar_policy::{EntityUid, RestrictedExpression};
use support::*;

/// The policies of `tenant_dir` (1,000 of them), with `users` stored users.
fn store_with(dir: &std::path::Path, users: usize) {
    tenant_dir(dir, 1_000);
    let entities: Vec<_> = (0..users)
        .map(|i| {
            serde_json::json!({
                "uid": {"type": "User", "id": format!("u{i}")},
                "attrs": {"suspended": false},
                "parents": [{"type": "Tenant", "id": format!("t{}", i % 1_000)}]
            })
        })
        .chain(std::iter::once(serde_json::json!({
            "uid": {"type": "Doc", "id": "d7"}, "attrs": {},
            "parents": [{"type": "Tenant", "id": "t7"}]
        })))
        .collect();
    std::fs::write(
        dir.join("entities.json"),
        serde_json::to_string(&entities).unwrap(),
    )
    .unwrap();
}

fn main() {
    let iterations = iterations_arg(5_000);
    let uid = |s: &str| EntityUid::from_str(s).unwrap();
    let mut results = Vec::new();
    for users in [10, 1_000, 100_000] {
        let dir = tempfile::tempdir().unwrap();
        store_with(dir.path(), users);
        let (store, _) =
            PolicyStore::open(dir.path(), LoadOptions::default()).expect("the set loads");
        let snapshot = store.current();
        // A new document sent with the call (one the store does not hold), as a caller
        // that owns its resources does.
        let sent = || {
            EntitiesInput::Typed(vec![EntityInput {
                uid: uid(r#"Doc::"d7-draft""#),
                attrs: Vec::<(String, RestrictedExpression)>::new(),
                parents: vec![uid(r#"Tenant::"t7""#)],
                tags: Vec::new(),
            }])
        };
        // None sent; one sent, as served (merged over the part of the store it reaches
        // past SLICE_ENTITIES_OVER stored entities, over the whole store below); one sent,
        // always merged over that part; one sent, always merged over the whole store.
        let cases = [
            ("none sent", false, SLICE_ENTITIES_OVER),
            ("1 sent", true, SLICE_ENTITIES_OVER),
            ("1 sent, over the part it reaches", true, 0),
            ("1 sent, over the whole store", true, usize::MAX),
        ];
        for (case, sends, slice_entities_over) in cases {
            let engine = Engine::new(EngineOptions {
                slice_entities_over,
                ..EngineOptions::default()
            });
            let decide = || {
                let (input, mut query) = (EntitiesInput::None, u7_writes_d7());
                if !sends {
                    return engine.decide(&snapshot, input, query).unwrap();
                }
                query.resource = uid(r#"Doc::"d7-draft""#);
                engine.decide(&snapshot, sent(), query).unwrap()
            };
            let decision = decide();
            assert!(decision.allowed() && decision.determining_policies() == ["p7"]);
            let runs = if slice_entities_over == usize::MAX && users > 10 {
                (iterations / 100).max(20)
            } else {
                iterations
            };
            let samples = measure(runs, || {
                std::hint::black_box(decide());
            });
            let name = format!("{users} stored, {case}");
            results.push((name, samples));
        }
    }
    println!("{iterations} iterations per case (100,000 stored merged whole: a hundredth)");
    print_table(&results);
}
