//! `entities.json`: the stored entities, checked against the limits (count, parent chain,
//! parent edges, the closure Cedar would work out) before Cedar builds them, and
//! validated against the schema.

use cedar_policy::{Entities, Schema};

use super::{
    LoadOptions,
    policies::array_element_starts,
    read::{Kind, Source},
};
use crate::policy::{
    Lines, Location, Problem, describe,
    entity_json::{json_entity_uids, json_uid_and_parents},
    hierarchy,
};

/// The stored entities and how many `entities.json` held, or `None` after reporting why
/// they cannot be loaded.
pub(super) fn load_entities(
    sources: &[Source],
    schema: Option<&Schema>,
    options: &LoadOptions,
    problems: &mut Vec<Problem>,
) -> Option<(Entities, usize)> {
    let Some(source) = sources.iter().find(|s| s.kind == Kind::Entities) else {
        return match Entities::from_entities([], schema) {
            Ok(entities) => Some((entities, 0)),
            Err(e) => {
                problems.push(Problem::new(
                    Location::file("(schema actions)"),
                    e.to_string(),
                ));
                None
            }
        };
    };
    let mut fail = |location: Location, message: String| {
        problems.push(Problem::new(location, message));
        None
    };
    let json: serde_json::Value = match serde_json::from_str(&source.text) {
        Ok(json) => json,
        Err(e) => {
            let location = Location {
                file: source.rel.clone(),
                line: Some(e.line().max(1)),
                // serde_json says column 0 for an error at the start of a line.
                column: Some(e.column().max(1)),
            };
            return fail(location, format!("invalid JSON: {e}"));
        }
    };
    let Some(list) = json.as_array() else {
        return fail(
            Location::file(source.rel.clone()),
            "must be a JSON array of entities".to_owned(),
        );
    };
    if list.len() > options.max_store_entities {
        return fail(
            Location::file(source.rel.clone()),
            format!(
                "holds {} entities, more than the limit of {} (max_store_entities)",
                list.len(),
                options.max_store_entities
            ),
        );
    }
    // Read as Cedar reads them; an entity Cedar would not take is refused by Cedar below.
    let nodes: Vec<_> = list
        .iter()
        .filter_map(|entity| json_entity_uids(entity).ok())
        .collect();
    if let Err(e) = hierarchy::check(&nodes, options.max_ancestor_depth) {
        return fail(
            Location::file(source.rel.clone()),
            format!("{e} (max_ancestor_depth)"),
        );
    }
    let closure = hierarchy::closure(
        &nodes,
        |_| 0,
        options.max_parent_edges,
        options.max_ancestor_closure,
    );
    if let Err(e) = closure {
        let limit = match e {
            hierarchy::ClosureError::Edges { .. } => "max_store_parent_edges",
            hierarchy::ClosureError::Closure { .. } => "max_store_ancestor_closure",
        };
        return fail(Location::file(source.rel.clone()), format!("{e} ({limit})"));
    }
    let count = list.len();
    match Entities::from_json_value(json.clone(), schema) {
        Ok(entities) => Some((entities, count)),
        Err(e) => {
            let found = entity_problems(source, list, schema);
            if found.is_empty() {
                fail(Location::file(source.rel.clone()), describe(&e))
            } else {
                problems.extend(found);
                None
            }
        }
    }
}

/// Every entity of `list` (the parsed text of `source`) that fails on its own, each
/// located at its line: Cedar stops at the first bad entity and does not say where it is.
/// Empty when each entity is fine alone (the fault is between entities, e.g. a uid used
/// twice), and the caller then reports Cedar's message for the whole file.
pub(super) fn entity_problems(
    source: &Source,
    list: &[serde_json::Value],
    schema: Option<&Schema>,
) -> Vec<Problem> {
    let starts = array_element_starts(&source.text);
    let lines = Lines::new(&source.text);
    let location = |i: usize| match starts.get(i) {
        Some(&offset) if starts.len() == list.len() => lines.locate(source.rel.clone(), offset),
        _ => Location::file(source.rel.clone()),
    };
    list.iter()
        .enumerate()
        .filter_map(|(i, entity)| {
            let alone = serde_json::Value::Array(vec![entity.clone()]);
            let e = Entities::from_json_value(alone, schema).err()?;
            let name = json_uid_and_parents(entity).map_or_else(
                || format!("entity [{i}]"),
                |(uid, _)| format!("entity {uid}"),
            );
            Some(Problem::new(
                location(i),
                format!("{name}: {}", describe(&e)),
            ))
        })
        .collect()
}
