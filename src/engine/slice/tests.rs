//! Slicing must never change an answer: random policy sets over a multi-level entity
//! hierarchy, each decided for every request with the whole set and with the slice.

use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request, Response};

use super::{Slice, Slicer};
use crate::policy::PolicyIndex;

use crate::engine::rng::Rng;

/// Users in groups three levels deep, documents in nested folders, and actions in two
/// levels of action groups.
const ENTITIES: &str = r#"[
  {"uid": {"type": "User", "id": "u0"}, "attrs": {"level": 1}, "parents": [{"type": "Group", "id": "g0"}]},
  {"uid": {"type": "User", "id": "u1"}, "attrs": {"level": 5}, "parents": [{"type": "Group", "id": "g1"}, {"type": "Group", "id": "g3"}]},
  {"uid": {"type": "User", "id": "u2"}, "attrs": {"level": 3}, "parents": []},
  {"uid": {"type": "User", "id": "u3"}, "attrs": {}, "parents": [{"type": "Group", "id": "g2"}]},
  {"uid": {"type": "Group", "id": "g0"}, "attrs": {}, "parents": [{"type": "Group", "id": "g1"}]},
  {"uid": {"type": "Group", "id": "g1"}, "attrs": {}, "parents": [{"type": "Group", "id": "g2"}]},
  {"uid": {"type": "Group", "id": "g2"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Group", "id": "g3"}, "attrs": {}, "parents": [{"type": "Group", "id": "g2"}]},
  {"uid": {"type": "Folder", "id": "f0"}, "attrs": {}, "parents": [{"type": "Folder", "id": "f1"}]},
  {"uid": {"type": "Folder", "id": "f1"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Doc", "id": "d0"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "u0"}}}, "parents": [{"type": "Folder", "id": "f0"}]},
  {"uid": {"type": "Doc", "id": "d1"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "u1"}}}, "parents": [{"type": "Folder", "id": "f1"}]},
  {"uid": {"type": "Doc", "id": "d2"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Action", "id": "read"}, "attrs": {}, "parents": [{"type": "Action", "id": "all"}]},
  {"uid": {"type": "Action", "id": "write"}, "attrs": {}, "parents": [{"type": "Action", "id": "edit"}]},
  {"uid": {"type": "Action", "id": "delete"}, "attrs": {}, "parents": [{"type": "Action", "id": "edit"}]},
  {"uid": {"type": "Action", "id": "edit"}, "attrs": {}, "parents": [{"type": "Action", "id": "all"}]},
  {"uid": {"type": "Action", "id": "all"}, "attrs": {}, "parents": []}
]"#;

const PRINCIPALS: &[&str] = &[
    r#"User::"u0""#,
    r#"User::"u1""#,
    r#"User::"u2""#,
    r#"User::"u3""#,
    r#"User::"ghost""#,
    r#"Group::"g0""#,
    r#"Group::"g2""#,
];
const ACTIONS: &[&str] = &[
    r#"Action::"read""#,
    r#"Action::"write""#,
    r#"Action::"delete""#,
    r#"Action::"edit""#,
    r#"Action::"all""#,
];
const RESOURCES: &[&str] = &[
    r#"Doc::"d0""#,
    r#"Doc::"d1""#,
    r#"Doc::"d2""#,
    r#"Folder::"f0""#,
    r#"Folder::"f1""#,
];

fn random_policy(rng: &mut Rng, i: usize) -> String {
    let effect = rng.choose(&["permit", "permit", "forbid"]);
    let principal = rng.choose(&[
        "principal",
        "principal",
        r#"principal == User::"u1""#,
        r#"principal == User::"ghost""#,
        r#"principal == Group::"g0""#,
        r#"principal in Group::"g0""#,
        r#"principal in Group::"g2""#,
        r#"principal in User::"u2""#,
        "principal is User",
        "principal is Group",
        r#"principal is User in Group::"g1""#,
        r#"principal is Group in Group::"g2""#,
    ]);
    let action = rng.choose(&[
        "action",
        "action",
        r#"action == Action::"read""#,
        r#"action == Action::"edit""#,
        r#"action in Action::"edit""#,
        r#"action in [Action::"read", Action::"delete"]"#,
        r#"action in [Action::"all"]"#,
    ]);
    let resource = rng.choose(&[
        "resource",
        "resource",
        r#"resource == Doc::"d0""#,
        r#"resource == Folder::"f1""#,
        r#"resource in Folder::"f1""#,
        r#"resource in Folder::"f0""#,
        "resource is Doc",
        r#"resource is Doc in Folder::"f1""#,
        r#"resource is Folder in Folder::"f1""#,
    ]);
    let condition = rng.choose(&[
        "",
        "",
        "when { context.flag }",
        "unless { context.flag }",
        // Errors for a principal without `level` (groups, u3, ghost).
        "when { principal.level > 2 }",
        // Errors for a resource without `owner` (folders, d2).
        "when { resource.owner == principal }",
        // Always an evaluation error (overflow).
        "when { 9223372036854775807 + 1 > 0 }",
    ]);
    format!("@id(\"p{i}\")\n{effect}({principal}, {action}, {resource}) {condition};\n")
}

/// What an answer is made of, in a form to compare.
fn answer(response: &Response) -> (bool, Vec<String>, Vec<String>) {
    let diagnostics = response.diagnostics();
    let mut reasons: Vec<String> = diagnostics.reason().map(ToString::to_string).collect();
    reasons.sort();
    let mut errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
    errors.sort();
    (
        response.decision() == cedar_policy::Decision::Allow,
        reasons,
        errors,
    )
}

#[test]
fn a_slice_decides_every_request_exactly_as_the_whole_set() {
    let entities = Entities::from_json_str(ENTITIES, None).expect("the test entities parse");
    let authorizer = Authorizer::new();
    let uid = |text: &str| EntityUid::from_str(text).expect("a test uid");
    let (mut requests, mut smaller) = (0usize, 0usize);
    for seed in 1..=60u64 {
        let mut rng = Rng::new(seed);
        let count = rng.below(40);
        let text: String = (0..count).map(|i| random_policy(&mut rng, i)).collect();
        let full =
            PolicySet::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{text}"));
        let index = PolicyIndex::new(&full);
        let slicer = Slicer::new();
        let version = seed.to_string();
        for principal in PRINCIPALS {
            for action in ACTIONS {
                for resource in RESOURCES {
                    let flag = rng.below(2) == 1;
                    let context =
                        Context::from_json_value(serde_json::json!({ "flag": flag }), None)
                            .unwrap();
                    let (p, a, r) = (uid(principal), uid(action), uid(resource));
                    let request =
                        Request::new(p.clone(), a.clone(), r.clone(), context, None).unwrap();
                    let whole = answer(&authorizer.is_authorized(&request, &full, &entities));
                    for only_if_worth_it in [false, true] {
                        let slice = slicer.slice(
                            &version,
                            &index,
                            &full,
                            [&p, &a, &r],
                            &entities,
                            only_if_worth_it,
                        );
                        if slice.num_of_policies() < full.num_of_policies() {
                            smaller += 1;
                        }
                        let sliced = answer(&authorizer.is_authorized(&request, &slice, &entities));
                        assert_eq!(
                            sliced, whole,
                            "seed {seed}: {principal} {action} {resource} flag={flag}\n{text}"
                        );
                    }
                    requests += 1;
                }
            }
        }
    }
    // The slices were real: most left policies out.
    assert!(requests > 10_000, "{requests}");
    assert!(
        smaller > requests / 2,
        "{smaller} of {requests} slices were smaller"
    );
}

#[test]
fn a_set_with_template_links_is_served_whole() {
    use cedar_policy::{Policy, PolicyId, SlotId, Template};
    let mut set = PolicySet::new();
    let template = "permit(principal == ?principal, action, resource);";
    set.add_template(Template::parse(Some(PolicyId::new("t")), template).unwrap())
        .unwrap();
    let static_one = r#"permit(principal == User::"a", action, resource);"#;
    set.add(Policy::parse(Some(PolicyId::new("s")), static_one).unwrap())
        .unwrap();
    set.link(
        PolicyId::new("t"),
        PolicyId::new("t-b"),
        [(
            SlotId::principal(),
            EntityUid::from_str(r#"User::"b""#).unwrap(),
        )]
        .into(),
    )
    .unwrap();
    let index = PolicyIndex::new(&set);
    let entities = Entities::empty();
    let b = EntityUid::from_str(r#"User::"b""#).unwrap();
    let act = EntityUid::from_str(r#"Action::"x""#).unwrap();
    let slice = Slicer::new().slice("v", &index, &set, [&b, &act, &b], &entities, false);
    assert!(matches!(slice, Slice::Whole(_)));
}

/// Cached slices are the slices: asked twice (the second answer comes from the cache),
/// every request gets the policies a fresh slicer picks, and a slicer that served
/// another version in between (a reload) still answers each version with its own.
#[test]
fn cached_slices_are_the_slices_a_fresh_index_picks() {
    let entities = Entities::from_json_str(ENTITIES, None).expect("the test entities parse");
    let uid = |text: &str| EntityUid::from_str(text).expect("a test uid");
    let ids = |set: &PolicySet| {
        let mut ids: Vec<String> = set.policies().map(|p| p.id().to_string()).collect();
        ids.sort();
        ids
    };
    for seed in 1..=10u64 {
        let mut rng = Rng::new(seed);
        let text: String = (0..30).map(|i| random_policy(&mut rng, i)).collect();
        let full = PolicySet::from_str(&text).unwrap();
        let index = PolicyIndex::new(&full);
        let other_text: String = (0..30).map(|i| random_policy(&mut rng, i)).collect();
        let other = PolicySet::from_str(&other_text).unwrap();
        let other_index = PolicyIndex::new(&other);
        let slicer = Slicer::new();
        for round in 0..3 {
            for principal in PRINCIPALS {
                for action in ACTIONS {
                    for resource in RESOURCES {
                        let (p, a, r) = (uid(principal), uid(action), uid(resource));
                        let request = [&p, &a, &r];
                        for (version, index, full) in
                            [("a", &index, &full), ("b", &other_index, &other)]
                        {
                            let fresh = Slicer::new();
                            let expected =
                                ids(&fresh.slice(version, index, full, request, &entities, true));
                            let cached =
                                slicer.slice(version, index, full, request, &entities, true);
                            assert_eq!(ids(&cached), expected, "seed {seed} round {round}");
                            if round == 0 {
                                // One version alone before the other is asked about.
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What a snapshot's index, catalog and usage say, in a form to compare between a
/// snapshot derived reload after reload and one built from nothing: for every request,
/// the policies picked (both ways), the literals, the anchors of a search and the
/// decision on the slice; where each id is; which uids it names without holding.
fn observed(snapshot: &crate::policy::Snapshot) -> Vec<String> {
    use crate::policy::SearchSide;
    let uid = |text: &str| EntityUid::from_str(text).expect("a test uid");
    let authorizer = Authorizer::new();
    let entities = snapshot.entities();
    let named = |slots: Option<Vec<crate::policy::Slot>>| {
        slots.map(|slots| {
            let mut ids: Vec<String> = slots
                .iter()
                .map(|&s| {
                    snapshot
                        .policy(s)
                        .expect("a slot of the index")
                        .id()
                        .to_string()
                })
                .collect();
            ids.sort();
            ids
        })
    };
    let mut seen = Vec::new();
    let slicer = Slicer::new();
    for principal in PRINCIPALS {
        for action in ACTIONS {
            for resource in RESOURCES {
                let (p, a, r) = (uid(principal), uid(action), uid(resource));
                let request = [&p, &a, &r];
                let index = snapshot.index();
                for worth_it in [false, true] {
                    seen.push(format!(
                        "{principal} {action} {resource} {worth_it}: {:?}",
                        named(index.chosen(request, entities, worth_it))
                    ));
                }
                let mut literals: Vec<String> = index
                    .pick(request, entities)
                    .1
                    .map(ToString::to_string)
                    .collect();
                literals.sort();
                literals.dedup();
                let anchors = index
                    .search_anchors(SearchSide::Principal, p.type_name(), &r, &a, entities)
                    .map(|anchors| {
                        let mut anchors: Vec<String> =
                            anchors.iter().map(|a| format!("{a:?}")).collect();
                        anchors.sort();
                        anchors
                    });
                let context =
                    Context::from_json_value(serde_json::json!({ "flag": true }), None).unwrap();
                let cedar_request = Request::new(p.clone(), a.clone(), r.clone(), context, None)
                    .expect("a test request");
                let slice =
                    slicer.slice(snapshot.version(), index, snapshot, request, entities, true);
                let decided = answer(&authorizer.is_authorized(&cedar_request, &slice, entities));
                seen.push(format!("{literals:?} {anchors:?} {decided:?}"));
            }
        }
    }
    let mut all: Vec<String> = snapshot
        .index()
        .all_literals()
        .map(ToString::to_string)
        .collect();
    all.sort();
    all.dedup();
    seen.push(format!("all literals {all:?}"));
    for text in PRINCIPALS
        .iter()
        .chain(RESOURCES)
        .chain(ACTIONS)
        .chain(&[r#"Group::"g1""#, r#"User::"nobody""#])
    {
        seen.push(format!(
            "{text} {}",
            snapshot.names_without_holding(&uid(text))
        ));
    }
    for listed in snapshot.usage().list(|id| snapshot.policy_location(id)) {
        seen.push(format!("{listed:?}"));
    }
    seen.push(format!(
        "{} {} {:?}",
        snapshot.policy_count(),
        snapshot.template_count(),
        snapshot.files_series(100)
    ));
    seen
}

/// A reload derives its index and catalog from the last good build's (taking out the
/// policies of files that changed or went, putting in those of files that changed or
/// came). Over random edits (files rewritten, added, deleted, renamed, copied; ids used
/// twice, stored entities or a schema that do not load: builds refused, which the next
/// must not be confused by), every derived snapshot picks,
/// names and decides exactly what a snapshot built from nothing does, and refuses with
/// the same problems.
#[test]
fn an_index_carried_across_reloads_answers_as_one_built_fresh() {
    use crate::policy::{BuildCache, LoadOptions, build, build_cached, read_dir};
    let options = LoadOptions::default();
    let (mut compared, mut refused) = (0usize, 0usize);
    for seed in 1..=6u64 {
        let mut rng = Rng::new(seed);
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("entities.json"), ENTITIES).expect("write entities");
        let mut cache = BuildCache::new();
        let mut next_id = 0usize;
        for round in 0..30 {
            // Now and then a stored entities file that does not load, or a schema that
            // does not parse: refused after the policies were put together.
            let broken = rng.chance(8);
            let entities = if broken && rng.chance(50) {
                "[{"
            } else {
                ENTITIES
            };
            std::fs::write(dir.path().join("entities.json"), entities).expect("write entities");
            let schema = dir.path().join("schema.cedarschema");
            if broken && entities == ENTITIES {
                std::fs::write(&schema, "entity User in [").expect("write a schema");
            } else {
                let _ = std::fs::remove_file(&schema);
            }
            for _ in 0..=rng.below(2) {
                let file = dir.path().join(format!("f{}.cedar", rng.below(6)));
                let other = dir.path().join(format!("f{}.cedar", rng.below(6)));
                if rng.chance(15) {
                    let _ = std::fs::remove_file(&file);
                    continue;
                }
                if rng.chance(10) {
                    // Renamed: the same text under another name (positional ids change).
                    let _ = std::fs::rename(&file, &other);
                    continue;
                }
                if rng.chance(8) {
                    // Copied: the same text twice (its `@id`s used twice: refused).
                    let _ = std::fs::copy(&file, &other);
                    continue;
                }
                let text: String = (0..rng.below(6))
                    .map(|_| {
                        // Now and then an id already used somewhere: a refused build.
                        let id = if rng.chance(4) {
                            rng.below(next_id.max(1))
                        } else {
                            next_id
                        };
                        next_id += 1;
                        random_policy(&mut rng, id)
                    })
                    .collect();
                std::fs::write(&file, text).expect("write a policy file");
            }
            let read = read_dir(dir.path(), 1 << 20).expect("read the directory");
            let derived = build_cached(&read, &options, &mut cache);
            let fresh = build(&read, &options);
            match (derived, fresh) {
                (Ok(derived), Ok(fresh)) => {
                    assert_eq!(
                        observed(&derived.snapshot),
                        observed(&fresh.snapshot),
                        "seed {seed} round {round}"
                    );
                    compared += 1;
                }
                (Err(derived), Err(fresh)) => {
                    assert_eq!(
                        derived.to_string(),
                        fresh.to_string(),
                        "seed {seed} round {round}"
                    );
                    refused += 1;
                }
                (derived, fresh) => panic!(
                    "seed {seed} round {round}: derived {:?}, fresh {:?}",
                    derived.map(|_| ()),
                    fresh.map(|_| ())
                ),
            }
        }
    }
    assert!(
        compared > 100 && refused > 20,
        "{compared} compared, {refused} refused"
    );
}

/// Just after a reload of a large set, Cedar's whole set is not built yet (the store
/// builds it once the new version serves): a request that would be decided with the
/// whole set because each side of its scope has many candidates, though few policies
/// match all three, gets the slice of those few instead, with the same answer, and does
/// not wait for (or build) the whole set. One that most of the set can match waits for
/// the one shared build.
/// The slice `slicer` takes of `snapshot` for `request` (uids as text), no entities
/// stored, and Cedar's answer on it.
fn ask_on<'s>(
    slicer: &Slicer,
    snapshot: &'s crate::policy::Snapshot,
    request: [&str; 3],
) -> (Slice<'s>, (bool, Vec<String>, Vec<String>)) {
    let [p, a, r] = request.map(|text| EntityUid::from_str(text).expect("a test uid"));
    let entities = Entities::empty();
    let slice = slicer.slice(
        snapshot.version(),
        snapshot.index(),
        snapshot,
        [&p, &a, &r],
        &entities,
        true,
    );
    let request = Request::new(p, a, r, Context::empty(), None).unwrap();
    let answer = answer(&Authorizer::new().is_authorized(&request, &slice, &entities));
    (slice, answer)
}

#[test]
fn a_request_before_the_whole_set_is_built_takes_a_slice_rather_than_wait() {
    use crate::policy::{LoadOptions, build, read_dir};
    let dir = tempfile::tempdir().expect("a temp dir");
    // For u0 reading d0: 201 candidates on each side of 301 (past half of a set past
    // 256: once built, the whole set is cheaper), of which only `match` matches all three.
    let mut text = String::from(
        "@id(\"match\") permit(principal == User::\"u0\", action == Action::\"read\", resource == Doc::\"d0\");\n",
    );
    for k in 0..100 {
        text.push_str(&format!(
            "@id(\"a{k}\") permit(principal == User::\"u0\", action, resource == Doc::\"x{k}\");\n\
             @id(\"b{k}\") permit(principal == User::\"v{k}\", action == Action::\"read\", resource);\n\
             @id(\"c{k}\") permit(principal, action == Action::\"delete\", resource == Doc::\"d0\");\n"
        ));
    }
    std::fs::write(dir.path().join("many.cedar"), text).expect("write policies");
    let read = read_dir(dir.path(), 1 << 20).expect("read");
    let snapshot = build(&read, &LoadOptions::default())
        .expect("valid")
        .snapshot;
    let slicer = Slicer::new();
    let ask = |p: &str, a: &str, r: &str| ask_on(&slicer, &snapshot, [p, a, r]);
    let u0_reads = || ask(r#"User::"u0""#, r#"Action::"read""#, r#"Doc::"d0""#);

    assert!(
        snapshot.policies_if_built().is_none(),
        "a build leaves the whole set to later"
    );
    let (early, early_answer) = u0_reads();
    assert!(matches!(&early, Slice::Part(set) if set.num_of_policies() == 1));
    assert!(
        snapshot.policies_if_built().is_none(),
        "the request did not build it"
    );
    assert_eq!(early_answer, (true, vec!["match".to_owned()], vec![]));

    // Anyone deleting d0: the 100 `c` policies, a third of the set: a slice too.
    let (third, _) = ask(r#"User::"w""#, r#"Action::"delete""#, r#"Doc::"d0""#);
    assert!(matches!(&third, Slice::Part(set) if set.num_of_policies() == 100));
    assert!(snapshot.policies_if_built().is_none());

    snapshot.policies();
    let (late, late_answer) = u0_reads();
    assert!(matches!(late, Slice::Whole(_)));
    assert_eq!(early_answer, late_answer);

    // 200 of 300 policies match u0: the request builds (or waits for) the whole set.
    let text: String = (0..300)
        .map(|k| {
            let who = if k % 3 == 2 { "u1" } else { "u0" };
            format!("@id(\"p{k}\") permit(principal == User::\"{who}\", action, resource);\n")
        })
        .collect();
    std::fs::write(dir.path().join("many.cedar"), text).expect("write policies");
    let read = read_dir(dir.path(), 1 << 20).expect("read");
    let mostly = build(&read, &LoadOptions::default())
        .expect("valid")
        .snapshot;
    let u0 = [r#"User::"u0""#, r#"Action::"read""#, r#"Doc::"d0""#];
    let (slice, _) = ask_on(&slicer, &mostly, u0);
    assert!(matches!(slice, Slice::Whole(set) if set.num_of_policies() == 300));
    assert!(mostly.policies_if_built().is_some());
}

/// A served set of up to `PREPARED_POLICIES` has Cedar's whole set built at once; a
/// larger one only when a call first needs it (a store serving one that every call slices
/// never holds it).
#[test]
fn a_small_set_is_prepared_and_a_larger_one_built_on_first_use() {
    use crate::policy::{LoadOptions, PolicyStore, build, read_dir};
    let dir = tempfile::tempdir().expect("a temp dir");
    let text = "permit(principal == User::\"a\", action, resource);\n\
                permit(principal == User::\"b\", action, resource);\n\
                forbid(principal, action, resource) when { context.n > 1 };\n";
    std::fs::write(dir.path().join("p.cedar"), text).expect("write policies");
    let read = read_dir(dir.path(), 1 << 20).expect("read");
    let snapshot = build(&read, &LoadOptions::default())
        .expect("valid")
        .snapshot;
    snapshot.prepare_within(2);
    assert!(snapshot.policies_if_built().is_none(), "3 policies, past 2");
    snapshot.prepare_within(3);
    assert_eq!(
        snapshot.policies_if_built().map(PolicySet::num_of_policies),
        Some(3)
    );
    let (store, _) = PolicyStore::open(dir.path(), LoadOptions::default()).expect("opens");
    assert!(
        store.current().policies_if_built().is_some(),
        "the store prepares it"
    );
}
