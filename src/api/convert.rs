//! Wire types (`cedarpdp.v1`) to engine types. Every error names the request field at
//! fault, as a path: `context.net.src_ip`, `entities[2].parents[0].type`.

use std::{collections::HashMap, str::FromStr};

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid, RestrictedExpression};

use crate::{
    engine::{ContextInput, EntitiesInput, EntityInput, Query, RequestError},
    policy::describe,
    proto::cedarpdp::v1 as pb,
};

/// Converts wire values, refusing nesting deeper than `max_value_depth` and strings
/// longer than `max_string_bytes`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Converter {
    pub(crate) max_value_depth: usize,
    pub(crate) max_string_bytes: usize,
}

impl Converter {
    /// Refuses `text` at `path` if it is longer than the limit (the message gives its
    /// length, never its content).
    fn short(&self, path: impl FnOnce() -> String, text: &str) -> Result<(), RequestError> {
        if text.len() <= self.max_string_bytes {
            return Ok(());
        }
        Err(RequestError::limit(
            path(),
            format!(
                "{} bytes is longer than the limit of {} (max_string_bytes)",
                text.len(),
                self.max_string_bytes
            ),
        ))
    }

    /// A query from the parts every request shape carries.
    pub(crate) fn query(
        &self,
        principal: Option<pb::EntityUid>,
        action: Option<pb::EntityUid>,
        resource: Option<pb::EntityUid>,
        context: &HashMap<String, pb::Value>,
        context_json: String,
    ) -> Result<Query, RequestError> {
        Ok(Query {
            principal: self.required_uid("principal", principal)?,
            action: self.required_uid("action", action)?,
            resource: self.required_uid("resource", resource)?,
            context: self.context(context, context_json)?,
        })
    }

    fn context(
        &self,
        typed: &HashMap<String, pb::Value>,
        json: String,
    ) -> Result<ContextInput, RequestError> {
        if !json.trim().is_empty() {
            if !typed.is_empty() {
                return Err(both_forms("context"));
            }
            return Ok(ContextInput::Json(json));
        }
        let pairs = self.fields("context", typed, 0)?;
        Context::from_pairs(pairs)
            .map(ContextInput::Value)
            .map_err(|e| {
                // Extension literals are first evaluated here; only on failure are they
                // looked at one by one, so that the error names the bad one's path.
                bad_extension("context", typed)
                    .unwrap_or_else(|| RequestError::invalid("context", describe(&e)))
            })
    }

    /// The call's entities, typed or JSON (not both).
    pub(crate) fn entities(
        &self,
        typed: &[pb::Entity],
        json: String,
    ) -> Result<EntitiesInput, RequestError> {
        if !json.trim().is_empty() {
            if !typed.is_empty() {
                return Err(both_forms("entities"));
            }
            return Ok(EntitiesInput::Json(json));
        }
        if typed.is_empty() {
            return Ok(EntitiesInput::None);
        }
        typed
            .iter()
            .enumerate()
            .map(|(i, entity)| self.entity(&format!("entities[{i}]"), entity))
            .collect::<Result<Vec<_>, _>>()
            .map(EntitiesInput::Typed)
    }

    fn entity(&self, path: &str, entity: &pb::Entity) -> Result<EntityInput, RequestError> {
        Ok(EntityInput {
            uid: self.required_uid(&format!("{path}.uid"), entity.uid.clone())?,
            attrs: self.fields(&format!("{path}.attrs"), &entity.attrs, 0)?,
            parents: entity
                .parents
                .iter()
                .enumerate()
                .map(|(j, parent)| self.uid(&format!("{path}.parents[{j}]"), parent))
                .collect::<Result<_, _>>()?,
            tags: self.fields(&format!("{path}.tags"), &entity.tags, 0)?,
        })
    }

    fn fields(
        &self,
        path: &str,
        fields: &HashMap<String, pb::Value>,
        depth: usize,
    ) -> Result<Vec<(String, RestrictedExpression)>, RequestError> {
        fields
            .iter()
            .map(|(key, value)| {
                // Checked before the key becomes part of any path or message.
                self.short(|| format!("{path} (a key)"), key)?;
                let expr = self.value(&format!("{path}.{key}"), value, depth)?;
                Ok((key.clone(), expr))
            })
            .collect()
    }

    fn value(
        &self,
        path: &str,
        value: &pb::Value,
        depth: usize,
    ) -> Result<RestrictedExpression, RequestError> {
        use pb::value::Kind;
        let nested = || {
            if depth >= self.max_value_depth {
                return Err(RequestError::limit(
                    path,
                    format!(
                        "sets and records are nested deeper than the limit of {} (max_value_depth)",
                        self.max_value_depth
                    ),
                ));
            }
            Ok(depth + 1)
        };
        match &value.kind {
            None => Err(RequestError::invalid(
                path,
                "the value is empty; set one of boolean, long, string, set, record, entity or extension",
            )),
            Some(Kind::Boolean(b)) => Ok(RestrictedExpression::new_bool(*b)),
            Some(Kind::Long(n)) => Ok(RestrictedExpression::new_long(*n)),
            Some(Kind::String(s)) => {
                self.short(|| path.to_owned(), s)?;
                Ok(RestrictedExpression::new_string(s.clone()))
            }
            Some(Kind::Set(list)) => {
                let depth = nested()?;
                let values = list
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.value(&format!("{path}[{i}]"), v, depth))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RestrictedExpression::new_set(values))
            }
            Some(Kind::Record(record)) => {
                let depth = nested()?;
                let fields = self.fields(path, &record.fields, depth)?;
                RestrictedExpression::new_record(fields)
                    .map_err(|e| RequestError::invalid(path, describe(&e)))
            }
            Some(Kind::Entity(entity)) => Ok(RestrictedExpression::new_entity_uid(
                self.uid(path, entity)?,
            )),
            Some(Kind::Extension(ext)) => {
                self.short(|| format!("{path}.arg"), &ext.arg)?;
                extension(path, ext)
            }
        }
    }
}

/// An extension value. Its literal is evaluated once, when the context or entity is
/// built; [`bad_extension`] finds a bad one's path after that fails.
fn extension(path: &str, ext: &pb::Extension) -> Result<RestrictedExpression, RequestError> {
    let arg = ext.arg.as_str();
    let expr = match ext.r#fn.as_str() {
        "ip" | "ipaddr" => RestrictedExpression::new_ip(arg),
        "decimal" => RestrictedExpression::new_decimal(arg),
        "datetime" => RestrictedExpression::new_datetime(arg),
        "duration" => RestrictedExpression::new_duration(arg),
        other => {
            return Err(RequestError::invalid(
                format!("{path}.fn"),
                format!("unknown extension `{other}`; use one of ip, decimal, datetime, duration"),
            ));
        }
    };
    Ok(expr)
}

/// The first extension value under `fields` whose literal does not evaluate, as an error
/// naming its path (`context.net.src_ip`). Only called once building a context failed.
fn bad_extension(path: &str, fields: &HashMap<String, pb::Value>) -> Option<RequestError> {
    fields
        .iter()
        .find_map(|(key, value)| bad_extension_in(&format!("{path}.{key}"), value))
}

fn bad_extension_in(path: &str, value: &pb::Value) -> Option<RequestError> {
    use pb::value::Kind;
    match &value.kind {
        Some(Kind::Extension(ext)) => {
            let expr = extension(path, ext).ok()?;
            let e = Context::from_pairs([(String::new(), expr)]).err()?;
            Some(RequestError::invalid(
                path,
                format!(
                    "invalid {} literal {:?}: {}",
                    ext.r#fn,
                    ext.arg,
                    describe(&e)
                ),
            ))
        }
        Some(Kind::Set(list)) => list
            .values
            .iter()
            .enumerate()
            .find_map(|(i, v)| bad_extension_in(&format!("{path}[{i}]"), v)),
        Some(Kind::Record(record)) => bad_extension(path, &record.fields),
        _ => None,
    }
}

impl Converter {
    fn required_uid(
        &self,
        field: &str,
        value: Option<pb::EntityUid>,
    ) -> Result<EntityUid, RequestError> {
        match value {
            Some(value) => self.uid(field, &value),
            None => Err(RequestError::invalid(
                field,
                "is missing; give an entity type and id",
            )),
        }
    }

    fn uid(&self, field: &str, value: &pb::EntityUid) -> Result<EntityUid, RequestError> {
        self.short(|| format!("{field}.type"), &value.r#type)?;
        self.short(|| format!("{field}.id"), &value.id)?;
        if value.r#type.is_empty() {
            return Err(RequestError::invalid(
                format!("{field}.type"),
                "is empty; give an entity type such as `App::User`",
            ));
        }
        let ty = EntityTypeName::from_str(&value.r#type).map_err(|e| {
            RequestError::invalid(
                format!("{field}.type"),
                format!(
                    "`{}` is not a valid entity type name: {}",
                    value.r#type,
                    describe(&e)
                ),
            )
        })?;
        Ok(EntityUid::from_type_name_and_id(
            ty,
            EntityId::new(&value.id),
        ))
    }
}

fn both_forms(field: &str) -> RequestError {
    RequestError::invalid(
        field,
        format!("both {field} and {field}_json are set; give one form or the other"),
    )
}
