//! The scope index: every policy's scope, indexed once per snapshot, from which the
//! engine picks for one request the few policies whose scope can match it (its
//! `slice` module), so that a decision costs what those cost and not what the whole set
//! costs. The index is immutable; the slices built from it and their cache are the
//! engine's.
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

use std::{collections::HashSet, sync::Arc};

use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, Policy, PolicyId, PolicySet,
    PrincipalConstraint, ResourceConstraint,
};

/// A principal or resource constraint.
#[derive(Debug, Clone)]
enum EntityScope {
    Any,
    Eq(EntityUid),
    In(EntityUid),
    Is(EntityTypeName),
    IsIn(EntityTypeName, EntityUid),
}

impl From<PrincipalConstraint> for EntityScope {
    fn from(c: PrincipalConstraint) -> Self {
        match c {
            PrincipalConstraint::Any => Self::Any,
            PrincipalConstraint::Eq(e) => Self::Eq(e),
            PrincipalConstraint::In(e) => Self::In(e),
            PrincipalConstraint::Is(t) => Self::Is(t),
            PrincipalConstraint::IsIn(t, e) => Self::IsIn(t, e),
        }
    }
}

impl From<ResourceConstraint> for EntityScope {
    fn from(c: ResourceConstraint) -> Self {
        match c {
            ResourceConstraint::Any => Self::Any,
            ResourceConstraint::Eq(e) => Self::Eq(e),
            ResourceConstraint::In(e) => Self::In(e),
            ResourceConstraint::Is(t) => Self::Is(t),
            ResourceConstraint::IsIn(t, e) => Self::IsIn(t, e),
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
    fn within(&self, e: &EntityUid) -> bool {
        e == self.uid || self.ancestors.contains(e)
    }

    fn matches(&self, scope: &EntityScope) -> bool {
        match scope {
            EntityScope::Any => true,
            EntityScope::Eq(e) => e == self.uid,
            EntityScope::In(e) => self.within(e),
            EntityScope::Is(t) => self.uid.type_name() == t,
            EntityScope::IsIn(t, e) => self.uid.type_name() == t && self.within(e),
        }
    }

    fn matches_action(&self, scope: &ActionConstraint) -> bool {
        match scope {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(e) => e == self.uid,
            ActionConstraint::In(list) => list.iter().any(|e| self.within(e)),
        }
    }

    /// The entity and its ancestors, the keys `==` and `in` lists are found under.
    fn keys(&self) -> impl Iterator<Item = &EntityUid> {
        std::iter::once(self.uid).chain(self.ancestors.iter().copied())
    }
}

/// The policies of one side (principal or resource), by what their constraint names.
#[derive(Debug, Default)]
struct SideIndex {
    any: Vec<usize>,
    /// `==` e, by e.
    eq: FastMap<EntityUid, Vec<usize>>,
    /// `in` e and `is T in` e, by e.
    within: FastMap<EntityUid, Vec<usize>>,
    /// `is T`, by T.
    is: FastMap<EntityTypeName, Vec<usize>>,
}

impl SideIndex {
    fn add(&mut self, scope: &EntityScope, policy: usize) {
        let list = match scope {
            EntityScope::Any => &mut self.any,
            EntityScope::Eq(e) => self.eq.entry(e.clone()).or_default(),
            EntityScope::In(e) | EntityScope::IsIn(_, e) => {
                self.within.entry(e.clone()).or_default()
            }
            EntityScope::Is(t) => self.is.entry(t.clone()).or_default(),
        };
        list.push(policy);
    }

    /// Every list a policy matching `subject` on this side is in (it may be in none of
    /// them only if it cannot match).
    fn lists<'s>(&'s self, subject: &Subject<'_>) -> Vec<&'s [usize]> {
        let mut lists = vec![self.any.as_slice()];
        lists.extend(self.eq.get(subject.uid).map(Vec::as_slice));
        lists.extend(self.is.get(subject.uid.type_name()).map(Vec::as_slice));
        lists.extend(
            subject
                .keys()
                .filter_map(|k| self.within.get(k).map(Vec::as_slice)),
        );
        lists
    }
}

/// The scope of every static policy of a snapshot, indexed for [`PolicyIndex::chosen`].
#[derive(Debug, Default)]
pub struct PolicyIndex {
    /// Ids, not policies: the set already holds them, and a copy costs over a kilobyte
    /// a policy.
    ids: Vec<PolicyId>,
    /// By position: each policy's scope, the entities its conditions name (which
    /// evaluating it may look up in the entity store) and its effect; shared with the
    /// parse a reload keeps, not copied.
    entries: Vec<Arc<IndexEntry>>,
    principal: SideIndex,
    resource: SideIndex,
    /// Action constraints: unconstrained, and by each entity `==` or `in` names.
    action_any: Vec<usize>,
    action_by: FastMap<EntityUid, Vec<usize>>,
    /// False when the set holds template-linked policies: it is then served whole.
    usable: bool,
    /// The entities the conditions of every policy name (templates' links included),
    /// without repeats.
    all_literals: Box<[EntityUid]>,
}

/// What the index needs of one static policy: its scope, the entities its conditions
/// name, and its effect. Worked out once per parse; a reload reuses those of unchanged
/// files.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    principal: EntityScope,
    action: ActionConstraint,
    resource: EntityScope,
    literals: Box<[EntityUid]>,
    permit: bool,
}

impl IndexEntry {
    /// The entry of `policy` (a static policy).
    pub fn new(policy: &Policy) -> Self {
        Self {
            principal: EntityScope::from(policy.principal_constraint()),
            action: policy.action_constraint(),
            resource: EntityScope::from(policy.resource_constraint()),
            literals: condition_literals(policy),
            permit: policy.effect() == cedar_policy::Effect::Permit,
        }
    }

    /// Whether the policy permits (else it forbids).
    pub fn permit(&self) -> bool {
        self.permit
    }

    /// Every entity the policy names, in its scope or its conditions.
    pub fn named(&self) -> impl Iterator<Item = &EntityUid> {
        fn side(scope: &EntityScope) -> Option<&EntityUid> {
            match scope {
                EntityScope::Eq(e) | EntityScope::In(e) | EntityScope::IsIn(_, e) => Some(e),
                EntityScope::Any | EntityScope::Is(_) => None,
            }
        }
        let action: &[EntityUid] = match &self.action {
            ActionConstraint::Any => &[],
            ActionConstraint::Eq(e) => std::slice::from_ref(e),
            ActionConstraint::In(list) => list,
        };
        side(&self.principal)
            .into_iter()
            .chain(side(&self.resource))
            .chain(action)
            .chain(self.literals.iter())
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
    /// Indexes the static policies of `set`.
    pub fn new(set: &PolicySet) -> Self {
        let mut usable = true;
        let mut link_literals = Vec::new();
        let entries: Vec<(PolicyId, Arc<IndexEntry>)> = set
            .policies()
            .filter_map(|policy| {
                if policy.is_static() {
                    Some((policy.id().clone(), Arc::new(IndexEntry::new(policy))))
                } else {
                    usable = false;
                    link_literals.extend(policy.entity_literals());
                    None
                }
            })
            .collect();
        let mut index = Self::from_entries(entries.iter().map(|(id, entry)| (id, entry)));
        if !usable {
            index.usable = false;
            let mut all: HashSet<EntityUid> = index.all_literals.iter().cloned().collect();
            all.extend(link_literals);
            index.all_literals = all.into_iter().collect();
        }
        index
    }

    /// Indexes static policies whose entries were worked out before (a reload keeps those
    /// of unchanged files), in the set's order.
    pub fn from_entries<'e>(
        entries: impl ExactSizeIterator<Item = (&'e PolicyId, &'e Arc<IndexEntry>)>,
    ) -> Self {
        let mut index = Self {
            usable: true,
            ids: Vec::with_capacity(entries.len()),
            entries: Vec::with_capacity(entries.len()),
            ..Self::default()
        };
        let mut all_literals = HashSet::new();
        for (id, entry) in entries {
            all_literals.extend(entry.literals.iter().cloned());
            let i = index.ids.len();
            index.principal.add(&entry.principal, i);
            index.resource.add(&entry.resource, i);
            match &entry.action {
                ActionConstraint::Any => index.action_any.push(i),
                ActionConstraint::Eq(e) => index.action_by.entry(e.clone()).or_default().push(i),
                ActionConstraint::In(list) => {
                    for e in list {
                        index.action_by.entry(e.clone()).or_default().push(i);
                    }
                }
            }
            index.ids.push(id.clone());
            index.entries.push(entry.clone());
        }
        index.all_literals = all_literals.into_iter().collect();
        index
    }

    /// The entities named in the conditions of the policies [`PolicyIndex::chosen`] picks
    /// for this request (of every policy when `sliced` is false, or when the slice would be
    /// the whole set): with the request's own entities, all that evaluating those policies
    /// can look up in the entity store by name.
    pub fn literals<'i>(
        &'i self,
        [principal, action, resource]: [&EntityUid; 3],
        entities: &Entities,
        sliced: bool,
    ) -> Box<dyn Iterator<Item = &'i EntityUid> + 'i> {
        let chosen = if sliced {
            self.chosen([principal, action, resource], entities, true)
        } else {
            None
        };
        match chosen {
            Some(chosen) => Box::new(
                chosen
                    .into_iter()
                    .flat_map(|i| self.entries[i].literals.iter()),
            ),
            None => Box::new(self.all_literals.iter()),
        }
    }

    /// The positions of the policies whose scope can match a request for `principal`,
    /// `action` and `resource`, with ancestors from `entities`, sorted; `None` for the
    /// whole set: when the set has template links, when every policy can match, or (with
    /// `only_if_worth_it`) when slicing would not leave out enough to pay for itself.
    pub fn chosen(
        &self,
        [principal, action, resource]: [&EntityUid; 3],
        entities: &Entities,
        only_if_worth_it: bool,
    ) -> Option<Vec<usize>> {
        if !self.usable {
            return None;
        }
        let p = Subject::new(principal, entities);
        let a = Subject::new(action, entities);
        let r = Subject::new(resource, entities);
        let action_lists: Vec<&[usize]> = std::iter::once(self.action_any.as_slice())
            .chain(
                a.keys()
                    .filter_map(|k| self.action_by.get(k).map(Vec::as_slice)),
            )
            .collect();
        let sides = [
            self.principal.lists(&p),
            action_lists,
            self.resource.lists(&r),
        ];
        let size = |lists: &Vec<&[usize]>| lists.iter().map(|l| l.len()).sum::<usize>();
        let smallest = sides.iter().min_by_key(|lists| size(lists))?;
        // Building a set costs about as much per policy as evaluating a simple one: past
        // half of a large set, the whole set is cheaper (even checking the candidates'
        // scopes would cost too much).
        if only_if_worth_it && size(smallest) * 2 > self.ids.len() && self.ids.len() > SMALL_SET {
            return None;
        }
        let mut chosen: Vec<usize> = smallest
            .iter()
            .flat_map(|l| l.iter().copied())
            .filter(|&i| {
                let entry = &self.entries[i];
                p.matches(&entry.principal)
                    && a.matches_action(&entry.action)
                    && r.matches(&entry.resource)
            })
            .collect();
        // An action `in [..]` list can hold one policy under several keys.
        chosen.sort_unstable();
        chosen.dedup();
        // Built for this request alone (too large to cache), more than half the set costs
        // more to build than the whole set costs to evaluate.
        let uncached_and_large =
            chosen.len() > CACHED_SLICE_POLICIES && chosen.len() * 2 > self.ids.len();
        if chosen.len() == self.ids.len() || (only_if_worth_it && uncached_and_large) {
            return None;
        }
        Some(chosen)
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
        let action_lists: Vec<&[usize]> = std::iter::once(self.action_any.as_slice())
            .chain(
                a.keys()
                    .filter_map(|k| self.action_by.get(k).map(Vec::as_slice)),
            )
            .collect();
        let other_lists = match side {
            SearchSide::Principal => self.resource.lists(&o),
            SearchSide::Resource => self.principal.lists(&o),
        };
        let size = |lists: &Vec<&[usize]>| lists.iter().map(|l| l.len()).sum::<usize>();
        let smallest = if size(&action_lists) <= size(&other_lists) {
            action_lists
        } else {
            other_lists
        };
        let mut anchors = Vec::new();
        let mut seen = FastSet::default();
        let mut kept = FastSet::default();
        for i in smallest.iter().flat_map(|l| l.iter().copied()) {
            let entry = &self.entries[i];
            if !entry.permit || !seen.insert(i) {
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
                EntityScope::Eq(e) if e.type_name() == searched => Anchor::Eq(e.clone()),
                EntityScope::Eq(_) => continue,
                EntityScope::In(e) => Anchor::In(e.clone()),
                EntityScope::IsIn(t, e) if t == searched => Anchor::In(e.clone()),
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

    /// The id of the policy at position `i` of [`PolicyIndex::chosen`].
    pub fn policy_id(&self, i: usize) -> &PolicyId {
        &self.ids[i]
    }
}

/// The entities `policy` names outside its scope, without repeats. Cedar gives the
/// literals of the whole condition, scope included; one occurrence of each scope entity
/// is taken away (should Cedar ever not repeat a scope entity there, this keeps more
/// than needed, which is only slower).
fn condition_literals(policy: &Policy) -> Box<[EntityUid]> {
    let mut literals = policy.entity_literals();
    if literals.is_empty() {
        return Box::default();
    }
    let mut scope: Vec<EntityUid> = Vec::new();
    for side in [
        EntityScope::from(policy.principal_constraint()),
        EntityScope::from(policy.resource_constraint()),
    ] {
        if let EntityScope::Eq(e) | EntityScope::In(e) | EntityScope::IsIn(_, e) = side {
            scope.push(e);
        }
    }
    match policy.action_constraint() {
        ActionConstraint::Any => {}
        ActionConstraint::Eq(e) => scope.push(e),
        ActionConstraint::In(list) => scope.extend(list),
    }
    for e in &scope {
        if let Some(at) = literals.iter().position(|l| l == e) {
            literals.swap_remove(at);
        }
    }
    let unique: HashSet<EntityUid> = literals.into_iter().collect();
    unique.into_iter().collect()
}
