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

use super::{
    LoadError, Location, PolicyValidation, Problem, SchemaShape, Snapshot, describe,
    entity_json::json_uid_and_parents, error::diagnostic_problem, hierarchy, index::PolicyIndex,
};

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
    build(&read_dir(dir)?, options)
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

    /// The files that could not be read (or are misplaced), each as a problem.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The text read from `rel` (relative, `/`-separated), for showing a problem's spot.
    pub fn text(&self, rel: &str) -> Option<&str> {
        self.sources
            .iter()
            .find(|s| s.rel == rel)
            .map(|s| s.text.as_str())
    }

    /// The policy files read (relative path and text), in directory order.
    pub fn policy_files(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sources
            .iter()
            .filter(|s| s.kind == Kind::Policies)
            .map(|s| (s.rel.as_str(), s.text.as_str()))
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
pub fn build(read: &Sources, options: &LoadOptions) -> Result<Loaded, LoadError> {
    let sources = &read.sources;
    let mut problems = read.problems.clone();
    let mut warnings = Vec::new();

    let policies = parse_policies(sources, &mut problems);
    let parsed = parse_schema(sources, &mut problems, &mut warnings);
    let (schema, schema_shape) = match parsed {
        Ok(Some((schema, shape))) => (Ok(Some(schema)), shape),
        Ok(None) => (Ok(None), None),
        Err(()) => (Err(()), None),
    };
    // Policies that parsed are validated even when others did not, so that one run
    // reports every problem.
    if let Ok(Some(schema)) = &schema {
        validate_policies(
            schema,
            &policies,
            sources,
            options,
            &mut problems,
            &mut warnings,
        );
    }
    let entities = match &schema {
        Ok(schema) => load_entities(sources, schema.as_ref(), options, &mut problems),
        Err(()) => None,
    };
    match (problems.is_empty(), schema, entities) {
        (true, Ok(schema), Some((entities, entity_count))) => Ok(Loaded {
            snapshot: Snapshot {
                policy_locations: policies
                    .origin
                    .into_iter()
                    .map(|(id, origin)| (id.to_string(), origin.location))
                    .collect(),
                index: PolicyIndex::new(&policies.set),
                policies: policies.set,
                schema_shape,
                schema,
                entities,
                entity_count,
                version: read.version.clone(),
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
                problems.push(Problem::new(
                    Location::file(rel),
                    format!("cannot read: {err}"),
                ));
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
            problems.push(Problem::new(
                Location::file(rel),
                "a schema is read only at the top of the policy directory; move it there",
            ));
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
            Err(err) => problems.push(Problem::new(
                Location::file(rel),
                format!("cannot read: {err}"),
            )),
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

/// The characters of Cedar or JSON text that are code: outside string literals and `//`
/// comments, each with its byte offset and 1-based line. A string literal shows as its
/// opening quote alone. One scanner serves the nesting check, finding where each policy
/// starts, and finding each entity in `entities.json`.
fn code_chars(text: &str) -> impl Iterator<Item = (usize, char, usize)> + '_ {
    let mut chars = text.char_indices().peekable();
    let mut line = 1usize;
    std::iter::from_fn(move || {
        loop {
            let (at, c) = chars.next()?;
            match c {
                '"' => {
                    let opened = line;
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, '\n')) = chars.next() {
                                    line += 1;
                                }
                            }
                            '"' => break,
                            '\n' => line += 1,
                            _ => {}
                        }
                    }
                    return Some((at, c, opened));
                }
                '/' if chars.peek().map(|&(_, c)| c) == Some('/') => {
                    for (_, c) in chars.by_ref() {
                        if c == '\n' {
                            line += 1;
                            break;
                        }
                    }
                }
                '\n' => {
                    line += 1;
                    return Some((at, c, line - 1));
                }
                _ => return Some((at, c, line)),
            }
        }
    })
}

/// The 1-based line where brackets first nest deeper than [`MAX_POLICY_NESTING`], if
/// they do.
pub(crate) fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (_, c, line) in code_chars(text) {
        match c {
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

/// Byte offsets where the policies of a text that parsed start (their first annotation
/// or keyword), in order: the first code after the start and after each `;`.
fn policy_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut want = true;
    for (at, c, _) in code_chars(text) {
        if c == ';' {
            want = true;
        } else if want && !c.is_whitespace() {
            starts.push(at);
            want = false;
        }
    }
    starts
}

/// Byte offsets where the elements of a top-level JSON array start.
fn array_element_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let (mut depth, mut want) = (0usize, false);
    for (at, c, _) in code_chars(text) {
        if depth == 1 && want && !c.is_whitespace() && c != ']' {
            starts.push(at);
            want = false;
        }
        match c {
            '[' | '{' => {
                depth += 1;
                want = depth == 1;
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => want = true,
            _ => {}
        }
    }
    starts
}

/// The policy set and, per policy id, where it came from.
struct Policies {
    set: PolicySet,
    origin: HashMap<PolicyId, Origin>,
}

/// The file a policy came from (index into the sources) and where in it it starts.
struct Origin {
    source: usize,
    location: Location,
}

fn parse_policies(sources: &[Source], problems: &mut Vec<Problem>) -> Policies {
    let mut set = PolicySet::new();
    let mut origin: HashMap<PolicyId, Origin> = HashMap::new();
    for (index, source) in sources.iter().enumerate() {
        if source.kind != Kind::Policies {
            continue;
        }
        if let Some(line) = too_deep(&source.text) {
            let location = Location {
                file: source.rel.clone(),
                line: Some(line),
                column: None,
            };
            problems.push(Problem::new(
                location,
                format!(
                    "brackets nest deeper than {MAX_POLICY_NESTING}; \
                     split the expression (deep nesting can exhaust the parser's stack)"
                ),
            ));
            continue;
        }
        let parsed = match parse_file(&source.rel, &source.text) {
            Ok(parsed) => parsed,
            Err(found) => {
                problems.extend(found);
                continue;
            }
        };
        let stem = source.rel.strip_suffix(".cedar").unwrap_or(&source.rel);
        let starts = policy_starts(&source.text);
        let located = |pos: usize| match starts.get(pos) {
            Some(&offset) => Location::at_offset(source.rel.clone(), &source.text, offset),
            None => Location::file(source.rel.clone()),
        };
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
        for (pos, entry) in entries {
            let location = located(pos);
            let id = match entry.annotation() {
                Some("") => {
                    problems.push(Problem::new(location, "the @id annotation is empty"));
                    continue;
                }
                Some(id) => PolicyId::new(id),
                None => PolicyId::new(format!("{stem}.{pos}")),
            };
            if let Some(first) = origin.get(&id) {
                let message = format!(
                    "policy id `{id}` is used twice; it is also the id of the policy at {}",
                    first.location
                );
                problems.push(Problem::new(location, message));
                continue;
            }
            origin.insert(
                id.clone(),
                Origin {
                    source: index,
                    location,
                },
            );
            let added = match entry {
                Entry::Policy(policy) => set.add(policy.new_id(id)),
                Entry::Template(template) => set.add_template(template.new_id(id)),
            };
            added.expect("ids are unique by construction");
        }
    }
    Policies { set, origin }
}

/// One policy file's text parsed, or every syntax problem in it, located.
fn parse_file(rel: &str, text: &str) -> Result<PolicySet, Vec<Problem>> {
    PolicySet::from_str(text).map_err(|errors| {
        errors
            .iter()
            .map(|error| diagnostic_problem(error, rel, text))
            .collect()
    })
}

/// The syntax problems of one policy file's text, located as the loader locates them.
pub(crate) fn parse_problems(rel: &str, text: &str) -> Vec<Problem> {
    parse_file(rel, text).err().unwrap_or_default()
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
        problems.push(Problem::new(
            Location::file(second.rel.clone()),
            format!(
                "a policy directory holds at most one schema; {} is one already",
                source.rel
            ),
        ));
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
    let source_of = |id: &PolicyId| &sources[policies.origin[id].source];
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
                problems.push(Problem::new(
                    Location::file("(schema actions)"),
                    e.to_string(),
                ));
                None
            }
        };
    };
    let mut fail = |location: Location, message: String| {
        problems.push(Problem::new(location, message));
        None
    };
    let json: serde_json::Value = match serde_json::from_str(&source.text) {
        Ok(json) => json,
        Err(e) => {
            let location = Location {
                file: source.rel.clone(),
                line: Some(e.line().max(1)),
                // serde_json says column 0 for an error at the start of a line.
                column: Some(e.column().max(1)),
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
    match Entities::from_json_value(json.clone(), schema) {
        Ok(entities) => Some((entities, count)),
        Err(e) => {
            let found = entity_problems(source, list, schema);
            if found.is_empty() {
                fail(Location::file(source.rel.clone()), describe(&e))
            } else {
                problems.extend(found);
                None
            }
        }
    }
}

/// Every entity of `list` (the parsed text of `source`) that fails on its own, each
/// located at its line: Cedar stops at the first bad entity and does not say where it is.
/// Empty when each entity is fine alone (the fault is between entities, e.g. a uid used
/// twice), and the caller then reports Cedar's message for the whole file.
fn entity_problems(
    source: &Source,
    list: &[serde_json::Value],
    schema: Option<&Schema>,
) -> Vec<Problem> {
    let starts = array_element_starts(&source.text);
    let location = |i: usize| match starts.get(i) {
        Some(&offset) if starts.len() == list.len() => {
            Location::at_offset(source.rel.clone(), &source.text, offset)
        }
        _ => Location::file(source.rel.clone()),
    };
    list.iter()
        .enumerate()
        .filter_map(|(i, entity)| {
            let alone = serde_json::Value::Array(vec![entity.clone()]);
            let e = Entities::from_json_value(alone, schema).err()?;
            let name = json_uid_and_parents(entity).map_or_else(
                || format!("entity [{i}]"),
                |(uid, _)| format!("entity {uid}"),
            );
            Some(Problem::new(
                location(i),
                format!("{name}: {}", describe(&e)),
            ))
        })
        .collect()
}
