//! Reading uids and parent edges out of Cedar's JSON entity format without building the
//! entities: the hierarchy limits are checked on these before Cedar sees a request's or
//! a policy directory's entities (`hierarchy`), and the CLI names entities by them.
//!
//! Uids are read with Cedar's own parser ([`EntityUid::from_json`]), so that every form
//! Cedar takes (`{"type", "id"}`, `{"__entity": {…}}`, and the plain form beside an
//! `__entity` key Cedar ignores) is read here as Cedar reads it: a uid the checks could
//! not see would slip past them.

use cedar_policy::EntityUid;

/// A part of one entity in Cedar's JSON format that is not a uid Cedar takes: the part
/// (`uid`, `parents`, `parents[2]`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadUid {
    /// The part at fault, relative to the entity.
    pub part: String,
    /// Why.
    pub message: String,
}

/// The uid and parent uids of one entity in Cedar's JSON entity format, read as Cedar
/// reads them; or the part Cedar would refuse.
pub fn json_entity_uids(entity: &serde_json::Value) -> Result<(EntityUid, Vec<EntityUid>), BadUid> {
    let bad = |part: String, message: String| BadUid { part, message };
    let uid = entity
        .get("uid")
        .ok_or_else(|| bad("uid".to_owned(), "is missing".to_owned()))?;
    let uid = cedar_uid(uid).map_err(|message| bad("uid".to_owned(), message))?;
    let parents = match entity.get("parents") {
        None => Vec::new(),
        Some(list) => list
            .as_array()
            .ok_or_else(|| bad("parents".to_owned(), "is not a list".to_owned()))?
            .iter()
            .enumerate()
            .map(|(j, parent)| {
                cedar_uid(parent).map_err(|message| bad(format!("parents[{j}]"), message))
            })
            .collect::<Result<_, _>>()?,
    };
    Ok((uid, parents))
}

/// A uid in Cedar's JSON form, by Cedar's parser.
fn cedar_uid(value: &serde_json::Value) -> Result<EntityUid, String> {
    EntityUid::from_json(value.clone()).map_err(|e| super::describe(&e))
}

/// The uid and parent uids of one entity, as display strings (for naming entities in
/// messages); `None` when Cedar would not take its uid.
pub fn json_uid_and_parents(entity: &serde_json::Value) -> Option<(String, Vec<String>)> {
    let (uid, parents) = json_entity_uids(entity).ok()?;
    Some((
        uid.to_string(),
        parents.iter().map(ToString::to_string).collect(),
    ))
}

/// The uid of one entity in Cedar's JSON entity format, as a display string.
pub fn entity_uid(entity: &serde_json::Value) -> Option<String> {
    cedar_uid(entity.get("uid")?)
        .ok()
        .map(|uid| uid.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_form_cedar_takes_is_read_as_cedar_reads_it() {
        let plain =
            json!({"uid": {"type": "User", "id": "a"}, "parents": [{"type": "G", "id": "g"}]});
        let escaped = json!({"uid": {"__entity": {"type": "User", "id": "a"}},
                             "parents": [{"__entity": {"type": "G", "id": "g"}}]});
        // Cedar ignores an `__entity` key it cannot read and takes the plain form beside it.
        let beside = json!({"uid": {"__entity": null, "type": "User", "id": "a"},
                            "parents": [{"__entity": 3, "type": "G", "id": "g"}]});
        let expected = json_entity_uids(&plain).unwrap();
        assert_eq!(expected.0.to_string(), r#"User::"a""#);
        for entity in [&escaped, &beside] {
            assert_eq!(json_entity_uids(entity).unwrap(), expected, "{entity}");
        }
    }

    #[test]
    fn a_part_cedar_refuses_is_named() {
        let no_uid = json!({"attrs": {}});
        assert_eq!(json_entity_uids(&no_uid).unwrap_err().part, "uid");
        let bad_parent = json!({"uid": {"type": "User", "id": "a"},
                                "parents": [{"type": "G", "id": "g"}, {"type": "G"}]});
        assert_eq!(
            json_entity_uids(&bad_parent).unwrap_err().part,
            "parents[1]"
        );
        let not_a_list = json!({"uid": {"type": "User", "id": "a"}, "parents": 7});
        assert_eq!(json_entity_uids(&not_a_list).unwrap_err().part, "parents");
    }
}
