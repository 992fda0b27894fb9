//! Micro-benchmarks of the decide step in criterion, the ecosystem's harness: each figure
//! with a confidence interval, and a comparison with a saved baseline.
//!
//! - on the example set: a question decided by Cedar (typed context, JSON context), the
//!   same question answered from the decision cache (and, apart, the lookup and the
//!   building of its context), and one that sends an entity;
//! - on 10,000 tenant policies: a question decided on its slice, and answered from the
//!   cache.
//!
//! Run: `cargo bench --bench micro`; to compare a change, `cargo bench --bench micro --
//! --save-baseline before` on the old code, then `-- --baseline before` on the new.
//! Whole-server throughput and latency are `benches/load.rs` and `benches/decision.rs`.

mod support;

use std::{hint::black_box, path::PathBuf};

use cedar_pdp::{
    engine::{
        CanonicalContext, CheckedContexts, ContextInput, Engine, EngineOptions, EntitiesInput,
        EntityInput, Query,
    },
    policy::{LoadOptions, Snapshot, load_dir},
};
use criterion::{Criterion, criterion_group, criterion_main};
use support::{bob_context, bob_reads, uid};

fn load(dir: &std::path::Path) -> Snapshot {
    load_dir(dir, &LoadOptions::default())
        .expect("the policies load")
        .snapshot
}

/// An engine deciding with the defaults, keeping `cached` decisions (0: none).
fn engine(cached: usize) -> Engine {
    Engine::new(EngineOptions {
        decision_cache_entries: cached,
        ..EngineOptions::default()
    })
}

/// The typed context the example set's policies read, with canonical bytes standing for
/// the values a front end read it from.
fn typed() -> ContextInput {
    ContextInput::Canonical(CanonicalContext::built(
        b"mfa=true;source_ip=10.1.2.3".as_slice().into(),
        bob_context(),
    ))
}

fn example(c: &mut Criterion) {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let snapshot = load(&dir);
    let mut group = c.benchmark_group("example set");
    let fresh = engine(0);
    group.bench_function("typed context, evaluated", |b| {
        b.iter(|| {
            let decision = fresh.decide_stored(&snapshot, bob_reads(typed())).unwrap();
            black_box(decision.allowed())
        })
    });
    group.bench_function("JSON context, evaluated", |b| {
        b.iter(|| {
            let json = r#"{"mfa": true, "source_ip": "10.1.2.3"}"#.to_owned();
            let query = bob_reads(ContextInput::Json(json));
            black_box(fresh.decide_stored(&snapshot, query).unwrap().allowed())
        })
    });
    let cached = engine(4096);
    group.bench_function("typed context, reused", |b| {
        b.iter(|| {
            let decision = cached.decide_stored(&snapshot, bob_reads(typed())).unwrap();
            black_box(decision.allowed())
        })
    });
    let asked = bob_reads(typed());
    cached.decide_stored(&snapshot, asked.clone()).unwrap();
    group.bench_function("cache lookup alone", |b| {
        b.iter(|| black_box(cached.kept(&snapshot, &asked).unwrap().allowed()))
    });
    group.bench_function("typed context built alone", |b| {
        b.iter(|| black_box(typed()))
    });
    group.bench_function("1 request entity", |b| {
        b.iter(|| {
            let visitor = support::acme_user(
                "visitor",
                vec![uid(r#"Platform::Group::"acme-engineering""#)],
            );
            let query = Query {
                principal: visitor.uid.clone(),
                ..bob_reads(typed())
            };
            let decided = fresh.decide(&snapshot, EntitiesInput::Typed(vec![visitor]), query);
            black_box(decided.unwrap().allowed())
        })
    });
    group.finish();
}

fn tenants(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    support::tenant_dir(dir.path(), 10_000);
    let snapshot = load(dir.path());
    let question = || {
        let query = support::u7_writes_d7();
        let ContextInput::Value(context) = query.context else {
            unreachable!("the tenant question's context is typed")
        };
        Query {
            context: ContextInput::Canonical(CanonicalContext::built(
                b"level=2".as_slice().into(),
                context,
            )),
            ..query
        }
    };
    let mut group = c.benchmark_group("10,000 tenant policies");
    let fresh = engine(0);
    group.bench_function("sliced, evaluated", |b| {
        b.iter(|| {
            black_box(
                fresh
                    .decide_stored(&snapshot, question())
                    .unwrap()
                    .allowed(),
            )
        })
    });
    let cached = engine(4096);
    group.bench_function("reused", |b| {
        b.iter(|| {
            black_box(
                cached
                    .decide_stored(&snapshot, question())
                    .unwrap()
                    .allowed(),
            )
        })
    });
    group.finish();
}

/// The shape sidecars send, on the rotating set of 10,000 policies: 100 questions with
/// context about a document the store does not hold, which the call sends, decided as one
/// batch (the entities checked and merged once, a shared context validated once, a slice
/// and an evaluation per item) and one question alone, sending the same document.
fn batch(c: &mut Criterion) {
    const ITEMS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    support::rotating_dir(dir.path(), 10_000);
    let snapshot = load(dir.path());
    let incoming = || {
        EntitiesInput::Typed(vec![EntityInput {
            uid: uid(r#"Doc::"incoming""#),
            attrs: vec![],
            parents: vec![uid(r#"Tenant::"t0""#)],
            tags: vec![],
        }])
    };
    let question = |i: usize| {
        let action = if i.is_multiple_of(2) { "read" } else { "write" };
        let level = cedar_policy::RestrictedExpression::new_long(2);
        let context = cedar_policy::Context::from_pairs([("level".to_owned(), level)]).unwrap();
        Query {
            principal: uid(&format!(r#"User::"u{i}""#)),
            action: uid(&format!(r#"Action::"{action}""#)),
            resource: uid(r#"Doc::"incoming""#),
            context: ContextInput::Canonical(CanonicalContext::built(
                b"level=2".as_slice().into(),
                context,
            )),
        }
    };
    // Made once: the server builds a question from its message without parsing text.
    let questions: Vec<Query> = (0..ITEMS).map(question).collect();
    let question = |i: usize| questions[i].clone();
    let mut group = c.benchmark_group("batch shape, 10,000 policies");
    let engine = engine(4096);
    group.bench_function("100 items sharing a call entity", |b| {
        b.iter(|| {
            let entities = engine.entities(&snapshot, incoming()).unwrap();
            // As the server builds a batch's requests: a shared context validated once.
            let mut checked = CheckedContexts::default();
            let requests: Vec<_> = (0..ITEMS)
                .map(|i| {
                    let request = engine.request_among(&snapshot, question(i), &mut checked);
                    request.unwrap()
                })
                .collect();
            let store = engine.store(&snapshot, entities, &requests).unwrap();
            let allowed = requests
                .iter()
                .filter(|r| engine.decide_request(&snapshot, &store, r).allowed())
                .count();
            black_box(allowed)
        })
    });
    group.bench_function("one item with the entity", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % ITEMS;
            let decided = engine.decide(&snapshot, incoming(), question(i)).unwrap();
            black_box(decided.allowed())
        })
    });
    group.finish();
}

criterion_group!(benches, example, tenants, batch);
criterion_main!(benches);
