//! A kept decision must be the one evaluating would give: never served for another
//! snapshot version, another context or a call that sends entities, and never past the
//! bound.

use std::{path::Path, str::FromStr};

use cedar_policy::{Context, EntityUid};

use super::{DecisionCache, QuestionKey};
use crate::{
    engine::{CanonicalContext, ContextInput, Engine, EngineOptions, EntitiesInput, Query},
    policy::{LoadOptions, Snapshot, load_dir},
};

const SCHEMA: &str = "entity User;\nentity Doc = { public?: Bool };\n\
    action read appliesTo { principal: [User], resource: [Doc], context: { level?: Long } };\n";

/// A snapshot of `policies` over users `alice` and `bob` and document `d`.
fn snapshot(dir: &Path, policies: &str) -> Snapshot {
    std::fs::write(dir.join("schema.cedarschema"), SCHEMA).unwrap();
    std::fs::write(dir.join("policies.cedar"), policies).unwrap();
    std::fs::write(
        dir.join("entities.json"),
        r#"[{"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Doc", "id": "d"}, "attrs": {}, "parents": []}]"#,
    )
    .unwrap();
    load_dir(dir, &LoadOptions::default()).unwrap().snapshot
}

const ALICE_READS: &str =
    "@id(\"alice-reads\")\npermit(principal == User::\"alice\", action, resource);\n";
const LEVEL_3_READS: &str = "@id(\"level-3\")\npermit(principal, action, resource) \
    when { context has level && context.level >= 3 };\n";

const PUBLIC_READS: &str = "@id(\"public\")\npermit(principal, action, resource) \
    when { resource has public && resource.public };\n";

fn uid(text: &str) -> EntityUid {
    EntityUid::from_str(text).unwrap()
}

fn query(principal: &str, context: ContextInput) -> Query {
    Query {
        principal: uid(&format!("User::\"{principal}\"")),
        action: uid("Action::\"read\""),
        resource: uid("Doc::\"d\""),
        context,
    }
}

fn json(text: &str) -> ContextInput {
    ContextInput::Json(text.to_owned())
}

fn engine(capacity: usize) -> Engine {
    Engine::new(EngineOptions {
        decision_cache_entries: capacity,
        ..EngineOptions::default()
    })
}

#[test]
fn a_question_asked_again_is_answered_from_the_cache_with_the_same_decision() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = snapshot(dir.path(), ALICE_READS);
    let engine = engine(1024);
    let first = engine
        .decide_stored(&snapshot, query("alice", json("")))
        .unwrap();
    assert!(first.allowed());
    assert_eq!(engine.cache.len(snapshot.version()), 1);
    let again = engine
        .decide_stored(&snapshot, query("alice", json("")))
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(again.determining_policies(), ["alice-reads"]);
    assert_eq!(
        engine.cache.len(snapshot.version()),
        1,
        "found, not kept twice"
    );
    // Another principal is another question.
    assert!(
        !engine
            .decide_stored(&snapshot, query("bob", json("")))
            .unwrap()
            .allowed()
    );
    assert_eq!(engine.cache.len(snapshot.version()), 2);
}

#[test]
fn a_reload_is_never_answered_with_the_last_versions_decision() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let allows = snapshot(a.path(), ALICE_READS);
    let forbids = snapshot(
        b.path(),
        &format!("{ALICE_READS}@id(\"nobody\")\nforbid(principal, action, resource);\n"),
    );
    assert_ne!(allows.version(), forbids.version());
    let engine = engine(1024);
    assert!(
        engine
            .decide_stored(&allows, query("alice", json("")))
            .unwrap()
            .allowed()
    );
    let after = engine
        .decide_stored(&forbids, query("alice", json("")))
        .unwrap();
    assert!(!after.allowed(), "the new version's forbid decides");
    assert_eq!(after.determining_policies(), ["nobody"]);
    // A call still on the old snapshot gets the old snapshot's answer.
    assert!(
        engine
            .decide_stored(&allows, query("alice", json("")))
            .unwrap()
            .allowed()
    );
}

#[test]
fn contexts_that_differ_are_different_questions_in_both_forms() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = snapshot(dir.path(), LEVEL_3_READS);
    let engine = engine(1024);
    let typed = |level: i64| {
        let context =
            Context::from_json_value(serde_json::json!({ "level": level }), None).unwrap();
        ContextInput::Canonical(CanonicalContext::built(level.to_le_bytes().into(), context))
    };
    for _ in 0..2 {
        assert!(
            !engine
                .decide_stored(&snapshot, query("bob", json(r#"{"level": 2}"#)))
                .unwrap()
                .allowed()
        );
        assert!(
            engine
                .decide_stored(&snapshot, query("bob", json(r#"{"level": 3}"#)))
                .unwrap()
                .allowed()
        );
        assert!(
            !engine
                .decide_stored(&snapshot, query("bob", typed(2)))
                .unwrap()
                .allowed()
        );
        assert!(
            engine
                .decide_stored(&snapshot, query("bob", typed(3)))
                .unwrap()
                .allowed()
        );
    }
    assert_eq!(engine.cache.len(snapshot.version()), 4);
}

#[test]
fn refusals_and_uncanonical_or_large_contexts_are_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = snapshot(dir.path(), LEVEL_3_READS);
    let engine = engine(1024);
    // The schema refuses a string level, every time.
    for _ in 0..2 {
        let refused = engine.decide_stored(&snapshot, query("bob", json(r#"{"level": "3"}"#)));
        assert!(refused.is_err());
    }
    let large = format!(
        r#"{{"level": 3, "pad": "{}"}}"#,
        "x".repeat(super::MAX_CONTEXT_KEY_BYTES)
    );
    assert!(QuestionKey::of(&query("bob", json(&large))).is_none());
    let typed = Context::from_json_value(serde_json::json!({"level": 3}), None).unwrap();
    assert!(QuestionKey::of(&query("bob", ContextInput::Value(typed))).is_none());
    assert!(QuestionKey::of(&query("bob", ContextInput::Value(Context::empty()))).is_some());
    assert_eq!(engine.cache.len(snapshot.version()), 0);
}

#[test]
fn the_cache_never_holds_more_than_its_capacity_and_zero_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = snapshot(dir.path(), LEVEL_3_READS);
    let engine = engine(3);
    for level in 0..10 {
        let context = json(&format!(r#"{{"level": {level}}}"#));
        let decision = engine
            .decide_stored(&snapshot, query("bob", context))
            .unwrap();
        assert_eq!(decision.allowed(), level >= 3);
        assert!(engine.cache.len(snapshot.version()) <= 3);
    }
    let off = self::engine(0);
    off.decide_stored(&snapshot, query("bob", json("")))
        .unwrap();
    assert_eq!(off.cache.len(snapshot.version()), 0);
}

#[test]
fn a_call_that_sends_entities_is_never_answered_from_the_cache() {
    use crate::{
        decide::{Api, Decider, Telemetry},
        telemetry::Metrics,
    };
    let dir = tempfile::tempdir().unwrap();
    let snapshot = snapshot(dir.path(), PUBLIC_READS);
    let decider = Decider::new(engine(1024), 10, Telemetry::metrics_only(Metrics::new()));
    let call = decider.start(Api::IsAuthorized, None, None);
    let new_doc = || {
        let mut q = query("bob", json(""));
        q.resource = uid("Doc::\"new\"");
        crate::decide::Question::from(q)
    };
    // Stored entities alone: the document is not stored, so not public: denied, and kept.
    for _ in 0..2 {
        let denied = decider.decide(&call, &snapshot, EntitiesInput::None, new_doc());
        assert!(!denied.unwrap().allowed());
    }
    // The same question with the document sent as public: decided with it, allowed.
    let public =
        r#"[{"uid": {"type": "Doc", "id": "new"}, "attrs": {"public": true}, "parents": []}]"#;
    let allowed = decider.decide(
        &call,
        &snapshot,
        EntitiesInput::Json(public.into()),
        new_doc(),
    );
    assert!(allowed.unwrap().allowed());
    // And the kept deny still answers the call without entities.
    let denied = decider.decide(&call, &snapshot, EntitiesInput::None, new_doc());
    assert!(!denied.unwrap().allowed());
}

#[test]
fn two_generations_are_kept_and_a_third_version_drops_the_oldest() {
    let cache = DecisionCache::new(8);
    let key = QuestionKey::of(&query("alice", json(""))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let snapshot = snapshot(dir.path(), ALICE_READS);
    let decision = engine(0)
        .decide_stored(&snapshot, query("alice", json("")))
        .unwrap();
    cache.keep("v1", key.clone(), &decision);
    cache.keep("v2", key.clone(), &decision);
    assert!(cache.get("v1", &key).is_some() && cache.get("v2", &key).is_some());
    cache.keep("v3", key.clone(), &decision);
    assert!(
        cache.get("v1", &key).is_none(),
        "the oldest version is dropped"
    );
    assert!(cache.get("v2", &key).is_some() && cache.get("v3", &key).is_some());
}

#[test]
fn entries_past_the_byte_bound_are_not_kept_and_encoders_never_share_bytes() {
    use super::{CanonicalBytes, Encoder, MAX_ENTRY_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let snapshot = snapshot(dir.path(), ALICE_READS);
    let engine = engine(1024);
    // A long principal id: the key alone passes half the bound.
    let long = "x".repeat(MAX_ENTRY_BYTES);
    assert!(QuestionKey::of(&query(&long, json(""))).is_none());
    engine
        .decide_stored(&snapshot, query(&long, json("")))
        .unwrap();
    assert_eq!(engine.cache.len(snapshot.version()), 0);
    // A decision whose errors quote long text is decided every time too.
    let erring = "@id(\"reads-level\")\npermit(principal, action, resource) \
        when { principal.level > 1 };\n\
        @id(\"writes-level\")\npermit(principal, action, resource) \
        when { principal.level > 2 };\n";
    let b = tempfile::tempdir().unwrap();
    let erring = snapshot_unvalidated(b.path(), erring);
    let id = "y".repeat(MAX_ENTRY_BYTES / 2 - 100);
    assert!(
        QuestionKey::of(&query(&id, json(""))).is_some(),
        "the key alone fits"
    );
    let decision = engine.decide_stored(&erring, query(&id, json(""))).unwrap();
    assert!(!decision.errors().is_empty());
    assert_eq!(engine.cache.len(erring.version()), 0);
    // The same writes from two front ends are two contexts.
    let write = |encoder| {
        let mut out = CanonicalBytes::new(encoder);
        out.tag(1);
        out.text("abcd");
        out.finish()
    };
    assert_ne!(write(Encoder::Grpc), write(Encoder::ExtAuthz));
}

/// A snapshot of `policies` without a schema (so that a policy can error on a missing
/// attribute).
fn snapshot_unvalidated(dir: &Path, policies: &str) -> Snapshot {
    std::fs::write(dir.join("policies.cedar"), policies).unwrap();
    load_dir(dir, &LoadOptions::default()).unwrap().snapshot
}

/// Random questions on the example set, each asked several times in a random order
/// through a caching engine, across two versions of the set (the second forbids more):
/// every answer, from the cache or not, is the one an engine without a cache gives.
#[test]
fn cached_answers_are_what_evaluating_gives_across_versions() {
    let example = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let first = load_dir(example, &LoadOptions::default()).unwrap().snapshot;
    let scratch = tempfile::tempdir().unwrap();
    let copy = scratch.path().join("policies");
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(example)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::write(
        copy.join("zz-more.cedar"),
        "@id(\"no-mfa-no-write\")\nforbid(principal, action == Platform::Action::\"write\", resource) \
         unless { context has mfa && context.mfa };\n\
         @id(\"carol-out\")\nforbid(principal == Platform::User::\"carol\", action, resource);\n",
    )
    .unwrap();
    let second = load_dir(&copy, &LoadOptions::default()).unwrap().snapshot;
    assert_ne!(first.version(), second.version());

    let users = ["alice", "bob", "carol", "dave", "mallory", "nobody"];
    let actions = ["read", "list", "write", "share", "delete"];
    let documents = [
        "acme-roadmap-q3",
        "acme-board-minutes",
        "acme-carol-notes",
        "globex-salaries",
        "none",
    ];
    let contexts = [
        "",
        r#"{"mfa": true}"#,
        r#"{"mfa": false}"#,
        r#"{"mfa": true, "source_ip": "10.1.2.3"}"#,
        r#"{"mfa": "yes"}"#,
        r#"{"risk_score": "0.7"}"#,
    ];
    let mut rng = crate::engine::rng::Rng::new(24);
    let questions: Vec<Query> = (0..300)
        .map(|_| Query {
            principal: uid(&format!("Platform::User::\"{}\"", rng.choose(&users))),
            action: uid(&format!("Platform::Action::\"{}\"", rng.choose(&actions))),
            resource: uid(&format!(
                "Platform::Document::\"{}\"",
                rng.choose(&documents)
            )),
            context: json(rng.choose(&contexts)),
        })
        .collect();
    let cached = engine(64);
    let fresh = engine(0);
    let mut reused = 0;
    for _ in 0..2000 {
        let snapshot = if rng.chance(50) { &first } else { &second };
        let query = rng.pick(&questions).clone();
        let want = fresh.decide_stored(snapshot, query.clone());
        let got = cached.decide_stored(snapshot, query.clone());
        match (&want, &got) {
            (Ok(want), Ok(got)) => {
                assert_eq!(got, want, "{query:?} on {}", snapshot.version());
                assert_eq!(got.allowed(), want.allowed());
                reused += usize::from(got.reused());
            }
            (Err(want), Err(got)) => assert_eq!(got.to_string(), want.to_string()),
            _ => panic!("{query:?}: {want:?} against {got:?}"),
        }
    }
    // The run did exercise the cache (and its bound: 64 < the questions asked).
    assert!(reused > 200, "{reused} reused");
}
