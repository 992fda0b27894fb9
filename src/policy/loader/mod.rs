//! Reads a policy directory into a [`Snapshot`], or into the list of everything wrong
//! with it.
//!
//! The rules (see the README, "Policy directory"): `*.cedar` files anywhere except the
//! top-level `tests/` folder and hidden entries; at most one `*.cedarschema` or
//! `*.cedarschema.json` and an optional `entities.json`, both at the top. A policy's id is
//! its `@id("…")` annotation, else its file's relative path without `.cedar` and its
//! 0-based position in the file (`tenants/acme.2`). The version is a hash of every file
//! read, so unchanged content always gives the same version.

mod entities;
mod policies;
mod read;
mod schema;

use std::{path::Path, time::SystemTime};

use self::{
    entities::load_entities,
    policies::parse_policies,
    schema::{parse_schema, validate_policies},
};
pub use self::{
    policies::MAX_POLICY_NESTING,
    read::{Sources, read_dir},
};
pub(crate) use self::{
    policies::{parse_problems, too_deep},
    read::relative,
};
use cedar_policy::{Entities, EntityUid, EvalResult, PolicySet};

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
/// [`load_dir`].
pub fn build(read: &Sources, options: &LoadOptions) -> Result<Loaded, LoadError> {
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
    let policies = parse_policies(sources, &mut problems);
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
    tag(&mut problems, from, ProblemKind::Validate);
    let from = problems.len();
    let entities = match &schema {
        Ok(schema) => load_entities(sources, schema.as_ref(), options, &mut problems),
        Err(()) => None,
    };
    tag(&mut problems, from, ProblemKind::Entities);
    match (problems.is_empty(), schema, entities) {
        (true, Ok(schema), Some((entities, entity_count))) => Ok(Loaded {
            snapshot: Snapshot {
                policy_locations: policies
                    .origin
                    .into_iter()
                    .map(|(id, origin)| (id.to_string(), origin.location))
                    .collect(),
                named_not_held: named_not_held(&entities, &policies.set),
                index: PolicyIndex::new(&policies.set),
                usage: PolicyUsage::new(&policies.set),
                policies: policies.set,
                schema_shape,
                schema,
                entities,
                entity_count,
                version: read.version.clone(),
                loaded_at: SystemTime::now(),
                members: Default::default(),
            },
            warnings,
        }),
        _ => Err(LoadError::Invalid(problems)),
    }
}

/// The uids `entities` (as ancestors, or in attribute and tag values) and `policies` name
/// without `entities` holding them.
fn named_not_held(entities: &Entities, policies: &PolicySet) -> FastSet<EntityUid> {
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
    for policy in policies.policies() {
        named.extend(policy.entity_literals());
    }
    named
        .into_iter()
        .filter(|uid| entities.get(uid).is_none())
        .collect()
}
