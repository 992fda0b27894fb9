//! Merging a call's entities over the snapshot's stored ones.
//!
//! A call's entities are untrusted. They are checked first ([`check`]): whether the
//! call may send any (`request_entities = "off"` refuses them), their count, parent
//! chains, parent edges and the closure Cedar would work out (so the cost of what follows
//! is bounded), JSON nesting, and — with `request_entities = "add"`, the default — that
//! none has a stored entity's uid or is an Action entity: the stored entities are the
//! truth, a call may only add to them. Then they are built and validated against the
//! schema on their own, and only then merged over the store ([`merge`]); with `"replace"`
//! a call's entity replaces the stored one with the same uid, for that call only. The
//! merge copies only the part of the store the call can reach, so its cost does not grow
//! with the store.

use std::{
    borrow::Cow,
    collections::{HashSet, VecDeque},
};

use cedar_policy::{Entities, Entity, EntityUid, EvalResult, Request, Schema};
use ref_cast::RefCast;

use super::{EngineOptions, EntitiesInput, EntityInput, Refusal, RequestEntities, json};
use crate::policy::{
    CACHED_SLICE_POLICIES, FastMap, FastSet, Slot, Snapshot, describe, hierarchy, json_entity_uids,
};

/// A call's own entities, checked and validated on their own, not yet merged over the
/// store (see [`merge`]).
#[derive(Debug, Default)]
pub struct CallEntities {
    /// The request field they came from, for errors found when merging.
    field: &'static str,
    /// `None` when the call sent none.
    own: Option<Entities>,
    /// The uids the call sent, in its order.
    sent: Vec<EntityUid>,
    /// Whether they may replace stored entities (else they are all new).
    replace: bool,
    /// The steps of working out their ancestors (see `hierarchy::closure`).
    steps: usize,
}

impl CallEntities {
    /// The uids of the entities the call sent (for the audit record).
    pub fn uids(&self) -> &[EntityUid] {
        &self.sent
    }

    /// Whether the call sent none: it is decided against the stored entities alone.
    pub fn sent_none(&self) -> bool {
        self.own.is_none()
    }
}

/// The entities one call's requests are decided against (see [`merge`]), with the
/// policies the merge found each request's scope can match: deciding a request then
/// need not look them up again.
#[derive(Debug)]
pub struct Store<'s> {
    entities: Cow<'s, Entities>,
    /// By the request's principal, action and resource: the slots of the policies whose
    /// scope can match it with the ancestors in `entities` (as
    /// `PolicyIndex::chosen` with `only_if_worth_it` gives them), `None` for the whole set;
    /// at most `CACHED_SLICE_POLICIES` slots each (a larger pick is not kept).
    picked: FastMap<[EntityUid; 3], Option<Box<[Slot]>>>,
}

impl<'s> Store<'s> {
    /// The entities.
    pub fn entities(&self) -> &Entities {
        &self.entities
    }

    /// What the merge picked for a request for `uids`, if it looked.
    pub(super) fn picked(&self, uids: [&EntityUid; 3]) -> Option<Option<&[Slot]>> {
        if self.picked.is_empty() {
            return None;
        }
        let key = uids.map(Clone::clone);
        self.picked.get(&key).map(Option::as_deref)
    }
}

impl<'s> From<&'s Entities> for Store<'s> {
    fn from(entities: &'s Entities) -> Self {
        Self {
            entities: Cow::Borrowed(entities),
            picked: FastMap::default(),
        }
    }
}

impl From<Entities> for Store<'_> {
    fn from(entities: Entities) -> Self {
        Self {
            entities: Cow::Owned(entities),
            picked: FastMap::default(),
        }
    }
}

pub(super) fn check(
    snapshot: &Snapshot,
    input: EntitiesInput,
    options: &EngineOptions,
    mode: RequestEntities,
) -> Result<CallEntities, Refusal> {
    let schema = snapshot.schema().filter(|_| options.validate_requests);
    let field = match &input {
        EntitiesInput::None => return Ok(CallEntities::default()),
        EntitiesInput::Typed(list) if list.is_empty() => return Ok(CallEntities::default()),
        EntitiesInput::Json(json) if json.trim().is_empty() => {
            return Ok(CallEntities::default());
        }
        EntitiesInput::Typed(_) => "entities",
        EntitiesInput::Json(_) => "entities_json",
    };
    if mode == RequestEntities::Off {
        return Err(Refusal::invalid(
            field,
            "entities are not taken from requests here: the policy directory's \
             entities.json is the only source (request_entities = off)",
        ));
    }
    let (own, sent, steps) = match input {
        EntitiesInput::Typed(list) => typed(snapshot, list, schema, options, mode)?,
        EntitiesInput::Json(json) => from_json(snapshot, &json, schema, options, mode)?,
        EntitiesInput::None => unreachable!("no entities returned above"),
    };
    Ok(CallEntities {
        field,
        own: Some(own),
        sent,
        replace: mode == RequestEntities::Replace,
        steps,
    })
}

/// Checks the shape of a call's entity graph (`nodes`: each entity's uid and parents)
/// against the limits before Cedar sees it, and, unless `mode` is `Replace`, that the
/// call only adds entities: none is stored or an Action entity. `name(i)` is the field
/// of the `i`th entity, for errors. The steps of working out their ancestors.
fn admit(
    snapshot: &Snapshot,
    field: &str,
    nodes: &[(EntityUid, Vec<EntityUid>)],
    name: impl Fn(usize) -> String,
    options: &EngineOptions,
    mode: RequestEntities,
) -> Result<usize, Refusal> {
    hierarchy::check(nodes, options.max_ancestor_depth).map_err(|e| match e {
        hierarchy::HierarchyError::TooDeep { .. } => {
            Refusal::limit(field, format!("{e} (max_ancestor_depth)"))
        }
        hierarchy::HierarchyError::Cycle { .. } => Refusal::invalid(field, e.to_string()),
    })?;
    let stored = snapshot.entities();
    let outside = |uid: &EntityUid| stored.ancestors(uid).map_or(0, Iterator::count);
    let steps = hierarchy::closure(
        nodes,
        outside,
        options.max_parent_edges,
        options.max_ancestor_closure,
    )
    .map_err(|e| match e {
        hierarchy::ClosureError::Edges { .. } => {
            Refusal::limit(field, format!("{e} (max_request_parent_edges)"))
        }
        hierarchy::ClosureError::Closure { .. } => {
            Refusal::limit(field, format!("{e} (max_request_ancestor_closure)"))
        }
    })?;
    if mode == RequestEntities::Replace {
        return Ok(steps);
    }
    for (i, (uid, _)) in nodes.iter().enumerate() {
        if is_action(uid) {
            return Err(Refusal::invalid(
                name(i),
                format!(
                    "{uid} is an Action entity; actions come from the schema and the \
                     policy directory, never from a request (request_entities = add)"
                ),
            ));
        }
        if stored.get(uid).is_some() {
            return Err(Refusal::invalid(
                name(i),
                format!(
                    "{uid} is a stored entity; a request may only add entities the policy \
                     directory does not hold, never change one (request_entities = add)"
                ),
            ));
        }
        if snapshot.names_without_holding(uid) {
            return Err(Refusal::invalid(
                name(i),
                format!(
                    "{uid} is named by the stored entities or the policies but not held by \
                     the store; defining it in a request would change what they mean \
                     (request_entities = add)"
                ),
            ));
        }
    }
    Ok(steps)
}

/// Whether `uid` is an Action entity: of type `Action`, in any namespace.
fn is_action(uid: &EntityUid) -> bool {
    uid.type_name().basename() == "Action"
}

/// The store the call's `requests` are decided against: the stored entities with the
/// call's merged over them (new ones, or with `"replace"` ones that replace a stored
/// entity of the same uid). Borrows the snapshot's store when the call sends none.
///
/// With more stored entities than `options.slice_entities_over`, only the part of the
/// store that deciding these requests can reach is copied, and the call's entities are
/// merged over that: the store's size does not matter. Evaluation reaches an entity only
/// by its uid, and a uid comes only from the request (principal, action, resource,
/// context), the call's entities, a policy's text, or an attribute or tag of an entity
/// reached; `in` reads the ancestors recorded on the entity on its left. So the slice
/// holds, from those roots, every stored entity reached through attributes and tags
/// (see [`Reach`]), with all their ancestors, the call's entities' own ancestors and
/// values followed as well. Every ancestor of an entity in it is in it too, so the
/// ancestors Cedar works out on the slice after merging are those it works out on the
/// whole store. The policies' entities are those of the policies the index picks for
/// each request (their scopes need only the ancestors already in the slice); if they add
/// to it, it is built again with them.
pub(super) fn merge<'s>(
    snapshot: &'s Snapshot,
    call: CallEntities,
    requests: &[Request],
    options: &EngineOptions,
) -> Result<Store<'s>, Refusal> {
    let CallEntities {
        field,
        own,
        replace,
        sent,
        steps,
    } = call;
    let Some(own) = own else {
        return Ok(Store::from(snapshot.entities()));
    };
    let stored = snapshot.entities();
    let invalid =
        |e: cedar_policy::entities_errors::EntitiesError| Refusal::invalid(field, describe(&e));
    // Checked in `check` already; never merged as new, whatever happened since.
    if !replace && let Some(uid) = sent.iter().find(|uid| stored.get(uid).is_some()) {
        return Err(Refusal::invalid(
            field,
            format!("{uid} is a stored entity; a request may only add entities"),
        ));
    }
    // Over `base` (stored entities, their ancestors worked out): replacing entities, and
    // a few new ones, through Cedar's upsert, which repairs the closure around each (its
    // cost grows with the depth of what is sent, steeply past a few entities); more new
    // entities by building the union afresh, whose closure Cedar works out in one pass
    // over everything (`benches/hostile.rs`). New entities change no stored entity's
    // ancestors (none is named by the store), so the stored closure stays right. The
    // call's copy of the schema's actions is left out: the store has them.
    let over = |base: Entities, all: Option<&Entities>| -> Result<Entities, Refusal> {
        if replace || steps <= UPSERT_STEPS {
            return base
                .upsert_entities(own.iter().cloned(), None)
                .map_err(invalid);
        }
        let known = all.unwrap_or(&base);
        let new: Vec<Entity> = own
            .iter()
            .filter(|e| known.get(&e.uid()).is_none())
            .cloned()
            .collect();
        Entities::from_entities(base.into_iter().chain(new), None).map_err(invalid)
    };
    if snapshot.entity_count() <= options.slice_entities_over {
        // The clone shares every stored entity.
        return over(stored.clone(), None).map(Store::from);
    }
    let mut reach = Reach::new(stored, &own);
    for request in requests {
        for uid in [request.principal(), request.action(), request.resource()]
            .into_iter()
            .flatten()
        {
            reach.add(uid.clone());
        }
        if let Some(context) = request.context() {
            for (key, _) in context.clone() {
                if let Some(value) = context.get(&key) {
                    reach.value(&value);
                }
            }
        }
    }
    for entity in own.iter() {
        reach.add(entity.uid());
    }
    reach.run();
    let build = |reach: &Reach<'_>| -> Result<Entities, Refusal> {
        if !replace {
            // New entities only (a stored one was refused above): the slice and them
            // joined with the closure completed for the new ones alone, rather than the
            // slice and then an upsert that repairs it (which walks the whole slice for
            // every entity sent), or Cedar working out the closure of the whole slice
            // again (most of the time of a batch whose items reach many stored entities).
            let new = own.iter().filter(|e| stored.get(&e.uid()).is_none());
            return joined(stored, &reach.copied, new, field);
        }
        let copied = reach.copied.iter().map(|&e| e.clone());
        let slice = Entities::from_entities(copied, None).map_err(invalid)?;
        over(slice, Some(stored))
    };
    let slice = build(&reach)?;
    let before = reach.copied.len();
    // The policies each request can match, kept for deciding it: the ancestors of its
    // principal, action and resource are all in `slice` already, so what is added below
    // (the entities those policies name) changes none of them.
    let mut picked = FastMap::default();
    let index = snapshot.index();
    let sliced = if options.slice_policies {
        requests
    } else {
        // Every request is decided with every policy: what all of them name.
        for uid in index.all_literals() {
            reach.add(uid.clone());
        }
        &[]
    };
    for request in sliced {
        let (Some(p), Some(a), Some(r)) =
            (request.principal(), request.action(), request.resource())
        else {
            continue;
        };
        let key = [p.clone(), a.clone(), r.clone()];
        if picked.contains_key(&key) {
            continue;
        }
        let (chosen, literals) = index.pick([p, a, r], &slice);
        for uid in literals {
            reach.add(uid.clone());
        }
        // Only small picks are kept (those the slicer keeps too): a batch of items that
        // each match most of a large set would otherwise hold all their lists at once.
        if chosen
            .as_ref()
            .is_none_or(|c| c.len() <= CACHED_SLICE_POLICIES)
        {
            picked.insert(key, chosen);
        }
    }
    reach.run();
    let entities = if reach.copied.len() == before {
        slice
    } else {
        build(&reach)?
    };
    Ok(Store {
        entities: Cow::Owned(entities),
        picked,
    })
}

/// Stored entities `copied` from `stored` and a call's `new` entities (none stored), in
/// one store, without Cedar working out the closure again.
///
/// Both are closed already: a stored entity's ancestors are the whole store's closure, and
/// the call's entities were built into an `Entities` of their own, closed among
/// themselves. What a new entity lacks are the ancestors of its stored ancestors, which
/// are added here from the store. A stored entity never has a new one among its ancestors
/// (a call may not define an entity the store names: see `admit`, and this is never used
/// with `"replace"`), so its closure stays right; and so the union is closed, as Cedar
/// would have worked it out (the differential in `tests/entity_slicing.rs` checks it).
fn joined<'a>(
    stored: &Entities,
    copied: &[&Entity],
    new: impl Iterator<Item = &'a Entity>,
    field: &str,
) -> Result<Entities, Refusal> {
    use cedar_policy_core::{
        ast,
        entities::{self as core, NoEntitiesSchema, TCComputation},
        extensions::Extensions,
    };
    let new = new.map(|entity| {
        let mut entity: ast::Entity = entity.as_ref().clone();
        let outside: Vec<ast::EntityUID> = entity
            .ancestors()
            .filter_map(|uid| stored.ancestors(EntityUid::ref_cast(uid)))
            .flatten()
            .map(|uid| uid.as_ref().clone())
            .collect();
        for uid in outside {
            entity.add_indirect_ancestor(uid);
        }
        entity
    });
    let all = copied.iter().map(|e| e.as_ref().clone()).chain(new);
    // Only a uid given twice could fail here, and none is: a stored entity is copied
    // once, and a new one is not stored.
    core::Entities::from_entities(
        all,
        None::<&NoEntitiesSchema>,
        TCComputation::AssumeAlreadyComputed,
        Extensions::all_available(),
    )
    .map(Entities::from)
    .map_err(|e| Refusal::invalid(field, describe(&e)))
}

/// Closure steps (see `hierarchy::closure`) up to which new entities are merged through
/// Cedar's upsert: a few entities with short parent chains, the common call, cost less
/// that way than rebuilding the union.
const UPSERT_STEPS: usize = 64;

/// The walk that finds the stored entities a call can reach.
///
/// A uid a policy can hold as a value (a root, or found in an attribute or tag) is
/// *used*: Cedar may read that entity's attributes and tags, so the uids in them are
/// used too. Its ancestors only need to be *present*: `in` reads the ancestors recorded
/// on the entity on its left, never the entity on its right, and no expression yields an
/// entity's ancestors as values, so an ancestor's own attributes are not followed (a group
/// whose `members` attribute names thousands of users does not bring them in), unless
/// that ancestor is also used.
struct Reach<'a> {
    stored: &'a Entities,
    own: &'a Entities,
    /// Uids whose entity (and ancestors) are in the slice.
    present: HashSet<EntityUid>,
    /// Uids whose attributes and tags have been followed.
    used: HashSet<EntityUid>,
    /// Uids still to look at, and whether each is used (else only present).
    queue: VecDeque<(EntityUid, bool)>,
    /// The stored entities reached, in the order found.
    copied: Vec<&'a Entity>,
}

impl<'a> Reach<'a> {
    fn new(stored: &'a Entities, own: &'a Entities) -> Self {
        Self {
            stored,
            own,
            present: HashSet::new(),
            used: HashSet::new(),
            queue: VecDeque::new(),
            copied: Vec::new(),
        }
    }

    /// A uid a policy can hold as a value.
    fn add(&mut self, uid: EntityUid) {
        if !self.used.contains(&uid) {
            self.used.insert(uid.clone());
            self.queue.push_back((uid, true));
        }
    }

    /// An ancestor of an entity in the slice.
    fn add_ancestor(&mut self, uid: EntityUid) {
        if !self.present.contains(&uid) {
            self.queue.push_back((uid, false));
        }
    }

    /// Every uid inside `value`.
    fn value(&mut self, value: &EvalResult) {
        match value {
            EvalResult::EntityUid(uid) => self.add(uid.clone()),
            EvalResult::Set(set) => set.iter().for_each(|v| self.value(v)),
            EvalResult::Record(record) => record.iter().for_each(|(_, v)| self.value(v)),
            EvalResult::Bool(_)
            | EvalResult::Long(_)
            | EvalResult::String(_)
            | EvalResult::ExtensionValue(_) => {}
        }
    }

    /// Takes in every uid queued: its entity, in the store and among the call's entities
    /// (both: the stored one's reach is more than needed when the call replaces it, never
    /// less), with its ancestors, and for a used uid the uids in its attributes and tags.
    fn run(&mut self) {
        while let Some((uid, used)) = self.queue.pop_front() {
            let first = !self.present.contains(&uid);
            if first {
                self.present.insert(uid.clone());
            }
            for store in [self.stored, self.own] {
                let Some(entity) = store.get(&uid) else {
                    continue;
                };
                if first {
                    if std::ptr::eq(store, self.stored) {
                        self.copied.push(entity);
                    }
                    if let Some(ancestors) = store.ancestors(&uid) {
                        for ancestor in ancestors {
                            self.add_ancestor(ancestor.clone());
                        }
                    }
                }
                if used {
                    let values: Vec<EvalResult> = entity
                        .attrs()
                        .chain(entity.tags())
                        .filter_map(|(_, v)| v.ok())
                        .collect();
                    for value in &values {
                        self.value(value);
                    }
                }
            }
        }
    }
}

fn check_count(field: &str, count: usize, options: &EngineOptions) -> Result<(), Refusal> {
    if count > options.max_request_entities {
        return Err(Refusal::limit(
            field,
            format!(
                "{count} entities is more than the limit of {} (max_request_entities)",
                options.max_request_entities
            ),
        ));
    }
    Ok(())
}

fn typed(
    snapshot: &Snapshot,
    list: Vec<EntityInput>,
    schema: Option<&Schema>,
    options: &EngineOptions,
    mode: RequestEntities,
) -> Result<(Entities, Vec<EntityUid>, usize), Refusal> {
    check_count("entities", list.len(), options)?;
    let nodes: Vec<_> = list
        .iter()
        .map(|e| (e.uid.clone(), e.parents.clone()))
        .collect();
    let steps = admit(
        snapshot,
        "entities",
        &nodes,
        |i| format!("entities[{i}].uid"),
        options,
        mode,
    )?;
    let sent = nodes.into_iter().map(|(uid, _)| uid).collect();
    let built = list
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            Entity::new_with_tags(e.uid, e.attrs, e.parents, e.tags)
                .map_err(|err| Refusal::invalid(format!("entities[{i}]"), describe(&err)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Entities::from_entities(built, schema)
        .map(|own| (own, sent, steps))
        .map_err(|e| Refusal::invalid("entities", describe(&e)))
}

fn from_json(
    snapshot: &Snapshot,
    json: &str,
    schema: Option<&Schema>,
    options: &EngineOptions,
    mode: RequestEntities,
) -> Result<(Entities, Vec<EntityUid>, usize), Refusal> {
    const FIELD: &str = "entities_json";
    // The list and each entity's own object add two levels around the values.
    json::guard(FIELD, json, 2, options)?;
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Refusal::invalid(FIELD, format!("invalid JSON: {e}")))?;
    let list = value
        .as_array()
        .ok_or_else(|| Refusal::invalid(FIELD, "must be a JSON array of entities"))?;
    check_count(FIELD, list.len(), options)?;
    // Every uid as Cedar reads it: one the checks below could not see must not reach
    // Cedar at all.
    let nodes: Vec<_> = list
        .iter()
        .enumerate()
        .map(|(i, entity)| {
            json_entity_uids(entity)
                .map_err(|bad| Refusal::invalid(format!("{FIELD}[{i}].{}", bad.part), bad.message))
        })
        .collect::<Result<_, _>>()?;
    let steps = admit(
        snapshot,
        FIELD,
        &nodes,
        |i| format!("{FIELD}[{i}].uid"),
        options,
        mode,
    )?;
    let sent: Vec<EntityUid> = nodes.into_iter().map(|(uid, _)| uid).collect();
    let own = Entities::from_json_value(value, schema)
        .map_err(|e| Refusal::invalid(FIELD, describe(&e)))?;
    // What Cedar built holds what was checked and nothing else (but the schema's
    // actions, which the store holds too).
    let checked: FastSet<&EntityUid> = sent.iter().collect();
    if let Some(unseen) = own
        .iter()
        .map(Entity::uid)
        .find(|uid| !checked.contains(uid) && snapshot.entities().get(uid).is_none())
    {
        return Err(Refusal::invalid(
            FIELD,
            format!("{unseen} was read differently by the checks and by Cedar; refused"),
        ));
    }
    Ok((own, sent, steps))
}
