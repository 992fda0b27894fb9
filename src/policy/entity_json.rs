//! Reading uids and parent edges out of Cedar's JSON entity format without building the
//! entities: the hierarchy limits are checked on these before Cedar sees a request's or
//! a policy directory's entities (`hierarchy`), and the CLI names entities by them.

use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};

/// The uid and parent uids of one entity in Cedar's JSON entity format, as display
/// strings, for the hierarchy check; `None` when malformed (Cedar then says why).
pub fn json_uid_and_parents(entity: &serde_json::Value) -> Option<(String, Vec<String>)> {
    let parents = match entity.get("parents") {
        Some(list) => list.as_array()?.iter().filter_map(json_uid).collect(),
        None => Vec::new(),
    };
    Some((entity_uid(entity)?, parents))
}

/// The uid and parent uids of one entity in Cedar's JSON entity format; `None` when its
/// uid is malformed (Cedar then says why), and malformed parents left out.
pub fn json_entity_uids(entity: &serde_json::Value) -> Option<(EntityUid, Vec<EntityUid>)> {
    let parents = match entity.get("parents") {
        Some(list) => list.as_array()?.iter().filter_map(cedar_uid).collect(),
        None => Vec::new(),
    };
    Some((cedar_uid(entity.get("uid")?)?, parents))
}

/// A uid in Cedar's JSON form as Cedar's own type.
fn cedar_uid(value: &serde_json::Value) -> Option<EntityUid> {
    let value = value.get("__entity").unwrap_or(value);
    let ty = EntityTypeName::from_str(value.get("type")?.as_str()?).ok()?;
    let id = value.get("id")?.as_str()?;
    Some(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

/// The uid of one entity in Cedar's JSON entity format, as a display string.
pub fn entity_uid(entity: &serde_json::Value) -> Option<String> {
    json_uid(entity.get("uid")?)
}

/// A uid in Cedar's JSON form (`{"type", "id"}`, optionally under `__entity`).
fn json_uid(value: &serde_json::Value) -> Option<String> {
    let value = value.get("__entity").unwrap_or(value);
    let ty = value.get("type")?.as_str()?;
    let id = value.get("id")?.as_str()?;
    Some(format!("{ty}::{id:?}"))
}
