//! One authorization question as a policy author writes it, in a test case, a request file
//! for `authorize`, or its flags, and the way it becomes the decide step's [`Query`] — the same
//! engine, request validation and limits `serve` uses, so a case passes here exactly when
//! the server would answer the same.

use std::{fmt, str::FromStr};

use cedar_policy::EntityUid;
use serde::{Deserialize, Deserializer, de};
use serde_json::{Map, Value};

use crate::decide::{ContextInput, EntitiesInput, Query};

/// An entity uid, written as Cedar writes it (`Platform::User::"alice"`) or as Cedar's JSON
/// form (`{type: Platform::User, id: alice}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uid(pub EntityUid);

impl FromStr for Uid {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        EntityUid::from_str(text.trim()).map(Uid).map_err(|e| {
            format!(
                "`{text}` is not an entity uid ({}); write it as Type::\"id\", \
                 e.g. Platform::User::\"alice\"",
                crate::policy::describe(&e)
            )
        })
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Uid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor rather than an untagged enum: errors raised while the field is being
        // read keep the file's line and column.
        struct UidVisitor;

        impl<'de> de::Visitor<'de> for UidVisitor {
            type Value = Uid;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an entity uid: Type::\"id\" or {type: Type, id: \"id\"}")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Uid, E> {
                text.parse().map_err(E::custom)
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Uid, A::Error> {
                let (mut ty, mut id) = (None::<String>, None::<String>);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "type" => ty = Some(map.next_value()?),
                        "id" => id = Some(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, &["type", "id"])),
                    }
                }
                let ty = ty.ok_or_else(|| de::Error::missing_field("type"))?;
                let id = id.ok_or_else(|| de::Error::missing_field("id"))?;
                let name = cedar_policy::EntityTypeName::from_str(&ty).map_err(|e| {
                    de::Error::custom(format!(
                        "`{ty}` is not an entity type: {}",
                        crate::policy::describe(&e)
                    ))
                })?;
                let id = cedar_policy::EntityId::new(id);
                Ok(Uid(EntityUid::from_type_name_and_id(name, id)))
            }
        }

        deserializer.deserialize_any(UidVisitor)
    }
}

/// A request: who, doing what, to what, in which circumstances, with which extra entities.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// Who asks.
    pub principal: Uid,
    /// What they want to do.
    pub action: Uid,
    /// To what.
    pub resource: Uid,
    /// Cedar's JSON context format; with a schema, extension values may be given as
    /// `{"__extn": {"fn": "ip", "arg": "10.0.0.1"}}`.
    pub context: Map<String, Value>,
    /// Entities sent with the request, in Cedar's JSON entity format; they replace stored
    /// entities with the same uid.
    pub entities: Vec<Value>,
}

/// Keys of a test case that a request file may carry (so that a failing case can be
/// given to `authorize` as it is); they say nothing about the request itself.
const CASE_ONLY: [&str; 5] = [
    "name",
    "expect",
    "determining",
    "errors",
    "allow_unknown_entities",
];

impl RequestSpec {
    /// A request from the fields of a request file (with any flags laid over them): each
    /// field is read on its own, so an error names it. A test case's own keys are ignored.
    pub fn from_fields(mut fields: Map<String, Value>) -> Result<Self, String> {
        fn take<T: serde::de::DeserializeOwned>(
            fields: &mut Map<String, Value>,
            key: &str,
        ) -> Result<Option<T>, String> {
            fields
                .remove(key)
                .map(|value| serde_json::from_value(value).map_err(|e| format!("{key}: {e}")))
                .transpose()
        }
        fn required<T>(value: Option<T>, key: &str) -> Result<T, String> {
            value.ok_or_else(|| {
                format!("no `{key}` (give --{key}, or `{key}` in the --request file)")
            })
        }
        for key in CASE_ONLY {
            fields.remove(key);
        }
        const FIELDS: [&str; 5] = ["principal", "action", "resource", "context", "entities"];
        if let Some(key) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "unknown field `{key}`; a request has principal, action, resource, context \
                 and entities (one request, or one case of a case file)"
            ));
        }
        let principal = required(take(&mut fields, "principal")?, "principal")?;
        let action = required(take(&mut fields, "action")?, "action")?;
        let resource = required(take(&mut fields, "resource")?, "resource")?;
        let context = take(&mut fields, "context")?.unwrap_or_default();
        let entities = take(&mut fields, "entities")?.unwrap_or_default();
        Ok(Self {
            principal,
            action,
            resource,
            context,
            entities,
        })
    }

    /// The engine's query and the request's entities.
    pub fn query(&self) -> (Query, EntitiesInput) {
        let query = Query {
            principal: self.principal.0.clone(),
            action: self.action.0.clone(),
            resource: self.resource.0.clone(),
            context: ContextInput::Json(to_json(&self.context)),
        };
        let entities = match self.entities.is_empty() {
            true => EntitiesInput::None,
            false => EntitiesInput::Json(to_json(&self.entities)),
        };
        (query, entities)
    }
}

/// JSON text of a value read from JSON or YAML (which always serializes).
fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("JSON values serialize")
}

/// `extra` placed over `base`: an entity of `extra` replaces one of `base` with the same
/// uid. For a test file's shared entities and a case's own.
pub fn merge_entities(base: &[Value], extra: &[Value]) -> Vec<Value> {
    let uid = |e: &Value| crate::policy::entity_uid(e);
    let replaced: std::collections::HashSet<String> = extra.iter().filter_map(uid).collect();
    base.iter()
        .filter(|e| uid(e).is_none_or(|u| !replaced.contains(&u)))
        .chain(extra)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_case_entity_replaces_a_file_entity_with_the_same_uid_only() {
        let base = [
            json!({"uid": {"type": "U", "id": "a"}, "attrs": {"n": 1}}),
            json!({"uid": {"type": "U", "id": "b"}, "attrs": {"n": 1}}),
        ];
        let extra = [json!({"uid": {"type": "U", "id": "a"}, "attrs": {"n": 2}})];
        let merged = merge_entities(&base, &extra);
        assert_eq!(merged, [base[1].clone(), extra[0].clone()]);
    }

    #[test]
    fn a_uid_reads_from_cedar_text_or_json_parts_and_names_what_is_wrong() {
        let text: Uid = serde_json::from_value(json!("A::B::\"x y\"")).unwrap();
        let parts: Uid = serde_json::from_value(json!({"type": "A::B", "id": "x y"})).unwrap();
        assert_eq!(text, parts);
        let bad = serde_json::from_value::<Uid>(json!("alice")).unwrap_err();
        assert!(
            bad.to_string().contains("`alice` is not an entity uid"),
            "{bad}"
        );
        let bad = serde_json::from_value::<Uid>(json!({"type": "A"})).unwrap_err();
        assert!(bad.to_string().contains("missing field `id`"), "{bad}");
        let bad = serde_json::from_value::<Uid>(json!(3)).unwrap_err();
        assert!(bad.to_string().contains("entity uid"), "{bad}");
    }
}
