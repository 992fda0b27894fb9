//! The scope index: every policy's scope, indexed per snapshot, from which the engine
//! picks for one request the few policies whose scope can match it (its `slice`
//! module), so that a decision costs what those cost and not what the whole set costs.
//! A served index never changes; a reload derives the next one from it (copy-on-write maps:
//! what did not change is shared, not copied), so reloading one file of a large set costs
//! what that file holds. The slices built from it and their cache are the engine's.
//!
//! A policy's scope is three constraints, on principal, action and resource: none (any),
//! `==` an entity, `in` an entity, `is` a type, or `is` a type `in` an entity (the action:
//! none, `==`, or `in` a list). Whether a scope matches depends only on the request's
//! three entities, their types, and their ancestors in the call's entity store, and
//! evaluating a scope never errors. So a policy whose scope cannot match would be neither
//! satisfied nor in error if Cedar evaluated it: leaving it out changes neither the
//! decision, nor its reasons, nor its errors.
//!
//! [`PolicyIndex::chosen`] looks up, for the side (principal, action or resource) with the
//! fewest candidates, the lists keyed by the entity, its ancestors and its type (plus the
//! unconstrained ones), and keeps those whose other two constraints also match. Template
//! links are not read from a policy directory; a set that had one would be served whole.

use std::{
    borrow::Borrow,
    collections::HashSet,
    hash::{Hash, Hasher},
    sync::Arc,
};

use super::cow_map::CowMap;

use cedar_policy::{Entities, EntityTypeName, EntityUid, Policy, PolicySet};
use cedar_policy_core::ast;
use ref_cast::RefCast;

/// An entity a policy names, shared with the policy's own parsed scope (Cedar keeps each
/// scope entity behind an `Arc`): the index's entries and keys hold a pointer to it
/// rather than a copy (120 bytes each, three or more per policy). Hashed and compared as
/// Cedar's entity uid, so that the maps keyed by it are looked up by a request's uid.
#[derive(Debug, Clone)]
struct Named(Arc<ast::EntityUID>);

impl Named {
    /// The entity, as Cedar's API names it.
    fn uid(&self) -> &EntityUid {
        EntityUid::ref_cast(&self.0)
    }
}

impl From<&EntityUid> for Named {
    fn from(uid: &EntityUid) -> Self {
        Self(Arc::new(inner(uid).clone()))
    }
}

impl PartialEq for Named {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for Named {}

impl Hash for Named {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_ref().hash(state);
    }
}

impl Borrow<ast::EntityUID> for Named {
    fn borrow(&self) -> &ast::EntityUID {
        &self.0
    }
}

/// The key a request's `uid` is looked up by in the maps keyed by [`Named`].
fn inner(uid: &EntityUid) -> &ast::EntityUID {
    uid.as_ref()
}

/// A principal or resource constraint.
#[derive(Debug, Clone)]
enum EntityScope {
    Any,
    Eq(Named),
    In(Named),
    Is(EntityTypeName),
    IsIn(EntityTypeName, Named),
}

impl EntityScope {
    /// The constraint as Cedar parsed it, sharing the entity it names.
    fn of(constraint: &ast::PrincipalOrResourceConstraint) -> Self {
        use ast::{EntityReference::EUID, PrincipalOrResourceConstraint as C};
        let ty = |t: &Arc<ast::EntityType>| EntityTypeName::from(t.as_ref().clone());
        match constraint {
            C::Any => Self::Any,
            C::Eq(EUID(e)) => Self::Eq(Named(e.clone())),
            C::In(EUID(e)) => Self::In(Named(e.clone())),
            C::Is(t) => Self::Is(ty(t)),
            C::IsIn(t, EUID(e)) => Self::IsIn(ty(t), Named(e.clone())),
            // A slot, which only a template has (templates are not indexed). Should one
            // ever get here, `Any` keeps the policy in every pick: slower, never wrong.
            C::Eq(_) | C::In(_) | C::IsIn(..) => Self::Any,
        }
    }
}

/// An action constraint.
#[derive(Debug, Clone)]
enum ActionScope {
    Any,
    Eq(Named),
    In(Box<[Named]>),
}

impl ActionScope {
    /// The constraint as Cedar parsed it, sharing the entities it names.
    fn of(constraint: &ast::ActionConstraint) -> Self {
        #[allow(
            unreachable_patterns,
            reason = "Cedar has one more variant with its `tolerant-ast` feature"
        )]
        match constraint {
            ast::ActionConstraint::Any => Self::Any,
            ast::ActionConstraint::Eq(e) => Self::Eq(Named(e.clone())),
            ast::ActionConstraint::In(list) => {
                Self::In(list.iter().map(|e| Named(e.clone())).collect())
            }
            // A constraint that failed to parse never reaches a snapshot; `Any` keeps
            // such a policy in every pick.
            _ => Self::Any,
        }
    }
}

/// A map keyed by entities, types or positions, looked up several times per request: a
/// fast hash with a per-process random seed instead of SipHash (keys come from the
/// policies; a request only looks them up, so it cannot crowd a bucket).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A set hashed like [`FastMap`].
pub type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// One request entity as scopes see it: itself and its ancestors.
struct Subject<'a> {
    uid: &'a EntityUid,
    ancestors: FastSet<&'a EntityUid>,
}

impl<'a> Subject<'a> {
    fn new(uid: &'a EntityUid, entities: &'a Entities) -> Self {
        let ancestors = entities
            .ancestors(uid)
            .map(Iterator::collect)
            .unwrap_or_default();
        Self { uid, ancestors }
    }

    /// `self in e`: itself or an ancestor.
    fn within(&self, e: &Named) -> bool {
        e.uid() == self.uid || self.ancestors.contains(e.uid())
    }

    fn matches(&self, scope: &EntityScope) -> bool {
        match scope {
            EntityScope::Any => true,
            EntityScope::Eq(e) => e.uid() == self.uid,
            EntityScope::In(e) => self.within(e),
            EntityScope::Is(t) => self.uid.type_name() == t,
            EntityScope::IsIn(t, e) => self.uid.type_name() == t && self.within(e),
        }
    }

    fn matches_action(&self, scope: &ActionScope) -> bool {
        match scope {
            ActionScope::Any => true,
            ActionScope::Eq(e) => e.uid() == self.uid,
            ActionScope::In(list) => list.iter().any(|e| self.within(e)),
        }
    }

    /// The entity and its ancestors, the keys `==` and `in` lists are found under.
    fn keys(&self) -> impl Iterator<Item = &ast::EntityUID> {
        std::iter::once(self.uid)
            .chain(self.ancestors.iter().copied())
            .map(inner)
    }
}

/// A static policy's place, stable across reloads while its file's text is unchanged: its
/// file's key (see [`file_slots`]) in the high bits and its position in the file in the
/// low [`POSITION_BITS`]. Slices are sorted by it.
pub type Slot = u64;

/// Bits of a [`Slot`] for a policy's position in its file: a file may hold 2^24 (16.7
/// million) policies, far more than a 64 MiB file can.
pub const POSITION_BITS: u32 = 24;

/// The first slot of the file with key `key` (keys are given out once each, from a
/// counter that does not wrap in practice: 2^40 files parsed).
pub fn file_slots(key: u64) -> Slot {
    key << POSITION_BITS
}

/// The key of the file holding the policy at `slot`.
pub fn file_of(slot: Slot) -> u64 {
    slot >> POSITION_BITS
}

/// The position in its file of the policy at `slot`.
pub fn position_of(slot: Slot) -> usize {
    // The low bits, by construction.
    usize::try_from(slot & ((1 << POSITION_BITS) - 1)).unwrap_or(usize::MAX)
}

/// One policy in a list of the index: where it is, and its scope (kept beside it so that
/// checking a candidate needs no lookup).
#[derive(Debug, Clone)]
struct Member {
    slot: Slot,
    entry: Arc<IndexEntry>,
}

/// A list of policies under one key, shared between the indexes of successive snapshots
/// until a reload changes it.
type List = Arc<[Member]>;

/// The key of one list of the index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ListKey {
    Any(Side),
    Eq(Side, Named),
    Within(Side, Named),
    Is(Side, EntityTypeName),
    ActionAny,
    ActionBy(Named),
}

/// Which scope constraint a list belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Principal,
    Resource,
}

impl ListKey {
    fn of_scope(side: Side, scope: &EntityScope) -> Self {
        match scope {
            EntityScope::Any => Self::Any(side),
            EntityScope::Eq(e) => Self::Eq(side, e.clone()),
            EntityScope::In(e) | EntityScope::IsIn(_, e) => Self::Within(side, e.clone()),
            EntityScope::Is(t) => Self::Is(side, t.clone()),
        }
    }

    /// Every list `entry` is in (an action `in` list naming one entity twice, twice).
    fn of_entry(entry: &IndexEntry) -> Vec<Self> {
        let mut keys = vec![
            Self::of_scope(Side::Principal, &entry.principal),
            Self::of_scope(Side::Resource, &entry.resource),
        ];
        match &entry.action {
            ActionScope::Any => keys.push(Self::ActionAny),
            ActionScope::Eq(e) => keys.push(Self::ActionBy(e.clone())),
            ActionScope::In(list) => keys.extend(list.iter().cloned().map(Self::ActionBy)),
        }
        keys
    }
}

/// The policies of one side (principal or resource), by what their constraint names.
#[derive(Debug, Clone, Default)]
struct SideIndex {
    any: Option<List>,
    /// `==` e, by e.
    eq: CowMap<Named, List>,
    /// `in` e and `is T in` e, by e.
    within: CowMap<Named, List>,
    /// `is T`, by T.
    is: CowMap<EntityTypeName, List>,
}

impl SideIndex {
    /// Every list a policy matching `subject` on this side is in (it may be in none of
    /// them only if it cannot match).
    fn lists<'s>(&'s self, subject: &Subject<'_>) -> Vec<&'s [Member]> {
        let mut lists: Vec<&[Member]> = self.any.as_deref().into_iter().collect();
        lists.extend(self.eq.get(inner(subject.uid)).map(|l| &**l));
        lists.extend(self.is.get(subject.uid.type_name()).map(|l| &**l));
        lists.extend(
            subject
                .keys()
                .filter_map(|k| self.within.get(k).map(|l| &**l)),
        );
        lists
    }
}

/// The scope of every static policy of a snapshot, indexed for [`PolicyIndex::chosen`].
///
/// Copied cheaply (its maps are [`CowMap`]s): [`PolicyIndex::updated`] makes the next
/// snapshot's index from this one by taking out the policies of the files that changed
/// or went and putting in those of the files that changed or came, in time proportional
/// to them (and to the length of the lists they are in), not to the whole set.
#[derive(Debug, Clone, Default)]
pub struct PolicyIndex {
    principal: SideIndex,
    resource: SideIndex,
    /// Action constraints: unconstrained, and by each entity `==` or `in` names.
    action_any: Option<List>,
    action_by: CowMap<Named, List>,
    /// Static policies indexed.
    len: usize,
    /// False when the set holds template-linked policies: it is then served whole.
    usable: bool,
    /// The entities the conditions of the policies name, each with how many name it
    /// (templates' links, in a set that has them, counted once).
    literals: CowMap<Named, u32>,
    /// Every entity the policies name, in their scope or conditions, counted likewise.
    named: CowMap<Named, u32>,
}

/// What the index needs of one static policy: its scope, the entities its conditions
/// name, and its effect. Worked out once per parse; a reload reuses those of unchanged
/// files.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    principal: EntityScope,
    action: ActionScope,
    resource: EntityScope,
    literals: Box<[Named]>,
    permit: bool,
}

impl IndexEntry {
    /// The entry of `policy` (a static policy).
    pub fn new(policy: &Policy) -> Self {
        let body = AsRef::<ast::Policy>::as_ref(policy).template();
        let mut entry = Self {
            principal: EntityScope::of(body.principal_constraint().as_inner()),
            action: ActionScope::of(body.action_constraint()),
            resource: EntityScope::of(body.resource_constraint().as_inner()),
            literals: Box::default(),
            permit: policy.effect() == cedar_policy::Effect::Permit,
        };
        entry.literals = condition_literals(policy, &entry);
        entry
    }

    /// Whether the policy permits (else it forbids).
    pub fn permit(&self) -> bool {
        self.permit
    }

    /// The entities the policy's scope names.
    fn scope_named(&self) -> impl Iterator<Item = &Named> {
        fn side(scope: &EntityScope) -> Option<&Named> {
            match scope {
                EntityScope::Eq(e) | EntityScope::In(e) | EntityScope::IsIn(_, e) => Some(e),
                EntityScope::Any | EntityScope::Is(_) => None,
            }
        }
        let action: &[Named] = match &self.action {
            ActionScope::Any => &[],
            ActionScope::Eq(e) => std::slice::from_ref(e),
            ActionScope::In(list) => list,
        };
        side(&self.principal)
            .into_iter()
            .chain(side(&self.resource))
            .chain(action)
    }

    /// Every entity the policy names, in its scope or its conditions.
    fn named(&self) -> impl Iterator<Item = &Named> {
        self.scope_named().chain(self.literals.iter())
    }
}

/// The side of a scope a search looks for entities on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchSide {
    /// Which principals (AuthZEN subjects).
    Principal,
    /// Which resources.
    Resource,
}

/// Where a permit policy can let a searched entity in: what its scope on the searched
/// side names. Only entities a permit's scope matches can ever be allowed, so these bound
/// a search's candidates.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Anchor {
    /// Any entity (of the searched type): no narrowing.
    Any,
    /// Exactly this entity.
    Eq(EntityUid),
    /// This entity and every entity in it.
    In(EntityUid),
}

/// Largest slice worth keeping for reuse, in policies: past it, a slice built for one
/// request alone that holds over half the set costs more to build than the whole set
/// costs to evaluate.
pub const CACHED_SLICE_POLICIES: usize = 64;

/// Below this many policies the scopes of every candidate are checked even when the
/// candidates are over half the set: cheap, and the slice is then usually cached.
const SMALL_SET: usize = 256;

impl PolicyIndex {
    /// Indexes the static policies of `set` (each at the slot of its position in the
    /// set's order, in one file of key 0): for sets not read from a policy directory.
    pub fn new(set: &PolicySet) -> Self {
        let mut usable = true;
        let mut link_literals = Vec::new();
        let mut entries = Vec::new();
        for policy in set.policies() {
            if policy.is_static() {
                let slot = Slot::try_from(entries.len()).unwrap_or(Slot::MAX);
                entries.push((slot, Arc::new(IndexEntry::new(policy))));
            } else {
                usable = false;
                link_literals.extend(policy.entity_literals());
            }
        }
        let mut index = Self::default().updated(&FastSet::default(), &[], &entries);
        index.usable = usable;
        for uid in link_literals {
            if !index.literals.contains_key(inner(&uid)) {
                index.literals.insert(Named::from(&uid), 1);
            }
        }
        index
    }

    /// This index with the policies of the files whose keys are in `gone` taken out
    /// (`removed`: their entries) and `added` (each at its slot) put in; this one is
    /// left as it is. A file that changed is both: its old policies gone, its new ones
    /// added under a new key.
    pub fn updated(
        &self,
        gone: &FastSet<u64>,
        removed: &[Arc<IndexEntry>],
        added: &[(Slot, Arc<IndexEntry>)],
    ) -> Self {
        let mut next = self.clone();
        if self.len == 0 && added.is_empty() {
            next.usable = true;
            return next;
        }
        // The lists to rewrite, each with the policies it gains.
        let mut touched: FastMap<ListKey, Vec<Member>> = FastMap::default();
        for entry in removed {
            for key in ListKey::of_entry(entry) {
                touched.entry(key).or_default();
            }
            for uid in entry.literals.iter() {
                release(&mut next.literals, uid);
            }
            for uid in entry.named() {
                release(&mut next.named, uid);
            }
        }
        for (slot, entry) in added {
            for key in ListKey::of_entry(entry) {
                touched.entry(key).or_default().push(Member {
                    slot: *slot,
                    entry: entry.clone(),
                });
            }
            for uid in entry.literals.iter() {
                hold(&mut next.literals, uid);
            }
            for uid in entry.named() {
                hold(&mut next.named, uid);
            }
        }
        for (key, gained) in touched {
            let old = next.list(&key);
            let kept = old
                .iter()
                .flat_map(|l| l.iter())
                .filter(|m| !gone.contains(&file_of(m.slot)));
            let list: Vec<Member> = kept.cloned().chain(gained).collect();
            next.set_list(key, list);
        }
        next.len = (self.len + added.len()).saturating_sub(removed.len());
        next.usable = true;
        next
    }

    /// The list under `key`, if any.
    fn list(&self, key: &ListKey) -> Option<List> {
        let side = |s: Side| match s {
            Side::Principal => &self.principal,
            Side::Resource => &self.resource,
        };
        match key {
            ListKey::Any(s) => side(*s).any.clone(),
            ListKey::Eq(s, e) => side(*s).eq.get(e).cloned(),
            ListKey::Within(s, e) => side(*s).within.get(e).cloned(),
            ListKey::Is(s, t) => side(*s).is.get(t).cloned(),
            ListKey::ActionAny => self.action_any.clone(),
            ListKey::ActionBy(e) => self.action_by.get(e).cloned(),
        }
    }

    /// Puts `list` under `key` (takes the key out when it is empty).
    fn set_list(&mut self, key: ListKey, list: Vec<Member>) {
        fn put<K: std::hash::Hash + Eq + Clone>(
            map: &mut CowMap<K, List>,
            key: K,
            list: Vec<Member>,
        ) {
            if list.is_empty() {
                map.remove(&key);
            } else {
                map.insert(key, list.into());
            }
        }
        let list_or_none = |list: Vec<Member>| (!list.is_empty()).then(|| List::from(list));
        match key {
            ListKey::Any(Side::Principal) => self.principal.any = list_or_none(list),
            ListKey::Any(Side::Resource) => self.resource.any = list_or_none(list),
            ListKey::Eq(Side::Principal, e) => put(&mut self.principal.eq, e, list),
            ListKey::Eq(Side::Resource, e) => put(&mut self.resource.eq, e, list),
            ListKey::Within(Side::Principal, e) => put(&mut self.principal.within, e, list),
            ListKey::Within(Side::Resource, e) => put(&mut self.resource.within, e, list),
            ListKey::Is(Side::Principal, t) => put(&mut self.principal.is, t, list),
            ListKey::Is(Side::Resource, t) => put(&mut self.resource.is, t, list),
            ListKey::ActionAny => self.action_any = list_or_none(list),
            ListKey::ActionBy(e) => put(&mut self.action_by, e, list),
        }
    }

    /// Number of static policies indexed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no policy is indexed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether some policy names `uid` (in its scope or its conditions).
    pub fn names(&self, uid: &EntityUid) -> bool {
        self.named.contains_key(inner(uid))
    }

    /// Every entity the static policies name, in their scope or their conditions, once
    /// each: what Cedar's `entity_literals` gives for each policy, without building the
    /// policy set.
    pub fn named_entities(&self) -> impl Iterator<Item = &EntityUid> {
        self.named.keys().map(Named::uid)
    }

    /// The entities named in the conditions of every policy.
    pub fn all_literals(&self) -> impl Iterator<Item = &EntityUid> {
        self.literals.keys().map(Named::uid)
    }

    /// What [`PolicyIndex::chosen`] picks (with `only_if_worth_it`) for a request, `None`
    /// for the whole set, and the entities the conditions of the picked policies name (of
    /// every policy for the whole set): with the request's own entities, all that
    /// evaluating those policies can look up in the entity store by name. Both from one
    /// look at the index.
    #[allow(clippy::type_complexity)]
    pub fn pick<'i>(
        &'i self,
        uids: [&EntityUid; 3],
        entities: &Entities,
    ) -> (
        Option<Box<[Slot]>>,
        Box<dyn Iterator<Item = &'i EntityUid> + 'i>,
    ) {
        match self.candidates(uids, entities, true) {
            Some(chosen) => (
                Some(chosen.iter().map(|m| m.slot).collect()),
                Box::new(
                    chosen
                        .into_iter()
                        .flat_map(|m| m.entry.literals.iter().map(Named::uid)),
                ),
            ),
            None => (None, Box::new(self.all_literals())),
        }
    }

    /// The slots of the policies whose scope can match a request for `principal`,
    /// `action` and `resource`, with ancestors from `entities`, sorted; `None` for the
    /// whole set: when the set has template links, when every policy can match, or (with
    /// `only_if_worth_it`) when slicing would not leave out enough to pay for itself.
    pub fn chosen(
        &self,
        uids: [&EntityUid; 3],
        entities: &Entities,
        only_if_worth_it: bool,
    ) -> Option<Vec<Slot>> {
        self.candidates(uids, entities, only_if_worth_it)
            .map(|members| members.into_iter().map(|m| m.slot).collect())
    }

    /// [`PolicyIndex::chosen`], as the index's members.
    fn candidates(
        &self,
        [principal, action, resource]: [&EntityUid; 3],
        entities: &Entities,
        only_if_worth_it: bool,
    ) -> Option<Vec<&Member>> {
        if !self.usable {
            return None;
        }
        let p = Subject::new(principal, entities);
        let a = Subject::new(action, entities);
        let r = Subject::new(resource, entities);
        let sides = [
            self.principal.lists(&p),
            self.action_lists(&a),
            self.resource.lists(&r),
        ];
        let size = |lists: &Vec<&[Member]>| lists.iter().map(|l| l.len()).sum::<usize>();
        let smallest = sides.iter().min_by_key(|lists| size(lists))?;
        // Building a set costs about as much per policy as evaluating a simple one: past
        // half of a large set, the whole set is cheaper (even checking the candidates'
        // scopes would cost too much).
        if only_if_worth_it && size(smallest) * 2 > self.len && self.len > SMALL_SET {
            return None;
        }
        let mut chosen: Vec<&Member> = smallest
            .iter()
            .flat_map(|l| l.iter())
            .filter(|m| {
                p.matches(&m.entry.principal)
                    && a.matches_action(&m.entry.action)
                    && r.matches(&m.entry.resource)
            })
            .collect();
        // An action `in [..]` list can hold one policy under several keys.
        chosen.sort_unstable_by_key(|m| m.slot);
        chosen.dedup_by_key(|m| m.slot);
        // Built for this request alone (too large to cache), more than half the set costs
        // more to build than the whole set costs to evaluate.
        let uncached_and_large =
            chosen.len() > CACHED_SLICE_POLICIES && chosen.len() * 2 > self.len;
        if chosen.len() == self.len || (only_if_worth_it && uncached_and_large) {
            return None;
        }
        Some(chosen)
    }

    /// The action lists a policy matching `action` is in.
    fn action_lists<'s>(&'s self, action: &Subject<'_>) -> Vec<&'s [Member]> {
        self.action_any
            .as_deref()
            .into_iter()
            .chain(
                action
                    .keys()
                    .filter_map(|k| self.action_by.get(k).map(|l| &**l)),
            )
            .collect()
    }

    /// For a search on `side` of the entities of type `searched` that `other` (the
    /// request's entity on the other side) may `action`: where the permits whose scope can
    /// match can let an entity in, without repeats; `None` when the index cannot say (a
    /// set with template links). An empty list: no permit can match, nothing is allowed.
    pub fn search_anchors(
        &self,
        side: SearchSide,
        searched: &EntityTypeName,
        other: &EntityUid,
        action: &EntityUid,
        entities: &Entities,
    ) -> Option<Vec<Anchor>> {
        if !self.usable {
            return None;
        }
        let o = Subject::new(other, entities);
        let a = Subject::new(action, entities);
        let action_lists = self.action_lists(&a);
        let other_lists = match side {
            SearchSide::Principal => self.resource.lists(&o),
            SearchSide::Resource => self.principal.lists(&o),
        };
        let size = |lists: &Vec<&[Member]>| lists.iter().map(|l| l.len()).sum::<usize>();
        let smallest = if size(&action_lists) <= size(&other_lists) {
            action_lists
        } else {
            other_lists
        };
        let mut anchors = Vec::new();
        let mut seen = FastSet::default();
        let mut kept = FastSet::default();
        for member in smallest.iter().flat_map(|l| l.iter()) {
            let entry = &member.entry;
            if !entry.permit || !seen.insert(member.slot) {
                continue;
            }
            let (ps, acts, rs) = (&entry.principal, &entry.action, &entry.resource);
            let (searched_scope, other_scope) = match side {
                SearchSide::Principal => (ps, rs),
                SearchSide::Resource => (rs, ps),
            };
            if !(o.matches(other_scope) && a.matches_action(acts)) {
                continue;
            }
            let anchor = match searched_scope {
                EntityScope::Any => Anchor::Any,
                EntityScope::Is(t) if t == searched => Anchor::Any,
                EntityScope::Is(_) => continue,
                EntityScope::Eq(e) if e.uid().type_name() == searched => {
                    Anchor::Eq(e.uid().clone())
                }
                EntityScope::Eq(_) => continue,
                EntityScope::In(e) => Anchor::In(e.uid().clone()),
                EntityScope::IsIn(t, e) if t == searched => Anchor::In(e.uid().clone()),
                EntityScope::IsIn(..) => continue,
            };
            if anchor == Anchor::Any {
                return Some(vec![Anchor::Any]);
            }
            if kept.insert(anchor.clone()) {
                anchors.push(anchor);
            }
        }
        Some(anchors)
    }
}

/// One more of what names `uid` in `counts`.
fn hold(counts: &mut CowMap<Named, u32>, uid: &Named) {
    match counts.get_mut(uid) {
        Some(n) => *n += 1,
        None => {
            counts.insert(uid.clone(), 1);
        }
    }
}

/// One fewer of what names `uid` in `counts`; the last one takes it out.
fn release(counts: &mut CowMap<Named, u32>, uid: &Named) {
    match counts.get_mut(uid) {
        Some(n) if *n > 1 => *n -= 1,
        Some(_) => {
            counts.remove(uid);
        }
        None => {}
    }
}

/// The entities `policy` names outside its scope, without repeats. Cedar gives the
/// literals of the whole condition, scope included; one occurrence of each scope entity
/// is taken away (should Cedar ever not repeat a scope entity there, this keeps more
/// than needed, which is only slower).
fn condition_literals(policy: &Policy, entry: &IndexEntry) -> Box<[Named]> {
    let mut literals = policy.entity_literals();
    if literals.is_empty() {
        return Box::default();
    }
    for e in entry.scope_named() {
        if let Some(at) = literals.iter().position(|l| l == e.uid()) {
            literals.swap_remove(at);
        }
    }
    let unique: HashSet<EntityUid> = literals.into_iter().collect();
    unique.iter().map(Named::from).collect()
}
