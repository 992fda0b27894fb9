//! Wire types (`cedarpdp.v1`) to the decide step's types. Every error names the request
//! field at fault, as a path: `context.net.src_ip`, `entities[2].parents[0].type`.

use std::{collections::HashMap, str::FromStr};

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid, RestrictedExpression};
use serde_json::{Map, Value as Json};

use crate::{
    config::Limits,
    decide::{
        CanonicalBytes, CanonicalContext, ContextInput, Encoder, EntitiesInput, EntityInput,
        MAX_CONTEXT_KEY_BYTES, Query, Refusal,
    },
    policy::describe,
    proto::cedarpdp::v1 as pb,
};

/// Converts wire values, refusing nesting deeper than `max_value_depth` and strings
/// longer than `max_string_bytes`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Converter {
    pub(crate) max_value_depth: usize,
    pub(crate) max_string_bytes: usize,
    /// Whether typed contexts carry their canonical bytes (only the decision cache reads
    /// them: off with it).
    pub(crate) canonical_contexts: bool,
}

/// A request field's path (`context.net.src_ip`, `entities[2].parents[0]`), kept as a
/// chain of borrowed parts and written out only for an error: building it as text at every
/// level would copy every key once per value below it.
#[derive(Debug, Clone, Copy)]
enum Path<'a> {
    Root(&'a str),
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
    Field(&'a Path<'a>, &'static str),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Root(name) => f.write_str(name),
            Self::Key(parent, key) => write!(f, "{parent}.{}", shown(key)),
            Self::Index(parent, i) => write!(f, "{parent}[{i}]"),
            Self::Field(parent, name) => write!(f, "{parent}.{name}"),
        }
    }
}

/// Longest piece of request text quoted in a path or message; longer ones are shown by
/// their length only.
const SHOWN_BYTES: usize = 64;

/// `text` as an error may quote it.
fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= SHOWN_BYTES {
        text.into()
    } else {
        format!("<{} bytes>", text.len()).into()
    }
}

impl Converter {
    /// A converter within `limits`.
    pub(crate) fn new(limits: &Limits) -> Self {
        Self {
            max_value_depth: limits.max_value_depth,
            max_string_bytes: limits.max_string_bytes,
            canonical_contexts: limits.decision_cache_entries > 0,
        }
    }

    /// The values of `keys` in a request's context, typed or JSON, in Cedar's JSON form,
    /// for the audit log (nothing when `keys` is empty; a JSON context that does not
    /// parse gives none: the request is refused anyway).
    pub(crate) fn recorded_context(
        &self,
        typed: &HashMap<String, pb::Value>,
        json: &str,
        keys: &[String],
    ) -> Map<String, Json> {
        let mut recorded = Map::new();
        if keys.is_empty() {
            return recorded;
        }
        if json.is_empty() {
            for key in keys {
                if let Some(value) = typed.get(key) {
                    recorded.insert(key.clone(), value_json(value));
                }
            }
        } else if let Ok(Json::Object(mut all)) = serde_json::from_str(json) {
            for key in keys {
                if let Some(value) = all.remove(key) {
                    recorded.insert(key.clone(), value);
                }
            }
        }
        recorded
    }

    /// Refuses `text` at `path` if it is longer than the limit (the message gives its
    /// length, never its content).
    fn short(&self, path: impl FnOnce() -> String, text: &str) -> Result<(), Refusal> {
        if text.len() <= self.max_string_bytes {
            return Ok(());
        }
        Err(Refusal::limit(
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
    ) -> Result<Query, Refusal> {
        self.query_in(principal, action, resource, || {
            self.context(context, context_json)
        })
    }

    /// [`Converter::query`] with the context converted by `context` (once the uids
    /// converted: errors come in the same order).
    pub(crate) fn query_in(
        &self,
        principal: Option<pb::EntityUid>,
        action: Option<pb::EntityUid>,
        resource: Option<pb::EntityUid>,
        context: impl FnOnce() -> Result<ContextInput, Refusal>,
    ) -> Result<Query, Refusal> {
        Ok(Query {
            principal: self.required_uid(&Path::Root("principal"), principal.as_ref())?,
            action: self.required_uid(&Path::Root("action"), action.as_ref())?,
            resource: self.required_uid(&Path::Root("resource"), resource.as_ref())?,
            context: context()?,
        })
    }

    /// A request's context, typed or JSON (not both).
    pub(crate) fn context(
        &self,
        typed: &HashMap<String, pb::Value>,
        json: String,
    ) -> Result<ContextInput, Refusal> {
        if !json.trim().is_empty() {
            if !typed.is_empty() {
                return Err(both_forms("context"));
            }
            return Ok(ContextInput::Json(json));
        }
        if typed.is_empty() {
            return Ok(ContextInput::Value(Context::empty()));
        }
        let root = Path::Root("context");
        let pairs = self.fields(&root, typed, 0)?;
        Context::from_pairs(pairs)
            .map(
                |context| match self.canonical_contexts.then(|| canonical(typed)).flatten() {
                    Some(bytes) => ContextInput::Canonical(CanonicalContext::built(bytes, context)),
                    None => ContextInput::Value(context),
                },
            )
            .map_err(|e| {
                // Extension literals are first evaluated here; only on failure are they
                // looked at one by one, so that the error names the bad one's path.
                bad_extension(&root, typed)
                    .unwrap_or_else(|| Refusal::invalid("context", describe(&e)))
            })
    }

    /// The call's entities, typed or JSON (not both).
    pub(crate) fn entities(
        &self,
        typed: &[pb::Entity],
        json: String,
    ) -> Result<EntitiesInput, Refusal> {
        if !json.trim().is_empty() {
            if !typed.is_empty() {
                return Err(both_forms("entities"));
            }
            return Ok(EntitiesInput::Json(json));
        }
        if typed.is_empty() {
            return Ok(EntitiesInput::None);
        }
        let root = Path::Root("entities");
        typed
            .iter()
            .enumerate()
            .map(|(i, entity)| self.entity(&Path::Index(&root, i), entity))
            .collect::<Result<Vec<_>, _>>()
            .map(EntitiesInput::Typed)
    }

    fn entity(&self, path: &Path<'_>, entity: &pb::Entity) -> Result<EntityInput, Refusal> {
        let parents = Path::Field(path, "parents");
        Ok(EntityInput {
            uid: self.required_uid(&Path::Field(path, "uid"), entity.uid.as_ref())?,
            attrs: self.fields(&Path::Field(path, "attrs"), &entity.attrs, 0)?,
            parents: entity
                .parents
                .iter()
                .enumerate()
                .map(|(j, parent)| self.uid(&Path::Index(&parents, j), parent))
                .collect::<Result<_, _>>()?,
            tags: self.fields(&Path::Field(path, "tags"), &entity.tags, 0)?,
        })
    }

    fn fields(
        &self,
        path: &Path<'_>,
        fields: &HashMap<String, pb::Value>,
        depth: usize,
    ) -> Result<Vec<(String, RestrictedExpression)>, Refusal> {
        fields
            .iter()
            .map(|(key, value)| {
                self.short(|| format!("{path} (a key)"), key)?;
                let expr = self.value(&Path::Key(path, key), value, depth)?;
                Ok((key.clone(), expr))
            })
            .collect()
    }

    fn value(
        &self,
        path: &Path<'_>,
        value: &pb::Value,
        depth: usize,
    ) -> Result<RestrictedExpression, Refusal> {
        use pb::value::Kind;
        let nested = || {
            if depth >= self.max_value_depth {
                return Err(Refusal::limit(
                    path.to_string(),
                    format!(
                        "sets and records are nested deeper than the limit of {} (max_value_depth)",
                        self.max_value_depth
                    ),
                ));
            }
            Ok(depth + 1)
        };
        match &value.kind {
            None => Err(Refusal::invalid(
                path.to_string(),
                "the value is empty; set one of boolean, long, string, set, record, entity or extension",
            )),
            Some(Kind::Boolean(b)) => Ok(RestrictedExpression::new_bool(*b)),
            Some(Kind::Long(n)) => Ok(RestrictedExpression::new_long(*n)),
            Some(Kind::String(s)) => {
                self.short(|| path.to_string(), s)?;
                Ok(RestrictedExpression::new_string(s.clone()))
            }
            Some(Kind::Set(list)) => {
                let depth = nested()?;
                let values = list
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.value(&Path::Index(path, i), v, depth))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RestrictedExpression::new_set(values))
            }
            Some(Kind::Record(record)) => {
                let depth = nested()?;
                let fields = self.fields(path, &record.fields, depth)?;
                RestrictedExpression::new_record(fields)
                    .map_err(|e| Refusal::invalid(path.to_string(), describe(&e)))
            }
            Some(Kind::Entity(entity)) => Ok(RestrictedExpression::new_entity_uid(
                self.uid(path, entity)?,
            )),
            Some(Kind::Extension(ext)) => {
                self.short(|| format!("{path}.fn"), &ext.r#fn)?;
                self.short(|| format!("{path}.arg"), &ext.arg)?;
                extension(path, ext)
            }
        }
    }

    fn required_uid(
        &self,
        path: &Path<'_>,
        value: Option<&pb::EntityUid>,
    ) -> Result<EntityUid, Refusal> {
        match value {
            Some(value) => self.uid(path, value),
            None => Err(Refusal::invalid(
                path.to_string(),
                "is missing; give an entity type and id",
            )),
        }
    }

    fn uid(&self, path: &Path<'_>, value: &pb::EntityUid) -> Result<EntityUid, Refusal> {
        self.short(|| format!("{path}.type"), &value.r#type)?;
        self.short(|| format!("{path}.id"), &value.id)?;
        if value.r#type.is_empty() {
            return Err(Refusal::invalid(
                format!("{path}.type"),
                "is empty; give an entity type such as `App::User`",
            ));
        }
        let ty = type_name(&value.r#type).map_err(|e| {
            Refusal::invalid(
                format!("{path}.type"),
                format!(
                    "`{}` is not a valid entity type name: {}",
                    shown(&value.r#type),
                    describe(&*e)
                ),
            )
        })?;
        Ok(EntityUid::from_type_name_and_id(
            ty,
            EntityId::new(&value.id),
        ))
    }
}

/// Longest entity type name [`type_name`] keeps.
const KEPT_TYPE_NAME_BYTES: usize = 256;
/// Most type names [`type_name`] keeps per thread (emptied when full).
const KEPT_TYPE_NAMES: usize = 256;

thread_local! {
    /// The type names [`type_name`] parsed on this thread, by their text.
    static KEPT: std::cell::RefCell<crate::policy::FastMap<Box<str>, EntityTypeName>> =
        Default::default();
}

/// `text` parsed as an entity type name, by Cedar's parser, or as it parsed before on this
/// thread: the parse is the costliest step of converting a question (about a fifth of a
/// batch item's time), and a deployment names few types. The parse is a function of the
/// text, so a kept name is the one parsing would give; only names that parse, of at most
/// [`KEPT_TYPE_NAME_BYTES`], are kept, at most [`KEPT_TYPE_NAMES`] of them.
fn type_name(text: &str) -> Result<EntityTypeName, Box<cedar_policy::ParseErrors>> {
    if let Some(name) = KEPT.with_borrow(|kept| kept.get(text).cloned()) {
        return Ok(name);
    }
    let name = EntityTypeName::from_str(text).map_err(Box::new)?;
    if text.len() <= KEPT_TYPE_NAME_BYTES {
        KEPT.with_borrow_mut(|kept| {
            if kept.len() >= KEPT_TYPE_NAMES {
                kept.clear();
            }
            kept.insert(text.into(), name.clone());
        });
    }
    Ok(name)
}

/// The canonical bytes of typed context values that converted (see
/// [`ContextInput::Canonical`]): every map's keys sorted, every value tagged, every
/// string and list length-prefixed, so that equal bytes are equal values (and so an equal
/// context: the conversion is a function of the values). `None` past
/// [`MAX_CONTEXT_KEY_BYTES`]: such a context is not looked up in the decision cache.
fn canonical(fields: &HashMap<String, pb::Value>) -> Option<Box<[u8]>> {
    fn map(out: &mut CanonicalBytes, fields: &HashMap<String, pb::Value>) -> Option<()> {
        // Each field takes five bytes at least: too many are not sorted to be thrown away.
        if out.full() || out.len() + 5 * fields.len() > MAX_CONTEXT_KEY_BYTES {
            return None;
        }
        let mut keys: Vec<&String> = fields.keys().collect();
        keys.sort_unstable();
        out.count(keys.len());
        for key in keys {
            out.text(key);
            value(out, &fields[key])?;
        }
        Some(())
    }
    fn value(out: &mut CanonicalBytes, v: &pb::Value) -> Option<()> {
        use pb::value::Kind;
        // Checked as it grows: a context far past the bound is not copied whole.
        if out.full() {
            return None;
        }
        match &v.kind {
            None => out.tag(0),
            Some(Kind::Boolean(b)) => {
                out.tag(1);
                out.boolean(*b);
            }
            Some(Kind::Long(n)) => {
                out.tag(2);
                out.long(*n);
            }
            Some(Kind::String(s)) => {
                out.tag(3);
                out.text(s);
            }
            Some(Kind::Set(list)) => {
                out.tag(4);
                out.count(list.values.len());
                for v in &list.values {
                    value(out, v)?;
                }
            }
            Some(Kind::Record(record)) => {
                out.tag(5);
                map(out, &record.fields)?;
            }
            Some(Kind::Entity(uid)) => {
                out.tag(6);
                out.text(&uid.r#type);
                out.text(&uid.id);
            }
            Some(Kind::Extension(ext)) => {
                out.tag(7);
                out.text(&ext.r#fn);
                out.text(&ext.arg);
            }
        }
        Some(())
    }
    let mut out = CanonicalBytes::new(Encoder::Grpc);
    map(&mut out, fields)?;
    out.finish()
}

/// An extension value. Its literal is evaluated once, when the context or entity is
/// built; [`bad_extension`] finds a bad one's path after that fails.
fn extension(path: &Path<'_>, ext: &pb::Extension) -> Result<RestrictedExpression, Refusal> {
    let arg = ext.arg.as_str();
    let expr = match ext.r#fn.as_str() {
        "ip" | "ipaddr" => RestrictedExpression::new_ip(arg),
        "decimal" => RestrictedExpression::new_decimal(arg),
        "datetime" => RestrictedExpression::new_datetime(arg),
        "duration" => RestrictedExpression::new_duration(arg),
        other => {
            return Err(Refusal::invalid(
                format!("{path}.fn"),
                format!(
                    "unknown extension `{}`; use one of ip, decimal, datetime, duration",
                    shown(other)
                ),
            ));
        }
    };
    Ok(expr)
}

/// The first extension value under `fields` whose literal does not evaluate, as an error
/// naming its path (`context.net.src_ip`). Only called once building a context failed.
fn bad_extension(path: &Path<'_>, fields: &HashMap<String, pb::Value>) -> Option<Refusal> {
    fields
        .iter()
        .find_map(|(key, value)| bad_extension_in(&Path::Key(path, key), value))
}

fn bad_extension_in(path: &Path<'_>, value: &pb::Value) -> Option<Refusal> {
    use pb::value::Kind;
    match &value.kind {
        Some(Kind::Extension(ext)) => {
            let expr = extension(path, ext).ok()?;
            let e = Context::from_pairs([(String::new(), expr)]).err()?;
            Some(Refusal::invalid(
                path.to_string(),
                format!(
                    "invalid {} literal {:?}: {}",
                    ext.r#fn,
                    shown(&ext.arg),
                    describe(&e)
                ),
            ))
        }
        Some(Kind::Set(list)) => list
            .values
            .iter()
            .enumerate()
            .find_map(|(i, v)| bad_extension_in(&Path::Index(path, i), v)),
        Some(Kind::Record(record)) => bad_extension(path, &record.fields),
        _ => None,
    }
}

/// A typed value in Cedar's JSON form (entities as `__entity`, extensions as `__extn`).
fn value_json(value: &pb::Value) -> Json {
    use pb::value::Kind;
    match &value.kind {
        None => Json::Null,
        Some(Kind::Boolean(b)) => Json::Bool(*b),
        Some(Kind::Long(n)) => Json::from(*n),
        Some(Kind::String(s)) => Json::String(s.clone()),
        Some(Kind::Set(list)) => Json::Array(list.values.iter().map(value_json).collect()),
        Some(Kind::Record(record)) => Json::Object(
            record
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect(),
        ),
        Some(Kind::Entity(uid)) => {
            serde_json::json!({ "__entity": { "type": uid.r#type, "id": uid.id } })
        }
        Some(Kind::Extension(ext)) => {
            serde_json::json!({ "__extn": { "fn": ext.r#fn, "arg": ext.arg } })
        }
    }
}

fn both_forms(field: &str) -> Refusal {
    Refusal::invalid(
        field,
        format!("both {field} and {field}_json are set; give one form or the other"),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{Converter, Path};
    use crate::proto::cedarpdp::v1 as pb;

    #[test]
    fn paths_show_long_keys_by_length_only() {
        let key = "k".repeat(100);
        let root = Path::Root("context");
        let keyed = Path::Key(&root, &key);
        let short = Path::Key(&keyed, "ok");
        assert_eq!(
            Path::Index(&short, 3).to_string(),
            "context.<100 bytes>.ok[3]"
        );
    }

    #[test]
    fn an_error_under_long_keys_names_them_by_length() {
        let convert = Converter {
            max_value_depth: 32,
            max_string_bytes: 64 * 1024,
            canonical_contexts: true,
        };
        let extension = pb::Value {
            kind: Some(pb::value::Kind::Extension(pb::Extension {
                r#fn: "n".repeat(1_000),
                arg: "1".to_owned(),
            })),
        };
        let context = HashMap::from([("k".repeat(60_000), extension)]);
        let error = convert
            .query(None, None, None, &context, String::new())
            .err()
            .map(|e| e.to_string());
        // The principal is checked first; then the context alone.
        assert!(error.unwrap().contains("principal"));
        let error = convert
            .context(&context, String::new())
            .unwrap_err()
            .to_string();
        assert!(error.len() < 200, "{} bytes: {error}", error.len());
        assert!(error.contains("context.<60000 bytes>.fn"), "{error}");
        assert!(error.contains("<1000 bytes>"), "{error}");
    }

    /// Typed context values for the canonical-bytes tests.
    fn v(kind: pb::value::Kind) -> pb::Value {
        pb::Value { kind: Some(kind) }
    }

    #[test]
    fn canonical_bytes_tell_apart_what_differs_and_ignore_map_order() {
        use pb::value::Kind::*;
        let s = |t: &str| v(String(t.to_owned()));
        let record = |fields: Vec<(&str, pb::Value)>| {
            v(Record(pb::Record {
                fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            }))
        };
        let entity = |t: &str, id: &str| {
            v(Entity(pb::EntityUid {
                r#type: t.to_owned(),
                id: id.to_owned(),
            }))
        };
        let set = |values: Vec<pb::Value>| v(Set(pb::ValueList { values }));
        let ctx = |fields: Vec<(&str, pb::Value)>| -> HashMap<_, _> {
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
        };
        // Pairs that must never share bytes: each would decide differently.
        let pairs = [
            (ctx(vec![("a", s("1"))]), ctx(vec![("a", v(Long(1)))])),
            (ctx(vec![("ab", s("c"))]), ctx(vec![("a", s("bc"))])),
            (
                ctx(vec![("a", s("b")), ("c", s(""))]),
                ctx(vec![("a", s("b\0\0\0\0c"))]),
            ),
            (
                ctx(vec![("a", record(vec![("type", s("T")), ("id", s("x"))]))]),
                ctx(vec![("a", entity("T", "x"))]),
            ),
            (
                ctx(vec![("a", entity("T", "x"))]),
                ctx(vec![("a", entity("T", "y"))]),
            ),
            (
                ctx(vec![("a", set(vec![s("x")]))]),
                ctx(vec![("a", s("x"))]),
            ),
            (
                ctx(vec![("a", v(Boolean(true)))]),
                ctx(vec![("a", v(Boolean(false)))]),
            ),
            (
                ctx(vec![("a", v(Long(1)))]),
                ctx(vec![("a", v(Long(1 << 40)))]),
            ),
            (
                ctx(vec![(
                    "a",
                    v(Extension(pb::Extension {
                        r#fn: "ip".into(),
                        arg: "10.0.0.1".into(),
                    })),
                )]),
                ctx(vec![(
                    "a",
                    v(Extension(pb::Extension {
                        r#fn: "decimal".into(),
                        arg: "10.0".into(),
                    })),
                )]),
            ),
        ];
        for (a, b) in &pairs {
            assert_ne!(super::canonical(a), super::canonical(b), "{a:?} and {b:?}");
        }
        // The same values inserted in another order: the same bytes.
        let keys: Vec<std::string::String> = (0..50).map(|i| format!("k{i}")).collect();
        let forward: HashMap<_, _> = keys.iter().map(|k| (k.clone(), s(k))).collect();
        let backward: HashMap<_, _> = keys.iter().rev().map(|k| (k.clone(), s(k))).collect();
        assert_eq!(super::canonical(&forward), super::canonical(&backward));
        // Past the bound: none, so never looked up.
        let big = ctx(vec![("a", s(&"x".repeat(super::MAX_CONTEXT_KEY_BYTES)))]);
        assert_eq!(super::canonical(&big), None);
    }

    #[test]
    fn a_typed_context_carries_its_canonical_bytes() {
        let convert = Converter {
            max_value_depth: 32,
            max_string_bytes: 64 * 1024,
            canonical_contexts: true,
        };
        let context = HashMap::from([("level".to_owned(), v(pb::value::Kind::Long(3)))]);
        let converted = convert
            .context(&context, std::string::String::new())
            .unwrap();
        assert!(matches!(
            converted,
            super::ContextInput::Canonical(typed) if Some(typed.bytes().into()) == super::canonical(&context)
        ));
    }

    #[test]
    fn type_names_are_kept_as_cedar_parses_them_and_bad_ones_never() {
        use std::str::FromStr as _;
        for _ in 0..2 {
            for good in ["User", "App::User", "A::B::C"] {
                let parsed = cedar_policy::EntityTypeName::from_str(good).unwrap();
                assert_eq!(super::type_name(good).unwrap(), parsed);
            }
            for bad in ["App::", "::User", "if", "App::if", "a b", "User\"", "1x"] {
                assert!(super::type_name(bad).is_err(), "{bad}");
                assert!(super::KEPT.with_borrow(|kept| !kept.contains_key(bad)));
            }
        }
        for i in 0..3 * super::KEPT_TYPE_NAMES {
            super::type_name(&format!("T{i}")).unwrap();
            assert!(super::KEPT.with_borrow(|kept| kept.len() <= super::KEPT_TYPE_NAMES));
        }
    }
}
