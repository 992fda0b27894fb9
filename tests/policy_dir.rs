//! Loading a policy directory from disk: which files are read, how policies are named,
//! where problems are reported, limits on `entities.json`, the content version, reloads,
//! and the layout of a Kubernetes ConfigMap volume.

use std::{
    fs,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use cedar_pdp::policy::{
    LoadError, LoadOptions, Loaded, MAX_POLICY_NESTING, PolicyStore, PolicyValidation, Problem,
    ReloadOutcome, load_dir,
};
use cedar_policy::PolicyId;
#[cfg(unix)]
use common::configmap;
use common::write;

mod common;

const SCHEMA: &str = "entity User;\n\
                      entity Doc = { owner: User };\n\
                      action read appliesTo { principal: [User], resource: [Doc] };\n";

const OWNER_READS: &str = "permit(principal, action == Action::\"read\", resource) when { resource.owner == principal };\n";

fn options(validation: PolicyValidation) -> LoadOptions {
    LoadOptions {
        validation,
        ..LoadOptions::default()
    }
}

fn load(dir: &Path) -> Loaded {
    load_with(dir, &options(PolicyValidation::Strict))
}

fn load_with(dir: &Path, options: &LoadOptions) -> Loaded {
    match load_dir(dir, options) {
        Ok(loaded) => loaded,
        Err(e) => panic!("{} should load, got:\n{e}", dir.display()),
    }
}

/// The problems of a directory that must fail to load as invalid.
fn problems(dir: &Path, options: &LoadOptions) -> Vec<Problem> {
    match load_dir(dir, options) {
        Ok(loaded) => panic!(
            "{} should not load, but loaded {} policies",
            dir.display(),
            loaded.snapshot.policy_count()
        ),
        Err(LoadError::Invalid(problems)) => {
            assert!(!problems.is_empty(), "an Invalid error lists its problems");
            problems
        }
        Err(e @ LoadError::Directory { .. }) => panic!("expected LoadError::Invalid, got {e:?}"),
    }
}

fn has_policy(loaded: &Loaded, id: &str) -> bool {
    loaded
        .snapshot
        .policies()
        .policy(&PolicyId::new(id))
        .is_some()
}

fn ids(loaded: &Loaded) -> Vec<String> {
    let mut ids: Vec<String> = loaded
        .snapshot
        .policies()
        .policies()
        .map(|p| p.id().to_string())
        .collect();
    ids.sort();
    ids
}

/// A chain of `n` entities `E::"e0"` → `E::"e1"` → … → `E::"e{n-1}"` (which has no
/// parent): `n - 1` parent links.
fn chain_json(n: usize) -> String {
    let entities: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let parents = if i + 1 < n {
                vec![serde_json::json!({"type": "E", "id": format!("e{}", i + 1)})]
            } else {
                vec![]
            };
            serde_json::json!({
                "uid": {"type": "E", "id": format!("e{i}")},
                "attrs": {},
                "parents": parents,
            })
        })
        .collect();
    serde_json::to_string(&entities).expect("serialize entities")
}

// ---- naming and reading ----------------------------------------------------------------

#[test]
fn policies_in_subfolders_load_and_unannotated_ones_are_named_by_path_and_position() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "team/file.cedar",
        "permit(principal, action, resource);\nforbid(principal, action, resource);\n",
    );
    write(
        dir.path(),
        "a/b/deep.cedar",
        "permit(principal, action, resource);\n",
    );
    write(
        dir.path(),
        "top.cedar",
        "permit(principal, action, resource);\n",
    );
    let loaded = load(dir.path());
    assert_eq!(
        ids(&loaded),
        ["a/b/deep.0", "team/file.0", "team/file.1", "top.0"]
    );
    assert_eq!(loaded.snapshot.policy_count(), 4);
    assert!(loaded.snapshot.schema().is_none());
    assert_eq!(loaded.snapshot.entity_count(), 0);
    let first = loaded
        .snapshot
        .policies()
        .policy(&PolicyId::new("team/file.0"))
        .expect("team/file.0");
    assert_eq!(first.effect(), cedar_policy::Effect::Permit);
    let second = loaded
        .snapshot
        .policies()
        .policy(&PolicyId::new("team/file.1"))
        .expect("team/file.1");
    assert_eq!(second.effect(), cedar_policy::Effect::Forbid);
}

#[test]
fn an_id_annotation_names_the_policy_and_others_keep_their_position() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "team/file.cedar",
        "permit(principal, action, resource);\n\
         @id(\"x\")\nforbid(principal, action, resource);\n\
         permit(principal, action, resource);\n",
    );
    let loaded = load(dir.path());
    assert_eq!(ids(&loaded), ["team/file.0", "team/file.2", "x"]);
    let x = loaded
        .snapshot
        .policies()
        .policy(&PolicyId::new("x"))
        .expect("policy x");
    assert_eq!(x.effect(), cedar_policy::Effect::Forbid);
    assert!(!has_policy(&loaded, "team/file.1"));
}

#[test]
fn a_duplicate_id_is_an_error_naming_both_files_and_lines() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.cedar",
        "// first\n@id(\"dup\")\npermit(principal, action, resource);\n",
    );
    write(
        dir.path(),
        "sub/b.cedar",
        "// second\npermit(principal, action, resource);\n@id(\"dup\")\nforbid(principal, action, resource);\n",
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert_eq!(problems.len(), 1, "{problems:?}");
    let problem = &problems[0];
    let text = problem.to_string();
    assert!(text.contains("dup"), "{text}");
    assert!(text.contains("a.cedar:2"), "names the first place: {text}");
    assert!(
        text.contains("sub/b.cedar:3"),
        "names the second place: {text}"
    );
    assert_eq!(problem.location.file, "sub/b.cedar");
    assert_eq!(problem.location.line, Some(3));
}

#[test]
fn a_duplicate_id_within_one_file_names_both_lines() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "one.cedar",
        "@id(\"dup\")\npermit(principal, action, resource);\n@id(\"dup\")\nforbid(principal, action, resource);\n",
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert_eq!(problems.len(), 1, "{problems:?}");
    let problem = &problems[0];
    assert_eq!(problem.location.file, "one.cedar");
    assert_eq!(
        problem.location.line,
        Some(3),
        "the second @id(\"dup\") is on line 3: {problem}"
    );
    assert!(
        problem.message.contains("one.cedar:1"),
        "names the first place: {problem}"
    );
}

#[test]
fn an_empty_id_annotation_is_an_error_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "e.cedar",
        "permit(principal, action, resource);\n@id(\"\")\nforbid(principal, action, resource);\n",
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].location.file, "e.cedar");
    assert_eq!(problems[0].location.line, Some(2), "{}", problems[0]);
}

#[test]
fn an_id_annotation_that_collides_with_a_generated_id_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.cedar",
        "permit(principal, action, resource);\n",
    );
    write(
        dir.path(),
        "b.cedar",
        "@id(\"a.0\")\npermit(principal, action, resource);\n",
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    let text = LoadError::Invalid(problems).to_string();
    assert!(text.contains("a.0"), "{text}");
    assert!(text.contains("a.cedar"), "{text}");
    assert!(text.contains("b.cedar:1"), "{text}");
}

#[test]
fn a_syntax_error_is_located_at_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "good.cedar",
        "permit(principal, action, resource);\n",
    );
    write(
        dir.path(),
        "team/bad.cedar",
        "// line 1\npermit(principal, action, resource);\npermit(principal, action resource);\n",
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert!(
        problems.iter().all(|p| p.location.file == "team/bad.cedar"),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.location.line == Some(3)),
        "{problems:?}"
    );
    assert!(
        problems.iter().all(|p| p.location.line == Some(3)),
        "{problems:?}"
    );
}

// ---- validation against a schema -------------------------------------------------------

/// A schema, one good policy and, on line 3 of `bad.cedar`, a policy reading an
/// attribute the schema does not declare.
fn undeclared_attribute_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "schema.cedarschema", SCHEMA);
    write(dir.path(), "good.cedar", OWNER_READS);
    write(
        dir.path(),
        "bad.cedar",
        "// reads an attribute Doc does not have\n\
         // (the schema declares only owner)\n\
         permit(principal, action == Action::\"read\", resource) when { resource.title == \"x\" };\n",
    );
    dir
}

#[test]
fn a_policy_failing_strict_validation_is_refused_with_file_and_line() {
    let dir = undeclared_attribute_dir();
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert!(
        problems.iter().all(|p| p.location.file == "bad.cedar"),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.location.line == Some(3)),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.message.contains("title")),
        "the message names the attribute: {problems:?}"
    );
}

#[test]
fn a_policy_failing_validation_loads_with_warnings_under_warn() {
    let dir = undeclared_attribute_dir();
    let loaded = load_with(dir.path(), &options(PolicyValidation::Warn));
    assert_eq!(ids(&loaded), ["bad.0", "good.0"]);
    assert!(!loaded.warnings.is_empty());
    let warning = loaded
        .warnings
        .iter()
        .find(|w| w.location.file == "bad.cedar")
        .unwrap_or_else(|| panic!("a warning about bad.cedar: {:?}", loaded.warnings));
    assert_eq!(warning.location.line, Some(3));
    assert!(warning.message.contains("title"), "{warning}");
}

#[test]
fn a_policy_failing_validation_loads_silently_under_off() {
    let dir = undeclared_attribute_dir();
    let loaded = load_with(dir.path(), &options(PolicyValidation::Off));
    assert_eq!(ids(&loaded), ["bad.0", "good.0"]);
    assert!(
        loaded
            .warnings
            .iter()
            .all(|w| w.location.file != "bad.cedar"),
        "{:?}",
        loaded.warnings
    );
    assert!(loaded.snapshot.schema().is_some());
}

#[test]
fn valid_policies_with_a_schema_load_under_strict_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "schema.cedarschema", SCHEMA);
    write(dir.path(), "good.cedar", OWNER_READS);
    let loaded = load(dir.path());
    assert_eq!(ids(&loaded), ["good.0"]);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert!(loaded.snapshot.schema().is_some());
}

// ---- what is read, what is not ----------------------------------------------------------

#[test]
fn hidden_entries_and_the_top_level_tests_folder_are_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let broken = "this is not cedar at all (";
    write(
        dir.path(),
        "main.cedar",
        "permit(principal, action, resource);\n",
    );
    write(dir.path(), ".hidden.cedar", broken);
    write(dir.path(), ".git/x.cedar", broken);
    write(dir.path(), "sub/.hidden/y.cedar", broken);
    write(dir.path(), "tests/case.cedar", broken);
    write(dir.path(), "tests/deeper/case.cedar", broken);
    let loaded = load(dir.path());
    assert_eq!(ids(&loaded), ["main.0"]);
}

#[test]
fn a_tests_folder_below_the_top_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "sub/tests/y.cedar",
        "permit(principal, action, resource);\n",
    );
    let loaded = load(dir.path());
    assert_eq!(ids(&loaded), ["sub/tests/y.0"]);

    // And it is really read: a broken one there fails the load.
    write(dir.path(), "sub/tests/z.cedar", "permit(");
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert!(
        problems
            .iter()
            .any(|p| p.location.file == "sub/tests/z.cedar"),
        "{problems:?}"
    );
}

#[test]
fn a_top_level_file_named_tests_is_not_mistaken_for_the_tests_folder() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "tests.cedar",
        "permit(principal, action, resource);\n",
    );
    let loaded = load(dir.path());
    assert_eq!(ids(&loaded), ["tests.0"]);
}

#[test]
fn two_schemas_at_the_top_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.cedarschema", SCHEMA);
    write(dir.path(), "b.cedarschema", SCHEMA);
    write(dir.path(), "good.cedar", OWNER_READS);
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].location.file, "b.cedarschema");
    assert!(
        problems[0].message.contains("a.cedarschema"),
        "{}",
        problems[0]
    );
}

#[test]
fn a_cedar_schema_and_a_json_schema_at_the_top_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.cedarschema", SCHEMA);
    write(
        dir.path(),
        "b.cedarschema.json",
        "{\"\": {\"entityTypes\": {}, \"actions\": {}}}",
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    let text = LoadError::Invalid(problems).to_string();
    assert!(text.contains("a.cedarschema"), "{text}");
    assert!(text.contains("b.cedarschema.json"), "{text}");
}

#[test]
fn a_schema_in_a_subfolder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.cedar", OWNER_READS);
    write(dir.path(), "sub/schema.cedarschema", SCHEMA);
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].location.file, "sub/schema.cedarschema");
}

#[test]
fn a_missing_directory_is_a_directory_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    match load_dir(&missing, &options(PolicyValidation::Strict)) {
        Err(LoadError::Directory { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected LoadError::Directory, got {:?}", other.err()),
    }
}

#[test]
fn a_file_instead_of_a_directory_is_a_directory_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "file.cedar", OWNER_READS);
    let file = dir.path().join("file.cedar");
    assert!(matches!(
        load_dir(&file, &options(PolicyValidation::Strict)),
        Err(LoadError::Directory { .. })
    ));
}

// ---- entities.json ----------------------------------------------------------------------

#[test]
fn invalid_entities_json_is_located_at_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "entities.json",
        "[\n  {\"uid\": {\"type\": \"User\", \"id\": \"a\"}, \"attrs\": {}, \"parents\": []},\n  {\"uid\": ,}\n]\n",
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].location.file, "entities.json");
    assert_eq!(problems[0].location.line, Some(3), "{}", problems[0]);
    assert_eq!(problems[0].location.column, Some(11), "{}", problems[0]);
}

#[test]
fn a_parent_chain_at_the_limit_loads() {
    let dir = tempfile::tempdir().unwrap();
    // 65 entities: 64 parent links.
    write(dir.path(), "entities.json", &chain_json(65));
    let options = LoadOptions {
        max_ancestor_depth: 64,
        ..options(PolicyValidation::Strict)
    };
    let loaded = load_with(dir.path(), &options);
    assert_eq!(loaded.snapshot.entity_count(), 65);
}

#[test]
fn a_parent_chain_longer_than_the_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "entities.json", &chain_json(100));
    let options = LoadOptions {
        max_ancestor_depth: 64,
        ..options(PolicyValidation::Strict)
    };
    let problems = problems(dir.path(), &options);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].location.file, "entities.json");
    assert!(
        problems[0].message.contains("max_ancestor_depth"),
        "{}",
        problems[0]
    );
    assert!(problems[0].message.contains("64"), "{}", problems[0]);
}

#[test]
fn a_very_long_parent_chain_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "entities.json", &chain_json(5_000));
    let options = LoadOptions {
        max_ancestor_depth: 64,
        ..options(PolicyValidation::Strict)
    };
    // On a thread with a small stack, as a server worker would have: the check must
    // neither recurse deeply nor hand the chain to Cedar.
    let dir_path = dir.path().to_owned();
    let started = Instant::now();
    let result = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || load_dir(&dir_path, &options).map(|_| ()))
        .unwrap()
        .join()
        .expect("loading does not crash");
    let took = started.elapsed();
    match result {
        Err(LoadError::Invalid(problems)) => assert!(
            problems
                .iter()
                .any(|p| p.message.contains("max_ancestor_depth")),
            "{problems:?}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        took < Duration::from_secs(5),
        "refusing took {took:?}; the check must run before Cedar"
    );
}

#[test]
fn a_parent_cycle_in_entities_json_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "entities.json",
        r#"[
  {"uid": {"type": "E", "id": "a"}, "attrs": {}, "parents": [{"type": "E", "id": "b"}]},
  {"uid": {"type": "E", "id": "b"}, "attrs": {}, "parents": [{"type": "E", "id": "a"}]}
]"#,
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].location.file, "entities.json");
}

#[test]
fn more_entities_than_max_store_entities_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let three = r#"[
  {"uid": {"type": "User", "id": "a"}, "attrs": {}, "parents": []},
  {"uid": {"type": "User", "id": "b"}, "attrs": {}, "parents": []},
  {"uid": {"type": "User", "id": "c"}, "attrs": {}, "parents": []}
]"#;
    write(dir.path(), "entities.json", three);
    let at_limit = LoadOptions {
        max_store_entities: 3,
        ..options(PolicyValidation::Strict)
    };
    assert_eq!(load_with(dir.path(), &at_limit).snapshot.entity_count(), 3);
    let below = LoadOptions {
        max_store_entities: 2,
        ..options(PolicyValidation::Strict)
    };
    let problems = problems(dir.path(), &below);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].location.file, "entities.json");
    assert!(
        problems[0].message.contains("max_store_entities"),
        "{}",
        problems[0]
    );
}

#[test]
fn entities_not_matching_the_schema_are_refused_naming_the_entity() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "schema.cedarschema", SCHEMA);
    write(dir.path(), "good.cedar", OWNER_READS);
    // owner must be a User entity, not a string.
    write(
        dir.path(),
        "entities.json",
        r#"[
  {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Doc", "id": "d1"}, "attrs": {"owner": "alice"}, "parents": []}
]"#,
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].location.file, "entities.json");
    assert!(
        problems[0].message.contains(r#"Doc::"d1""#),
        "{}",
        problems[0]
    );
}

#[test]
fn entities_matching_the_schema_load_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "schema.cedarschema", SCHEMA);
    write(dir.path(), "good.cedar", OWNER_READS);
    write(
        dir.path(),
        "entities.json",
        r#"[
  {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Doc", "id": "d1"}, "attrs": {"owner": {"__entity": {"type": "User", "id": "alice"}}}, "parents": []}
]"#,
    );
    let loaded = load(dir.path());
    assert_eq!(loaded.snapshot.entity_count(), 2);
    let d1 = cedar_policy::EntityUid::from_type_name_and_id(
        "Doc".parse().unwrap(),
        cedar_policy::EntityId::new("d1"),
    );
    assert!(loaded.snapshot.entities().get(&d1).is_some());
}

// ---- version and reload ---------------------------------------------------------------

fn two_file_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "schema.cedarschema", SCHEMA);
    write(
        dir.path(),
        "a.cedar",
        "@id(\"a\")\npermit(principal, action == Action::\"read\", resource) when { resource.owner == principal };\n",
    );
    write(
        dir.path(),
        "team/b.cedar",
        "@id(\"b\")\nforbid(principal, action == Action::\"read\", resource) unless { resource.owner == principal };\n",
    );
    dir
}

#[test]
fn the_same_content_gives_the_same_version() {
    let dir = two_file_dir();
    let first = load(dir.path());
    let second = load(dir.path());
    assert_eq!(first.snapshot.version(), second.snapshot.version());
    assert!(!first.snapshot.version().is_empty());
    // The version depends on content and relative paths, not on where the directory is.
    let elsewhere = two_file_dir();
    assert_eq!(
        load(elsewhere.path()).snapshot.version(),
        first.snapshot.version()
    );
}

#[test]
fn changing_one_byte_changes_the_version() {
    let dir = two_file_dir();
    let before = load(dir.path()).snapshot.version().to_owned();
    let path = dir.path().join("team/b.cedar");
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.iter().position(|&b| b == b'b').unwrap();
    bytes[at] = b'c'; // @id("b") becomes @id("c")
    fs::write(&path, bytes).unwrap();
    let after = load(dir.path()).snapshot.version().to_owned();
    assert_ne!(before, after);
}

#[test]
fn renaming_a_file_changes_the_version() {
    let dir = two_file_dir();
    let before = load(dir.path());
    fs::rename(
        dir.path().join("team/b.cedar"),
        dir.path().join("team/c.cedar"),
    )
    .unwrap();
    let after = load(dir.path());
    // Same policies, same ids: only the path changed.
    assert_eq!(ids(&before), ids(&after));
    assert_ne!(before.snapshot.version(), after.snapshot.version());
}

#[test]
fn adding_or_removing_entities_json_changes_the_version() {
    let dir = two_file_dir();
    let before = load(dir.path()).snapshot.version().to_owned();
    write(dir.path(), "entities.json", "[]");
    let with_entities = load(dir.path()).snapshot.version().to_owned();
    assert_ne!(before, with_entities);
    fs::remove_file(dir.path().join("entities.json")).unwrap();
    assert_eq!(load(dir.path()).snapshot.version(), before);
}

#[test]
fn reload_with_unchanged_content_keeps_the_snapshot() {
    let dir = two_file_dir();
    let (store, warnings) =
        PolicyStore::open(dir.path(), options(PolicyValidation::Strict)).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let before = store.current();
    let (outcome, _) = store.reload().unwrap();
    assert_eq!(outcome, ReloadOutcome::Unchanged);
    let after = store.current();
    assert_eq!(after.version(), before.version());
    assert_eq!(after.loaded_at(), before.loaded_at());
    assert!(
        Arc::ptr_eq(&before, &after),
        "the snapshot was not replaced"
    );
    assert!(store.last_error().is_none());
}

#[test]
fn a_failed_reload_keeps_serving_and_the_next_good_one_swaps_and_clears_the_error() {
    let dir = two_file_dir();
    let (store, _) = PolicyStore::open(dir.path(), options(PolicyValidation::Strict)).unwrap();
    let good_version = store.current().version().to_owned();

    write(
        dir.path(),
        "team/b.cedar",
        "@id(\"b\")\nforbid(principal, action, resource) when { false ;\n",
    );
    let err = store
        .reload()
        .expect_err("a broken policy fails the reload");
    assert!(matches!(err, LoadError::Invalid(_)), "{err:?}");
    assert_eq!(store.current().version(), good_version);
    let last = store.last_error().expect("last_error is set");
    assert!(last.message.contains("team/b.cedar:2"), "{}", last.message);

    // Failing again keeps it set.
    assert!(store.reload().is_err());
    assert!(store.last_error().is_some());

    write(
        dir.path(),
        "team/b.cedar",
        "@id(\"b\")\nforbid(principal, action == Action::\"read\", resource);\n",
    );
    let (outcome, _) = store.reload().expect("the fixed directory reloads");
    let current = store.current();
    assert_eq!(
        outcome,
        ReloadOutcome::Swapped {
            old_version: good_version.clone(),
            new_version: current.version().to_owned(),
        }
    );
    assert_ne!(current.version(), good_version);
    assert!(store.last_error().is_none());
}

#[test]
fn a_reload_back_to_the_serving_content_after_a_failure_clears_the_error() {
    let dir = two_file_dir();
    let (store, _) = PolicyStore::open(dir.path(), options(PolicyValidation::Strict)).unwrap();
    let original = fs::read_to_string(dir.path().join("a.cedar")).unwrap();
    write(dir.path(), "a.cedar", "permit(");
    assert!(store.reload().is_err());
    assert!(store.last_error().is_some());
    write(dir.path(), "a.cedar", &original);
    let (outcome, _) = store.reload().unwrap();
    assert_eq!(outcome, ReloadOutcome::Unchanged);
    assert!(store.last_error().is_none());
}

// ---- Kubernetes ConfigMap volume --------------------------------------------------------

/// Lays out `files` as a ConfigMap volume does: the content in a hidden timestamped
/// folder, `..data` linking to it, and one visible link per file through `..data`.
#[cfg(unix)]
#[test]
fn a_configmap_volume_loads_each_policy_once() {
    let dir = tempfile::tempdir().unwrap();
    configmap(
        dir.path(),
        "2026_11_23_data",
        &[
            ("schema.cedarschema", SCHEMA),
            (
                "main.cedar",
                "permit(principal, action == Action::\"read\", resource) when { resource.owner == principal };\n\
                 @id(\"named\")\nforbid(principal, action == Action::\"read\", resource) unless { resource.owner == principal };\n",
            ),
        ],
    );
    assert!(
        fs::symlink_metadata(dir.path().join("main.cedar"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let loaded = load(dir.path());
    assert_eq!(ids(&loaded), ["main.0", "named"]);
    assert_eq!(loaded.snapshot.policy_count(), 2);
    assert!(loaded.snapshot.schema().is_some());
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[cfg(unix)]
#[test]
fn a_configmap_data_swap_is_picked_up_by_reload() {
    let dir = tempfile::tempdir().unwrap();
    configmap(
        dir.path(),
        "2026_11_23_data",
        &[("main.cedar", "permit(principal, action, resource);\n")],
    );
    let (store, _) = PolicyStore::open(dir.path(), options(PolicyValidation::Strict)).unwrap();
    let old = store.current().version().to_owned();
    configmap(
        dir.path(),
        "2026_11_24_data",
        &[(
            "main.cedar",
            "permit(principal, action, resource);\nforbid(principal, action, resource);\n",
        )],
    );
    let (outcome, _) = store.reload().unwrap();
    assert!(
        matches!(&outcome, ReloadOutcome::Swapped { old_version, .. } if *old_version == old),
        "{outcome:?}"
    );
    assert_eq!(store.current().policy_count(), 2);
}

// ---- links, sizes and what errors quote ---------------------------------------------------

/// A file outside any policy directory whose text a parse error would quote.
#[cfg(unix)]
fn outside_secret() -> tempfile::TempDir {
    let outside = tempfile::tempdir().unwrap();
    write(
        outside.path(),
        "shadow",
        "root:SECRET-d2f1c0ffee:19000:0:99999:7:::\n",
    );
    fs::create_dir(outside.path().join("team")).unwrap();
    write(outside.path(), "team/leak.cedar", "SECRET-d2f1c0ffee\n");
    outside
}

#[cfg(unix)]
#[test]
fn a_link_to_outside_the_directory_is_refused_and_never_read() {
    let outside = outside_secret();
    for (link, target) in [("leak.cedar", "shadow"), ("team", "team")] {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "main.cedar",
            "permit(principal, action, resource);\n",
        );
        std::os::unix::fs::symlink(outside.path().join(target), dir.path().join(link)).unwrap();
        let found = problems(dir.path(), &LoadOptions::default());
        let text = found
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(found.len(), 1, "{text}");
        assert_eq!(found[0].location.file, link, "{text}");
        assert!(
            found[0]
                .message
                .contains("link to outside the policy directory"),
            "{text}"
        );
        assert!(!text.contains("SECRET"), "{text}");
    }

    // A link within the directory is followed.
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "real/main.cedar",
        "permit(principal, action, resource);\n",
    );
    std::os::unix::fs::symlink(
        dir.path().join("real/main.cedar"),
        dir.path().join("alias.cedar"),
    )
    .unwrap();
    assert_eq!(ids(&load(dir.path())), ["alias.0", "real/main.0"]);
}

/// Swaps `dir/x.cedar` back and forth between a regular file and `other` (made by `make`
/// at a temporary name) until the returned flag is set.
#[cfg(unix)]
fn keep_swapping(
    dir: &Path,
    make: impl Fn(&Path) + Send + 'static,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let dir = dir.to_owned();
    let thread = std::thread::spawn(move || {
        let (file, other) = (dir.join(".swap-file"), dir.join(".swap-other"));
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            fs::write(&file, "permit(principal, action, resource);\n").unwrap();
            fs::rename(&file, dir.join("x.cedar")).unwrap();
            let _ = fs::remove_file(&other);
            make(&other);
            fs::rename(&other, dir.join("x.cedar")).unwrap();
        }
    });
    (stop, thread)
}

/// Loads `dir` over and over for a while (at most `loads` times), with `check` on each
/// result.
#[cfg(unix)]
fn load_repeatedly(dir: &Path, loads: usize, check: impl Fn(&Result<Loaded, LoadError>)) {
    let until = Instant::now() + Duration::from_secs(3);
    for _ in 0..loads {
        check(&load_dir(dir, &LoadOptions::default()));
        if Instant::now() > until {
            break;
        }
    }
}

#[cfg(unix)]
#[test]
fn a_file_swapped_for_a_link_to_outside_while_the_directory_is_read_is_never_read() {
    // The link was checked as the walk saw the entry, then opened by path: a regular file
    // swapped for a link in between was read, and its text quoted.
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("outside.cedar");
    fs::write(
        &target,
        "@id(\"SECRET-outside\")\npermit(principal, action, resource);\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "main.cedar",
        "permit(principal, action, resource);\n",
    );
    let (stop, swapper) = keep_swapping(dir.path(), move |at| {
        std::os::unix::fs::symlink(&target, at).unwrap();
    });
    load_repeatedly(dir.path(), 5_000, |loaded| match loaded {
        Ok(loaded) => assert!(!has_policy(loaded, "SECRET-outside")),
        Err(error) => {
            let text = error.to_string();
            assert!(!text.contains("SECRET"), "{text}");
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
}

#[cfg(unix)]
#[test]
fn a_file_swapped_for_a_fifo_while_the_directory_is_read_does_not_block_the_load() {
    // Opening a FIFO blocks until someone writes to it: the watcher (or start-up) hung.
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "main.cedar",
        "permit(principal, action, resource);\n",
    );
    let (stop, swapper) = keep_swapping(dir.path(), |at| {
        let path = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `path` is a valid, NUL-terminated C string for the call's duration.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    });
    let path = dir.path().to_owned();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        load_repeatedly(&path, 2_000, |_| {});
        let _ = done.send(());
    });
    let result = finished.recv_timeout(Duration::from_secs(20));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(result.is_ok(), "a load blocked opening a FIFO");
}

#[test]
fn a_file_larger_than_max_policy_file_bytes_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "small.cedar",
        "permit(principal, action, resource);\n",
    );
    let big = format!(
        "// {}\npermit(principal, action, resource);\n",
        "x".repeat(200)
    );
    write(dir.path(), "big.cedar", &big);
    let limit = LoadOptions {
        max_file_bytes: 100,
        ..LoadOptions::default()
    };
    let found = problems(dir.path(), &limit);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].location.file, "big.cedar");
    assert_eq!(
        found[0].message,
        "is larger than the limit of 100 bytes (limits.max_policy_file_bytes); not read"
    );
    // At the limit, it is read.
    let at = LoadOptions {
        max_file_bytes: big.len() as u64,
        ..LoadOptions::default()
    };
    assert_eq!(load_with(dir.path(), &at).snapshot.policy_count(), 2);
}

#[test]
fn a_problem_quotes_a_short_excerpt_of_the_file_not_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!(
        "permit(principal, action, resource) when {{ \"{}\" \"x\" }};\n",
        "S".repeat(5000)
    );
    write(dir.path(), "long.cedar", &long);
    let token = format!(
        "permit(principal, action, resource) when {{ {} }};\n",
        "T".repeat(5000)
    );
    write(dir.path(), "token.cedar", &token);
    write(
        dir.path(),
        "entities.json",
        &format!("[{{\"uid\": \"{}\"}}]", "E".repeat(5000)),
    );
    let found = problems(dir.path(), &options(PolicyValidation::Off));
    let files: Vec<&str> = found.iter().map(|p| p.location.file.as_str()).collect();
    for file in ["long.cedar", "token.cedar", "entities.json"] {
        assert!(files.contains(&file), "{file} has a problem: {found:#?}");
    }
    for problem in &found {
        let shown = problem.to_string();
        assert!(shown.chars().count() < 700, "{shown}");
        for run in [
            "SSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSSS",
            "TTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTTT",
            "EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE",
        ] {
            assert!(!shown.contains(run), "{shown}");
        }
        assert!(
            problem.location.line.is_some() || problem.location.file == "entities.json",
            "{shown}"
        );
    }

    // An escaped quote does not end a quotation (an entity id, quoted twice over).
    let words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike";
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "schema.cedarschema", SCHEMA);
    write(dir.path(), "main.cedar", OWNER_READS);
    write(
        dir.path(),
        "entities.json",
        &format!(
            r#"[{{"uid": {{"type": "Nope", "id": "q\" {words}"}}, "attrs": {{}}, "parents": []}}]"#
        ),
    );
    let found = problems(dir.path(), &options(PolicyValidation::Strict));
    for problem in &found {
        let shown = problem.to_string();
        assert!(!shown.contains("mike"), "{shown}");
    }
}

// ---- the repository's example ------------------------------------------------------------

#[test]
fn the_example_policy_directory_loads_under_strict() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let loaded = load(dir);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert!(loaded.snapshot.schema().is_some());
    assert_eq!(loaded.snapshot.policy_count(), 19);
    assert_eq!(loaded.snapshot.template_count(), 0);
    assert_eq!(loaded.snapshot.entity_count(), 40);
    for id in ["tenant-isolation", "tenants/acme.0", "tenants/acme.1"] {
        assert!(has_policy(&loaded, id), "policy {id} is missing");
    }
    let acme0 = loaded
        .snapshot
        .policies()
        .policy(&PolicyId::new("tenants/acme.0"))
        .unwrap();
    assert_eq!(acme0.effect(), cedar_policy::Effect::Forbid);
}

#[test]
fn brackets_nested_past_the_limit_are_refused_with_the_line() {
    let nested = |depth: usize| {
        format!(
            "// a comment with ((((( is not counted\npermit(principal, action, resource)\n  when {{ {}true{} && \"(((\" != \"\" }};\n",
            "(".repeat(depth),
            ")".repeat(depth)
        )
    };
    let dir = tempfile::tempdir().unwrap();
    // `when {` is one level, so this nests exactly at the limit.
    write(dir.path(), "ok.cedar", &nested(MAX_POLICY_NESTING - 1));
    load(dir.path());

    write(dir.path(), "deep.cedar", &nested(MAX_POLICY_NESTING));
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].location.to_string(), "deep.cedar:3");
    assert!(
        problems[0].message.contains("nest"),
        "{}",
        problems[0].message
    );
}

// ---- where policies and problems are ---------------------------------------------------

#[test]
fn every_policy_is_located_at_its_first_annotation_or_keyword() {
    let dir = tempfile::tempdir().unwrap();
    // Semicolons inside strings and comments do not end a policy.
    write(
        dir.path(),
        "team/a.cedar",
        "// header; with a semicolon\n\
         permit(principal, action, resource) when { \"a;b\" != \"\" };\n\
         \n\
         // the next one; annotated\n\
         @id(\"named\")\n\
         @reason(\"x;y\")\n\
         forbid(principal, action, resource) when { false };  permit(principal, action, resource);\n",
    );
    let loaded = load(dir.path());
    let at = |id: &str| {
        loaded
            .snapshot
            .policy_location(id)
            .unwrap_or_else(|| panic!("{id} has a location"))
            .to_string()
    };
    assert_eq!(at("team/a.0"), "team/a.cedar:2:1");
    assert_eq!(at("named"), "team/a.cedar:5:1");
    assert_eq!(at("team/a.2"), "team/a.cedar:7:54");
    assert!(loaded.snapshot.policy_location("team/a.3").is_none());
}

#[test]
fn an_id_mentioned_in_a_comment_does_not_move_a_duplicate_to_the_comment() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.cedar",
        "@id(\"dup\")\npermit(principal, action, resource);\n",
    );
    write(
        dir.path(),
        "b.cedar",
        "// was @id(\"dup\") before the rename\npermit(principal, action, resource);\n\n@id(\"dup\")\nforbid(principal, action, resource);\n",
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].location.to_string(), "b.cedar:4:1");
    assert!(
        problems[0].message.contains("a.cedar:1:1"),
        "{}",
        problems[0]
    );
}

#[test]
fn a_syntax_error_and_a_validation_error_in_other_files_are_reported_together() {
    let dir = undeclared_attribute_dir();
    write(
        dir.path(),
        "broken.cedar",
        "permit(principal, action, resource) when { 1 + };\n",
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    let files: Vec<String> = problems.iter().map(|p| p.location.to_string()).collect();
    assert!(
        files.iter().any(|f| f.starts_with("broken.cedar:1:")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.starts_with("bad.cedar:3:")),
        "{files:?}"
    );
}

#[test]
fn a_syntax_error_carries_the_span_it_points_at() {
    let dir = tempfile::tempdir().unwrap();
    let text = "permit(principal, action, resource) when { principal.x == ) };\n";
    write(dir.path(), "p.cedar", text);
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    let span = problems[0].span.as_ref().expect("a span");
    assert_eq!(&text[span.offset..span.offset + span.len.max(1)], ")");
    assert_eq!(problems[0].location.column, Some(span.offset + 1));
}

#[test]
fn each_entity_failing_the_schema_is_reported_at_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "schema.cedarschema", SCHEMA);
    write(dir.path(), "good.cedar", OWNER_READS);
    write(
        dir.path(),
        "entities.json",
        r#"[
  {"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []},
  {"uid": {"type": "Doc", "id": "d1"}, "attrs": {"owner": "alice"}, "parents": []},
  {"uid": {"type": "Doc", "id": "d2"},
   "attrs": {"owner": {"__entity": {"type": "User", "id": "alice"}}}, "parents": []},
  {"uid": {"type": "Doc", "id": "d3"}, "attrs": {}, "parents": []}
]"#,
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    let found: Vec<(String, bool)> = problems
        .iter()
        .map(|p| (p.location.to_string(), p.message.contains("Doc::\"d")))
        .collect();
    assert_eq!(
        found,
        [
            ("entities.json:3:3".to_owned(), true),
            ("entities.json:6:3".to_owned(), true)
        ],
        "{problems:?}"
    );
    assert!(problems[0].message.contains(r#"Doc::"d1""#));
    assert!(problems[1].message.contains(r#"Doc::"d3""#));
}

#[test]
fn entities_wrong_only_together_are_reported_for_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    // Each entry is fine alone; two different entries for one uid are not.
    let alice = |n: u8| {
        format!(
            r#"{{"uid": {{"type": "User", "id": "alice"}}, "attrs": {{"n": {n}}}, "parents": []}}"#
        )
    };
    write(dir.path(), "p.cedar", OWNER_READS);
    write(
        dir.path(),
        "entities.json",
        &format!("[{}, {}]", alice(1), alice(2)),
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].location.to_string(), "entities.json");
    assert!(problems[0].message.contains("alice"), "{}", problems[0]);
}

#[test]
fn an_entity_after_a_string_element_is_still_located_at_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "schema.cedarschema", SCHEMA);
    write(dir.path(), "good.cedar", OWNER_READS);
    write(
        dir.path(),
        "entities.json",
        "[\n  \"not an entity\",\n  {\"uid\": {\"type\": \"Doc\", \"id\": \"d1\"}, \"attrs\": {}, \"parents\": []}\n]",
    );
    let problems = problems(dir.path(), &options(PolicyValidation::Strict));
    let at: Vec<String> = problems.iter().map(|p| p.location.to_string()).collect();
    assert_eq!(
        at,
        ["entities.json:2:3", "entities.json:3:3"],
        "{problems:?}"
    );
}

/// The snapshot keeps each policy without what only its text form needs (an `@id` that
/// is its only annotation, Cedar's copy of its text): it must decide as Cedar's own
/// parse of the file does, with the same reasons and the same errors at the same places
/// in the text, and keep every other annotation.
#[test]
fn a_served_policy_decides_and_errs_as_its_text_and_keeps_its_other_annotations() {
    use std::str::FromStr;

    use cedar_policy::{
        AuthorizationError::PolicyEvaluationError, Authorizer, Context, Entities, EntityUid,
        PolicySet, Request,
    };
    let text = "@id(\"lone\")\n\
                permit(principal == User::\"a\", action, resource) when { context.n > 1 };\n\
                @id(\"advised\")\n@advice(\"ask first\")\n\
                forbid(principal, action, resource) when { context.stop };\n\
                permit(principal, action == Action::\"read\", resource) when { resource.missing == 1 };\n";
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.cedar", text);
    let loaded = load_with(dir.path(), &options(PolicyValidation::Off));
    let served = loaded.snapshot.policies();
    let annotations = |id: &str| {
        let mut found: Vec<(String, String)> = served
            .policy(&PolicyId::new(id))
            .unwrap()
            .annotations()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        found.sort();
        found
    };
    assert_eq!(annotations("lone"), Vec::<(String, String)>::new());
    assert_eq!(
        annotations("advised"),
        [
            ("advice".to_owned(), "ask first".to_owned()),
            ("id".to_owned(), "advised".to_owned())
        ]
    );
    // Cedar names a parsed text's policies policy0, policy1, …; the loader by @id or
    // file and position.
    let own = PolicySet::from_str(text).unwrap();
    let named = |id: &str| match id {
        "policy0" => "lone".to_owned(),
        "policy1" => "advised".to_owned(),
        "policy2" => "p.2".to_owned(),
        other => other.to_owned(),
    };
    let answer = |set: &PolicySet, request: &Request, rename: &dyn Fn(&str) -> String| {
        let response = Authorizer::new().is_authorized(request, set, &Entities::empty());
        let mut reasons: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| rename(id.as_ref()))
            .collect();
        reasons.sort();
        // (policy, message, where in the text: offset and length of each label)
        type Erred = (String, String, Vec<(usize, usize)>);
        let mut errors: Vec<Erred> = response
            .diagnostics()
            .errors()
            .map(|PolicyEvaluationError(e)| {
                let at = miette::Diagnostic::labels(e.inner())
                    .into_iter()
                    .flatten()
                    .map(|l| (l.offset(), l.len()))
                    .collect();
                (rename(e.policy_id().as_ref()), e.inner().to_string(), at)
            })
            .collect();
        errors.sort();
        (response.decision(), reasons, errors)
    };
    let uid = |s: &str| EntityUid::from_str(s).unwrap();
    let contexts = [
        r#"{"n": 2, "stop": false}"#,
        r#"{"n": 0, "stop": true}"#,
        r#"{"n": "two", "stop": false}"#,
        r#"{}"#,
    ];
    let mut decided = 0;
    for context in contexts {
        for action in ["Action::\"read\"", "Action::\"write\""] {
            let request = Request::new(
                uid("User::\"a\""),
                uid(action),
                uid("Doc::\"d\""),
                Context::from_json_str(context, None).unwrap(),
                None,
            )
            .unwrap();
            let theirs = answer(&own, &request, &named);
            let ours = answer(served, &request, &|id| id.to_owned());
            assert_eq!(ours, theirs, "{context} {action}");
            decided += theirs.2.iter().filter(|(_, _, at)| !at.is_empty()).count();
        }
    }
    assert!(
        decided >= 4,
        "the requests make policies err, at places in the text"
    );
}
