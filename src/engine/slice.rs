//! Request-time policy slicing: the policies of a snapshot whose scope can match one
//! request, picked with the snapshot's scope index ([`PolicyIndex`]) and built into a
//! `PolicySet` Cedar can evaluate, with the slices built so far kept for reuse.
//!
//! Evaluating a scope never errors, so a policy whose scope cannot match would be neither
//! satisfied nor in error: leaving it out changes neither the decision, nor its reasons,
//! nor its errors (see `policy::index` for the index itself, and `tests.rs` beside this
//! file for the differential proof).
//!
//! The cache belongs to the engine, not to the snapshot (which stays immutable, with no
//! lock inside): slices are kept per snapshot version, for the version serving and the
//! one before it (calls that started before a reload finish on their snapshot), so a
//! reload empties it without anyone having to say so.

use std::sync::{Arc, RwLock};

use cedar_policy::{Entities, EntityUid, Policy, PolicySet};

use crate::policy::{CACHED_SLICE_POLICIES, FastMap, PolicyIndex, Slot, Snapshot};

/// What slices are cut from: a policy set's policies by their slot in its index, and the
/// whole set.
pub trait PolicySource {
    /// The static policy at `slot` of the index.
    fn policy(&self, slot: Slot) -> Option<Policy>;
    /// The whole set (built now if it is not yet).
    fn whole(&self) -> &PolicySet;
    /// The whole set if it is built already.
    fn whole_if_built(&self) -> Option<&PolicySet>;
}

impl PolicySource for Snapshot {
    fn policy(&self, slot: Slot) -> Option<Policy> {
        Snapshot::policy(self, slot)
    }

    fn whole(&self) -> &PolicySet {
        self.policies()
    }

    fn whole_if_built(&self) -> Option<&PolicySet> {
        self.policies_if_built()
    }
}

/// A set with its index made by [`PolicyIndex::new`] (slot = position in the set; a
/// lookup walks the set, which tests can afford).
#[cfg(test)]
impl PolicySource for PolicySet {
    fn policy(&self, slot: Slot) -> Option<Policy> {
        self.policies().nth(usize::try_from(slot).ok()?).cloned()
    }

    fn whole(&self) -> &PolicySet {
        self
    }

    fn whole_if_built(&self) -> Option<&PolicySet> {
        Some(self)
    }
}

/// The policies one request is decided with: the whole set, or the part of it whose
/// scopes can match (shared with other requests that pick the same part).
#[derive(Debug, Clone)]
pub enum Slice<'s> {
    /// The whole set.
    Whole(&'s PolicySet),
    /// A part of it.
    Part(Arc<PolicySet>),
}

impl std::ops::Deref for Slice<'_> {
    type Target = PolicySet;

    fn deref(&self) -> &PolicySet {
        match self {
            Self::Whole(set) => set,
            Self::Part(set) => set,
        }
    }
}

/// Most policies the cached slices of one version may hold in all (each a copy of a
/// policy and its text, a few hundred bytes): when a new slice would pass it, that
/// version's cache is emptied and fills again with what is asked for from then on, a
/// bound on memory (about 16 MiB a version) that needs no bookkeeping per hit.
const CACHED_POLICIES: usize = 32_768;

/// Picks and builds slices, keeping the small ones for reuse.
#[derive(Debug, Default)]
pub struct Slicer {
    /// The two most recent versions' slices: requests alike (the same types, actions,
    /// groups) pick the same policies, and building a set costs about what evaluating it
    /// does.
    cache: RwLock<[Generation; 2]>,
}

/// The slices built for one snapshot version, by the positions of their policies.
#[derive(Debug, Default)]
struct Generation {
    version: String,
    slices: FastMap<Box<[Slot]>, Arc<PolicySet>>,
    /// Policies held by `slices`, in all.
    policies: usize,
}

impl Slicer {
    /// A slicer with nothing cached.
    pub fn new() -> Self {
        Self::default()
    }

    /// The policies of `full` (the policies `index` was built from, of snapshot
    /// `version`) that can apply to a request for `principal`, `action` and `resource`,
    /// with ancestors from `entities`; the whole set when slicing would not leave out
    /// enough to pay for itself (or, with `only_if_worth_it` false, only when nothing can
    /// be left out: tests use that to exercise every path). While the whole set is not
    /// built yet (a large set, just after a reload or before any call needed it), the
    /// policies that can match are taken rather than waiting for it, unless they are
    /// most of the set: then the call waits for (or makes) the one shared build.
    pub fn slice<'s>(
        &self,
        version: &str,
        index: &PolicyIndex,
        full: &'s (impl PolicySource + ?Sized),
        [principal, action, resource]: [&EntityUid; 3],
        entities: &Entities,
        only_if_worth_it: bool,
    ) -> Slice<'s> {
        let built = full.whole_if_built().is_some();
        let worth_it = only_if_worth_it && built;
        let chosen = index.chosen([principal, action, resource], entities, worth_it);
        self.cut(version, index, full, chosen.as_deref(), only_if_worth_it)
    }

    /// [`Slicer::slice`] (only if worth it) when what the index picks for the request is
    /// known already: `picked`, from [`PolicyIndex::pick`] with entities that give its
    /// principal, action and resource the same ancestors as `entities`.
    pub fn slice_picked<'s>(
        &self,
        version: &str,
        index: &PolicyIndex,
        full: &'s (impl PolicySource + ?Sized),
        uids: [&EntityUid; 3],
        entities: &Entities,
        picked: Option<&[Slot]>,
    ) -> Slice<'s> {
        if full.whole_if_built().is_none() {
            // `pick` chose as if the whole set were built: while it is not, a slice is
            // taken even where the whole set would be cheaper (see `slice`).
            return self.slice(version, index, full, uids, entities, true);
        }
        self.cut(version, index, full, picked, true)
    }

    /// The slice of `full` of the policies at `chosen` (`None`: the whole set).
    fn cut<'s>(
        &self,
        version: &str,
        index: &PolicyIndex,
        full: &'s (impl PolicySource + ?Sized),
        chosen: Option<&[Slot]>,
        only_if_worth_it: bool,
    ) -> Slice<'s> {
        let built = full.whole_if_built().is_some();
        let Some(chosen) = chosen else {
            return Slice::Whole(full.whole());
        };
        // Not built yet and most of a large set can match: one build of the whole set,
        // shared by every call that needs it, rather than a near-whole slice per call.
        if only_if_worth_it
            && !built
            && chosen.len() > CACHED_SLICE_POLICIES
            && chosen.len() * 2 > index.len()
        {
            return Slice::Whole(full.whole());
        }
        let cacheable = chosen.len() <= CACHED_SLICE_POLICIES;
        if cacheable && let Some(set) = self.cached(version, chosen) {
            return Slice::Part(set);
        }
        let policies: Option<Vec<Policy>> = chosen.iter().map(|&slot| full.policy(slot)).collect();
        // Neither can fail (the index was built from `full`, whose ids are distinct), and
        // the whole set is always right.
        let Some(Ok(set)) = policies.map(PolicySet::from_policies) else {
            return Slice::Whole(full.whole());
        };
        let set = Arc::new(set);
        if cacheable {
            self.keep(version, chosen.into(), set.clone());
        }
        Slice::Part(set)
    }

    fn cached(&self, version: &str, chosen: &[Slot]) -> Option<Arc<PolicySet>> {
        let generations = self.cache.read().unwrap_or_else(|p| p.into_inner());
        generations
            .iter()
            .find(|g| g.version == version)
            .and_then(|g| g.slices.get(chosen).cloned())
    }

    fn keep(&self, version: &str, chosen: Box<[Slot]>, set: Arc<PolicySet>) {
        let mut generations = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let at = match generations.iter().position(|g| g.version == version) {
            Some(at) => at,
            None => {
                // A version not seen yet (a reload): it replaces the older of the two.
                generations.swap(0, 1);
                generations[0] = Generation {
                    version: version.to_owned(),
                    ..Generation::default()
                };
                0
            }
        };
        let generation = &mut generations[at];
        if generation.policies + chosen.len() > CACHED_POLICIES {
            generation.slices.clear();
            generation.policies = 0;
        }
        let added = chosen.len();
        if generation.slices.insert(chosen, set).is_none() {
            generation.policies += added;
        }
    }
}

#[cfg(test)]
mod tests;
