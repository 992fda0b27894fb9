//! Merging a call's entities over the snapshot's stored ones.
//!
//! The call's entities are checked first (count, parent chains, JSON nesting), then built
//! and validated against the schema on their own, and only then merged over the store:
//! a call's entity replaces the stored one with the same uid, for that call only.

use std::borrow::Cow;

use cedar_policy::{Entities, Entity, Schema};

use super::{EngineOptions, EntitiesInput, EntityInput, RequestError, json};
use crate::policy::{Snapshot, describe, hierarchy, json_uid_and_parents};

pub(super) fn merge<'s>(
    snapshot: &'s Snapshot,
    input: EntitiesInput,
    options: &EngineOptions,
) -> Result<Cow<'s, Entities>, RequestError> {
    let schema = snapshot.schema().filter(|_| options.validate_requests);
    let (field, own) = match input {
        EntitiesInput::None => return Ok(Cow::Borrowed(snapshot.entities())),
        EntitiesInput::Typed(list) if list.is_empty() => {
            return Ok(Cow::Borrowed(snapshot.entities()));
        }
        EntitiesInput::Json(json) if json.trim().is_empty() => {
            return Ok(Cow::Borrowed(snapshot.entities()));
        }
        EntitiesInput::Typed(list) => ("entities", typed(list, schema, options)?),
        EntitiesInput::Json(json) => ("entities_json", from_json(&json, schema, options)?),
    };
    // Cedar's upsert replaces stored entities of the same uid and repairs the transitive
    // closure only around what changed; the clone shares every stored entity.
    snapshot
        .entities()
        .clone()
        .upsert_entities(own.iter().cloned(), None)
        .map(Cow::Owned)
        .map_err(|e| RequestError::invalid(field, describe(&e)))
}

fn check_count(field: &str, count: usize, options: &EngineOptions) -> Result<(), RequestError> {
    if count > options.max_request_entities {
        return Err(RequestError::limit(
            field,
            format!(
                "{count} entities is more than the limit of {} (max_request_entities)",
                options.max_request_entities
            ),
        ));
    }
    Ok(())
}

fn check_hierarchy<K>(
    field: &str,
    nodes: &[(K, Vec<K>)],
    options: &EngineOptions,
) -> Result<(), RequestError>
where
    K: std::hash::Hash + Eq + std::fmt::Display,
{
    hierarchy::check(nodes, options.max_ancestor_depth).map_err(|e| match e {
        hierarchy::HierarchyError::TooDeep { .. } => {
            RequestError::limit(field, format!("{e} (max_ancestor_depth)"))
        }
        hierarchy::HierarchyError::Cycle { .. } => RequestError::invalid(field, e.to_string()),
    })
}

fn typed(
    list: Vec<EntityInput>,
    schema: Option<&Schema>,
    options: &EngineOptions,
) -> Result<Entities, RequestError> {
    check_count("entities", list.len(), options)?;
    let nodes: Vec<_> = list
        .iter()
        .map(|e| (e.uid.clone(), e.parents.clone()))
        .collect();
    check_hierarchy("entities", &nodes, options)?;
    let built = list
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            Entity::new_with_tags(e.uid, e.attrs, e.parents, e.tags)
                .map_err(|err| RequestError::invalid(format!("entities[{i}]"), describe(&err)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Entities::from_entities(built, schema)
        .map_err(|e| RequestError::invalid("entities", describe(&e)))
}

fn from_json(
    json: &str,
    schema: Option<&Schema>,
    options: &EngineOptions,
) -> Result<Entities, RequestError> {
    const FIELD: &str = "entities_json";
    // The list and each entity's own object add two levels around the values.
    json::guard(FIELD, json, 2, options)?;
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| RequestError::invalid(FIELD, format!("invalid JSON: {e}")))?;
    let list = value
        .as_array()
        .ok_or_else(|| RequestError::invalid(FIELD, "must be a JSON array of entities"))?;
    check_count(FIELD, list.len(), options)?;
    let nodes: Vec<_> = list.iter().filter_map(json_uid_and_parents).collect();
    check_hierarchy(FIELD, &nodes, options)?;
    Entities::from_json_value(value, schema).map_err(|e| RequestError::invalid(FIELD, describe(&e)))
}
