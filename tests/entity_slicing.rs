//! Merging a call's entities over only the part of the store it can reach must never
//! change an answer: random stored hierarchies, policies that reach entities every way
//! Cedar can (attributes, tags, literals, context, `in` through several levels), and
//! random entities sent with the call (replacing stored ones, adding parents stored
//! entities name but the store lacks, pointing at stored entities), each decided with
//! the slice and with the whole store merged, alone and as a batch sharing one store.

use std::{fmt::Write as _, str::FromStr};

use cedar_pdp::{
    engine::{ContextInput, Engine, EngineOptions, EntitiesInput, Query},
    policy::{LoadOptions, PolicyStore, PolicyValidation},
};
use cedar_policy::EntityUid;

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

const USERS: &[&str] = &["u0", "u1", "u2", "u3", "u4", "u5"];
const GROUPS: &[&str] = &["g0", "g1", "g2", "g3", "g9"];
const FOLDERS: &[&str] = &["f0", "f1", "f2"];
const DOCS: &[&str] = &["d0", "d1", "d2", "d3"];

fn entity_ref(kind: &str, id: &str) -> serde_json::Value {
    serde_json::json!({"__entity": {"type": kind, "id": id}})
}

fn uid_json(kind: &str, id: &str) -> serde_json::Value {
    serde_json::json!({"type": kind, "id": id})
}

/// A user with a level, a manager (perhaps one not stored), groups as parents, and a
/// tag pointing at a folder.
fn user(rng: &mut Rng, id: &str) -> serde_json::Value {
    let mut attrs = serde_json::Map::new();
    if rng.chance(80) {
        attrs.insert("level".into(), (rng.below(5) as i64).into());
    }
    if rng.chance(70) {
        let manager = rng.choose(&["u0", "u1", "u2", "u3", "u4", "u5", "ghost"]);
        attrs.insert("manager".into(), entity_ref("User", manager));
    }
    let parents: Vec<_> = (0..rng.below(3))
        .map(|_| uid_json("Group", rng.choose(GROUPS)))
        .collect();
    let mut entity = serde_json::json!({
        "uid": uid_json("User", id), "attrs": attrs, "parents": parents
    });
    if rng.chance(40) {
        entity["tags"] = serde_json::json!({"home": entity_ref("Folder", rng.choose(FOLDERS))});
    }
    entity
}

/// A group whose parent is a group earlier in the list (so no cycles), or none.
fn group(rng: &mut Rng, at: usize) -> serde_json::Value {
    let parents: Vec<_> = if at > 0 && rng.chance(70) {
        vec![uid_json("Group", GROUPS[rng.below(at)])]
    } else {
        Vec::new()
    };
    let mut attrs = serde_json::Map::new();
    if rng.chance(50) {
        attrs.insert("lead".into(), entity_ref("User", rng.choose(USERS)));
    }
    serde_json::json!({"uid": uid_json("Group", GROUPS[at]), "attrs": attrs, "parents": parents})
}

fn folder(rng: &mut Rng, at: usize) -> serde_json::Value {
    let parents: Vec<_> = if at > 0 && rng.chance(70) {
        vec![uid_json("Folder", FOLDERS[rng.below(at)])]
    } else {
        Vec::new()
    };
    serde_json::json!({
        "uid": uid_json("Folder", FOLDERS[at]),
        "attrs": {"admins": [entity_ref("User", rng.choose(USERS)), entity_ref("Group", rng.choose(GROUPS))]},
        "parents": parents
    })
}

fn doc(rng: &mut Rng, id: &str) -> serde_json::Value {
    let mut attrs = serde_json::Map::new();
    if rng.chance(80) {
        attrs.insert("owner".into(), entity_ref("User", rng.choose(USERS)));
    }
    if rng.chance(40) {
        attrs.insert(
            "meta".into(),
            serde_json::json!({"reviewers": [entity_ref("User", rng.choose(USERS))]}),
        );
    }
    let parents: Vec<_> = if rng.chance(80) {
        vec![uid_json("Folder", rng.choose(FOLDERS))]
    } else {
        Vec::new()
    };
    serde_json::json!({"uid": uid_json("Doc", id), "attrs": attrs, "parents": parents})
}

/// The stored entities: `g9` is left out on purpose half the time, so that a call that
/// sends it adds a parent stored users already name.
fn stored(rng: &mut Rng) -> Vec<serde_json::Value> {
    let mut list = Vec::new();
    for (at, id) in GROUPS.iter().enumerate() {
        if *id != "g9" || rng.chance(50) {
            list.push(group(rng, at));
        }
    }
    for at in 0..FOLDERS.len() {
        list.push(folder(rng, at));
    }
    for id in USERS {
        list.push(user(rng, id));
    }
    for id in DOCS {
        list.push(doc(rng, id));
    }
    for (id, parent) in [
        ("read", "all"),
        ("write", "edit"),
        ("edit", "all"),
        ("all", ""),
    ] {
        let parents: Vec<_> = if parent.is_empty() {
            Vec::new()
        } else {
            vec![uid_json("Action", parent)]
        };
        list.push(
            serde_json::json!({"uid": uid_json("Action", id), "attrs": {}, "parents": parents}),
        );
    }
    list
}

/// What a call sends: entities that replace stored ones (new parents, new attributes)
/// or are new (a group stored users name but the store may lack, a document).
fn sent(rng: &mut Rng) -> Vec<serde_json::Value> {
    let mut list: Vec<serde_json::Value> = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    for _ in 0..rng.below(4) {
        let entity = match rng.below(5) {
            0 => {
                let id = rng.choose(USERS);
                user(rng, id)
            }
            1 => {
                // The last group may parent any other: a replacement can move a whole
                // branch under another one (never making a cycle: g9 has no children in
                // the store other than users, and is given no parent but g0..g3).
                let parent = rng.choose(&["g0", "g1", "g2", "g3"]);
                serde_json::json!({
                    "uid": uid_json("Group", "g9"), "attrs": {"lead": entity_ref("User", rng.choose(USERS))},
                    "parents": [uid_json("Group", parent)]
                })
            }
            2 => {
                let id = rng.choose(&["d0", "d1", "dnew"]);
                doc(rng, id)
            }
            3 => {
                let at = rng.below(FOLDERS.len());
                folder(rng, at)
            }
            _ => {
                let at = rng.below(GROUPS.len() - 1);
                group(rng, at)
            }
        };
        let key = entity["uid"].to_string();
        if !taken.contains(&key) {
            taken.push(key);
            list.push(entity);
        }
    }
    list
}

fn random_policy(rng: &mut Rng, i: usize) -> String {
    let effect = rng.choose(&["permit", "permit", "forbid"]);
    let principal = rng.choose(&[
        "principal",
        "principal",
        r#"principal == User::"u1""#,
        r#"principal in Group::"g0""#,
        r#"principal in Group::"g2""#,
        r#"principal in Group::"g9""#,
        "principal is User",
        r#"principal is User in Group::"g1""#,
    ]);
    let action = rng.choose(&[
        "action",
        r#"action == Action::"read""#,
        r#"action in Action::"edit""#,
        r#"action in [Action::"read", Action::"write"]"#,
    ]);
    let resource = rng.choose(&[
        "resource",
        "resource",
        r#"resource == Doc::"d0""#,
        r#"resource in Folder::"f0""#,
        r#"resource in Folder::"f1""#,
        "resource is Doc",
    ]);
    let condition = rng.choose(&[
        "",
        "when { principal.level > 2 }",
        "when { principal.manager.level > 1 }",
        "when { principal.manager in Group::\"g1\" }",
        "when { resource.owner == principal }",
        "when { resource.owner.manager == principal }",
        "when { resource.owner in Group::\"g9\" }",
        "when { principal in resource.admins }",
        "when { resource.admins.contains(principal) }",
        "when { resource.meta.reviewers.contains(principal) }",
        "when { User::\"u3\".level > 1 }",
        "when { User::\"u4\" in Group::\"g2\" }",
        "when { Group::\"g1\".lead == principal }",
        "when { Group::\"g9\".lead.level > 0 }",
        "when { Doc::\"dnew\".owner == principal }",
        "when { context.target.level > 1 }",
        "when { principal in context.group }",
        "when { context.target.manager in context.group }",
        "when { principal.hasTag(\"home\") && resource in principal.getTag(\"home\") }",
        "when { principal.getTag(\"home\").admins.contains(principal) }",
    ]);
    format!("@id(\"p{i}\")\n{effect}({principal}, {action}, {resource}) {condition};\n")
}

fn query(rng: &mut Rng) -> Query {
    let uid = |s: String| EntityUid::from_str(&s).unwrap();
    let principal = rng.choose(&["u0", "u1", "u2", "u3", "u4", "u5", "ghost", "unew"]);
    let resource = rng.choose(&[
        "Doc::\"d0\"",
        "Doc::\"d1\"",
        "Doc::\"d2\"",
        "Doc::\"d3\"",
        "Doc::\"dnew\"",
        "Folder::\"f1\"",
    ]);
    let action = rng.choose(&["read", "write", "edit"]);
    let context = serde_json::json!({
        "target": entity_ref("User", rng.choose(USERS)),
        "group": entity_ref("Group", rng.choose(GROUPS)),
    });
    Query {
        principal: uid(format!("User::\"{principal}\"")),
        action: uid(format!("Action::\"{action}\"")),
        resource: uid(resource.to_owned()),
        context: ContextInput::Json(context.to_string()),
    }
}

/// What a call that may only add entities sends: new ones only, reaching into the store
/// (a user in stored groups, a group under a stored one, a folder under a stored one, a
/// document in a stored or a new folder), so that the ancestors a new entity has
/// through stored ones matter to the answer.
fn sent_new(rng: &mut Rng) -> Vec<serde_json::Value> {
    let mut list = Vec::new();
    if rng.chance(60) {
        let mut parents: Vec<_> = (0..1 + rng.below(2))
            .map(|_| uid_json("Group", rng.choose(&GROUPS[..4])))
            .collect();
        if rng.chance(30) {
            parents.push(uid_json("Group", "gnew"));
        }
        list.push(serde_json::json!({
            "uid": uid_json("User", "unew"), "attrs": {"level": rng.below(5) as i64},
            "parents": parents
        }));
    }
    if rng.chance(40) {
        list.push(serde_json::json!({
            "uid": uid_json("Group", "gnew"), "attrs": {},
            "parents": [uid_json("Group", rng.choose(&GROUPS[..4]))]
        }));
    }
    let folder = if rng.chance(40) {
        list.push(serde_json::json!({
            "uid": uid_json("Folder", "fnew"), "attrs": {"admins": []},
            "parents": [uid_json("Folder", rng.choose(FOLDERS))]
        }));
        "fnew"
    } else {
        rng.choose(FOLDERS)
    };
    if rng.chance(70) {
        list.push(serde_json::json!({
            "uid": uid_json("Doc", "dnew"),
            "attrs": {"owner": entity_ref("User", rng.choose(&["u0", "u1", "unew"]))},
            "parents": [uid_json("Folder", folder)]
        }));
    }
    list
}

#[test]
fn a_call_merged_over_its_slice_of_the_store_decides_as_over_the_whole_store() {
    use cedar_pdp::config::RequestEntities;
    let engine = |slice_entities_over, request_entities| {
        Engine::new(EngineOptions {
            slice_entities_over,
            validate_requests: false,
            request_entities,
            ..EngineOptions::default()
        })
    };
    let (mut decisions, mut allowed, mut errored) = (0usize, 0usize, 0usize);
    // Decisions of calls that added new entities only, joined with the slice.
    let mut joined = 0usize;
    // Calls that replace stored entities too (the merge's hardest case), and calls that
    // may only add entities (the default: joined with the slice, their closure completed
    // from the store's).
    let modes = [RequestEntities::Replace, RequestEntities::Add];
    for (seed, mode) in (1..=150u64).flat_map(|seed| modes.map(|mode| (seed, mode))) {
        let (sliced, whole) = (engine(0, mode), engine(usize::MAX, mode));
        // The store sliced, every policy evaluated: what all the policies name is copied.
        let every_policy = Engine::new(EngineOptions {
            slice_policies: false,
            ..sliced.options().clone()
        });
        let mut rng = Rng::new(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for i in 0..1 + rng.below(25) {
            text.push_str(&random_policy(&mut rng, i));
        }
        std::fs::write(dir.path().join("policies.cedar"), &text).unwrap();
        let stored = serde_json::to_string(&stored(&mut rng)).unwrap();
        std::fs::write(dir.path().join("entities.json"), &stored).unwrap();
        let options = LoadOptions {
            validation: PolicyValidation::Off,
            ..LoadOptions::default()
        };
        let (store, _) = PolicyStore::open(dir.path(), options)
            .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{text}"));
        let snapshot = store.current();
        for _ in 0..20 {
            let new_only = mode == RequestEntities::Add && rng.chance(60);
            let call = if new_only {
                sent_new(&mut rng)
            } else {
                sent(&mut rng)
            };
            let call = serde_json::to_string(&call).unwrap();
            let queries: Vec<Query> = (0..1 + rng.below(4)).map(|_| query(&mut rng)).collect();
            let mut about = format!(
                "seed {seed}, {mode:?}\npolicies:\n{text}\nstored: {stored}\nsent: {call}\n"
            );
            for q in &queries {
                let _ = writeln!(
                    about,
                    "query: {} {} {} {:?}",
                    q.principal, q.action, q.resource, q.context
                );
            }
            // Each query alone.
            for q in &queries {
                let input = || EntitiesInput::Json(call.clone());
                let expected = whole.decide(&snapshot, input(), q.clone());
                let got = sliced.decide(&snapshot, input(), q.clone());
                assert_eq!(got, expected, "{about}");
                let got = every_policy.decide(&snapshot, input(), q.clone());
                assert_eq!(got, expected, "every policy: {about}");
                if let Ok(decision) = &expected {
                    decisions += 1;
                    allowed += usize::from(decision.allowed());
                    errored += usize::from(!decision.errors().is_empty());
                    joined += usize::from(new_only);
                }
            }
            // All of them as one batch: one store built for all.
            let batch = |engine: &Engine| {
                let entities = engine.entities(&snapshot, EntitiesInput::Json(call.clone()))?;
                let requests = queries
                    .iter()
                    .map(|q| engine.request(&snapshot, q.clone()))
                    .collect::<Result<Vec<_>, _>>()?;
                let store = engine.store(&snapshot, entities, &requests)?;
                Ok::<_, cedar_pdp::engine::Refusal>(
                    requests
                        .iter()
                        .map(|r| engine.decide_request(&snapshot, &store, r))
                        .collect::<Vec<_>>(),
                )
            };
            assert_eq!(batch(&sliced), batch(&whole), "batch: {about}");
        }
    }
    // The cases were varied: allows, denies and errors all came up, and most calls were
    // decided (not refused).
    assert!(decisions > 5_000, "{decisions} decisions");
    assert!(joined > 1_000, "{joined} decisions adding new entities");
    assert!(allowed > decisions / 20, "{allowed} of {decisions} allowed");
    assert!(
        allowed < decisions * 19 / 20,
        "{allowed} of {decisions} allowed"
    );
    assert!(
        errored > decisions / 20,
        "{errored} of {decisions} had errors"
    );
}
