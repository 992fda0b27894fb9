//! Reads a policy directory into a [`Snapshot`], or into the list of everything wrong
//! with it.
//!
//! The rules (see the README, "Policy directory"): `*.cedar` files anywhere except the
//! top-level `tests/` folder and hidden entries; at most one `*.cedarschema` or
//! `*.cedarschema.json` and an optional `entities.json`, both at the top. A policy's id is
//! its `@id("…")` annotation, else its file's relative path without `.cedar` and its
//! 0-based position in the file (`tenants/acme.2`). The version is a hash of every file
//! read, so unchanged content always gives the same version.

mod cache;
mod entities;
mod policies;
mod read;
mod schema;

use std::{collections::hash_map::Entry, path::Path, sync::Arc, time::SystemTime};

pub use self::{
    cache::BuildCache,
    policies::MAX_POLICY_NESTING,
    read::{Sources, read_dir},
};
use self::{
    cache::both,
    entities::load_entities,
    policies::{ParsedFile, ParsedPolicy},
    read::{Kind, Source},
    schema::parse_schema,
};
pub(crate) use self::{
    policies::{id_annotation, parse_problems, too_deep},
    read::relative,
};
use cedar_policy::{Entities, EntityUid, EvalResult, PolicyId, PolicySet};

use super::{
    FastMap, FastSet, LoadError, Location, PolicyValidation, Problem, ProblemKind, Snapshot,
    index::{IndexEntry, PolicyIndex},
    usage::PolicyUsage,
};

/// How to load a policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Policy validation against the schema.
    pub validation: PolicyValidation,
    /// Most entities `entities.json` may hold.
    pub max_store_entities: usize,
    /// Largest file read, in bytes.
    pub max_file_bytes: u64,
    /// Longest parent chain allowed in `entities.json`.
    pub max_ancestor_depth: usize,
    /// Most parent edges in `entities.json`.
    pub max_parent_edges: usize,
    /// Most steps working out the ancestors of `entities.json`'s entities may take.
    pub max_ancestor_closure: usize,
}

impl LoadOptions {
    /// Options from the configured validation mode and limits.
    pub fn new(validation: PolicyValidation, limits: &crate::config::Limits) -> Self {
        Self {
            validation,
            max_store_entities: limits.max_store_entities,
            max_file_bytes: limits.max_policy_file_bytes,
            max_ancestor_depth: limits.max_ancestor_depth,
            max_parent_edges: limits.max_store_parent_edges,
            max_ancestor_closure: limits.max_store_ancestor_closure,
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

/// Reads and validates the whole directory at `dir`.
pub fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Loaded, LoadError> {
    build(&read_dir(dir, options.max_file_bytes)?, options)
}

/// Parses and validates what [`read_dir`] read into a snapshot: the CPU half of
/// [`load_dir`], from nothing.
pub fn build(read: &Sources, options: &LoadOptions) -> Result<Loaded, LoadError> {
    build_cached(read, options, &mut BuildCache::new())
}

/// [`build`], reusing what `cache` kept of the last build: only files whose text changed
/// are parsed and validated again (every file, when the schema changed), and the stored
/// entities are rebuilt only when `entities.json` or the schema changed. The snapshot is
/// the same as [`build`] would make; `cache` then holds this read's files.
pub fn build_cached(
    read: &Sources,
    options: &LoadOptions,
    cache: &mut BuildCache,
) -> Result<Loaded, LoadError> {
    let sources = &read.sources;
    let mut problems = read.problems.clone();
    let mut warnings = Vec::new();
    // Each stage's problems are of its kind (those of reading carry their own).
    let tag = |problems: &mut Vec<Problem>, from: usize, kind: ProblemKind| {
        for problem in &mut problems[from..] {
            if problem.kind == ProblemKind::Other {
                problem.kind = kind;
            }
        }
    };
    tag(&mut problems, 0, ProblemKind::Io);

    let from = problems.len();
    let files = cache.parse(sources);
    let policies = assemble(&files, &mut problems);
    tag(&mut problems, from, ProblemKind::Parse);
    let from = problems.len();
    let parsed = parse_schema(sources, &mut problems, &mut warnings);
    tag(&mut problems, from, ProblemKind::Schema);
    let (schema, schema_shape) = match parsed {
        Ok(Some((schema, shape))) => (Ok(Some(schema)), shape),
        Ok(None) => (Ok(None), None),
        Err(()) => (Err(()), None),
    };
    // Policies that parsed are validated even when others did not, so that one run
    // reports every problem.
    let from = problems.len();
    cache.schema(
        schema.as_ref().ok().and(schema_text(sources)),
        options.validation,
    );
    if let Ok(Some(schema)) = &schema
        && options.validation != PolicyValidation::Off
    {
        for validated in cache.validate(schema, &files) {
            match options.validation {
                PolicyValidation::Strict => problems.extend(validated.errors.iter().cloned()),
                _ => warnings.extend(validated.errors.iter().cloned()),
            }
            warnings.extend(validated.warnings.iter().cloned());
        }
    }
    tag(&mut problems, from, ProblemKind::Validate);
    let from = problems.len();
    let entities_text = sources
        .iter()
        .find(|s| s.kind == Kind::Entities)
        .map(|s| s.text.as_str());
    let entities = match &schema {
        Ok(schema) => match cache.entities(entities_text) {
            Some(kept) => Some(kept),
            None => load_entities(sources, schema.as_ref(), options, &mut problems).map(
                |(entities, count)| {
                    let named: Arc<[EntityUid]> = entities_name(&entities).into();
                    cache.keep_entities(entities_text, &entities, count, named.clone());
                    (entities, count, named)
                },
            ),
        },
        Err(()) => None,
    };
    tag(&mut problems, from, ProblemKind::Entities);
    let (true, Ok(schema), Some((entities, entity_count, entities_named))) =
        (problems.is_empty(), schema, entities)
    else {
        return Err(LoadError::Invalid(problems));
    };
    let Assembled { items, locations } = policies;
    let statics: Vec<(&ParsedPolicy, &Arc<IndexEntry>)> = items
        .iter()
        .filter_map(|p| p.index.as_ref().map(|entry| (*p, entry)))
        .collect();
    // Cedar's policy set takes longest to put together (a few µs a policy); it is built
    // beside the rest.
    let (policies, (index, usage, named_not_held)) = both(
        || policy_set(&items),
        || {
            let index = PolicyIndex::from_entries(statics.iter().map(|(p, e)| (&p.id, *e)));
            let usage = PolicyUsage::from_policies(
                statics
                    .iter()
                    .map(|(p, e)| (p.id.as_ref(), e.permit(), p.named)),
            );
            let named_not_held: FastSet<EntityUid> = entities_named
                .iter()
                .chain(statics.iter().flat_map(|(_, entry)| entry.named()))
                .filter(|uid| entities.get(uid).is_none())
                .cloned()
                .collect();
            (index, usage, named_not_held)
        },
    );
    Ok(Loaded {
        snapshot: Snapshot {
            policy_locations: locations,
            named_not_held,
            index,
            usage,
            policies: policies?,
            schema_shape,
            schema,
            entities,
            entity_count,
            version: read.version.clone(),
            loaded_at: SystemTime::now(),
            members: Default::default(),
            policies_by_file: files
                .iter()
                .map(|f| {
                    let count = u32::try_from(f.policies.len()).unwrap_or(u32::MAX);
                    (Box::from(f.rel.as_str()), count)
                })
                .collect(),
        },
        warnings,
    })
}

/// The text of the directory's schema, if it has one.
fn schema_text(sources: &[Source]) -> Option<&str> {
    sources
        .iter()
        .find(|s| matches!(s.kind, Kind::CedarSchema | Kind::JsonSchema))
        .map(|s| s.text.as_str())
}

/// Every policy and template of the parsed files, each id once, in file and text order.
struct Assembled<'f> {
    items: Vec<&'f ParsedPolicy>,
    /// Where each starts.
    locations: PolicyLocations,
}

/// Puts the parsed files together: their problems, and each policy whose id no earlier
/// one has (a second use of an id is a problem naming the first).
fn assemble<'f>(files: &'f [Arc<ParsedFile>], problems: &mut Vec<Problem>) -> Assembled<'f> {
    let total = files.iter().map(|f| f.policies.len()).sum();
    let mut items = Vec::with_capacity(total);
    let mut by_id: FastMap<PolicyId, (u32, u32)> =
        FastMap::with_capacity_and_hasher(total, Default::default());
    for (f, file) in files.iter().enumerate() {
        problems.extend(file.problems.iter().cloned());
        for (p, policy) in file.policies.iter().enumerate() {
            match by_id.entry(displayed(&policy.id)) {
                Entry::Occupied(first) => {
                    let (ff, fp) = *first.get();
                    let message = format!(
                        "policy id `{}` is used twice; it is also the id of the policy at {}",
                        policy.id, files[ff as usize].policies[fp as usize].location
                    );
                    problems.push(Problem::new(policy.location.clone(), message));
                }
                Entry::Vacant(slot) => {
                    // Positions fit: a file holds at most `max_policy_file_bytes`, and a
                    // directory far fewer files than 2^32.
                    let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
                    slot.insert((at(f), at(p)));
                    items.push(policy);
                }
            }
        }
    }
    Assembled {
        items,
        locations: PolicyLocations {
            files: files.into(),
            by_id,
        },
    }
}

/// `id` as Cedar displays it (quotes, backslashes and unprintable characters escaped):
/// the form decisions name policies by, and so the form their locations are found by.
/// Most ids display as they are, and are kept without a copy.
fn displayed(id: &PolicyId) -> PolicyId {
    let raw: &str = id.as_ref();
    let as_is = raw
        .bytes()
        .all(|b| b == b' ' || (b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'\'')));
    if as_is {
        id.clone()
    } else {
        // Its display, not its text (which `PolicyId::new(id)` would take).
        PolicyId::new(format!("{id}"))
    }
}

/// Where each policy and template of a snapshot starts: the parsed files themselves
/// (shared with the build cache, not copied) and, by id, which file and which of its
/// policies.
pub(crate) struct PolicyLocations {
    files: Box<[Arc<ParsedFile>]>,
    by_id: FastMap<PolicyId, (u32, u32)>,
}

impl PolicyLocations {
    /// Where the policy or template `id` (as Cedar displays it) starts.
    pub(crate) fn get(&self, id: &str) -> Option<&Location> {
        let &(f, p) = self.by_id.get(&PolicyId::new(id))?;
        Some(
            &self
                .files
                .get(f as usize)?
                .policies
                .get(p as usize)?
                .location,
        )
    }
}

impl std::fmt::Debug for PolicyLocations {
    // The files hold their texts: a debug print says how much is held, not what.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyLocations")
            .field("files", &self.files.len())
            .field("policies", &self.by_id.len())
            .finish()
    }
}

/// Cedar's policy set of `items` (whose ids are distinct).
fn policy_set(items: &[&ParsedPolicy]) -> Result<PolicySet, LoadError> {
    let mut set = PolicySet::new();
    for policy in items {
        policy
            .item
            .add_to(&mut set)
            .map_err(|e| LoadError::Invalid(vec![Problem::new(policy.location.clone(), e)]))?;
    }
    Ok(set)
}

/// The uids `entities` name (as ancestors, or in attribute and tag values), repeats and
/// all: with those the policies name, what [`Snapshot::names_without_holding`] is made of.
fn entities_name(entities: &Entities) -> Vec<EntityUid> {
    fn values(value: &EvalResult, found: &mut Vec<EntityUid>) {
        match value {
            EvalResult::EntityUid(uid) => found.push(uid.clone()),
            EvalResult::Set(set) => set.iter().for_each(|v| values(v, found)),
            EvalResult::Record(record) => record.iter().for_each(|(_, v)| values(v, found)),
            _ => {}
        }
    }
    let mut named: Vec<EntityUid> = Vec::new();
    for entity in entities.iter() {
        named.extend(
            entities
                .ancestors(&entity.uid())
                .into_iter()
                .flatten()
                .cloned(),
        );
        for (_, value) in entity.attrs().chain(entity.tags()) {
            if let Ok(value) = value {
                values(&value, &mut named);
            }
        }
    }
    named
}
