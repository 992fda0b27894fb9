//! The schema's declared shapes, to say which context attribute is wrong when Cedar only
//! says "context is not valid".
//!
//! Runs on the error path only. Walks the action's declared context type in the schema's
//! JSON form next to the context's Cedar JSON form and reports the first difference: a
//! missing required attribute, an undeclared one, or a value of the wrong type, each with
//! its path (`context.net.src_ip`).

use serde_json::{Map, Value};

use cedar_policy::EntityUid;

/// The schema in Cedar's JSON schema format, indexed for lookups by namespace.
#[derive(Debug)]
pub struct SchemaShape {
    json: Map<String, Value>,
}

impl SchemaShape {
    /// Wraps a schema in Cedar's JSON format (namespace → definitions).
    pub fn new(json: Value) -> Option<Self> {
        match json {
            Value::Object(json) => Some(Self { json }),
            _ => None,
        }
    }

    /// The first way `context` (Cedar JSON) does not fit `action`'s declared context,
    /// as `(path, problem)` with paths under `root`.
    pub fn explain_context(
        &self,
        action: &EntityUid,
        context: &Value,
        root: &str,
    ) -> Option<(String, String)> {
        let type_name = action.type_name().to_string();
        let namespace = type_name
            .strip_suffix("Action")
            .map(|ns| ns.trim_end_matches("::"))
            .unwrap_or("");
        let declared = self
            .json
            .get(namespace)?
            .get("actions")?
            .get(action.id().unescaped())?
            .get("appliesTo")?
            .get("context");
        let empty = serde_json::json!({"type": "Record", "attributes": {}});
        let declared = declared.unwrap_or(&empty);
        self.mismatch(namespace, declared, context, root)
    }

    /// Takes out of `context` (Cedar JSON, before it is parsed) the keys `action`'s declared
    /// context does not have, and out of its records named in `records` the attributes
    /// their declared record type does not have; returns the paths taken out (`subject.x`,
    /// `time`). `None` (nothing taken) when the schema does not declare `action`: the
    /// request's validation then names it.
    pub fn prune_context(
        &self,
        action: &EntityUid,
        context: &mut Map<String, Value>,
        records: &[&str],
    ) -> Option<Vec<String>> {
        let type_name = action.type_name().to_string();
        let namespace = type_name
            .strip_suffix("Action")
            .map(|ns| ns.trim_end_matches("::"))
            .unwrap_or("");
        let applies = self
            .json
            .get(namespace)?
            .get("actions")?
            .get(action.id().unescaped())?;
        let empty = serde_json::json!({"type": "Record", "attributes": {}});
        let declared = applies
            .get("appliesTo")
            .and_then(|a| a.get("context"))
            .unwrap_or(&empty);
        let Shape::Record(attributes) = self.shape(namespace, declared) else {
            return Some(Vec::new());
        };
        let mut dropped = Vec::new();
        context.retain(|key, _| {
            let keep = attributes.contains_key(key);
            if !keep {
                dropped.push(key.clone());
            }
            keep
        });
        for record in records {
            let (Some(Value::Object(fields)), Some(ty)) =
                (context.get_mut(*record), attributes.get(*record))
            else {
                continue;
            };
            if let Shape::Record(inner) = self.shape(namespace, ty) {
                fields.retain(|key, _| {
                    let keep = inner.contains_key(key);
                    if !keep {
                        dropped.push(format!("{record}.{key}"));
                    }
                    keep
                });
            }
        }
        Some(dropped)
    }

    /// What a declared type is, following common-type names. In Cedar's JSON schema a
    /// name may be written `{"type": "EntityOrCommon", "name": N}`: a common type if one
    /// is declared, else a primitive or extension of that name, else an entity type.
    fn shape<'a>(&'a self, namespace: &str, ty: &'a Value) -> Shape<'a> {
        let kind = ty.get("type").and_then(Value::as_str).unwrap_or_default();
        let name = ty.get("name").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "Boolean" => Shape::Bool,
            "Long" => Shape::Long,
            "String" => Shape::String,
            "Set" => ty.get("element").map_or(Shape::Unknown, Shape::Set),
            "Record" => ty
                .get("attributes")
                .and_then(Value::as_object)
                .map_or(Shape::Unknown, Shape::Record),
            "Entity" => Shape::Entity(name),
            "Extension" => Shape::Extension(name),
            "EntityOrCommon" => self.named(namespace, name, true),
            other => self.named(namespace, other, false),
        }
    }

    fn named<'a>(&'a self, namespace: &str, name: &'a str, may_be_entity: bool) -> Shape<'a> {
        if let Some(common) = self.common_type(namespace, name) {
            return self.shape(namespace, common);
        }
        match name.strip_prefix("__cedar::").unwrap_or(name) {
            "Bool" | "Boolean" => Shape::Bool,
            "Long" => Shape::Long,
            "String" => Shape::String,
            ext @ ("ipaddr" | "decimal" | "datetime" | "duration") => Shape::Extension(ext),
            _ if may_be_entity => Shape::Entity(name),
            _ => Shape::Unknown,
        }
    }

    fn common_type(&self, namespace: &str, name: &str) -> Option<&Value> {
        let (ns, base) = match name.rsplit_once("::") {
            Some((ns, base)) => (ns, base),
            None => (namespace, name),
        };
        let lookup = |ns: &str| self.json.get(ns)?.get("commonTypes")?.get(base);
        lookup(ns).or_else(|| lookup(""))
    }

    fn mismatch(
        &self,
        namespace: &str,
        ty: &Value,
        value: &Value,
        path: &str,
    ) -> Option<(String, String)> {
        let wrong = |expected: &str| {
            Some((
                path.to_owned(),
                format!("expected {expected}, got {}", describe_value(value)),
            ))
        };
        match self.shape(namespace, ty) {
            Shape::Bool if !value.is_boolean() => wrong("Bool"),
            Shape::Long if !value.is_i64() => wrong("Long"),
            Shape::String if !value.is_string() => wrong("String"),
            Shape::Set(element) => match value.as_array() {
                None => wrong("Set"),
                Some(items) => items.iter().enumerate().find_map(|(i, item)| {
                    self.mismatch(namespace, element, item, &format!("{path}[{i}]"))
                }),
            },
            Shape::Record(attributes) => {
                let Some(fields) = value.as_object().filter(|o| !is_escape(o)) else {
                    return wrong("Record");
                };
                for (name, attr) in attributes {
                    let required = attr
                        .get("required")
                        .and_then(Value::as_bool)
                        .unwrap_or(true);
                    if required && !fields.contains_key(name) {
                        return Some((
                            format!("{path}.{name}"),
                            "is required by the schema but missing".to_owned(),
                        ));
                    }
                }
                fields.iter().find_map(|(name, field)| {
                    let field_path = format!("{path}.{name}");
                    match attributes.get(name) {
                        None => Some((field_path, "is not declared in the schema".to_owned())),
                        Some(attr) => self.mismatch(namespace, attr, field, &field_path),
                    }
                })
            }
            Shape::Entity(expected) if value.get("__entity").is_none() => {
                wrong(&format!("an entity of type {expected}"))
            }
            Shape::Extension(expected) => {
                let actual = value
                    .get("__extn")
                    .and_then(|e| e.get("fn"))
                    .and_then(Value::as_str)
                    .map(|f| if f == "ip" { "ipaddr" } else { f });
                if actual == Some(expected) {
                    None
                } else {
                    wrong(expected)
                }
            }
            _ => None,
        }
    }
}

/// A declared type, resolved.
enum Shape<'a> {
    Bool,
    Long,
    String,
    Set(&'a Value),
    Record(&'a Map<String, Value>),
    Entity(&'a str),
    Extension(&'a str),
    Unknown,
}

fn is_escape(object: &Map<String, Value>) -> bool {
    object.contains_key("__entity") || object.contains_key("__extn")
}

/// A short account of a Cedar JSON value: its kind and, for scalars, the value.
fn describe_value(value: &Value) -> String {
    match value {
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("long {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a set".to_owned(),
        Value::Object(o) => {
            if let Some(e) = o.get("__entity") {
                format!(
                    "entity {}::{}",
                    str_of(e, "type"),
                    serde_json::json!(str_of(e, "id"))
                )
            } else if let Some(e) = o.get("__extn") {
                format!("{}({:?})", str_of(e, "fn"), str_of(e, "arg"))
            } else {
                "a record".to_owned()
            }
        }
        Value::Null => "null".to_owned(),
    }
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use cedar_policy::SchemaFragment;
    use serde_json::json;

    use super::*;

    fn shape() -> SchemaShape {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/platform.cedarschema"
        ))
        .unwrap();
        let (fragment, _) = SchemaFragment::from_cedarschema_str(&text).unwrap();
        SchemaShape::new(fragment.to_json_value().unwrap()).unwrap()
    }

    fn read() -> EntityUid {
        EntityUid::from_str(r#"Platform::Action::"read""#).unwrap()
    }

    #[test]
    fn names_the_attribute_of_the_wrong_type() {
        let found = shape().explain_context(&read(), &json!({"mfa": 1}), "context");
        assert_eq!(
            found,
            Some(("context.mfa".into(), "expected Bool, got long 1".into()))
        );
        let found = shape().explain_context(
            &read(),
            &json!({"source_ip": {"__extn": {"fn": "decimal", "arg": "1.0"}}}),
            "context_json",
        );
        assert_eq!(
            found,
            Some((
                "context_json.source_ip".into(),
                "expected ipaddr, got decimal(\"1.0\")".into()
            ))
        );
    }

    #[test]
    fn names_undeclared_attributes_and_accepts_good_contexts() {
        let found = shape().explain_context(&read(), &json!({"colour": "red"}), "context");
        assert_eq!(
            found,
            Some((
                "context.colour".into(),
                "is not declared in the schema".into()
            ))
        );
        let good = json!({"mfa": true, "source_ip": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}}});
        assert_eq!(shape().explain_context(&read(), &good, "context"), None);
    }
}
