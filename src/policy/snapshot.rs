//! [`Snapshot`]: one immutable, fully validated policy set with its schema and entities.

use std::{
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use cedar_policy::{Entities, EntityUid, Policy, PolicySet, Schema};

use super::{
    FastSet, Location, SchemaShape,
    index::{PolicyIndex, Slot},
    loader::Catalog,
    members::Members,
    usage::PolicyUsage,
};

/// Most policies and templates a snapshot holds for its whole policy set to be built as
/// soon as it serves ([`Snapshot::prepare`]): past it, the set is built on first use.
pub const PREPARED_POLICIES: usize = 10_000;

/// Everything a decision needs from the policy directory, built once and never changed.
///
/// A snapshot is shared behind an `Arc`; a request holds the one it started with until it
/// finishes, whatever reloads happen meanwhile.
#[derive(Debug)]
pub struct Snapshot {
    /// Cedar's set of every policy, built on first use (see [`Snapshot::policies`]).
    pub(super) whole: OnceLock<PolicySet>,
    /// The policies' scopes, for picking the ones a request can match.
    pub(super) index: PolicyIndex,
    /// Every policy and template by id, in its parsed file.
    pub(super) catalog: Arc<Catalog>,
    pub(super) schema: Option<Schema>,
    pub(super) schema_shape: Option<SchemaShape>,
    pub(super) entities: Entities,
    pub(super) entity_count: usize,
    /// Uids the stored entities name (as ancestors, or in attributes and tags).
    pub(super) entities_name: Arc<FastSet<EntityUid>>,
    pub(super) version: String,
    pub(super) loaded_at: SystemTime,
    /// The stored entities indexed for search, built on the first search.
    pub(super) members: OnceLock<Members>,
    /// Decisions each policy determined since this snapshot was built.
    pub(super) usage: PolicyUsage,
}

impl Snapshot {
    /// Cedar's set of every policy (and unlinked template), with their ids.
    ///
    /// Its policies are Cedar's parsed form, kept without what only printing needs:
    /// printed, a policy is Cedar's rendering of it, without an `@id` that was its only
    /// annotation, not the file's text (which [`Snapshot::policy_location`] points at).
    ///
    /// Built on first use and then kept: a reload serves the new snapshot as soon as its
    /// index is ready (a decision mostly needs only the few policies the index picks, see
    /// [`Snapshot::policy`]), and the store builds this right after for a set of up to
    /// [`PREPARED_POLICIES`] ([`Snapshot::prepare`]). A call that needs it before then
    /// waits for it.
    pub fn policies(&self) -> &PolicySet {
        self.whole.get_or_init(|| {
            // Cannot fail: the loader refused the snapshot if two items shared an id (as
            // written or as displayed). Were it to, the calls decided with the whole set
            // deny rather than decide with part of it.
            self.catalog.policy_set().unwrap_or_else(|error| {
                tracing::error!(%error, "could not assemble the policy set; calls decided with it deny");
                PolicySet::new()
            })
        })
    }

    /// Builds [`Snapshot::policies`] ahead of the calls that need it, when the set is
    /// small enough ([`PREPARED_POLICIES`]) that holding it costs little; a larger set's
    /// is built when a call first needs it (one that most of the set can match, a
    /// search), and a set whose calls all take slices never pays its memory (about
    /// 1.2 KiB a policy).
    pub fn prepare(&self) {
        self.prepare_within(PREPARED_POLICIES);
    }

    /// [`Snapshot::prepare`] with `most` in place of [`PREPARED_POLICIES`].
    pub(crate) fn prepare_within(&self, most: usize) {
        if self.catalog.items() <= most {
            self.policies();
        }
    }

    /// [`Snapshot::policies`] if it is built already.
    pub fn policies_if_built(&self) -> Option<&PolicySet> {
        self.whole.get()
    }

    /// The static policy at `slot` of [`Snapshot::index`].
    pub fn policy(&self, slot: Slot) -> Option<Policy> {
        self.catalog.policy(slot)
    }

    /// The scope index of [`Snapshot::policies`].
    pub fn index(&self) -> &PolicyIndex {
        &self.index
    }

    /// Where the policy or template `id` starts (file, line, column), for pointing a
    /// reader at the policies behind a decision.
    pub fn policy_location(&self, id: &str) -> Option<&Location> {
        self.catalog.location(id)
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
        (self.index.names(uid) || self.entities_name.contains(uid))
            && self.entities.get(uid).is_none()
    }

    /// The stored entities indexed for search (built on first use, then kept).
    pub fn members(&self) -> &Members {
        self.members
            .get_or_init(|| Members::new(&self.entities, self.schema.as_ref(), self.policies()))
    }

    /// Decisions each of its policies has determined since it was built.
    pub fn usage(&self) -> &PolicyUsage {
        &self.usage
    }

    /// The counts of [`Snapshot::usage`] as at most `max_series` metric series (see
    /// [`PolicyUsage::series`]): policies without an `@id` grouped by their file.
    pub fn usage_series(&self, max_series: usize) -> Vec<(String, u64, u64)> {
        self.usage.series(max_series, |id| {
            self.catalog.location(id).map(|l| l.file.clone())
        })
    }

    /// Policies and templates by file, in directory order, as at most `max_series` metric
    /// series (the files past it add up under `other`).
    pub fn files_series(&self, max_series: usize) -> Vec<(String, u64)> {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        let mut series: Vec<(String, u64)> = self
            .catalog
            .by_file()
            .take(max_series)
            .map(|(file, n)| (file.to_owned(), count(n)))
            .collect();
        let rest: u64 = self
            .catalog
            .by_file()
            .skip(max_series)
            .map(|(_, n)| count(n))
            .sum();
        if self.catalog.by_file().len() > max_series {
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
        self.catalog.statics()
    }

    /// Number of templates.
    pub fn template_count(&self) -> usize {
        self.catalog.templates()
    }

    /// Number of entities read from `entities.json` (the schema's actions not counted).
    pub fn entity_count(&self) -> usize {
        self.entity_count
    }
}
