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
mod catalog;
mod entities;
mod policies;
mod read;
mod schema;

use std::{
    path::Path,
    sync::{Arc, OnceLock},
    time::SystemTime,
};

pub(crate) use self::catalog::Catalog;
pub use self::{
    cache::BuildCache,
    policies::MAX_POLICY_NESTING,
    read::{Sources, read_dir},
};
use self::{
    entities::load_entities,
    read::{Kind, Source},
    schema::parse_schema,
};
pub(crate) use self::{
    policies::{id_annotation, parse_problems, too_deep},
    read::relative,
};
use cedar_policy::{Entities, EntityUid, EvalResult};

use super::{
    FastSet, LoadError, PolicyValidation, Problem, ProblemKind, Snapshot, index::PolicyIndex,
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
    let catalog = Catalog::new(
        &files,
        cache.built().map(|(catalog, _)| &**catalog),
        &mut problems,
    );
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
                    let named = Arc::new(entities_name(&entities));
                    cache.keep_entities(entities_text, &entities, count, named.clone());
                    (entities, count, named)
                },
            ),
        },
        Err(()) => None,
    };
    tag(&mut problems, from, ProblemKind::Entities);
    let (true, Ok(schema), Some((entities, entity_count, entities_name)), Ok((catalog, change))) =
        (problems.is_empty(), schema, entities, catalog)
    else {
        return Err(LoadError::Invalid(problems));
    };
    // The index is derived from the last good build's: what changed is taken out and put
    // in, the rest shared. Cedar's whole policy set is not built here (see
    // `Snapshot::policies`).
    let empty = PolicyIndex::default();
    let prior = cache.built().map_or(&empty, |(_, index)| index);
    let index = prior.updated(&change.gone, &change.removed, &change.added);
    let catalog = Arc::new(catalog);
    cache.keep_built(catalog.clone(), index.clone());
    Ok(Loaded {
        snapshot: Snapshot {
            whole: OnceLock::new(),
            index,
            usage: PolicyUsage::for_catalog(catalog.clone()),
            catalog,
            entities_name,
            schema_shape,
            schema,
            entities,
            entity_count,
            version: read.version().to_owned(),
            loaded_at: SystemTime::now(),
            members: Default::default(),
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

/// The uids `entities` name (as ancestors, or in attribute and tag values): with those
/// the policies name, what [`Snapshot::names_without_holding`] looks in.
fn entities_name(entities: &Entities) -> FastSet<EntityUid> {
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
    named.into_iter().collect()
}
