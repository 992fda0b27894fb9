//! The AuthZEN 1.0 wire format: request bodies read into [`Question`]s and
//! [`SearchRequest`]s (every problem a [`Refusal`] naming the field, such as
//! `evaluations[2].subject.type`), and [`Decision`]s and search pages written back.
//!
//! The mapping to Cedar is fixed (`DESIGN.md`, "AuthZEN"): subject `{type, id}` is the
//! principal `type::"id"` (with `[authzen] namespace`, `NS::type::"id"`), the resource
//! likewise, action `{name}` is `Action::"name"`; entity attributes come from the store
//! only. The caller-asserted `properties` of subject, resource and action reach policies
//! as the records `context.subject`, `context.resource` and `context.action`, next to the
//! request's own `context` keys (which may not use those three names). With a schema,
//! keys the action's context does not declare are dropped and named in the answer.
//! Unknown top-level fields are ignored, as the specification asks.

use std::str::FromStr as _;

use cedar_policy::{EntityId, EntityTypeName, EntityUid};
use serde_json::{Map, Value as Json, json};
use sha2::{Digest as _, Sha256};

use crate::{
    decide::{
        ContextInput, Cursor, Decision, Query, Question, Refusal, SearchContext, SearchPage,
        SearchRequest, Searched,
    },
    policy::Snapshot,
};

/// The context keys properties arrive under.
const PROPERTY_RECORDS: [&str; 3] = ["subject", "resource", "action"];

/// How AuthZEN names map to Cedar names.
#[derive(Debug, Clone, Default)]
pub(crate) struct Names {
    /// `NS::` (with the separator), or empty.
    prefix: String,
}

impl Names {
    /// Names in `namespace` (none: Cedar's empty namespace).
    pub(crate) fn new(namespace: Option<&str>) -> Self {
        Self {
            prefix: namespace.map(|ns| format!("{ns}::")).unwrap_or_default(),
        }
    }

    /// The Cedar entity type of the AuthZEN type `name` (found at `field`).
    fn entity_type(&self, name: &str, field: &str) -> Result<EntityTypeName, Refusal> {
        EntityTypeName::from_str(&format!("{}{name}", self.prefix)).map_err(|_| {
            Refusal::invalid(
                field,
                format!("{name:?} is not a Cedar entity type name (identifiers joined by ::)"),
            )
        })
    }

    /// The type of actions.
    pub(crate) fn action_type(&self) -> EntityTypeName {
        EntityTypeName::from_str(&format!("{}Action", self.prefix))
            .expect("a checked namespace makes a valid action type")
    }

    /// The AuthZEN type of a Cedar entity type (the namespace taken off).
    pub(crate) fn authzen_type(&self, cedar: &EntityTypeName) -> String {
        let full = cedar.to_string();
        full.strip_prefix(&self.prefix)
            .map_or(full.clone(), str::to_owned)
    }
}

/// A body that is not an AuthZEN request at all: the JSON cannot be read.
pub(crate) fn parse_body(body: &[u8]) -> Result<Map<String, Json>, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Refusal::invalid(
            "body",
            "the body is empty; send a JSON object",
        ));
    }
    let value: Json = serde_json::from_slice::<Strict>(body)
        .map(|strict| strict.0)
        .map_err(|e| {
            Refusal::invalid(
                "body",
                format!("not JSON: {e} (line {}, column {})", e.line(), e.column()),
            )
        })?;
    match value {
        Json::Object(map) => Ok(map),
        other => Err(Refusal::invalid(
            "body",
            format!("expected a JSON object, got {}", kind_of(&other)),
        )),
    }
}

/// JSON read as `serde_json` reads it, except that an object naming one key twice is an
/// error: which of two `subject`s counts must not depend on who reads the body (a gateway
/// in front may read the first, `serde_json` keeps the last).
struct Strict(Json);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Json, E> {
        serde_json::Number::from_f64(v)
            .map(Json::Number)
            .ok_or_else(|| E::custom("a number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let shown: String = key.chars().take(40).collect();
                return Err(serde::de::Error::custom(format!(
                    "the key {shown:?} is given twice in one object"
                )));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Json::Object(object))
    }
}

/// A JSON value's kind, for messages (never the value: it may be a secret).
fn kind_of(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// `map[key]` as an object, if present.
fn object<'a>(
    map: &'a Map<String, Json>,
    key: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Json>>, Refusal> {
    match map.get(key) {
        None => Ok(None),
        Some(Json::Object(o)) => Ok(Some(o)),
        Some(other) => Err(Refusal::invalid(
            join(path, key),
            format!("expected an object, got {}", kind_of(other)),
        )),
    }
}

/// `map[key]` as a string, if present.
fn string<'a>(
    map: &'a Map<String, Json>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, Refusal> {
    match map.get(key) {
        None => Ok(None),
        Some(Json::String(s)) => Ok(Some(s)),
        Some(other) => Err(Refusal::invalid(
            join(path, key),
            format!("expected a string, got {}", kind_of(other)),
        )),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn missing(field: String) -> Refusal {
    Refusal::invalid(field, "is required but missing")
}

/// A subject or resource as sent: its type, id (if any) and properties.
struct Party<'a> {
    of_type: EntityTypeName,
    id: Option<&'a str>,
    properties: Option<&'a Map<String, Json>>,
}

/// Reads the subject or resource at `path` (`key` of `map`); `id` is required unless
/// `id_optional` (a search on that side, where it is ignored).
fn party<'a>(
    names: &Names,
    map: &'a Map<String, Json>,
    key: &str,
    path: &str,
    id_optional: bool,
) -> Result<Party<'a>, Refusal> {
    let at = join(path, key);
    let fields = object(map, key, path)?.ok_or_else(|| missing(at.clone()))?;
    let of_type = string(fields, "type", &at)?.ok_or_else(|| missing(join(&at, "type")))?;
    let of_type = names.entity_type(of_type, &join(&at, "type"))?;
    let id = if id_optional {
        // Ignored, as the specification says; still it must be a string if sent.
        string(fields, "id", &at).ok().flatten()
    } else {
        Some(string(fields, "id", &at)?.ok_or_else(|| missing(join(&at, "id")))?)
    };
    Ok(Party {
        of_type,
        id,
        properties: object(fields, "properties", &at)?,
    })
}

impl Party<'_> {
    fn uid(&self) -> EntityUid {
        EntityUid::from_type_name_and_id(
            self.of_type.clone(),
            EntityId::new(self.id.unwrap_or_default()),
        )
    }
}

/// A JSON object as sent.
type Object = Map<String, Json>;

/// Reads the action at `path`: its name and properties.
fn action<'a>(
    names: &Names,
    map: &'a Object,
    path: &str,
) -> Result<(EntityUid, Option<&'a Object>), Refusal> {
    let at = join(path, "action");
    let fields = object(map, "action", path)?.ok_or_else(|| missing(at.clone()))?;
    let name = string(fields, "name", &at)?.ok_or_else(|| missing(join(&at, "name")))?;
    let uid = EntityUid::from_type_name_and_id(names.action_type(), EntityId::new(name));
    Ok((uid, object(fields, "properties", &at)?))
}

/// The context of a question before it is fitted to an action: the request's `context`
/// keys, and the three property records (`None`: not sent).
#[derive(Debug, Clone)]
struct Asserted {
    context: Map<String, Json>,
    properties: [Option<Map<String, Json>>; 3],
}

impl Asserted {
    /// Reads the `context` at `path` of `map`, with the properties sent.
    fn read(
        map: &Map<String, Json>,
        path: &str,
        properties: [Option<&Map<String, Json>>; 3],
    ) -> Result<Self, Refusal> {
        let context = object(map, "context", path)?.cloned().unwrap_or_default();
        for record in PROPERTY_RECORDS {
            if context.contains_key(record) {
                return Err(Refusal::invalid(
                    format!("{}.{record}", join(path, "context")),
                    format!(
                        "the context key {record:?} is reserved: policies read \
                         {record}.properties as context.{record}"
                    ),
                ));
            }
        }
        Ok(Self {
            context,
            properties: properties.map(|p| p.cloned()),
        })
    }

    /// The Cedar context for `action` on `snapshot`: with a schema, what the action's
    /// context does not declare is dropped and listed (an empty property record the
    /// caller did not send is not listed).
    fn fit(&self, snapshot: &Snapshot, action: &EntityUid) -> (Map<String, Json>, Vec<String>) {
        let mut context = self.context.clone();
        for (record, given) in PROPERTY_RECORDS.iter().zip(&self.properties) {
            context.insert(
                (*record).to_owned(),
                Json::Object(given.clone().unwrap_or_default()),
            );
        }
        let mut dropped = match snapshot.schema_shape() {
            Some(shape) => shape
                .prune_context(action, &mut context, &PROPERTY_RECORDS)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        dropped.retain(|key| {
            let position = PROPERTY_RECORDS.iter().position(|r| r == key);
            position.is_none_or(|at| self.properties[at].as_ref().is_some_and(|p| !p.is_empty()))
        });
        let dropped = dropped
            .into_iter()
            .map(|key| match key.split_once('.') {
                Some((record, rest)) if PROPERTY_RECORDS.contains(&record) => {
                    format!("{record}.properties.{rest}")
                }
                _ if PROPERTY_RECORDS.contains(&key.as_str()) => format!("{key}.properties"),
                _ => format!("context.{key}"),
            })
            .collect();
        (context, dropped)
    }
}

/// An evaluation read from the wire: the question, and the keys dropped from its context.
pub(crate) struct Evaluation {
    pub(crate) question: Question,
    pub(crate) dropped: Vec<String>,
}

/// Reads one evaluation (`map`, at `path`) into a question on `snapshot`, keeping the
/// allow-listed context keys (`recorded_keys`) for the audit log.
pub(crate) fn evaluation(
    names: &Names,
    snapshot: &Snapshot,
    map: &Map<String, Json>,
    path: &str,
    recorded_keys: &[String],
) -> Result<Evaluation, Refusal> {
    let subject = party(names, map, "subject", path, false)?;
    let (action, action_properties) = action(names, map, path)?;
    let resource = party(names, map, "resource", path, false)?;
    let asserted = Asserted::read(
        map,
        path,
        [subject.properties, resource.properties, action_properties],
    )?;
    let (context, dropped) = asserted.fit(snapshot, &action);
    let recorded_context = recorded_keys
        .iter()
        .filter_map(|k| context.get(k).map(|v| (k.clone(), v.clone())))
        .collect();
    let query = Query {
        principal: subject.uid(),
        action,
        resource: resource.uid(),
        context: ContextInput::Json(Json::Object(context).to_string()),
    };
    Ok(Evaluation {
        question: Question {
            query,
            recorded_context,
        },
        dropped,
    })
}

/// How a batch of evaluations ends early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Semantic {
    /// Every item is decided.
    ExecuteAll,
    /// Stops at the first deny (or error).
    DenyOnFirstDeny,
    /// Stops at the first permit.
    PermitOnFirstPermit,
}

impl Semantic {
    /// Whether to go on after an item that was (or was not) allowed.
    pub(crate) fn go_on(self, allowed: bool) -> bool {
        match self {
            Self::ExecuteAll => true,
            Self::DenyOnFirstDeny => allowed,
            Self::PermitOnFirstPermit => !allowed,
        }
    }

    /// The name the caller gives it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::ExecuteAll => "execute_all",
            Self::DenyOnFirstDeny => "deny_on_first_deny",
            Self::PermitOnFirstPermit => "permit_on_first_permit",
        }
    }
}

/// An evaluations request: its items (defaults merged in), and how it ends; `None`
/// items: there is no `evaluations` array (or it is empty), so it is a single evaluation.
pub(crate) struct Evaluations {
    pub(crate) items: Option<Vec<Json>>,
    pub(crate) semantic: Semantic,
}

/// Reads an evaluations request: the top-level `subject`, `action`, `resource` and
/// `context` are defaults each item's own keys override. More than `max_items` items, or
/// defaults that, repeated into every item that takes them, would make more than
/// `max_bytes` of JSON, are refused before any is copied: a small body must not grow
/// into a large one.
pub(crate) fn evaluations(
    mut map: Map<String, Json>,
    max_items: usize,
    max_bytes: usize,
) -> Result<(Evaluations, Map<String, Json>), Refusal> {
    let semantic = match object(&map, "options", "")? {
        None => Semantic::ExecuteAll,
        Some(options) => match string(options, "evaluations_semantic", "options")? {
            None | Some("execute_all") => Semantic::ExecuteAll,
            Some("deny_on_first_deny") => Semantic::DenyOnFirstDeny,
            Some("permit_on_first_permit") => Semantic::PermitOnFirstPermit,
            Some(other) => {
                return Err(Refusal::invalid(
                    "options.evaluations_semantic",
                    format!(
                        "{other:?} is not one of execute_all, deny_on_first_deny, \
                         permit_on_first_permit"
                    ),
                ));
            }
        },
    };
    if let Some(Json::Array(items)) = map.get("evaluations") {
        if items.len() > max_items {
            return Err(Refusal::limit(
                "evaluations",
                format!(
                    "{} evaluations is more than the limit of {max_items} (max_batch_items)",
                    items.len()
                ),
            ));
        }
        let mut repeated = 0usize;
        for key in ["subject", "action", "resource", "context"] {
            let Some(default) = map.get(key) else {
                continue;
            };
            let taking = items
                .iter()
                .filter(|item| item.as_object().is_some_and(|i| !i.contains_key(key)))
                .count();
            if taking > 0 {
                let size = serde_json::to_vec(default).map_or(0, |v| v.len());
                repeated = repeated.saturating_add(size.saturating_mul(taking));
            }
        }
        if repeated > max_bytes {
            return Err(Refusal::limit(
                "evaluations",
                format!(
                    "the defaults repeated into each item make {repeated} bytes, more than \
                     the limit of {max_bytes} (max_message_bytes): send smaller defaults or \
                     fewer items"
                ),
            ));
        }
    }
    let items = match map.remove("evaluations") {
        None => None,
        Some(Json::Array(items)) if items.is_empty() => None,
        Some(Json::Array(items)) => Some(
            items
                .into_iter()
                .map(|item| match item {
                    Json::Object(mut fields) => {
                        for key in ["subject", "action", "resource", "context"] {
                            if !fields.contains_key(key)
                                && let Some(default) = map.get(key)
                            {
                                fields.insert(key.to_owned(), default.clone());
                            }
                        }
                        Json::Object(fields)
                    }
                    other => other,
                })
                .collect(),
        ),
        Some(other) => {
            return Err(Refusal::invalid(
                "evaluations",
                format!("expected an array, got {}", kind_of(&other)),
            ));
        }
    };
    Ok((Evaluations { items, semantic }, map))
}

/// An item of an `evaluations` array as an object, or its refusal.
pub(crate) fn item_object<'a>(
    item: &'a Json,
    path: &str,
) -> Result<&'a Map<String, Json>, Refusal> {
    item.as_object()
        .ok_or_else(|| Refusal::invalid(path, format!("expected an object, got {}", kind_of(item))))
}

/// The answer to one evaluation: `decision`, and a `context` with its id, the policies
/// that determined it, the errors of policies that could not be evaluated, the policy
/// version, and the keys dropped from the request.
pub(crate) fn decision(
    decision: &Decision,
    decision_id: String,
    snapshot: &Snapshot,
    dropped: &[String],
) -> Json {
    let mut context = Map::new();
    context.insert("decision_id".into(), Json::String(decision_id));
    context.insert(
        "determining_policies".into(),
        json!(decision.determining_policies()),
    );
    if !decision.errors().is_empty() {
        let errors: Vec<Json> = decision
            .errors()
            .iter()
            .map(|e| json!({"policy_id": e.policy_id, "message": e.message}))
            .collect();
        context.insert("errors".into(), Json::Array(errors));
    }
    if !dropped.is_empty() {
        context.insert("dropped".into(), json!(dropped));
    }
    context.insert("policy_version".into(), json!(snapshot.version()));
    json!({"decision": decision.allowed(), "context": context})
}

/// The answer to an evaluation that could not be asked: `false`, with its id and the
/// error.
pub(crate) fn refused_item(refusal: &Refusal, decision_id: String) -> Json {
    json!({
        "decision": false,
        "context": {
            "decision_id": decision_id,
            "error": {"status": 400, "field": refusal.field(), "message": refusal.to_string()},
        },
    })
}

/// The kind of a search, as its endpoint names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SearchKind {
    /// `/access/v1/search/subject`.
    Subject,
    /// `/access/v1/search/resource`.
    Resource,
    /// `/access/v1/search/action`.
    Action,
}

impl SearchKind {
    fn tag(self) -> &'static str {
        match self {
            Self::Subject => "s",
            Self::Resource => "r",
            Self::Action => "a",
        }
    }
}

/// Bounds on a search page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageBounds {
    pub(crate) default_limit: usize,
    pub(crate) max_limit: usize,
    pub(crate) max_evaluations: usize,
}

/// Searches work out `total` when they have at most this many candidates.
const TOTAL_UP_TO: usize = 1_000;

/// What a page token carries: where the search goes on ([`Cursor`]: a position in one
/// policy version's candidates, and the last result returned, never a candidate the caller
/// was not given), which search it belongs to, and the total the first page counted.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Token {
    /// The kind of search.
    k: String,
    /// A digest of the search (everything but `page`).
    q: String,
    /// The policy version of the position.
    v: String,
    /// The position of the next candidate.
    p: usize,
    /// The id of the last result returned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<String>,
    /// The total, when the first page counted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<usize>,
}

/// A digest of a search request without its `page`: a token only goes on the search it
/// came from.
fn digest(kind: SearchKind, map: &Map<String, Json>) -> String {
    let mut without_page = map.clone();
    without_page.remove("page");
    let mut hash = Sha256::new();
    hash.update(kind.tag());
    hash.update(Json::Object(without_page).to_string());
    hex(&hash.finalize()[..12])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What the answer to a search needs to write its page.
pub(crate) struct Search {
    kind: SearchKind,
    digest: String,
    /// The total carried by the token, from the first page.
    total: Option<usize>,
}

/// Reads a search request of `kind` on `snapshot`: the page to search, and what writing
/// its answer needs.
pub(crate) fn search(
    names: &Names,
    snapshot: &Snapshot,
    kind: SearchKind,
    map: &Map<String, Json>,
    bounds: PageBounds,
) -> Result<(SearchRequest, Search), Refusal> {
    let (searched, properties) = match kind {
        SearchKind::Subject => {
            let subject = party(names, map, "subject", "", true)?;
            let (action, action_properties) = action(names, map, "")?;
            let resource = party(names, map, "resource", "", false)?;
            let searched = Searched::Principals {
                of_type: subject.of_type.clone(),
                action,
                resource: resource.uid(),
            };
            (searched, [None, resource.properties, action_properties])
        }
        SearchKind::Resource => {
            let subject = party(names, map, "subject", "", false)?;
            let (action, action_properties) = action(names, map, "")?;
            let resource = party(names, map, "resource", "", true)?;
            let searched = Searched::Resources {
                principal: subject.uid(),
                action,
                of_type: resource.of_type.clone(),
            };
            (searched, [subject.properties, None, action_properties])
        }
        SearchKind::Action => {
            let subject = party(names, map, "subject", "", false)?;
            let resource = party(names, map, "resource", "", false)?;
            let searched = Searched::Actions {
                principal: subject.uid(),
                resource: resource.uid(),
                action_type: names.action_type(),
            };
            (searched, [subject.properties, resource.properties, None])
        }
    };
    let asserted = Asserted::read(map, "", properties)?;
    let context = match &searched {
        Searched::Principals { action, .. } | Searched::Resources { action, .. } => {
            let (context, _) = asserted.fit(snapshot, action);
            SearchContext::Fixed(ContextInput::Json(Json::Object(context).to_string()))
        }
        // Each action's declared context differs: fitted as each is asked.
        Searched::Actions { .. } => SearchContext::PerAction(Box::new(move |snapshot, action| {
            let (context, _) = asserted.fit(snapshot, action);
            ContextInput::Json(Json::Object(context).to_string())
        })),
    };
    let page = object(map, "page", "")?;
    let limit = match page.map(|p| p.get("limit")) {
        None | Some(None) => bounds.default_limit,
        Some(Some(Json::Number(n))) => match n.as_u64() {
            Some(0) => bounds.default_limit,
            Some(n) => usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(bounds.max_limit),
            None => {
                return Err(Refusal::invalid(
                    "page.limit",
                    "expected a non-negative integer",
                ));
            }
        },
        Some(Some(other)) => {
            return Err(Refusal::invalid(
                "page.limit",
                format!("expected a non-negative integer, got {}", kind_of(other)),
            ));
        }
    };
    let digest = digest(kind, map);
    // `token` (1.0); `next_token` as earlier drafts wrote it.
    let token = match page {
        None => None,
        Some(page) => string(page, "token", "page")?.or(string(page, "next_token", "page")?),
    };
    let (resume, total) = match token.filter(|t| !t.is_empty()) {
        None => (None, None),
        Some(token) => {
            let read: Option<Token> =
                unhex(token).and_then(|bytes| serde_json::from_slice(&bytes).ok());
            match read {
                Some(t) if t.k == kind.tag() && t.q == digest => (
                    Some(Cursor {
                        version: t.v,
                        position: t.p,
                        after: t.a,
                    }),
                    t.t,
                ),
                _ => {
                    return Err(Refusal::invalid(
                        "page.token",
                        "not a token this search gave: send the next_token of the previous \
                         page of the same search, unchanged",
                    ));
                }
            }
        }
    };
    let request = SearchRequest {
        searched,
        context,
        resume,
        limit,
        max_evaluations: bounds.max_evaluations,
        total_up_to: TOTAL_UP_TO,
    };
    Ok((
        request,
        Search {
            kind,
            digest,
            total,
        },
    ))
}

impl Search {
    /// The answer: `results` and `page` (`next_token`, empty on the last page; `count`;
    /// `total`, when counted).
    pub(crate) fn page(&self, names: &Names, page: &SearchPage) -> Json {
        let results: Vec<Json> = page
            .found
            .iter()
            .map(|uid| match self.kind {
                SearchKind::Action => json!({"name": uid.id().unescaped()}),
                _ => json!({
                    "type": names.authzen_type(uid.type_name()),
                    "id": uid.id().unescaped(),
                }),
            })
            .collect();
        let total = page.total.or(self.total);
        let next_token = match &page.next {
            None => String::new(),
            Some(cursor) => {
                let token = Token {
                    k: self.kind.tag().to_owned(),
                    q: self.digest.clone(),
                    v: cursor.version.clone(),
                    p: cursor.position,
                    a: cursor.after.clone(),
                    t: total,
                };
                hex(serde_json::to_string(&token)
                    .expect("a token serializes")
                    .as_bytes())
            }
        };
        let mut page_json = json!({"next_token": next_token, "count": results.len()});
        if let Some(total) = total {
            page_json["total"] = json!(total);
        }
        json!({"results": results, "page": page_json})
    }
}
