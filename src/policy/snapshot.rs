//! [`Snapshot`]: one immutable, fully validated policy set with its schema and entities.

use std::{sync::OnceLock, time::SystemTime};

use cedar_policy::{Entities, EntityUid, PolicySet, Schema};

use super::{
    FastSet, Location, SchemaShape, index::PolicyIndex, loader::PolicyLocations, members::Members,
    usage::PolicyUsage,
};

/// Everything a decision needs from the policy directory, built once and never changed.
///
/// A snapshot is shared behind an `Arc`; a request holds the one it started with until it
/// finishes, whatever reloads happen meanwhile.
#[derive(Debug)]
pub struct Snapshot {
    pub(super) policies: PolicySet,
    /// The policies' scopes, for picking the ones a request can match.
    pub(super) index: PolicyIndex,
    /// Where each policy (and template) starts, by id.
    pub(super) policy_locations: PolicyLocations,
    pub(super) schema: Option<Schema>,
    pub(super) schema_shape: Option<SchemaShape>,
    pub(super) entities: Entities,
    pub(super) entity_count: usize,
    /// Uids the stored entities (as ancestors, or in attributes and tags) or the policies
    /// name, that the store does not hold.
    pub(super) named_not_held: FastSet<EntityUid>,
    pub(super) version: String,
    pub(super) loaded_at: SystemTime,
    /// The stored entities indexed for search, built on the first search.
    pub(super) members: OnceLock<Members>,
    /// Decisions each policy determined since this snapshot was built.
    pub(super) usage: PolicyUsage,
    /// Policies and templates by policy file, in directory order.
    pub(super) policies_by_file: Box<[(Box<str>, u32)]>,
}

impl Snapshot {
    /// The policies (and unlinked templates), with their ids.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The scope index of [`Snapshot::policies`].
    pub fn index(&self) -> &PolicyIndex {
        &self.index
    }

    /// Where the policy or template `id` starts (file, line, column), for pointing a
    /// reader at the policies behind a decision.
    pub fn policy_location(&self, id: &str) -> Option<&Location> {
        self.policy_locations.get(id)
    }

    /// The schema, if the directory has one.
    pub fn schema(&self) -> Option<&Schema> {
        self.schema.as_ref()
    }

    /// The schema's declared types in JSON form, for explaining a request that does not
    /// match them.
    pub fn schema_shape(&self) -> Option<&SchemaShape> {
        self.schema_shape.as_ref()
    }

    /// The stored entities (`entities.json`, plus the schema's action entities).
    pub fn entities(&self) -> &Entities {
        &self.entities
    }

    /// Whether the stored entities or the policies name `uid` although the store does not
    /// hold it: a request that defined it would change what stored entities are in, or
    /// what a policy reads.
    pub fn names_without_holding(&self, uid: &EntityUid) -> bool {
        self.named_not_held.contains(uid)
    }

    /// The stored entities indexed for search (built on first use, then kept).
    pub fn members(&self) -> &Members {
        self.members
            .get_or_init(|| Members::new(&self.entities, self.schema.as_ref(), &self.policies))
    }

    /// Decisions each of its policies has determined since it was built.
    pub fn usage(&self) -> &PolicyUsage {
        &self.usage
    }

    /// The counts of [`Snapshot::usage`] as at most `max_series` metric series (see
    /// [`PolicyUsage::series`]): policies without an `@id` grouped by their file.
    pub fn usage_series(&self, max_series: usize) -> Vec<(String, u64, u64)> {
        self.usage.series(max_series, |id| {
            self.policy_locations.get(id).map(|l| l.file.clone())
        })
    }

    /// Policies and templates by file, in directory order, as at most `max_series` metric
    /// series (the files past it add up under `other`).
    pub fn files_series(&self, max_series: usize) -> Vec<(String, u64)> {
        let mut series: Vec<(String, u64)> = self
            .policies_by_file
            .iter()
            .take(max_series)
            .map(|(file, n)| (file.to_string(), u64::from(*n)))
            .collect();
        let rest: u64 = self
            .policies_by_file
            .iter()
            .skip(max_series)
            .map(|(_, n)| u64::from(*n))
            .sum();
        if self.policies_by_file.len() > max_series {
            series.push((super::usage::OTHER_SERIES.to_owned(), rest));
        }
        series
    }

    /// Content hash of every file the snapshot was built from.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// When this snapshot was built.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Number of static policies.
    pub fn policy_count(&self) -> usize {
        self.policies.num_of_policies()
    }

    /// Number of templates.
    pub fn template_count(&self) -> usize {
        self.policies.num_of_templates()
    }

    /// Number of entities read from `entities.json` (the schema's actions not counted).
    pub fn entity_count(&self) -> usize {
        self.entity_count
    }
}
