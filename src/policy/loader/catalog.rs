//! [`Catalog`]: every policy and template of a snapshot, by id, in the parsed files they
//! come from, and what changed since the last build's catalog.
//!
//! A reload derives its catalog from the last good one: the ids of files that went or
//! changed are taken out and those of files that came or changed are put in, on a
//! copy-on-write map that shares everything else with the served catalog, so the cost
//! follows what changed and not the size of the set. Finding an id used twice needs only
//! the new files' ids; when there is one, the whole directory is walked in order so that
//! each problem names the first use, as a build from nothing would.

use std::sync::Arc;

use cedar_policy::{Effect, PolicyId, PolicySet};

use super::policies::{Item, ParsedFile, ParsedPolicy};
use crate::policy::{
    FastMap, FastSet, LoadError, Location, Problem,
    cow_map::CowMap,
    index::{IndexEntry, Slot, file_of, file_slots, position_of},
};

/// The policies and templates of one build, by id, each in its parsed file.
pub(crate) struct Catalog {
    /// The policy files, in directory order.
    files: Box<[Arc<ParsedFile>]>,
    /// By file key: where in `files`, and the number of its first item (items are
    /// numbered from 0 in directory and text order: usage counts are kept by it).
    by_key: FastMap<u64, (u32, u32)>,
    /// Each item's slot, by id as Cedar displays it (looked up by the `&str` a decision
    /// names a policy by, with no copy).
    by_id: CowMap<Box<str>, Slot>,
    /// Items (policies and templates), and static policies among them.
    items: u32,
    statics: u32,
}

/// What changed from the last good catalog to a new one, for the index: the files that
/// went (by key), their static policies' entries, and the new files' static policies at
/// their slots.
#[derive(Default)]
pub(super) struct Change {
    pub(super) gone: FastSet<u64>,
    pub(super) removed: Vec<Arc<IndexEntry>>,
    pub(super) added: Vec<(Slot, Arc<IndexEntry>)>,
}

impl Catalog {
    /// The catalog of `files` (in directory order), derived from `prior` (the last good
    /// build's, if any), with what changed since; or the problems of ids used twice
    /// (each naming the first use). Every file's own problems are added to `problems`.
    pub(super) fn new(
        files: &[Arc<ParsedFile>],
        prior: Option<&Catalog>,
        problems: &mut Vec<Problem>,
    ) -> Result<(Self, Change), ()> {
        let from = problems.len();
        let mut by_key = FastMap::with_capacity_and_hasher(files.len(), Default::default());
        let mut number = 0u32;
        let (mut items, mut statics) = (0u32, 0u32);
        for (at, file) in files.iter().enumerate() {
            problems.extend(file.problems.iter().cloned());
            // Fits: a directory holds far fewer files than 2^32, and each file fewer
            // items than 2^24.
            let held = u32::try_from(file.policies.len()).unwrap_or(u32::MAX);
            by_key.insert(file.key, (u32::try_from(at).unwrap_or(u32::MAX), number));
            number = number.saturating_add(held);
            items = items.saturating_add(held);
            let file_statics = file.policies.iter().filter(|p| p.index.is_some()).count();
            statics = statics.saturating_add(u32::try_from(file_statics).unwrap_or(u32::MAX));
        }
        let mut change = Change::default();
        let mut by_id = match prior {
            Some(prior) => {
                let mut by_id = prior.by_id.clone();
                for file in prior.files.iter().filter(|f| !by_key.contains_key(&f.key)) {
                    change.gone.insert(file.key);
                    for policy in &file.policies {
                        by_id.remove(&key(&policy.id));
                        change.removed.extend(policy.index.clone());
                    }
                }
                by_id
            }
            None => CowMap::default(),
        };
        let mut clash = false;
        let new_files = files
            .iter()
            .filter(|f| prior.is_none_or(|p| !p.by_key.contains_key(&f.key)));
        for file in new_files {
            for (at, policy) in file.policies.iter().enumerate() {
                let slot = file_slots(file.key) + Slot::try_from(at).unwrap_or(Slot::MAX);
                clash |= by_id.insert(key(&policy.id), slot).is_some();
                if let Some(entry) = &policy.index {
                    change.added.push((slot, entry.clone()));
                }
            }
        }
        if clash {
            problems.truncate(from);
            problems.extend(file_problems(files));
            return Err(());
        }
        Ok((
            Self {
                files: files.into(),
                by_key,
                by_id,
                items,
                statics,
            },
            change,
        ))
    }

    /// The item at `slot` and its number.
    fn at(&self, slot: Slot) -> Option<(&ParsedPolicy, u32)> {
        let &(file, first) = self.by_key.get(&file_of(slot))?;
        let position = position_of(slot);
        let policy = self.files.get(file as usize)?.policies.get(position)?;
        Some((policy, first + u32::try_from(position).ok()?))
    }

    /// The policy or template `id` (as Cedar displays it), and its number.
    fn get(&self, id: &str) -> Option<(&ParsedPolicy, u32)> {
        self.at(*self.by_id.get(id)?)
    }

    /// The number of the policy or template `id` (as Cedar displays it): its place in
    /// directory and text order.
    pub(crate) fn number(&self, id: &str) -> Option<u32> {
        self.get(id).map(|(_, n)| n)
    }

    /// Where the policy or template `id` (as Cedar displays it) starts.
    pub(crate) fn location(&self, id: &str) -> Option<&Location> {
        self.get(id).map(|(policy, _)| &policy.location)
    }

    /// The static policy at `slot`.
    pub(crate) fn policy(&self, slot: Slot) -> Option<cedar_policy::Policy> {
        self.at(slot)?.0.item.policy()
    }

    /// Cedar's policy set of every item, in directory and text order.
    pub(crate) fn policy_set(&self) -> Result<PolicySet, LoadError> {
        let mut set = PolicySet::new();
        for policy in self.files.iter().flat_map(|f| f.policies.iter()) {
            policy
                .item
                .add_to(&mut set)
                .map_err(|e| LoadError::Invalid(vec![Problem::new(policy.location.clone(), e)]))?;
        }
        Ok(set)
    }

    /// Items (policies and templates).
    pub(crate) fn items(&self) -> usize {
        self.items as usize
    }

    /// Static policies.
    pub(crate) fn statics(&self) -> usize {
        self.statics as usize
    }

    /// Templates.
    pub(crate) fn templates(&self) -> usize {
        self.items() - self.statics()
    }

    /// Each file's relative path and how many items it holds, in directory order.
    pub(crate) fn by_file(&self) -> impl ExactSizeIterator<Item = (&str, usize)> {
        self.files
            .iter()
            .map(|f| (f.rel.as_str(), f.policies.len()))
    }

    /// Every static policy as (id as displayed, effect, whether `@id` names it, number).
    pub(crate) fn static_policies(&self) -> impl Iterator<Item = (PolicyId, Effect, bool, u32)> {
        let mut number = 0u32;
        self.files
            .iter()
            .flat_map(|f| f.policies.iter())
            .filter_map(move |p| {
                let at = number;
                number += 1;
                match &p.item {
                    Item::Policy(policy) => {
                        Some((displayed(&p.id), policy.template().effect(), p.named, at))
                    }
                    Item::Template(_) => None,
                }
            })
    }
}

impl std::fmt::Debug for Catalog {
    // The files hold their texts: a debug print says how much is held, not what.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("files", &self.files.len())
            .field("items", &self.items)
            .finish()
    }
}

/// Each file's problems followed by a problem for each use of an id after its first
/// (naming the first), in directory and text order.
fn file_problems(files: &[Arc<ParsedFile>]) -> Vec<Problem> {
    let mut first: FastMap<PolicyId, &Location> = FastMap::default();
    let mut problems = Vec::new();
    for file in files {
        problems.extend(file.problems.iter().cloned());
        for policy in &file.policies {
            match first.entry(displayed(&policy.id)) {
                std::collections::hash_map::Entry::Occupied(at) => {
                    let message = format!(
                        "policy id `{}` is used twice; it is also the id of the policy at {}",
                        policy.id,
                        at.get()
                    );
                    problems.push(Problem::new(policy.location.clone(), message));
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(&policy.location);
                }
            }
        }
    }
    problems
}

/// The key `id` is kept under: as displayed.
fn key(id: &PolicyId) -> Box<str> {
    Box::from(displayed(id).as_ref())
}

/// `id` as Cedar displays it (quotes, backslashes and unprintable characters escaped):
/// the form decisions name policies by, and so the form they are found by. Most ids
/// display as they are, and are kept without a copy.
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
