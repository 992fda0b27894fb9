//! Reads a policy directory into a [`Snapshot`], or into the list of everything wrong
//! with it.
//!
//! The rules (see the README, "Policy directory"): `*.cedar` files anywhere except the
//! top-level `tests/` folder and hidden entries; at most one `*.cedarschema` or
//! `*.cedarschema.json` and an optional `entities.json`, both at the top. A policy's id is
//! its `@id("…")` annotation, else its file's relative path without `.cedar` and its
//! 0-based position in the file (`tenants/acme.2`). The version is a hash of every file
//! read, so unchanged content always gives the same version.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    str::FromStr,
    time::SystemTime,
};

use cedar_policy::{
    Entities, PolicyId, PolicySet, Schema, SchemaFragment, ValidationMode, Validator,
};
use miette::Diagnostic;
use sha2::{Digest, Sha256};

use super::{LoadError, Location, PolicyValidation, Problem, SchemaShape, Snapshot, hierarchy};

/// How to load a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Policy validation against the schema.
    pub validation: PolicyValidation,
    /// Most entities `entities.json` may hold.
    pub max_store_entities: usize,
    /// Longest parent chain allowed in `entities.json`.
    pub max_ancestor_depth: usize,
}

impl LoadOptions {
    /// Options from the configured validation mode and limits.
    pub fn new(validation: PolicyValidation, limits: &crate::config::Limits) -> Self {
        Self {
            validation,
            max_store_entities: limits.max_store_entities,
            max_ancestor_depth: limits.max_ancestor_depth,
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self::new(PolicyValidation::Strict, &crate::config::Limits::default())
    }
}

/// A loaded snapshot and the problems that did not stop it loading (validation problems
/// under `warn`, Cedar's validation and schema warnings).
#[derive(Debug)]
pub struct Loaded {
    /// The new snapshot.
    pub snapshot: Snapshot,
    /// Problems worth logging.
    pub warnings: Vec<Problem>,
}

/// What a file in the directory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Policies,
    CedarSchema,
    JsonSchema,
    Entities,
}

/// One file read from the directory.
struct Source {
    /// Relative path with `/` separators.
    rel: String,
    kind: Kind,
    text: String,
}

/// Reads and validates the whole directory at `dir`.
pub fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Loaded, LoadError> {
    build(read_dir(dir)?, options)
}

/// Everything a snapshot is built from, read from the directory but not yet parsed: the
/// I/O half of [`load_dir`], so that a reload can check the directory held still while
/// it was read before spending time on parsing.
pub struct Sources {
    sources: Vec<Source>,
    /// Files that could not be read.
    problems: Vec<Problem>,
    version: String,
    /// Files opened, whether or not they could then be read.
    opened: usize,
    /// The latest modification time among the files read.
    newest: Option<SystemTime>,
}

impl Sources {
    /// The version a snapshot built from these sources has.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether every file could be read (else [`build`] reports which could not).
    pub fn complete(&self) -> bool {
        self.problems.is_empty()
    }

    /// The latest modification time among the files read, if any could be read.
    pub fn newest_modification(&self) -> Option<SystemTime> {
        self.newest
    }

    /// How many files were opened to read them (an unreadable one included).
    pub fn opened(&self) -> usize {
        self.opened
    }
}

/// Reads every file a snapshot is built from; only a missing or unusable directory is an
/// error here, unreadable files are problems reported by [`build`].
pub fn read_dir(dir: &Path) -> Result<Sources, LoadError> {
    let meta = fs::metadata(dir).map_err(|source| LoadError::Directory {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(LoadError::Directory {
            path: dir.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mut problems = Vec::new();
    let mut opened = 0;
    let mut newest = None;
    let sources = read_sources(dir, &mut problems, &mut opened, &mut newest);
    let version = content_hash(&sources);
    Ok(Sources {
        sources,
        problems,
        version,
        opened,
        newest,
    })
}

/// Parses and validates what [`read_dir`] read into a snapshot: the CPU half of
/// [`load_dir`].
pub fn build(read: Sources, options: &LoadOptions) -> Result<Loaded, LoadError> {
    let Sources {
        sources,
        mut problems,
        version,
        opened: _,
        newest: _,
    } = read;
    let mut warnings = Vec::new();

    let policies = parse_policies(&sources, &mut problems);
    let parsed = parse_schema(&sources, &mut problems, &mut warnings);
    let (schema, schema_shape) = match parsed {
        Ok(Some((schema, shape))) => (Ok(Some(schema)), shape),
        Ok(None) => (Ok(None), None),
        Err(()) => (Err(()), None),
    };
    if let (Ok(Some(schema)), true) = (&schema, problems.is_empty()) {
        validate_policies(
            schema,
            &policies,
            &sources,
            options,
            &mut problems,
            &mut warnings,
        );
    }
    let entities = match &schema {
        Ok(schema) => load_entities(&sources, schema.as_ref(), options, &mut problems),
        Err(()) => None,
    };
    match (problems.is_empty(), schema, entities) {
        (true, Ok(schema), Some((entities, entity_count))) => Ok(Loaded {
            snapshot: Snapshot {
                policies: policies.set,
                schema_shape,
                schema,
                entities,
                entity_count,
                version,
                loaded_at: SystemTime::now(),
            },
            warnings,
        }),
        _ => Err(LoadError::Invalid(problems)),
    }
}

/// Walks the directory (following links, as a Kubernetes ConfigMap volume needs) and reads
/// every file that belongs to a snapshot, in a stable order.
fn read_sources(
    dir: &Path,
    problems: &mut Vec<Problem>,
    opened: &mut usize,
    newest: &mut Option<SystemTime>,
) -> Vec<Source> {
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| entry.depth() == 0 || !skipped(entry));
    let mut sources = Vec::new();
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                let rel = err.path().map_or_else(String::new, |p| relative(dir, p));
                problems.push(Problem {
                    location: Location::file(rel),
                    message: format!("cannot read: {err}"),
                });
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        let top = entry.depth() == 1;
        let kind = if name.ends_with(".cedar") {
            Kind::Policies
        } else if name.ends_with(".cedarschema") {
            Kind::CedarSchema
        } else if name.ends_with(".cedarschema.json") {
            Kind::JsonSchema
        } else if top && name == "entities.json" {
            Kind::Entities
        } else {
            continue;
        };
        let rel = relative(dir, entry.path());
        if !top && kind != Kind::Policies {
            problems.push(Problem {
                location: Location::file(rel),
                message: "a schema is read only at the top of the policy directory; move it there"
                    .to_owned(),
            });
            continue;
        }
        let read = fs::File::open(entry.path()).and_then(|mut file| {
            *opened += 1;
            if let Ok(modified) = file.metadata().and_then(|m| m.modified()) {
                *newest = (*newest).max(Some(modified));
            }
            let mut text = String::new();
            std::io::Read::read_to_string(&mut file, &mut text).map(|_| text)
        });
        match read {
            Ok(text) => sources.push(Source { rel, kind, text }),
            Err(err) => problems.push(Problem {
                location: Location::file(rel),
                message: format!("cannot read: {err}"),
            }),
        }
    }
    sources
}

/// Hidden entries (`.git`, a ConfigMap's `..data`) and the top-level `tests/` folder are
/// not part of a snapshot. A ConfigMap's visible links through `..data` are.
fn skipped(entry: &walkdir::DirEntry) -> bool {
    let name = entry.file_name().to_string_lossy();
    name.starts_with('.') || (entry.depth() == 1 && name == "tests" && entry.file_type().is_dir())
}

fn relative(dir: &Path, path: &Path) -> String {
    let rel: PathBuf = path.strip_prefix(dir).unwrap_or(path).to_owned();
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// SHA-256 over each file's relative path and content, length-prefixed so that no two
/// different directories hash alike. The first 16 hex digits are the version.
fn content_hash(sources: &[Source]) -> String {
    let mut hasher = Sha256::new();
    for source in sources {
        for part in [source.rel.as_bytes(), source.text.as_bytes()] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deepest nesting of `(`, `[` and `{` a policy file may have. Cedar parses and evaluates
/// expressions recursively: a debug build overflows a 2 MiB thread stack somewhere
/// between 32 and 40 levels, a release build past 100. Real policies stay far below.
pub const MAX_POLICY_NESTING: usize = 32;

/// The 1-based line where brackets first nest deeper than [`MAX_POLICY_NESTING`], if
/// they do; string literals and `//` comments are skipped.
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        '\n' => line += 1,
                        _ => {}
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_POLICY_NESTING {
                    return Some(line);
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The policy set and, per policy id, the file it came from.
struct Policies {
    set: PolicySet,
    /// Index into the sources, and whether the id came from an `@id` annotation.
    origin: HashMap<PolicyId, (usize, bool)>,
}

fn parse_policies(sources: &[Source], problems: &mut Vec<Problem>) -> Policies {
    let mut set = PolicySet::new();
    let mut origin: HashMap<PolicyId, (usize, bool)> = HashMap::new();
    for (index, source) in sources.iter().enumerate() {
        if source.kind != Kind::Policies {
            continue;
        }
        if let Some(line) = too_deep(&source.text) {
            problems.push(Problem {
                location: Location {
                    file: source.rel.clone(),
                    line: Some(line),
                    column: None,
                },
                message: format!(
                    "brackets nest deeper than {MAX_POLICY_NESTING}; \
                     split the expression (deep nesting can exhaust the parser's stack)"
                ),
            });
            continue;
        }
        let parsed = match PolicySet::from_str(&source.text) {
            Ok(parsed) => parsed,
            Err(errors) => {
                for error in errors.iter() {
                    problems.push(diagnostic_problem(error, &source.rel, &source.text));
                }
                continue;
            }
        };
        let stem = source.rel.strip_suffix(".cedar").unwrap_or(&source.rel);
        // The parsed set iterates in no particular order; ids and messages follow the text.
        let mut entries: Vec<(usize, Entry<'_>)> = parsed
            .policies()
            .map(|p| (position(p.id()), Entry::Policy(p)))
            .chain(
                parsed
                    .templates()
                    .map(|t| (position(t.id()), Entry::Template(t))),
            )
            .collect();
        entries.sort_by_key(|(pos, _)| *pos);
        // How many policies of this file carried each @id so far: the n-th one is at the
        // n-th `@id("…")` of the text.
        let mut seen_in_file: HashMap<String, usize> = HashMap::new();
        for (pos, entry) in entries {
            let annotation = entry.annotation();
            let nth = annotation.map(|a| {
                let count = seen_in_file.entry(a.to_owned()).or_default();
                *count += 1;
                *count - 1
            });
            let id = match annotation {
                Some("") => {
                    problems.push(Problem {
                        location: annotation_location(source, "", nth.unwrap_or(0)),
                        message: "the @id annotation is empty".to_owned(),
                    });
                    continue;
                }
                Some(id) => PolicyId::new(id),
                None => PolicyId::new(format!("{stem}.{pos}")),
            };
            if let Some(&(first, first_annotated)) = origin.get(&id) {
                let here = match nth {
                    Some(nth) => annotation_location(source, id.as_ref(), nth),
                    None => Location::file(source.rel.clone()),
                };
                let there = match first_annotated {
                    true => annotation_location(&sources[first], id.as_ref(), 0),
                    false => Location::file(sources[first].rel.clone()),
                };
                problems.push(Problem {
                    location: here,
                    message: format!(
                        "policy id `{id}` is used twice; it is also the id of a policy at {there}"
                    ),
                });
                continue;
            }
            origin.insert(id.clone(), (index, annotation.is_some()));
            let added = match entry {
                Entry::Policy(policy) => set.add(policy.new_id(id)),
                Entry::Template(template) => set.add_template(template.new_id(id)),
            };
            added.expect("ids are unique by construction");
        }
    }
    Policies { set, origin }
}

/// A static policy or a template, as parsed from one file.
enum Entry<'a> {
    Policy(&'a cedar_policy::Policy),
    Template(&'a cedar_policy::Template),
}

impl Entry<'_> {
    fn annotation(&self) -> Option<&str> {
        match self {
            Entry::Policy(p) => p.annotation("id"),
            Entry::Template(t) => t.annotation("id"),
        }
    }
}

/// Cedar names the policies of a parsed text `policy0`, `policy1`, … in text order.
fn position(parsed_id: &PolicyId) -> usize {
    let id: &str = parsed_id.as_ref();
    id.strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// The position of the `nth` (from 0) `@id("<id>")` annotation in `source`, or just the
/// file if it cannot be found.
fn annotation_location(source: &Source, id: &str, nth: usize) -> Location {
    let text = &source.text;
    let found = text
        .match_indices("@id")
        .filter(|(at, tag)| {
            let rest = text[at + tag.len()..].trim_start();
            rest.strip_prefix('(')
                .map(str::trim_start)
                .and_then(|r| r.strip_prefix('"'))
                .and_then(|r| r.strip_prefix(id))
                .is_some_and(|r| r.starts_with('"'))
        })
        .nth(nth);
    match found {
        Some((at, _)) => Location::at_offset(source.rel.clone(), text, at),
        None => Location::file(source.rel.clone()),
    }
}

/// The schema and its JSON shape. `Ok(None)`: no schema; `Err(())`: a schema that failed
/// to parse (already reported).
fn parse_schema(
    sources: &[Source],
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Result<Option<(Schema, Option<SchemaShape>)>, ()> {
    let mut schemas = sources
        .iter()
        .filter(|s| matches!(s.kind, Kind::CedarSchema | Kind::JsonSchema));
    let Some(source) = schemas.next() else {
        return Ok(None);
    };
    if let Some(second) = schemas.next() {
        problems.push(Problem {
            location: Location::file(second.rel.clone()),
            message: format!(
                "a policy directory holds at most one schema; {} is one already",
                source.rel
            ),
        });
        return Err(());
    }
    let located = |e: &dyn Diagnostic| diagnostic_problem(e, &source.rel, &source.text);
    let fragment = match source.kind {
        Kind::CedarSchema => SchemaFragment::from_cedarschema_str(&source.text)
            .map(|(fragment, found)| {
                warnings.extend(found.map(|w| located(&w)));
                fragment
            })
            .map_err(|e| located(&e)),
        _ => SchemaFragment::from_json_str(&source.text).map_err(|e| located(&e)),
    };
    let fragment = fragment.map_err(|problem| problems.push(problem))?;
    // The JSON form, for explaining requests that do not fit; taken from the one parse.
    let shape = fragment
        .clone()
        .to_json_value()
        .ok()
        .and_then(SchemaShape::new);
    let schema =
        Schema::from_schema_fragments([fragment]).map_err(|e| problems.push(located(&e)))?;
    Ok(Some((schema, shape)))
}

fn validate_policies(
    schema: &Schema,
    policies: &Policies,
    sources: &[Source],
    options: &LoadOptions,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) {
    if options.validation == PolicyValidation::Off {
        return;
    }
    let result = Validator::new(schema.clone()).validate(&policies.set, ValidationMode::Strict);
    let source_of = |id: &PolicyId| &sources[policies.origin[id].0];
    for error in result.validation_errors() {
        let source = source_of(error.policy_id());
        let problem = diagnostic_problem(error, &source.rel, &source.text);
        match options.validation {
            PolicyValidation::Strict => problems.push(problem),
            _ => warnings.push(problem),
        }
    }
    for warning in result.validation_warnings() {
        let source = source_of(warning.policy_id());
        warnings.push(diagnostic_problem(warning, &source.rel, &source.text));
    }
}

/// The stored entities and how many `entities.json` held, or `None` after reporting why
/// they cannot be loaded.
fn load_entities(
    sources: &[Source],
    schema: Option<&Schema>,
    options: &LoadOptions,
    problems: &mut Vec<Problem>,
) -> Option<(Entities, usize)> {
    let Some(source) = sources.iter().find(|s| s.kind == Kind::Entities) else {
        return match Entities::from_entities([], schema) {
            Ok(entities) => Some((entities, 0)),
            Err(e) => {
                problems.push(Problem {
                    location: Location::file("(schema actions)"),
                    message: e.to_string(),
                });
                None
            }
        };
    };
    let mut fail = |location: Location, message: String| {
        problems.push(Problem { location, message });
        None
    };
    let json: serde_json::Value = match serde_json::from_str(&source.text) {
        Ok(json) => json,
        Err(e) => {
            let location = Location {
                file: source.rel.clone(),
                line: Some(e.line()),
                column: Some(e.column()),
            };
            return fail(location, format!("invalid JSON: {e}"));
        }
    };
    let Some(list) = json.as_array() else {
        return fail(
            Location::file(source.rel.clone()),
            "must be a JSON array of entities".to_owned(),
        );
    };
    if list.len() > options.max_store_entities {
        return fail(
            Location::file(source.rel.clone()),
            format!(
                "holds {} entities, more than the limit of {} (max_store_entities)",
                list.len(),
                options.max_store_entities
            ),
        );
    }
    let nodes: Vec<(String, Vec<String>)> = list.iter().filter_map(json_uid_and_parents).collect();
    if let Err(e) = hierarchy::check(&nodes, options.max_ancestor_depth) {
        return fail(
            Location::file(source.rel.clone()),
            format!("{e} (max_ancestor_depth)"),
        );
    }
    let count = list.len();
    match Entities::from_json_value(json, schema) {
        Ok(entities) => Some((entities, count)),
        Err(e) => fail(Location::file(source.rel.clone()), describe(&e)),
    }
}

/// The uid and parent uids of one entity in Cedar's JSON entity format, as display
/// strings, for the hierarchy check; `None` when malformed (Cedar then says why).
pub(crate) fn json_uid_and_parents(entity: &serde_json::Value) -> Option<(String, Vec<String>)> {
    fn uid(value: &serde_json::Value) -> Option<String> {
        let value = value.get("__entity").unwrap_or(value);
        let ty = value.get("type")?.as_str()?;
        let id = value.get("id")?.as_str()?;
        Some(format!("{ty}::{id:?}"))
    }
    let parents = match entity.get("parents") {
        Some(list) => list.as_array()?.iter().filter_map(uid).collect(),
        None => Vec::new(),
    };
    Some((uid(entity.get("uid")?)?, parents))
}

/// A Cedar diagnostic as a problem located at its first label in `text`.
fn diagnostic_problem(diagnostic: &dyn Diagnostic, file: &str, text: &str) -> Problem {
    let offset = diagnostic
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    Problem {
        location: match offset {
            Some(offset) => Location::at_offset(file, text, offset),
            None => Location::file(file),
        },
        message: describe(diagnostic),
    }
}

/// A diagnostic's message, then each underlying cause not already said, then its help.
pub(crate) fn describe(diagnostic: &dyn Diagnostic) -> String {
    let mut message = diagnostic.to_string();
    let mut source = diagnostic.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message = format!("{message}: {cause_text}");
        }
        source = cause.source();
    }
    if let Some(help) = diagnostic.help() {
        message = format!("{message} (help: {help})");
    }
    message
}
