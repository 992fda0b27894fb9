//! The stored entities indexed for search (the AuthZEN search APIs): by type in a stable
//! order, by the entities they are in, and the actions a search can offer. Built once per
//! snapshot, on the first search, and never changed.

use cedar_policy::{Entities, EntityTypeName, EntityUid, PolicySet, Schema};

use super::{FastMap, FastSet};

/// The stored entities, indexed for search.
#[derive(Debug, Default)]
pub struct Members {
    /// Entities of each type, sorted by id.
    by_type: FastMap<EntityTypeName, Box<[EntityUid]>>,
    /// For each entity, every stored entity in it (directly or transitively).
    within: FastMap<EntityUid, Box<[EntityUid]>>,
    /// The actions a search offers, sorted by type, then id.
    actions: Box<[EntityUid]>,
}

/// The order search results come in: by id, then by type.
pub fn search_order(a: &EntityUid, b: &EntityUid) -> std::cmp::Ordering {
    a.id()
        .unescaped()
        .cmp(b.id().unescaped())
        .then_with(|| a.type_name().to_string().cmp(&b.type_name().to_string()))
}

impl Members {
    /// Indexes `entities`; the actions are the schema's, or without one, the `Action`
    /// entities stored and those the policies' scopes name.
    pub fn new(entities: &Entities, schema: Option<&Schema>, policies: &PolicySet) -> Self {
        let mut by_type: FastMap<EntityTypeName, Vec<EntityUid>> = FastMap::default();
        let mut within: FastMap<EntityUid, Vec<EntityUid>> = FastMap::default();
        let mut actions: FastSet<EntityUid> = FastSet::default();
        for entity in entities.iter() {
            let uid = entity.uid();
            for ancestor in entities.ancestors(&uid).into_iter().flatten() {
                within
                    .entry(ancestor.clone())
                    .or_default()
                    .push(uid.clone());
            }
            if is_action(&uid) {
                actions.insert(uid.clone());
            }
            by_type
                .entry(uid.type_name().clone())
                .or_default()
                .push(uid);
        }
        match schema {
            Some(schema) => {
                actions = schema.actions().cloned().collect();
            }
            None => {
                for policy in policies.policies() {
                    match policy.action_constraint() {
                        cedar_policy::ActionConstraint::Any => {}
                        cedar_policy::ActionConstraint::Eq(e) => {
                            actions.insert(e);
                        }
                        cedar_policy::ActionConstraint::In(list) => actions.extend(list),
                    }
                }
            }
        }
        let sorted = |mut uids: Vec<EntityUid>| {
            uids.sort_by(search_order);
            uids.into_boxed_slice()
        };
        let mut actions: Vec<EntityUid> = actions.into_iter().collect();
        actions.sort_by(|a, b| {
            (a.type_name().to_string(), a.id().unescaped())
                .cmp(&(b.type_name().to_string(), b.id().unescaped()))
        });
        Self {
            by_type: by_type.into_iter().map(|(t, u)| (t, sorted(u))).collect(),
            within: within.into_iter().map(|(t, u)| (t, sorted(u))).collect(),
            actions: actions.into_boxed_slice(),
        }
    }

    /// The stored entities of type `t`, in [`search_order`].
    pub fn of_type(&self, t: &EntityTypeName) -> &[EntityUid] {
        self.by_type.get(t).map_or(&[], |u| u)
    }

    /// The stored entities in `e` (not `e` itself), in [`search_order`].
    pub fn within(&self, e: &EntityUid) -> &[EntityUid] {
        self.within.get(e).map_or(&[], |u| u)
    }

    /// The actions a search offers.
    pub fn actions(&self) -> &[EntityUid] {
        &self.actions
    }
}

/// Whether `uid` is an action (of type `Action`, in any namespace).
fn is_action(uid: &EntityUid) -> bool {
    uid.type_name().basename() == "Action"
}
