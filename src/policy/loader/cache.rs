//! What one build keeps for the next, so that a reload costs what changed and not what
//! the directory holds: each policy file's parse (its policies with their ids, locations
//! and index entries) while its text stays the same, each file's validation while its
//! text and the schema stay the same, and the stored entities while `entities.json` and
//! the schema stay the same.
//!
//! Entries are keyed by the exact text they were made from, never by a timestamp or a
//! hash that could collide: a reused parse is the parse of the text just read. A schema
//! change (or a different validation mode) re-validates every file. Whatever a build
//! comes to, the cache then holds the files of that read and nothing else, so a failed
//! reload costs nothing more the next time and a deleted file's parse is let go.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

use cedar_policy::{Entities, PolicyId, PolicySet, Schema, ValidationMode, Validator};

use super::{
    catalog::Catalog,
    policies::{PIECE_POLICIES, ParsedFile, ParsedPolicy, parse_one},
    read::{Kind, Source},
};
use crate::policy::{
    FastSet, PolicyIndex, PolicyValidation, Problem, error::diagnostic_problem_at,
};

/// What a policy store keeps from one build for the next ([`super::build_cached`]).
#[derive(Default)]
pub struct BuildCache {
    /// By relative path.
    files: HashMap<String, CachedFile>,
    /// The schema text and validation mode files were last validated against, and its
    /// generation: bumped whenever either changes, so every file is validated again.
    schema: Option<(String, PolicyValidation)>,
    generation: u64,
    /// The stored entities, with the text and schema generation they were built from.
    entities: Option<CachedEntities>,
    /// The catalog and index of the last build that succeeded: the next build's are
    /// derived from them.
    built: Option<(Arc<Catalog>, PolicyIndex)>,
}

#[derive(Debug)]
struct CachedFile {
    parsed: Arc<ParsedFile>,
    /// Validation against schema generation `.0`.
    validated: Option<(u64, Arc<Validated>)>,
}

#[derive(Debug)]
struct CachedEntities {
    text: Option<String>,
    generation: u64,
    entities: Entities,
    count: usize,
    /// Uids the entities name (as ancestors, in attributes or tags).
    named: Arc<FastSet<cedar_policy::EntityUid>>,
}

/// What Cedar's validator says of one file's policies.
#[derive(Debug, Default)]
pub(super) struct Validated {
    pub(super) errors: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
}

impl std::fmt::Debug for BuildCache {
    // The cached texts can be megabytes: a debug print says how much is held, not what.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildCache")
            .field("files", &self.files.len())
            .field("generation", &self.generation)
            .field("entities", &self.entities.is_some())
            .finish()
    }
}

impl BuildCache {
    /// An empty cache: the first build parses everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// The parse of every policy file of `sources`, in their order: reused where the
    /// text is the same as last time, else parsed (on several threads when there are
    /// many). Forgets files no longer there.
    pub(super) fn parse(&mut self, sources: &[Source]) -> Vec<Arc<ParsedFile>> {
        let files: Vec<&Source> = sources
            .iter()
            .filter(|s| s.kind == Kind::Policies)
            .collect();
        let fresh: Vec<(String, String)> = files
            .iter()
            .filter(|s| {
                self.files
                    .get(&s.rel)
                    .is_none_or(|cached| cached.parsed.text != s.text)
            })
            .map(|s| (s.rel.clone(), s.text.clone()))
            .collect();
        for parsed in in_parallel(fresh, |(rel, text)| parse_one(rel, text)) {
            self.files.insert(
                parsed.rel.clone(),
                CachedFile {
                    parsed: Arc::new(parsed),
                    validated: None,
                },
            );
        }
        let present: std::collections::HashSet<&str> =
            files.iter().map(|s| s.rel.as_str()).collect();
        self.files.retain(|rel, _| present.contains(rel.as_str()));
        files
            .iter()
            .map(|s| self.files[&s.rel].parsed.clone())
            .collect()
    }

    /// Notes the schema this build validates against (its text; `None`: none, or one
    /// that does not parse) and the validation mode: when either changed since the last
    /// build, no validation or stored entities made under the old ones are reused.
    pub(super) fn schema(&mut self, text: Option<&str>, validation: PolicyValidation) {
        let key = text.map(|text| (text.to_owned(), validation));
        if self.schema != key {
            self.schema = key;
            self.generation += 1;
        }
    }

    /// Validation of each file of `files` against `schema` (the one last given to
    /// [`BuildCache::schema`]), reused where neither the file nor the schema nor the
    /// mode changed.
    pub(super) fn validate(
        &mut self,
        schema: &Schema,
        files: &[Arc<ParsedFile>],
    ) -> Vec<Arc<Validated>> {
        let generation = self.generation;
        let stale: Vec<Arc<ParsedFile>> = files
            .iter()
            .filter(|f| !matches!(&self.files[&f.rel].validated, Some((g, _)) if *g == generation))
            .cloned()
            .collect();
        let validator = Validator::new(schema.clone());
        for (rel, validated) in in_parallel(stale, |file| {
            (file.rel.clone(), Arc::new(validate_file(&validator, &file)))
        }) {
            if let Some(cached) = self.files.get_mut(&rel) {
                cached.validated = Some((generation, validated));
            }
        }
        files
            .iter()
            .map(|f| match &self.files[&f.rel].validated {
                Some((_, validated)) => validated.clone(),
                None => Arc::default(),
            })
            .collect()
    }

    /// The stored entities built from `text` (`None`: no `entities.json`) under the
    /// current schema generation, if the last build made them.
    pub(super) fn entities(
        &self,
        text: Option<&str>,
    ) -> Option<(Entities, usize, Arc<FastSet<cedar_policy::EntityUid>>)> {
        self.entities
            .as_ref()
            .filter(|c| c.text.as_deref() == text && c.generation == self.generation)
            .map(|c| (c.entities.clone(), c.count, c.named.clone()))
    }

    /// The catalog and index of the last build that succeeded.
    pub(super) fn built(&self) -> Option<&(Arc<Catalog>, PolicyIndex)> {
        self.built.as_ref()
    }

    /// Keeps the catalog and index of a build that succeeded, for the next to start from.
    pub(super) fn keep_built(&mut self, catalog: Arc<Catalog>, index: PolicyIndex) {
        self.built = Some((catalog, index));
    }

    /// Keeps the stored entities just built from `text`.
    pub(super) fn keep_entities(
        &mut self,
        text: Option<&str>,
        entities: &Entities,
        count: usize,
        named: Arc<FastSet<cedar_policy::EntityUid>>,
    ) {
        self.entities = Some(CachedEntities {
            text: text.map(str::to_owned),
            generation: self.generation,
            entities: entities.clone(),
            count,
            named,
        });
    }
}

/// Cedar's validation of one file's policies (in strict mode: the loader's `warn` mode
/// only changes what the errors count as). Validating a policy does not depend on the
/// others, so file by file gives what the whole set would, and so does a large file in
/// pieces on several threads; it also keeps the validator's working memory to one
/// piece's worth. An id used twice in the file is a problem of its own; the first is
/// validated.
fn validate_file(validator: &Validator, file: &ParsedFile) -> Validated {
    let mut seen = HashSet::new();
    let firsts: Vec<&ParsedPolicy> = file
        .policies
        .iter()
        .filter(|p| seen.insert(&p.id))
        .collect();
    let pieces: Vec<&[&ParsedPolicy]> = firsts.chunks(PIECE_POLICIES).collect();
    let mut validated = Validated::default();
    for piece in in_parallel(pieces, |piece| validate_piece(validator, file, piece)) {
        validated.errors.extend(piece.errors);
        validated.warnings.extend(piece.warnings);
    }
    validated
}

/// Cedar's validation of some of `file`'s policies (distinct ids), each problem located
/// in the file from the offset its policy was parsed at.
fn validate_piece(validator: &Validator, file: &ParsedFile, piece: &[&ParsedPolicy]) -> Validated {
    let mut set = PolicySet::new();
    let mut offsets: HashMap<&PolicyId, usize> = HashMap::with_capacity(piece.len());
    for policy in piece {
        if policy.item.add_to(&mut set).is_ok() {
            offsets.insert(&policy.id, policy.offset);
        }
    }
    let result = validator.validate(&set, ValidationMode::Strict);
    let located = |e: &dyn miette::Diagnostic, id: &PolicyId| {
        let offset = offsets.get(id).copied().unwrap_or(0);
        diagnostic_problem_at(e, &file.rel, &file.text, offset)
    };
    Validated {
        errors: result
            .validation_errors()
            .map(|e| located(e, e.policy_id()))
            .collect(),
        warnings: result
            .validation_warnings()
            .map(|w| located(w, w.policy_id()))
            .collect(),
    }
}

/// Largest number of threads a build parses or validates on.
const MAX_THREADS: usize = 8;

/// Stack of each of those threads: Cedar parses and validates recursively (see
/// [`super::MAX_POLICY_NESTING`]).
const STACK_BYTES: usize = 8 << 20;

/// `work` applied to every item, in order, on up to as many threads as there are cores
/// (this one among them; only this one with few items, or when no other can start).
pub(super) fn in_parallel<T: Send, R: Send>(items: Vec<T>, work: impl Fn(T) -> R + Sync) -> Vec<R> {
    let helpers = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_THREADS)
        .min(items.len() / 4)
        .saturating_sub(1);
    if helpers == 0 {
        return items.into_iter().map(work).collect();
    }
    let items: Vec<Mutex<Option<T>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let run = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = items.get(i) else { break };
            let item = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(item) = item {
                let result = work(item);
                *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            }
        }
    };
    thread::scope(|scope| {
        for _ in 0..helpers {
            // Should one not start, the others (this thread at least) do its share.
            let _ = thread::Builder::new()
                .name("policy-build".into())
                .stack_size(STACK_BYTES)
                .spawn_scoped(scope, run);
        }
        run();
    });
    results
        .into_iter()
        .filter_map(|r| r.into_inner().unwrap_or_else(|p| p.into_inner()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{LoadOptions, build, build_cached, read_dir};

    const SCHEMA: &str =
        "entity User; entity Doc;\naction read appliesTo { principal: [User], resource: [Doc] };\n";

    fn write(dir: &std::path::Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// Builds `dir` with the default options, reusing and then updating `cache`.
    fn build_with(
        dir: &std::path::Path,
        cache: &mut BuildCache,
    ) -> Result<super::super::Loaded, crate::policy::LoadError> {
        build_cached(
            &read_dir(dir, 1 << 20).unwrap(),
            &LoadOptions::default(),
            cache,
        )
    }

    #[test]
    fn a_large_file_parsed_and_validated_in_pieces_reads_as_one() {
        // Eight pieces and a bit; comments and blank lines between policies, some
        // without an @id.
        let n = 8 * super::super::policies::PIECE_POLICIES + 7;
        let mut text = String::from("// generated\n\n");
        for k in 0..n {
            if k % 3 == 0 {
                text.push_str(&format!("// policy {k}; with a semicolon in a comment\n"));
                text.push_str("permit(principal == User::\"a;b\", action, resource);\n\n");
            } else if k == n - 3 {
                // A validation error in the last piece: its line must be this one.
                text.push_str(&format!("@id(\"p{k}\")\npermit(principal, action, resource)\n  when {{ principal.nope }};\n"));
            } else {
                text.push_str(&format!(
                    "@id(\"p{k}\")\nforbid(principal == User::\"u{k}\", action, resource);\n"
                ));
            }
        }
        let line_of = |needle: &str| text[..text.find(needle).unwrap()].lines().count() + 1;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "schema.cedarschema", SCHEMA);
        write(dir.path(), "big.cedar", &text);
        let files = BuildCache::new().parse(&read_dir(dir.path(), 1 << 30).unwrap().sources);
        let policies = &files[0].policies;
        assert_eq!(policies.len(), n);
        for (k, policy) in policies.iter().enumerate() {
            let id: &str = policy.id.as_ref();
            if k % 3 == 0 {
                assert_eq!(id, format!("big.{k}"));
                assert_eq!(
                    policy.location.line,
                    Some(line_of(&format!("// policy {k};")) + 1)
                );
            } else {
                assert_eq!(id, format!("p{k}"));
                assert_eq!(
                    policy.location.line,
                    Some(line_of(&format!("@id(\"p{k}\")")))
                );
            }
        }
        let Err(crate::policy::LoadError::Invalid(problems)) = build(
            &read_dir(dir.path(), 1 << 30).unwrap(),
            &LoadOptions::default(),
        ) else {
            panic!("the undeclared attribute is refused");
        };
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].location.file, "big.cedar");
        assert_eq!(
            problems[0].location.line,
            Some(line_of(&format!("@id(\"p{}\")", n - 3)) + 2),
            "{problems:?}"
        );
    }

    #[test]
    fn a_syntax_error_in_one_piece_of_a_large_file_is_reported_as_for_the_whole_text() {
        let n = 6 * super::super::policies::PIECE_POLICIES;
        let bad = 3 * super::super::policies::PIECE_POLICIES + 17;
        let text: String = (0..n)
            .map(|k| {
                if k == bad {
                    format!("@id(\"p{k}\")\npermit(principal, action, resource) when {{ 1 + }};\n")
                } else {
                    format!(
                        "@id(\"p{k}\")\nforbid(principal == User::\"u{k}\", action, resource);\n"
                    )
                }
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "big.cedar", &text);
        let Err(crate::policy::LoadError::Invalid(problems)) = build(
            &read_dir(dir.path(), 1 << 30).unwrap(),
            &LoadOptions::default(),
        ) else {
            panic!("the syntax error is refused");
        };
        let whole = super::super::parse_problems("big.cedar", &text);
        assert!(!whole.is_empty());
        let shown = |p: &[Problem]| p.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(shown(&problems), shown(&whole));
        assert_eq!(problems[0].location.line, Some(2 * bad + 2), "{problems:?}");
    }

    /// The policies a request from `User::"alice"` to read `Doc::"d"` meets: Cedar's
    /// answer on `set`.
    fn alice_reads(set: &PolicySet) -> cedar_policy::Decision {
        use std::str::FromStr as _;
        let uid = |s: &str| cedar_policy::EntityUid::from_str(s).unwrap();
        let request = cedar_policy::Request::new(
            uid(r#"User::"alice""#),
            uid(r#"Action::"read""#),
            uid(r#"Doc::"d""#),
            cedar_policy::Context::empty(),
            None,
        )
        .unwrap();
        cedar_policy::Authorizer::new()
            .is_authorized(&request, set, &Entities::empty())
            .decision()
    }

    #[test]
    fn a_split_never_makes_a_large_file_mean_something_else() {
        use std::str::FromStr as _;
        // Cedar ends a `//` comment at a carriage return too. A scanner that ended it
        // only at a line feed would take `"\n"` for the end of a string Cedar never
        // sees, and could start a piece inside Cedar's comment: adding a permit (the
        // first gadget), or hiding a forbid inside an annotation (the second).
        let gadgets = [
            "@note(// c\r\"\n\") forbid(principal == User::\"nobody\", action, resource); \
             // \"; permit(principal, action, resource);\n",
            "@note(// c\r\"\n\") forbid(principal == User::\"nobody\", action, resource); \
             // \"; @note(\"\nforbid(principal, action, resource);\n// \")\n\
             permit(principal, action, resource);\n",
            // The same with a line feed after the carriage return.
            "@note(// c\r\n\"\n\") forbid(principal == User::\"nobody\", action, resource); \
             // \"; permit(principal, action, resource);\n",
        ];
        for gadget in gadgets {
            let filler = |k: usize| {
                format!("@id(\"f{k}\")\nforbid(principal == User::\"u{k}\", action, resource);\n")
            };
            let mut text: String = (0..499).map(filler).collect();
            text.push_str(gadget);
            text.extend((499..1099).map(filler));
            let whole = PolicySet::from_str(&text).expect("the whole file parses");
            assert_eq!(alice_reads(&whole), cedar_policy::Decision::Deny);
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "big.cedar", &text);
            let served = build(
                &read_dir(dir.path(), 1 << 30).unwrap(),
                &LoadOptions::default(),
            )
            .expect("the file loads");
            let served = served.snapshot.policies();
            assert_eq!(
                served.num_of_policies(),
                whole.num_of_policies(),
                "{gadget:?}"
            );
            assert_eq!(
                alice_reads(served),
                cedar_policy::Decision::Deny,
                "the server must deny what the file's text denies: {gadget:?}"
            );
        }
        // Nor does a carriage return hide brackets from the nesting check.
        let deep = format!(
            "permit(principal, action, resource) when {{ // x\r{}true{} }};\n",
            "(".repeat(40),
            ")".repeat(40)
        );
        assert!(super::super::policies::too_deep(&deep).is_some());
    }

    #[test]
    fn a_policy_is_located_by_the_id_decisions_name_it_by() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.cedar",
            "@id(\"plain-id.1\") permit(principal, action, resource);\n\
             @id(\"say \\\"hi\\\" \\\\ é\") forbid(principal, action, resource);\n",
        );
        let loaded = build(
            &read_dir(dir.path(), 1 << 20).unwrap(),
            &LoadOptions::default(),
        )
        .unwrap()
        .snapshot;
        let mut found = 0;
        for policy in loaded.policies().policies() {
            // Decisions name a policy by Cedar's display of its id.
            let named = policy.id().to_string();
            let location = loaded.policy_location(&named);
            assert!(location.is_some(), "{named} is located");
            found += 1;
        }
        assert_eq!(found, 2);
        assert_eq!(
            loaded.policy_location("plain-id.1").and_then(|l| l.line),
            Some(1)
        );
    }

    #[test]
    fn unchanged_files_are_reused_and_changed_ones_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.cedar",
            "@id(\"a\") permit(principal, action, resource);",
        );
        write(
            dir.path(),
            "b.cedar",
            "@id(\"b\") forbid(principal, action, resource);",
        );
        let mut cache = BuildCache::new();
        let first = cache.parse(&read_dir(dir.path(), 1 << 20).unwrap().sources);
        write(
            dir.path(),
            "b.cedar",
            "@id(\"b2\") forbid(principal, action, resource);",
        );
        let second = cache.parse(&read_dir(dir.path(), 1 << 20).unwrap().sources);
        assert_eq!((first.len(), second.len()), (2, 2));
        assert!(Arc::ptr_eq(&first[0], &second[0]), "a.cedar did not change");
        assert!(!Arc::ptr_eq(&first[1], &second[1]), "b.cedar changed");
        assert_eq!(second[1].policies[0].id.to_string(), "b2");
        std::fs::remove_file(dir.path().join("a.cedar")).unwrap();
        cache.parse(&read_dir(dir.path(), 1 << 20).unwrap().sources);
        assert_eq!(cache.files.len(), 1, "a deleted file's parse is let go");
    }

    #[test]
    fn a_cached_rebuild_equals_a_fresh_build() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "schema.cedarschema", SCHEMA);
        write(
            dir.path(),
            "a.cedar",
            "@id(\"a\") permit(principal == User::\"u\", action, resource);",
        );
        write(
            dir.path(),
            "b.cedar",
            "@id(\"b\")\nforbid(principal, action, resource)\n  when { principal == User::\"x\" };",
        );
        let options = LoadOptions::default();
        let mut cache = BuildCache::new();
        build_with(dir.path(), &mut cache).unwrap();
        write(
            dir.path(),
            "a.cedar",
            "\n@id(\"a\") permit(principal == User::\"v\", action, resource);",
        );
        let read = read_dir(dir.path(), 1 << 20).unwrap();
        let cached = build_cached(&read, &options, &mut cache).unwrap().snapshot;
        let fresh = build(&read, &options).unwrap().snapshot;
        assert_eq!(cached.policy_count(), fresh.policy_count());
        assert_eq!(cached.policies().to_string(), fresh.policies().to_string());
        for id in ["a", "b"] {
            assert_eq!(
                cached.policy_location(id),
                fresh.policy_location(id),
                "{id}"
            );
        }
        assert_eq!(cached.policy_location("a").and_then(|l| l.line), Some(2));
    }

    #[test]
    fn a_schema_change_validates_unchanged_files_again() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "schema.cedarschema", SCHEMA);
        write(
            dir.path(),
            "a.cedar",
            "@id(\"a\") permit(principal, action == Action::\"read\", resource is Doc);",
        );
        let mut cache = BuildCache::new();
        build_with(dir.path(), &mut cache).unwrap();
        write(
            dir.path(),
            "schema.cedarschema",
            "entity User; entity File;\naction read appliesTo { principal: [User], resource: [File] };\n",
        );
        let err = build_with(dir.path(), &mut cache)
            .expect_err("a.cedar names an entity type the new schema lacks");
        assert!(err.to_string().contains("a.cedar"), "{err}");
    }
}
